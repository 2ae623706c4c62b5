"""The HTML of the report: one self-contained HTML5 page, text escaped, images inlined as base64 PNGs.

A ``Page`` is a list of ``Section`` objects; a section collects HTML fragments (paragraphs, notes, tables,
figures) and renders them under its heading. Nothing here reads the run folder.
"""

from __future__ import annotations

import base64
import html
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0 auto;
max-width:1100px;padding:0 1.2em 3em;color:#222;line-height:1.45}
h1{margin:.8em 0 .2em}h2{margin-top:1.8em;border-bottom:2px solid #ddd;padding-bottom:.2em}
h3{margin:1.2em 0 .4em}nav{margin:.6em 0 1em}nav a{margin-right:1em;white-space:nowrap}
a{color:#1f5fa8}.meta{color:#666}.note{color:#555;background:#f5f5f5;border-left:4px solid #bbb;
padding:.4em .8em}.warn{border-left-color:#d9822b;background:#fdf4ea}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid #ddd;padding:.25em .6em;
text-align:left;vertical-align:top}th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.hl td{background:#fff6d5}figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}details{margin:.6em 0}summary{cursor:pointer;color:#1f5fa8}
code{background:#f3f3f3;padding:0 .25em}
""".strip()

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def fmt(v: Any, digits: int = 4) -> str:
    """A value for a cell: ``n/a`` for None / NaN, thousands separators for ints, ``digits`` significant
    digits for floats."""
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "n/a"
        if v != 0 and (abs(v) >= 1e9 or abs(v) < 1e-3):
            return f"{v:.{digits - 1}e}"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}g}" if abs(v) >= 1 else f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return str(v)


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    if png[:8] != PNG_MAGIC:
        raise ValueError("not a PNG")
    return struct.unpack(">II", png[16:24])


@dataclass
class Section:
    """One ``<section>``: an anchor id, a heading, and the fragments added to it."""

    id: str
    title: str
    parts: list[str] = field(default_factory=list)

    def html(self, fragment: str) -> None:
        """Add raw HTML (callers escape their text)."""
        self.parts.append(fragment)

    def p(self, text: str, cls: str = "") -> None:
        attr = f' class="{esc(cls)}"' if cls else ""
        self.parts.append(f"<p{attr}>{esc(text)}</p>")

    def note(self, text: str, warn: bool = False) -> None:
        self.parts.append(f'<p class="note{" warn" if warn else ""}">{esc(text)}</p>')

    def h3(self, text: str) -> None:
        self.parts.append(f"<h3>{esc(text)}</h3>")

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]], highlight: Sequence[bool] = (),
              digits: int = 4, limit: int | None = None, what: str = "rows") -> None:
        """A table; numbers right-aligned and formatted with ``fmt``. Beyond ``limit`` rows, the rest go into
        a collapsed ``<details>`` block."""
        def render(rs: Sequence[Sequence[Any]], hl: Sequence[bool]) -> str:
            out = ["<table><thead><tr>", *(f"<th scope=\"col\">{esc(h)}</th>" for h in header), "</tr></thead><tbody>"]
            for i, r in enumerate(rs):
                out.append('<tr class="hl">' if i < len(hl) and hl[i] else "<tr>")
                for v in r:
                    num = isinstance(v, (int, float)) and not isinstance(v, bool)
                    out.append(f'<td class="num">{esc(fmt(v, digits))}</td>' if num else f"<td>{esc(fmt(v))}</td>")
                out.append("</tr>")
            out.append("</tbody></table>")
            return "".join(out)

        hl = list(highlight)
        if limit is None or len(rows) <= limit:
            self.parts.append(render(rows, hl))
            return
        self.parts.append(render(rows[:limit], hl[:limit]))
        self.parts.append(f"<details><summary>{esc(f'{len(rows) - limit} more {what}')}</summary>"
                          f"{render(rows[limit:], hl[limit:])}</details>")

    def image(self, png: bytes, alt: str, caption: str = "") -> None:
        """An inline PNG (``data:image/png;base64``) with its caption."""
        w, h = png_size(png)
        src = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
        self.parts.append(f'<figure><img src="{src}" alt="{esc(alt)}" width="{w}" height="{h}">{cap}</figure>')

    def render(self) -> str:
        return f'<section id="{esc(self.id)}">\n<h2>{esc(self.title)}</h2>\n' + "\n".join(self.parts) + "\n</section>"


def render_page(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    """The whole document: HTML5, inline style, a table of contents of the sections' anchors."""
    nav = "".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in sections)
    body = "\n".join(s.render() for s in sections)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(title)}</title>\n<style>\n{STYLE}\n</style>\n</head>\n<body>\n"
            f'<header>\n<h1>{esc(title)}</h1>\n<p class="meta">{esc(subtitle)}</p>\n<nav>{nav}</nav>\n</header>\n'
            f"{body}\n</body>\n</html>\n")
