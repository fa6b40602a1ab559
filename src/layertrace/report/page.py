"""A self-contained HTML page: inline CSS, PNG figures as base64 data URIs, no scripts, no links out.

The page opens offline and prints well: sections with headings, figures with numbered captions,
tables with right-aligned numbers, status words (not colour alone) for the findings.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from typing import Iterable, Union

from .figures import FigureItem

CSS = """
:root { color-scheme: light; }
body { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; margin: 2rem auto; max-width: 1150px;
       padding: 0 1rem; color: #1a1a1a; line-height: 1.45; font-size: 15px; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #bbb; padding-bottom: .2rem; }
h3 { font-size: 1.05rem; margin-top: 1.4rem; }
figure { margin: 1.2rem 0; page-break-inside: avoid; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .9rem; color: #333; margin-top: .3rem; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .85rem; display: block; max-width: 100%;
        overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: .25rem .5rem; vertical-align: top; }
th { background: #f2f2f2; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.status { font-weight: bold; white-space: nowrap; }
.holds { color: #0b6e4f; }
.fails { color: #a33a00; }
.unchecked { color: #555; }
.note { background: #f7f7f2; border-left: 4px solid #E69F00; padding: .5rem .8rem; margin: .8rem 0; }
.muted { color: #555; font-size: .9rem; }
pre { background: #f6f6f6; padding: .6rem; overflow-x: auto; font-size: .8rem; }
@media print { body { max-width: none; margin: 0; } h2 { page-break-after: avoid; }
               table { display: table; font-size: .7rem; } }
"""


@dataclass
class Html:
    """A raw HTML fragment (already escaped by its producer)."""

    text: str


Block = Union[FigureItem, Html]


@dataclass
class Section:
    title: str
    intro: str = ""
    blocks: list[Block] = field(default_factory=list)


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def table_html(header: list[str], rows: Iterable[list[object]], numeric: set[int] | None = None,
               raw: bool = False) -> str:
    """An HTML table; cells in ``numeric`` columns are right-aligned. ``raw`` keeps cells unescaped."""
    numeric = numeric or set()
    out = ["<table>", "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead>", "<tbody>"]
    for row in rows:
        cells = []
        for i, c in enumerate(row):
            text = str(c) if raw else esc(c)
            cells.append(f'<td class="num">{text}</td>' if i in numeric else f"<td>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def render_page(title: str, subtitle: str, sections: list[Section]) -> str:
    """The whole page as one HTML string (figures numbered in order of appearance)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # An empty data-URI icon: the browser asks for no favicon (no request, no missing resource).
        '<link rel="icon" href="data:,">',
        f"<title>{esc(title)}</title>",
        f"<style>{CSS}</style>",
        "</head><body>",
        f"<h1>{esc(title)}</h1>",
        f'<p class="muted">{subtitle}</p>',
    ]
    toc = [f'<li><a href="#s{i}">{esc(s.title)}</a></li>' for i, s in enumerate(sections, 1)]
    parts.append("<nav><ol>" + "".join(toc) + "</ol></nav>")
    n_fig = 0
    for i, s in enumerate(sections, 1):
        parts.append(f'<section id="s{i}"><h2>{i}. {esc(s.title)}</h2>')
        if s.intro:
            parts.append(f"<p>{s.intro}</p>")
        for b in s.blocks:
            if isinstance(b, Html):
                parts.append(b.text)
                continue
            n_fig += 1
            data = base64.b64encode(b.png).decode("ascii")
            parts.append(
                f'<figure id="fig{n_fig}"><img src="data:image/png;base64,{data}" alt="{esc(b.alt or b.title)}">'
                f"<figcaption><b>Figure {n_fig}. {esc(b.title)}.</b> {esc(b.caption)}</figcaption></figure>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
