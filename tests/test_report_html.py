"""The Snakemake report of the smoke run, rendered in headless Chromium, opens on the answer."""
from __future__ import annotations

import base64
import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import SMOKE, snakemake
from kdbench.tools import browser

FIGURES = ("accuracy", "paired", "curves", "learning")
# Added to a copy of the page only: once the report's scripts have drawn the landing page, note where the
# headline and the learning curves are on the screen.
PROBE = """<script>setTimeout(function () {
  var h = document.querySelector(".kdbench-headline"), f = document.querySelector('img[alt^="learning curves"]');
  document.body.setAttribute("data-probe", JSON.stringify({headline: h ? h.getBoundingClientRect() : null,
                                                           learning: f ? f.getBoundingClientRect() : null}));
}, 3000);</script>"""


class _Text(HTMLParser):
    """Collects the text of a page outside <script> and <style>."""

    def __init__(self):
        super().__init__()
        self.parts, self.hidden = [], 0

    def handle_starttag(self, tag, attrs):
        self.hidden += tag in ("script", "style")

    def handle_endtag(self, tag):
        self.hidden -= tag in ("script", "style")

    def handle_data(self, data):
        if not self.hidden:
            self.parts.append(data)


def visible_text(dom: str) -> str:
    """Text of the rendered page outside scripts and styles, whitespace collapsed."""
    parser = _Text()
    parser.feed(dom)
    return " ".join(" ".join(parser.parts).split())


@pytest.fixture(scope="module")
def report(smoke_run, tmp_path_factory) -> Path:
    if browser.find_chromium() is None:
        pytest.skip("no Chromium on PATH (make browser installs Debian's chromium with apt-get)")
    out = tmp_path_factory.mktemp("report") / "report.html"
    done = snakemake("--configfile", str(SMOKE), "--report", str(out),
                     cwd=smoke_run.results.parents[1], timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


@pytest.mark.slow
def test_report_opens_on_the_answer(smoke_run, report, tmp_path):
    probed = tmp_path / "probed.html"
    page, end, tail = report.read_text().rpartition("</body>")  # the page's own end, not one inside a script
    probed.write_text(page + PROBE + end + tail)
    dom = browser.rendered_dom(probed)
    headline = " ".join((smoke_run.results / "headline.txt").read_text().split())
    text = visible_text(dom)
    assert headline in text, "the headline is not on the landing page"
    boxes = json.loads(html.unescape(re.search(r'data-probe="([^"]*)"', dom).group(1)))
    box, figure = boxes["headline"], boxes["learning"]
    assert 0 <= box["top"] <= browser.WINDOW[1] / 4 and box["bottom"] <= browser.WINDOW[1], \
        f"headline not at the top of the first screen: {box}"
    assert figure and box["bottom"] <= figure["top"] < browser.WINDOW[1], f"learning curves not on the first screen: {figure}"
    assert text.index(headline) < text.index("logit_hidden_attn"), "the main table comes after the headline"
    images = re.findall(r'<img[^>]*src="data:image/png;base64,([^"]+)"', dom)
    paired = (smoke_run.results / "figures" / "paired.png").read_bytes()
    shown = [base64.b64decode(b) for b in images]
    assert paired in shown, "the forest plot is not on the landing page"
    assert (smoke_run.results / "figures" / "learning.png").read_bytes() in shown, "no learning curves on the landing page"


@pytest.mark.slow
def test_report_holds_every_figure(smoke_run, report):
    data = re.search(r"var results = (\{.*?\});\s*</script>", report.read_text(), flags=re.S).group(1)
    results = json.loads(data)
    for name in FIGURES:
        path = smoke_run.results / "figures" / f"{name}.png"
        entry = results[f"results/smoke/figures/{name}.png"]
        assert entry["mime_type"] == "image/png" and entry["caption"]
        assert base64.b64decode(entry["data_uri"].split("base64,", 1)[1]) == path.read_bytes()


@pytest.mark.slow
def test_report_screenshot(report, tmp_path):
    png = browser.screenshot(report, tmp_path / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) == browser.WINDOW
