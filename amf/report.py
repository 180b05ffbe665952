"""report.html: a folder run's crops as thumbnails beside their P(atypical), for a person to check.

One self-contained file: thumbnails are JPEG data URIs, the style is inline, there is no script,
and a Content-Security-Policy forbids every request, so it opens offline and can be sent on as it
is. Crops are sorted by P(atypical), highest first, with the decision threshold drawn between the
two classes; above them the counts per class and a histogram of the scores (inline SVG). Cards
off screen are neither laid out nor painted (`content-visibility`), so thousands of crops scroll.

The thumbnails come from the pages the classifier decodes (`Thumbnails.tap`): the input is never
read twice, and only a few kilobytes per crop are kept. The HTML is made piece by piece as it is
written (`render`), never whole in memory.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image

from amf.writing import printable

THUMBNAIL_PX = 96  # longest side; crops are 128 px, so the figure stays recognisable
JPEG_QUALITY = 80  # 2.6 KB a thumbnail on AMi-Br crops: report.html is 3.7 MB per 1,000 crops
BINS = 20  # of the histogram, over [0, 1]
CLASSES = ("atypical", "normal")
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


class Thumbnails:
    """Collects a small JPEG of every page that passes through `tap`, in order."""

    def __init__(self) -> None:
        self.images: list[bytes] = []

    def tap(self, pages: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """`pages` unchanged, each one's thumbnail kept on the way."""
        for page in pages:
            self.images.append(thumbnail(page))
            yield page


def thumbnail(page: np.ndarray) -> bytes:
    """An (H, W, 3) uint8 page as a JPEG at most THUMBNAIL_PX on its longest side."""
    image = Image.fromarray(page)
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX), Image.Resampling.BILINEAR)
    encoded = io.BytesIO()
    image.save(encoded, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return encoded.getvalue()


def render(
    names: Sequence[str],
    records: Sequence[dict[str, Any]],
    thumbnails: Sequence[bytes],
    *,
    threshold: float,
    source: str,
) -> Iterator[str]:
    """The report's HTML in pieces (one per crop: never the whole file in memory), one card per
    crop (thumbnail, P(atypical), class, name), highest P(atypical) first.

    `records` are the MIDOG JSON's objects, in the order of `names` and `thumbnails`.
    Raises ValueError when the three lengths differ.
    """
    if not len(names) == len(records) == len(thumbnails):
        raise ValueError(f"{len(names)} names, {len(records)} records, {len(thumbnails)} thumbnails")
    return _pieces(names, records, thumbnails, threshold, source)


def _pieces(
    names: Sequence[str],
    records: Sequence[dict[str, Any]],
    thumbnails: Sequence[bytes],
    threshold: float,
    source: str,
) -> Iterator[str]:
    scores = np.array([r["confidence"] for r in records], dtype=np.float64)
    counts = {name: sum(r["class"] == name for r in records) for name in CLASSES}
    title = f"{len(records)} crops: {counts['atypical']} atypical, {counts['normal']} normal"
    head, tail = _PAGE.split("{cards}")
    yield head.format(
        csp=_CSP,
        style=_STYLE,
        title=html.escape(title),
        source=html.escape(printable(source)),
        threshold=f"{threshold:.4f}",
        counts=_counts_table(counts),
        histogram=histogram_svg(scores, threshold, [r["class"] for r in records]),
    )
    for rank, i in enumerate(np.argsort(-scores, kind="stable")):
        if rank == counts["atypical"]:
            yield _threshold_mark(threshold)
        yield _card(names[i], records[i], thumbnails[i])
    if counts["normal"] == 0:
        yield _threshold_mark(threshold)
    yield tail


def _card(name: str, record: dict[str, Any], jpeg: bytes) -> str:
    label = html.escape(printable(name))
    p = record["confidence"]
    data = base64.b64encode(jpeg).decode("ascii")
    return (
        f'<figure class="crop {record["class"]}" data-p="{p!r}">'
        f'<img src="data:image/jpeg;base64,{data}" alt="{label}">'
        f'<figcaption><b>{p:.4f}</b> {record["class"]}<span title="{label}">{label}</span></figcaption>'
        "</figure>\n"
    )


def _threshold_mark(threshold: float) -> str:
    label = f"threshold {threshold:.4f}: atypical above, normal below"
    return f'<div class="threshold" id="threshold">{label}</div>\n'


def _counts_table(counts: dict[str, int]) -> str:
    total = max(sum(counts.values()), 1)
    rows = "".join(
        f'<tr class="{name}"><th>{name}</th><td>{count}</td><td>{100 * count / total:.1f}%</td></tr>'
        for name, count in counts.items()
    )
    return f'<table class="counts"><tr><th>class</th><th>crops</th><th>share</th></tr>{rows}</table>'


def histogram_svg(scores: np.ndarray, threshold: float, classes: Sequence[str]) -> str:
    """Crops per P(atypical) bin, each bar split by class, the threshold a dashed line."""
    width, height, left, top = 600, 175, 40, 10
    plot_w, base = width - left - 15, height - 35  # x extent of [0, 1]; y of the zero line
    per_class = {
        name: np.histogram(scores[np.asarray(classes) == name], bins=BINS, range=(0.0, 1.0))[0]
        for name in CLASSES
    }
    peak = max(int(sum(per_class.values()).max()), 1)
    bar_w, unit = plot_w / BINS, (base - top) / peak
    parts = [
        f'<line x1="{left}" y1="{base}" x2="{left + plot_w}" y2="{base}" stroke="#888"/>',
        f'<text x="{left - 4}" y="{top + 6}" text-anchor="end">{peak}</text>',
        f'<text x="{left - 4}" y="{base}" text-anchor="end">0</text>',
    ]
    for b in range(BINS):
        tip = f"{b / BINS:.2f}-{(b + 1) / BINS:.2f}: " + ", ".join(f"{per_class[n][b]} {n}" for n in CLASSES)
        y = float(base)
        for name in reversed(CLASSES):  # normal at the bottom, atypical stacked on it
            y -= per_class[name][b] * unit
            parts.append(
                f'<rect class="{name}" x="{left + b * bar_w + 1:.1f}" y="{y:.1f}" width="{bar_w - 2:.1f}" '
                f'height="{per_class[name][b] * unit:.1f}"><title>{tip}</title></rect>'
            )
    parts += [
        f'<text x="{left + plot_w * t:.1f}" y="{base + 14}" text-anchor="middle">{t:g}</text>'
        for t in (0, 0.25, 0.5, 0.75, 1)
    ]
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{base + 30}" text-anchor="middle">P(atypical)</text>')
    x = left + plot_w * threshold
    side = f'x="{x - 3:.1f}" text-anchor="end"' if threshold > 0.75 else f'x="{x + 3:.1f}"'
    parts += [
        f'<line class="threshold-line" x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{base}"/>',
        f'<text class="threshold-label" {side} y="{top + 4}">threshold {threshold:.2f}</text>',
    ]
    return (
        f'<svg class="histogram" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="histogram of P(atypical)">{"".join(parts)}</svg>'
    )


_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1em 2em; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 .3em; }
.summary { display: flex; gap: 2em; align-items: flex-start; flex-wrap: wrap; margin-bottom: 1em; }
table.counts { border-collapse: collapse; }
table.counts th, table.counts td { padding: 2px 10px; text-align: right; border-bottom: 1px solid #ddd; }
table.counts th:first-child { text-align: left; }
tr.atypical th, .crop.atypical b { color: #b2182b; }
tr.normal th, .crop.normal b { color: #2166ac; }
svg.histogram { font-size: 11px; fill: #444; }
svg rect.atypical { fill: #d6604d; }
svg rect.normal { fill: #4393c3; }
svg .threshold-line { stroke: #000; stroke-width: 1.5; stroke-dasharray: 4 3; }
.crops { display: flex; flex-wrap: wrap; gap: 6px; }
.crop { margin: 0; width: 114px; height: 146px; padding: 3px; box-sizing: border-box; border: 2px solid;
  border-radius: 4px; overflow: hidden; content-visibility: auto; contain-intrinsic-size: 114px 146px; }
.crop.atypical { border-color: #d6604d; }
.crop.normal { border-color: #92c5de; }
.crop img { display: block; width: 96px; height: 96px; margin: 0 auto 2px; object-fit: contain; }
.crop figcaption { font-size: 11px; line-height: 1.25; }
.crop figcaption span { display: -webkit-box; -webkit-box-orient: vertical; -webkit-line-clamp: 2;
  overflow: hidden; word-break: break-all; font-size: 10px; color: #555; }
.threshold { flex-basis: 100%; border-top: 2px dashed #000; padding: 2px 0 4px; font-weight: bold; }
"""

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<title>amf report: {title}</title>
<style>{style}</style>
</head>
<body>
<h1>{title}</h1>
<p>Input <code>{source}</code>. Sorted by P(atypical), highest first; a crop is atypical when its
P(atypical) is at least the threshold, {threshold}.</p>
<div class="summary">
{counts}
{histogram}
</div>
<div class="crops">
{cards}
</div>
</body>
</html>
"""
