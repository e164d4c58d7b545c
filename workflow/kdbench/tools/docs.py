"""Generated documentation: the config reference, the real presets' plans, and the pages of the reference results.

All are written by `kdbench docs` (and checked by `kdbench docs --check`, which the tests
run), so none can drift from the code or from the committed reference results:

- `docs/config.md`: every config key with its type, default, allowed values and the comment
  it carries in `kdbench.schema.config` (or `arms`, `experiment`);
- `docs/plan.md`: `kdbench plan` of every real-model preset;
- the README between `<!-- results:begin -->` and `<!-- results:end -->`: the answer of
  `results/reference/` (headline, main table, forest plot);
- `results/reference/README.md`: the whole of it (every comparison, the why, its tables and figures).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Sequence, Union

from kdbench import KdbenchError
from kdbench.schema.checks import check_config_files, check_models, load_config
from kdbench.schema.experiment import Experiment, load_experiment
from kdbench.schema.plan import DEFAULT_TFLOPS, plan, render
from kdbench.schema.registry import specs

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
REFERENCE = "results/reference"  # the committed run the README quotes
PLANNED = ("config/presets/pythia.yaml",)  # real-model presets whose plan docs/plan.md shows
_FIELD = re.compile(r"^\s+(\w+): [^=]+?(?:=.*?)?(?:#\s*(.*))?$")


def field_comments(cls: type) -> dict[str, str]:
    """{field: comment} from the class source: the comment ending a field's line, or the lines just above it."""
    out, above = {}, []
    for line in inspect.getsource(cls).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# "))
            continue
        match = _FIELD.match(line)
        if match and match.group(1) in {f.name for f in dataclasses.fields(cls)}:
            out[match.group(1)] = " ".join(above + ([match.group(2)] if match.group(2) else []))
        above = []
    return out


def _type(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_type(a) for a in args)
    if origin in (list, tuple):
        if len(args) == 1 or args[1:] == (Ellipsis,):
            return f"list of {_type(args[0])}"
        return f"list of {len(args)} ({', '.join(_type(a) for a in args)})"
    if origin is dict:
        return f"mapping {_type(args[0])} -> {_type(args[1])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def _show(value: Any) -> str:
    if dataclasses.is_dataclass(value):
        return ""
    if isinstance(value, tuple):
        value = list(value)
    return f"`{value}`".replace("'", '"').replace("None", "null").replace("True", "true").replace("False", "false")


def _rows(cls: type, prefix: str, default: Any) -> list[str]:
    hints, comments = typing.get_type_hints(cls), field_comments(cls)
    rows = []
    for f in dataclasses.fields(cls):
        key, tp, value = f"{prefix}{f.name}", hints[f.name], getattr(default, f.name)
        if dataclasses.is_dataclass(tp):
            rows += _rows(tp, f"{key}.", value)
            continue
        args = typing.get_args(tp)
        if typing.get_origin(tp) is dict and dataclasses.is_dataclass(args[1]):  # arms: name -> ArmConfig
            rows.append(f"| `{key}` | {_type(args[0])} -> arm | {_show(list(value))} | {comments.get(f.name, '')} |")
            rows += _rows(args[1], f"{key}.<name>.", args[1]())
            continue
        comment = comments.get(f.name, "")
        if key.endswith(".terms"):
            comment += f"; losses: {', '.join(f'`{n}`' for n in sorted(specs()))}."
        rows.append(f"| `{key}` | {_type(tp)} | {_show(value)} | {comment} |")
    return rows


def config_reference() -> str:
    """docs/config.md: one table row per key, in the order of `config/config.yaml`'s sections."""
    head = ["# Config reference", "",
            "Generated from the schema (`kdbench.schema.config`, `kdbench.schema.arms`, `kdbench.schema.experiment`) by `kdbench docs`;",
            "do not edit by hand. Every key is optional unless the schema says otherwise; a key not listed here is",
            "an error that names the allowed keys. Defaults are the schema's; `config/config.yaml` overrides some.", "",
            "| key | type | default | what it is for |", "|---|---|---|---|"]
    return "\n".join(head + _rows(Experiment, "", Experiment())) + "\n"


def _answer(results_dir: Path, link: str) -> list[str]:
    """The answer as the run wrote it: headline, learning curves and sample efficiency (with budget curves), main
    table and forest plot (`link`: the folder as the page sees it)."""
    files = [results_dir / name for name in ("headline.txt", "table.md")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise KdbenchError(f"results section: missing {', '.join(missing)}")
    headline, table = (f.read_text().strip() for f in files)
    table = table.removeprefix(headline).strip()  # older tables open with the headline
    curves = []
    if (results_dir / "efficiency.md").is_file():  # budget curves: the learning curves and sample efficiency first
        curves = [f"![Learning curves]({link}figures/learning.png)", (results_dir / "efficiency.md").read_text().strip()]
    return [f"> {headline}", *curves, table, f"![Paired differences]({link}figures/paired.png)"]


def results_section(root: Path, results: str) -> str:
    """The README's results: the answer of `root/results`, and a link to the whole of it."""
    return "\n\n".join(_answer(Path(root) / results, f"{results}/") + [
        f"Every comparison, the generated why with its tables and figures: [`{results}/README.md`]({results}/README.md)."])


def results_page(results_dir: Path) -> str:
    """A results folder's README.md: the answer, the comparison table, then the why analyses (why.md, their
    tables and figures) where the run has them."""
    comparison = results_dir / "comparison.md"
    if not comparison.is_file():
        raise KdbenchError(f"results page: missing {comparison}")
    parts = [f"# Results: {results_dir.name}", "Generated by `kdbench docs` from the files of this folder; "
             "nothing in it is written by hand.", *_answer(results_dir, ""), "## Every comparison",
             comparison.read_text().strip()]
    analysis = results_dir / "analysis"
    if (analysis / "why.md").is_file():  # its headings one level down, under this page's title
        parts.append(re.sub(r"^(#+) ", r"#\1 ", (analysis / "why.md").read_text().strip(), flags=re.M))
    for name in ("sensitivity", "analysis/controls", "analysis/budgets", "analysis/fidelity", "analysis/cka"):
        if (results_dir / f"{name}.md").is_file():
            parts += [f"`{name}.md`:", (results_dir / f"{name}.md").read_text().strip()]
        figure = Path(name).parent / "figures" / f"{Path(name).name}.png"
        if (results_dir / figure).is_file():
            parts.append(f"![{Path(name).name}]({figure.as_posix()})")
    return "\n\n".join(parts) + "\n"


def plan_text(root: Path, configfiles: Sequence[Path], tflops: float = DEFAULT_TFLOPS) -> str:
    """`kdbench plan`'s report of the default config with `configfiles` merged on top."""
    files = [Path(root) / "config" / "config.yaml", *configfiles]
    check_config_files(files)
    exp = load_experiment(load_config(files))
    return render(plan(exp, check_models(exp)), exp.experiment, tflops)


def plan_page(root: Path) -> str:
    """docs/plan.md: the planner's report of every real-model preset."""
    parts = ["# Plans of the real-model presets", "Generated by `kdbench docs`; do not edit by hand. "
             "Estimates from the models' `config.json` alone (no weights read)."]
    for preset in PLANNED:
        parts += [f"```\n$ kdbench plan --configfile {preset}\n{plan_text(root, [Path(root) / preset])}\n```"]
    return "\n\n".join(parts) + "\n"


def splice(text: str, section: str) -> str:
    """`text` with the part between the results markers replaced by `section`."""
    if BEGIN not in text or END not in text:
        raise KdbenchError(f"README: markers {BEGIN} and {END} not found")
    before, rest = text.split(BEGIN, 1)
    return f"{before}{BEGIN}\n{section}\n{END}{rest.split(END, 1)[1]}"


def regenerate(root: Path, check: bool = False) -> list[Path]:
    """Write (or with `check`, compare) docs/config.md, docs/plan.md, the README's results and the reference's
    own README.md; returns the stale files."""
    root = Path(root)
    readme = root / "README.md"
    wanted = {root / "docs" / "config.md": config_reference(),
              root / "docs" / "plan.md": plan_page(root),
              readme: splice(readme.read_text(), results_section(root, REFERENCE)),
              root / REFERENCE / "README.md": results_page(root / REFERENCE)}
    stale = [path for path, text in wanted.items() if not path.is_file() or path.read_text() != text]
    if not check:
        for path in stale:
            path.write_text(wanted[path])
    return stale
