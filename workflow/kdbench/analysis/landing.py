"""HTML pieces of the report's landing page: the headline, the main table and the forest plot of a run.

The global description of the Snakemake report (workflow/report/workflow.rst) inserts them with
``.. raw:: html`` ``:file:``; they are self-contained (the figure is a data URI), like the report.
"""

from __future__ import annotations

import base64
import re
from html import escape
from pathlib import Path

from kdbench import KdbenchError
from kdbench.io import atomic_path


def headline_html(text: str) -> str:
    return f'<p class="kdbench-headline"><strong>{escape(text.strip())}</strong></p>\n'


def table_html(markdown: str) -> str:
    """The pipe table of a markdown text as an HTML table (header row, then body rows; text around it ignored)."""
    rows = [[escape(c.strip()) for c in line.strip()[1:-1].split("|")]
            for line in markdown.splitlines() if line.lstrip().startswith("|")]
    rows = [r for r in rows if not all(re.fullmatch(r":?-+:?", c) for c in r)]  # drop the |---| rule
    if not rows:
        raise KdbenchError("landing page: no markdown table found")
    head = "".join(f"<th>{c}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>\n" for r in rows[1:])
    return f'<table class="kdbench-table">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n'


def image_html(png: Path, alt: str) -> str:
    data = base64.b64encode(Path(png).read_bytes()).decode()
    return f'<img class="kdbench-figure" alt="{escape(alt)}" src="data:image/png;base64,{data}" style="width: 100%">\n'


def why_html(markdown: str) -> str:
    """why.md's sections (its '# ' title dropped): '## ' headings, paragraphs and pipe tables as HTML."""
    html = []
    for block in (b.strip() for b in markdown.split("\n\n")):
        if not block or block.startswith("# "):
            continue
        if block.startswith("## "):
            html.append(f'<h3 class="kdbench-why">{escape(block[3:])}</h3>\n')
        elif block.startswith("|"):
            html.append(table_html(block))
        else:
            html.append(f'<p class="kdbench-why">{escape(block)}</p>\n')
    return "".join(html)


def write_landing(headline: Path, table: Path, paired: Path, out: dict[str, Path],
                  why: tuple[Path, Path] | None = None, learning: tuple[Path, Path] | None = None) -> None:
    """Write out["headline"], out["table"], out["paired"] from the run's headline.txt, table.md and paired.png;
    with `why` (why.md, its HTML piece) the why sections too, with `learning` (learning.png, its piece) the curves."""
    pieces = {"headline": headline_html(Path(headline).read_text()),
              "table": table_html(Path(table).read_text()),
              "paired": image_html(paired, "forest plot: each arm minus the reference arm, per task family")}
    if why is not None:
        pieces["why"] = why_html(Path(why[0]).read_text())
        out = {**out, "why": why[1]}
    if learning is not None:
        pieces["learning"] = image_html(learning[0], "learning curves: accuracy against student tokens and FLOPs")
        out = {**out, "learning": learning[1]}
    for name, html in pieces.items():
        Path(out[name]).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(Path(out[name])) as tmp:
            tmp.write_text(html)
