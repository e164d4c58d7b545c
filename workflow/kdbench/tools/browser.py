"""Render an HTML page (the Snakemake report) in headless Chromium: the DOM after its scripts ran, or a PNG.

    python -m kdbench.tools.browser results/default/report.html results/default/report.png
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

BINARIES = ("chromium", "chromium-browser")  # Debian's package, other distributions' name
WINDOW = (1400, 1000)
BUDGET_MS = 15000  # virtual time for the page's scripts before the DOM or the screenshot is taken


def find_chromium() -> str | None:
    """Path of a Chromium binary on PATH, or None."""
    return next(filter(None, map(shutil.which, BINARIES)), None)


def _chromium(page: Path, *args: str, timeout: int = 120) -> str:
    """Run headless Chromium on a local page with a throwaway profile; its stdout."""
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError(f"no Chromium found (looked for {', '.join(BINARIES)}; Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="kdbench-chromium-") as profile:
        cmd = [exe, "--headless", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}",
               f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--virtual-time-budget={BUDGET_MS}", *args,
               Path(page).resolve().as_uri()]
        if os.geteuid() == 0:
            cmd.insert(1, "--no-sandbox")  # Chromium refuses to start its sandbox as root
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"chromium failed ({out.returncode}): {out.stderr[-2000:]}")
    return out.stdout


def rendered_dom(page: Path) -> str:
    """The page's DOM as HTML once its scripts ran: what a reader's browser shows, not the file's source."""
    return _chromium(page, "--dump-dom")


def screenshot(page: Path, png: Path) -> Path:
    """The first screen of the page (WINDOW pixels) as a PNG."""
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    _chromium(page, f"--screenshot={png.resolve()}")
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot to {png}")
    return png


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Screenshot of the first screen of an HTML page (headless Chromium).")
    parser.add_argument("page", type=Path)
    parser.add_argument("png", type=Path)
    args = parser.parse_args(argv)
    print(screenshot(args.page, args.png))


if __name__ == "__main__":
    main()
