"""amf.report: report.html's content, and what a real browser (headless Chromium) renders of it."""

from __future__ import annotations

import io
import os
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from amf import report, writing

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
GRID_CLASSES = ("crop atypical", "threshold", "crop normal")
GREEN = (0, 220, 0)  # the synthetic crops' colour: nothing else on the page is this green


class Elements(HTMLParser):
    """Every start tag's (name, attributes) and the page's text, in document order."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def classes(self, name: str) -> list[dict[str, str | None]]:
        return [attrs for _, attrs in self.tags if name in (attrs.get("class") or "").split()]


def solid_crops(count: int, colour: tuple[int, int, int] = GREEN) -> list[np.ndarray]:
    return [np.full((128, 128, 3), colour, dtype=np.uint8) for _ in range(count)]


def make_report(scores: list[float], names: list[str] | None = None, threshold: float = 0.5) -> str:
    names = names or [f"crop{i:03d}.png" for i in range(len(scores))]
    thumbnails = report.Thumbnails()
    list(thumbnails.tap(solid_crops(len(scores))))
    records = writing.predictions(np.array(scores), threshold)
    return "".join(report.render(names, records, thumbnails.images, threshold=threshold, source="in/"))


def addresses(text: str) -> list[str]:
    """What a page could fetch: any URL outside its data: URIs, any CSS url() or @import."""
    outside = re.sub(r"data:image/jpeg;base64,[A-Za-z0-9+/=]*", "", text)
    return re.findall(r"(?:https?:|ftp:|file:)?//[^\s\"'<>]+|url\(|@import", outside)


def test_thumbnails_pass_pages_unchanged_and_keep_small_jpegs() -> None:
    pages = [np.zeros((128, 128, 3), np.uint8), np.full((300, 150, 3), 255, np.uint8)]
    thumbnails = report.Thumbnails()
    assert [p is q for p, q in zip(thumbnails.tap(pages), pages, strict=True)] == [True, True]
    sizes = [Image.open(io.BytesIO(jpeg)).size for jpeg in thumbnails.images]
    assert sizes == [(96, 96), (48, 96)]
    assert all(jpeg[:2] == b"\xff\xd8" and len(jpeg) < 4000 for jpeg in thumbnails.images)


def test_cards_sorted_highest_first_with_the_threshold_between_the_classes() -> None:
    scores = [0.2, 0.9, 0.5, 0.05, 0.7]
    page = Elements(make_report(scores, threshold=0.5))
    cards = page.classes("crop")
    assert [float(c["data-p"]) for c in cards] == sorted(scores, reverse=True)
    grid = [attrs["class"] for _, attrs in page.tags if attrs.get("class") in GRID_CLASSES]
    assert grid == ["crop atypical"] * 3 + ["threshold"] + ["crop normal"] * 2
    text = " ".join(page.text)
    assert "5 crops: 3 atypical, 2 normal" in text
    assert re.search(r"atypical\s*3\s*60\.0%", "".join(page.text))
    assert len(page.classes("threshold-line")) == 1  # on the histogram too


def test_self_contained_and_names_escaped() -> None:
    text = make_report([0.3, 0.6], names=['<img src=x onerror="alert(1)">.png', os.fsdecode(b"b\xff.png")])
    assert addresses(text) == []
    tags = Elements(text).tags
    assert "script" not in [tag for tag, _ in tags]
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;.png" in text
    assert "b\\xff.png" in text
    assert "default-src 'none'" in text  # the browser refuses any request the page might make
    images = [attrs["src"] for tag, attrs in tags if tag == "img"]
    assert len(images) == 2 and all(src.startswith("data:image/jpeg;base64,") for src in images)


def test_all_atypical_or_all_normal_still_marks_the_threshold_once() -> None:
    for scores in ([0.8, 0.9], [0.1, 0.2]):
        assert make_report(scores).count('id="threshold"') == 1


def test_lengths_must_agree() -> None:
    with pytest.raises(ValueError, match="2 names, 1 records, 1 thumbnails"):
        report.render(["a", "b"], writing.predictions(np.array([0.1]), 0.5), [b""], threshold=0.5, source="x")


def chromium(tmp_path: Path, page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium with a new empty profile, offline settings, on `page`."""
    if not CHROMIUM.is_file():
        pytest.skip(f"no browser at {CHROMIUM}: apt-get install -y chromium (test.sh does)")
    profile = tmp_path / f"profile{len(list(tmp_path.glob('profile*')))}"
    profile.mkdir()
    command = [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=True)


def test_a_browser_renders_every_thumbnail_the_counts_and_the_threshold(tmp_path: Path) -> None:
    scores = np.linspace(0.02, 0.98, 24).tolist()  # 12 atypical, 12 normal at threshold 0.5
    page = tmp_path / writing.REPORT_NAME
    page.write_text(make_report(scores))
    dom = chromium(tmp_path, page, "--dump-dom").stdout
    assert addresses(dom) == []
    rendered = Elements(dom)
    assert len(rendered.classes("crop")) == 24
    assert len(rendered.classes("threshold")) == 1
    assert re.search(r"atypical\s*12\s*50\.0%", "".join(rendered.text))
    assert re.search(r"normal\s*12\s*50\.0%", "".join(rendered.text))
    # Painted, not only parsed: each thumbnail is a green square of the screenshot (a data URI
    # the browser refused, or could not decode, would leave a blank box).
    shot = tmp_path / "shot.png"
    chromium(tmp_path, page, f"--screenshot={shot}", "--window-size=1200,900")
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    green = (pixels[..., 1] > 180) & (pixels[..., 0] < 60) & (pixels[..., 2] < 60)
    blobs, count = ndimage.label(green)
    sizes = ndimage.sum_labels(green, blobs, range(1, count + 1))
    assert count == 24 and all(80 * 80 < size <= 96 * 96 for size in sizes), sorted(sizes)
