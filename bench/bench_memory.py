"""Peak memory of `python inference.py` on stacks of 1, 16, 5,000 and 400 x 4096^2 pages.

Reading streams: a page is decoded, resized to the network's input and dropped, so peak memory
should not grow with the page count or the page size beyond one decoded page. Each case runs in
its own process (whole process: interpreter, back end, model), measured by a parent that waits
for it alone. Prints a markdown table; `--out FILE` writes it too.

Usage: python bench/bench_memory.py [--workdir DIR] [--model DIR] [--backend auto|torch|onnx]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from bench_inference import ROOT, emit, heading, run_child
from PIL import Image

sys.path.insert(0, str(ROOT / "test"))
from make_fixtures import synthetic_crops  # noqa: E402


def write_tiff(path: Path, pages: list[Image.Image], count: int) -> Path:
    """A deflate TIFF of `count` pages cycling through `pages` (written page by page by Pillow)."""
    if not path.exists():  # written under another name first: a killed run leaves no short file
        partial = path.with_suffix(".part")
        frames = (pages[i % len(pages)] for i in range(1, count))
        pages[0].save(
            partial, format="TIFF", save_all=True, append_images=frames, compression="tiff_adobe_deflate"
        )
        partial.rename(path)
    return path


def _canvas(crop: Image.Image, size: int) -> Image.Image:
    """A crop in the middle of a plain `size`^2 page: large when decoded, small when deflated."""
    page = Image.new("RGB", (size, size), (230, 170, 200))
    page.paste(crop, ((size - crop.width) // 2, (size - crop.height) // 2))
    return page


def cases(workdir: Path) -> dict[str, Path]:
    crops = [Image.fromarray(c) for c in synthetic_crops(16, np.random.default_rng(0))]
    large = [_canvas(crop, 4096) for crop in crops[:2]]
    return {
        "x 128^2": write_tiff(workdir / "one.tif", crops, 1),
        "x 128^2 (a stack)": write_tiff(workdir / "sixteen.tif", crops, 16),
        "x 128^2 (a deflate TIFF of 200 MB)": write_tiff(workdir / "five-thousand.tif", crops, 5000),
        "x 4096^2 (20 GB decoded)": write_tiff(workdir / "large.tif", large, 400),
    }


def measure(stack: Path, output: Path, extra: list[str]) -> tuple[float, int]:
    """Seconds and peak RSS (MiB) of one inference process on `stack`."""
    command = [sys.executable, "inference.py", "--input", str(stack), "--output", str(output), *extra]
    wall, peak, _ = run_child(command, output.parent)
    return wall, round(peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/amf-bench-memory"))
    parser.add_argument("--model", type=Path, help="ensemble folder (default: inference.py's)")
    parser.add_argument("--backend", choices=("auto", "torch", "onnx"), default="auto")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    extra = ["--backend", args.backend] + (["--model", str(args.model)] if args.model else [])
    lines = [
        *heading(f"Peak RSS of `python inference.py` ({args.backend} back end)"),
        "| pages | file MB | decoded MB | seconds | peak RSS MiB |",
        "|---|---|---|---|---|",
    ]
    for name, stack in cases(args.workdir).items():
        with Image.open(stack) as image:
            decoded = image.n_frames * image.size[0] * image.size[1] * 3 / 1e6
            name = f"{image.n_frames:,} {name}"
        seconds, rss = measure(stack, args.workdir / "out", extra)
        lines.append(
            f"| {name} | {stack.stat().st_size / 1e6:.1f} | {decoded:,.0f} | {seconds:.1f} | {rss} |"
        )
        print(lines[-1], flush=True)
    emit(lines, args.out)


if __name__ == "__main__":
    main()
