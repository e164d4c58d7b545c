"""HTML pieces of the report's landing page."""
from __future__ import annotations

import pytest

from kdbench import KdbenchError
from kdbench.analysis.landing import headline_html, table_html


def test_table_html_keeps_the_table_and_drops_the_rule():
    md = "A headline above.\n\n| arm | p < 0.05 |\n|---|:--:|\n| ce | 1.0 [0.5, 2.0] |\n| chance |  |\n"
    out = table_html(md)
    assert "<th>arm</th><th>p &lt; 0.05</th>" in out
    assert "<tr><td>ce</td><td>1.0 [0.5, 2.0]</td></tr>" in out and "<tr><td>chance</td><td></td></tr>" in out
    assert "---" not in out and "headline" not in out


def test_table_html_needs_a_table():
    with pytest.raises(KdbenchError):
        table_html("no table here")


def test_headline_is_escaped_text():
    assert headline_html("a < b & c\n") == '<p class="kdbench-headline"><strong>a &lt; b &amp; c</strong></p>\n'
