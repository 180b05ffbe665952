"""Peak memory of `python inference.py` on stacks of 1, 16, 5,000 and 400 x 4096^2 pages.

Reading streams: a page is decoded, resized to the network's input and dropped, so peak memory
should not grow with the page count or the page size beyond one decoded page. Each case runs in
its own process (whole process: interpreter, back end, model), measured by a parent that waits
for it alone: peak RSS as the kernel counts it, and the private (anonymous) part of it, which
leaves out file pages mapped read-only (libtiff, which decodes the LZW stack, maps what it is given:
a copy of one page since 2026-12-04, the whole file before; tifffile reads the deflate ones).
Prints a markdown table; `--out FILE` writes it too.

With `--decode-only`, the process only reads the pages as inference does (`amf.stacks.iter_pages`
with the ensemble's input spec), no model: the reading's own share.

Usage: python bench/bench_memory.py [--workdir DIR] [--model DIR] [--backend auto|torch|onnx] [--quick]
                                    [--decode-only]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_inference import ROOT, emit, heading
from PIL import Image

sys.path.insert(0, str(ROOT / "test"))
from make_fixtures import synthetic_crops  # noqa: E402


def write_tiff(
    path: Path, pages: list[Image.Image], count: int, compression: str = "tiff_adobe_deflate"
) -> Path:
    """A TIFF of `count` pages cycling through `pages` (written page by page by Pillow)."""
    if not path.exists():  # written under another name first: a killed run leaves no short file
        partial = path.with_suffix(".part")
        frames = (pages[i % len(pages)] for i in range(1, count))
        pages[0].save(partial, format="TIFF", save_all=True, append_images=frames, compression=compression)
        partial.rename(path)
    return path


def _canvas(crop: Image.Image, size: int) -> Image.Image:
    """A crop in the middle of a plain `size`^2 page: large when decoded, small when deflated."""
    page = Image.new("RGB", (size, size), (230, 170, 200))
    page.paste(crop, ((size - crop.width) // 2, (size - crop.height) // 2))
    return page


LONG = "x 128^2 (a deflate TIFF of 200 MB)"  # --quick leaves out the two long stacks
LONG_LZW = "x 128^2 (an LZW TIFF, decoded by libtiff)"  # about 5 min on 2 quiet cores


def cases(workdir: Path) -> dict[str, Path]:
    crops = [Image.fromarray(c) for c in synthetic_crops(16, np.random.default_rng(0))]
    large = [_canvas(crop, 4096) for crop in crops[:2]]
    return {
        "x 128^2": write_tiff(workdir / "one.tif", crops, 1),
        "x 128^2 (a stack)": write_tiff(workdir / "sixteen.tif", crops, 16),
        LONG: write_tiff(workdir / "five-thousand.tif", crops, 5000),
        LONG_LZW: write_tiff(workdir / "five-thousand-lzw.tif", crops, 5000, "tiff_lzw"),
        "x 4096^2 (20 GB decoded)": write_tiff(workdir / "large.tif", large, 400),
    }


# The reading alone: every page through iter_pages, shrunk to the ensemble's input as inference does
DECODE_ONLY = """import sys
from amf import manifest, stacks
spec = manifest.load(sys.argv[2]).input
for page in stacks.iter_pages(sys.argv[1], shrink_to=spec):
    pass
"""


def measure(command: list[str]) -> tuple[float, int, int]:
    """Seconds, peak RSS and peak private (anonymous) memory, in MiB, of one process running
    `command`, read from /proc every 10 ms: the kernel's high-water mark of the process's own
    address space (VmHWM; the rusage of a forked child would count its parent's pages) and the
    largest RssAnon seen. The difference is file pages the process had mapped read-only."""
    started = time.perf_counter()
    peak = private = 0
    with tempfile.TemporaryFile() as stderr:
        child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
        while child.poll() is None:
            hwm, anon = _memory_kib(child.pid)
            peak, private = max(peak, hwm), max(private, anon)
            time.sleep(0.01)
        if child.returncode:
            stderr.seek(0)
            raise RuntimeError(f"{command} failed ({child.returncode}):\n{stderr.read()[-3000:].decode()}")
    return time.perf_counter() - started, round(peak / 1024), round(private / 1024)


def _memory_kib(pid: int) -> tuple[int, int]:
    """VmHWM and RssAnon of a running process; zeros once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0, 0
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return tuple(int(fields.get(key, "0 kB").split()[0]) for key in ("VmHWM", "RssAnon"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/amf-bench-memory"))
    parser.add_argument("--model", type=Path, help="ensemble folder (default: inference.py's)")
    parser.add_argument("--backend", choices=("auto", "torch", "onnx"), default="auto")
    parser.add_argument("--out", type=Path, help="also write the table here")
    parser.add_argument("--quick", action="store_true", help="leave out the 5,000-page cases")
    parser.add_argument("--decode-only", action="store_true", help="read the pages, run no model")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    title = "reading the pages (amf.stacks.iter_pages, no model)"
    if not args.decode_only:
        title = f"`python inference.py` ({args.backend} back end)"
    lines = [
        *heading(f"Peak RSS of {title}"),
        "| pages | file MB | decoded MB | seconds | peak RSS MiB | of it private (anonymous) MiB |",
        "|---|---|---|---|---|---|",
    ]
    for name, stack in cases(args.workdir).items():
        if args.quick and name in (LONG, LONG_LZW):
            continue
        with Image.open(stack) as image:
            decoded = image.n_frames * image.size[0] * image.size[1] * 3 / 1e6
            name = f"{image.n_frames:,} {name}"
        seconds, rss, private = measure(_command(stack, args))
        size = stack.stat().st_size / 1e6
        lines.append(f"| {name} | {size:.1f} | {decoded:,.0f} | {seconds:.1f} | {rss} | {private} |")
        print(lines[-1], flush=True)
    emit(lines, args.out)


def _command(stack: Path, args: argparse.Namespace) -> list[str]:
    if args.decode_only:
        return [sys.executable, "-c", DECODE_ONLY, str(stack), str(args.model or ROOT / "model")]
    options = ["--backend", args.backend] + (["--model", str(args.model)] if args.model else [])
    output = args.workdir / "out"
    return [sys.executable, "inference.py", "--input", str(stack), "--output", str(output), *options]


if __name__ == "__main__":
    main()
