"""Reports as plain data: a list of blocks rendered to Markdown and to a self-contained HTML page,
plus the bar charts and frame strips they show.

The evaluation pipeline builds the blocks once; :func:`to_markdown` links the images by relative
path (they are written beside the report by the catalog) and :func:`to_html` embeds them, so the
HTML page also reads well as an MLflow artifact or an e-mail attachment. Charts are drawn with
matplotlib's object API on an Agg canvas (no pyplot, no global backend switch).

This module must not import Kedro.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    """Text with `code` and **bold** spans."""

    text: str


@dataclass(frozen=True)
class Callout:
    """A paragraph that must not be missed (e.g. "these scores measure nothing")."""

    text: str


@dataclass(frozen=True)
class BulletList:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]


@dataclass(frozen=True)
class Figure:
    """An image: linked as ``link`` in Markdown, embedded in HTML."""

    caption: str
    link: str
    image: Image.Image


Block = Heading | Paragraph | Callout | BulletList | Table | Figure


# --------------------------------------------------------------------------- values


def format_value(value: Any, digits: int = 3) -> str:
    """Numbers with ``digits`` significant digits (at least 2 decimals for |x| < 1000); NaN/None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        if not math.isfinite(float(value)):
            return "–"
        magnitude = abs(float(value))
        if magnitude >= 1000:
            return f"{float(value):.0f}"
        decimals = max(2, digits - 1 - int(math.floor(math.log10(magnitude)))) if magnitude > 0 else 2
        return f"{float(value):.{min(decimals, 6)}f}"
    return str(value)


# --------------------------------------------------------------------------- Markdown


def _md_cell(value: Any) -> str:
    return format_value(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: Sequence[Block]) -> str:
    """Render the blocks as GitHub-flavoured Markdown; figures become relative image links."""
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Paragraph):
            out.append(block.text)
        elif isinstance(block, Callout):
            out.append("\n".join(f"> {line}" if line else ">" for line in f"**Note.** {block.text}".splitlines()))
        elif isinstance(block, BulletList):
            out.append("\n".join(f"- {item}" for item in block.items))
        elif isinstance(block, Table):
            lines = ["| " + " | ".join(_md_cell(c) for c in block.columns) + " |",
                     "|" + "|".join("---" for _ in block.columns) + "|"]
            lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in block.rows]
            out.append("\n".join(lines))
        elif isinstance(block, Figure):
            out.append(f"![{block.caption}]({block.link})")
        else:
            raise TypeError(f"unknown report block {type(block).__name__}")
    return "\n\n".join(out) + "\n"


# --------------------------------------------------------------------------- HTML

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f0f0f0; }
.callout { border-left: 4px solid #d9822b; background: #fff6e8; padding: 0.6em 1em; margin: 1em 0; }
figure { display: inline-block; margin: 0.5em 1em 1em 0; }
figcaption { font-size: 0.85em; color: #555; }
img { image-rendering: pixelated; max-width: 100%; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""


def _inline_html(text: str) -> str:
    escaped = html.escape(text)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)


def png_data_uri(image: Image.Image) -> str:
    """The image as a ``data:image/png;base64,...`` URI."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def to_html(blocks: Sequence[Block], title: str) -> str:
    """Render the blocks as one self-contained HTML page (images embedded as data URIs)."""
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"]
    for block in blocks:
        if isinstance(block, Heading):
            level = min(max(block.level, 1), 6)
            out.append(f"<h{level}>{_inline_html(block.text)}</h{level}>")
        elif isinstance(block, Paragraph):
            out.append(f"<p>{_inline_html(block.text)}</p>")
        elif isinstance(block, Callout):
            out.append(f'<div class="callout"><strong>Note.</strong> {_inline_html(block.text)}</div>')
        elif isinstance(block, BulletList):
            out.append("<ul>" + "".join(f"<li>{_inline_html(item)}</li>" for item in block.items) + "</ul>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{_inline_html(str(c))}</th>" for c in block.columns)
            body = "".join("<tr>" + "".join(f"<td>{_inline_html(format_value(v))}</td>" for v in row) + "</tr>"
                           for row in block.rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(block, Figure):
            out.append(f'<figure><img src="{png_data_uri(block.image)}" alt="{html.escape(block.caption)}">'
                       f"<figcaption>{_inline_html(block.caption)}</figcaption></figure>")
        else:
            raise TypeError(f"unknown report block {type(block).__name__}")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- images


def bar_chart(
    title: str,
    labels: Sequence[str],
    values: Sequence[float],
    *,
    reference: float | None = None,
    reference_label: str = "reference clips",
    ylabel: str = "",
    note: str = "",
) -> Image.Image:
    """A bar chart as a PIL image: one bar per label, an optional dashed reference line.

    Non-finite values are drawn as missing (no bar, "n/a" above the slot).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    figure = MplFigure(figsize=(5.2, 3.4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    positions = np.arange(len(labels))
    heights = [float(v) if v is not None and math.isfinite(float(v)) else 0.0 for v in values]
    bars = axes.bar(positions, heights, color="#4c78a8")
    for bar, value in zip(bars, values, strict=True):
        finite = value is not None and math.isfinite(float(value))
        axes.annotate(format_value(float(value)) if finite else "n/a", (bar.get_x() + bar.get_width() / 2,
                      bar.get_height()), ha="center", va="bottom", fontsize=8)
    if reference is not None and math.isfinite(float(reference)):
        axes.axhline(float(reference), color="#d9822b", linestyle="--", linewidth=1.5,
                     label=f"{reference_label}: {format_value(float(reference))}")
        axes.legend(fontsize=8, loc="lower right")
    axes.set_xticks(positions, labels, fontsize=8)
    axes.set_ylabel(ylabel, fontsize=9)
    axes.set_title(title, fontsize=10)
    axes.margins(y=0.15)
    if note:
        figure.text(0.5, 0.01, note, ha="center", va="bottom", fontsize=7, color="#b00000")
    figure.tight_layout(rect=(0, 0.05 if note else 0, 1, 1))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    buffer.seek(0)
    with Image.open(buffer) as image:
        return image.convert("RGB")


def frame_strip(frames: np.ndarray, max_frames: int = 8, scale: int = 1, label: str = "") -> Image.Image:
    """Up to ``max_frames`` frames of a clip, evenly picked, side by side (2 px white gaps),
    optionally upscaled by an integer ``scale`` (nearest neighbour) and labelled above."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"expected frames (T, H, W, 3), got {frames.shape}")
    count = min(max(1, int(max_frames)), len(frames))
    picks = np.unique(np.linspace(0, len(frames) - 1, count).round().astype(int))
    height, width = frames.shape[1] * scale, frames.shape[2] * scale
    gap, header = 2, 14 if label else 0
    strip = Image.new("RGB", (len(picks) * (width + gap) - gap, height + header), "white")
    for slot, index in enumerate(picks):
        tile = Image.fromarray(frames[index].astype(np.uint8))
        if scale != 1:
            tile = tile.resize((width, height), Image.NEAREST)
        strip.paste(tile, (slot * (width + gap), header))
    if label:
        ImageDraw.Draw(strip).text((2, 1), label, fill="black")
    return strip
