"""One self-contained ``report.html``: inline CSS, figures as base64 ``data:`` URIs, no script,
font, stylesheet or image fetched from anywhere, so the file can be mailed or archived alone.

The page is assembled from small section builders that return HTML strings; every value from
the results is escaped.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import yaml

from sim.report.load import Table

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; } h2 { font-size: 1.25rem; margin-top: 2rem;
     border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.5rem; text-align: right; }
th { background: #f3f3f3; } td.text, th.text { text-align: left; }
tr.baseline td { background: #f7f7f7; font-weight: 600; } tr.best td { background: #eaf5ea; }
tr.bound td { color: #666; font-style: italic; }
.warning { border: 2px solid #c0392b; background: #fdecea; color: #611a15; padding: 0.6rem 1rem;
           border-radius: 4px; margin: 0.8rem 0; font-weight: 600; }
.note { border-left: 4px solid #999; background: #f6f6f6; padding: 0.4rem 0.8rem; margin: 0.6rem 0; }
figure { margin: 1rem 0 2rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.9rem; margin-top: 0.3rem; }
pre { background: #f6f6f6; padding: 0.6rem; overflow-x: auto; font-size: 0.8rem; }
code { background: #f3f3f3; padding: 0 0.2rem; }
"""


LONG_LIST = 16  # longer lists of facts are shown as their ends and their length


@dataclass(frozen=True)
class FigureBlock:
    """A rendered figure for the page."""

    title: str
    caption: str
    png: bytes


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def page(title: str, subtitle: str, sections: Sequence[str]) -> str:
    """The whole document."""
    body = "\n".join(sections)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f'<h1>{esc(title)}</h1>\n<p class="sub">{esc(subtitle)}</p>\n{body}\n</body>\n</html>\n'
    )


def section(heading: str, *parts: str) -> str:
    return f"<section>\n<h2>{esc(heading)}</h2>\n" + "\n".join(parts) + "\n</section>"


def warning(text: str) -> str:
    return f'<div class="warning" role="alert">&#9888; {esc(text)}</div>'


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def key_values(pairs: Sequence[tuple[str, Any]]) -> str:
    """A two-column table of facts (nested values shown as compact YAML/JSON text)."""
    rows = "\n".join(
        f'<tr><th class="text">{esc(k)}</th><td class="text">{esc(_fact(v))}</td></tr>'
        for k, v in pairs
    )
    return f"<table>\n{rows}\n</table>"


def _fact(value: Any) -> str:
    if isinstance(value, list | tuple):
        if len(value) > LONG_LIST:
            head, tail = ", ".join(map(str, value[:8])), ", ".join(map(str, value[-3:]))
            return f"{head}, ..., {tail} ({len(value)} values)"
        return ", ".join(str(v) for v in value) if value else "(none)"
    if isinstance(value, Mapping):
        return yaml.safe_dump(dict(value), default_flow_style=True, sort_keys=False).strip()
    return "" if value is None else str(value)


def yaml_block(data: Mapping[str, Any], summary: str) -> str:
    """The full document, folded under a summary line."""
    text = yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True)
    return f"<details>\n<summary>{esc(summary)}</summary>\n<pre>{esc(text)}</pre>\n</details>"


@dataclass(frozen=True)
class Column:
    """How one table column is shown: source column, header (with unit), scale, format."""

    name: str
    header: str
    scale: float = 1.0
    fmt: str = "{:.4g}"


def data_table(
    table: Table, columns: Sequence[Column], row_classes: Sequence[str] | None = None
) -> str:
    """An HTML table of the given columns (those the table lacks are left out)."""
    shown = [c for c in columns if c.name in table]
    head = "".join(
        f'<th class="{"text" if _is_text(table[c.name]) else "num"}">{esc(c.header)}</th>'
        for c in shown
    )
    body = []
    for i in range(len(table)):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        cells = "".join(_cell(table[c.name][i], c) for c in shown)
        body.append(f"<tr{cls}>{cells}</tr>")
    return (
        f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n"
        + "\n".join(body)
        + "\n</tbody>\n</table>"
    )


def _is_text(column: np.ndarray) -> bool:
    return column.dtype.kind in "OUSb"


def _cell(value: Any, column: Column) -> str:
    if isinstance(value, bool | np.bool_):
        return f'<td class="text">{"yes" if value else ""}</td>'
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return "<td></td>"
        if float(value).is_integer() and column.scale == 1.0 and column.fmt == "{:.4g}":
            return f"<td>{int(value)}</td>"
        return f"<td>{esc(column.fmt.format(float(value) * column.scale))}</td>"
    return f'<td class="text">{esc(value)}</td>'


def figure_block(block: FigureBlock) -> str:
    data = base64.b64encode(block.png).decode("ascii")
    return (
        f'<figure>\n<img alt="{esc(block.title)}" src="data:image/png;base64,{data}">\n'
        f"<figcaption><b>{esc(block.title)}.</b> {esc(block.caption)}</figcaption>\n</figure>"
    )
