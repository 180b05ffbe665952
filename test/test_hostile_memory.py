"""Reading streams: memory stays bounded whatever size a file claims for its pages."""

from __future__ import annotations

import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURE_ENSEMBLE, ROOT
from hostile import mha_file
from PIL import Image

STREAM_SCRIPT = """
import resource, sys
from pathlib import Path
from amf import stacks, manifest
from amf.preprocess import prepared_batches
spec = manifest.InputSpec(size=128, mean=(0.5,) * 3, std=(0.5,) * 3)
job = stacks.discover(Path(sys.argv[1]))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
pages = sum(stacks.count_pages(path) for path in job.files)
pages_read = (page for path in job.files for page in stacks.iter_pages(path))
crops = sum(len(batch) for batch in prepared_batches(pages_read, spec, 64))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(pages, crops, (after - before) // 1024)
"""


def stream_and_measure(input_path: Path) -> tuple[int, int, int]:
    """Pages counted, crops batched, and the growth of peak RSS in MiB while doing both."""
    result = subprocess.run(
        [sys.executable, "-c", STREAM_SCRIPT, str(input_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    pages, crops, grown = map(int, result.stdout.split())
    return pages, crops, grown


@pytest.mark.slow
def test_memory_stays_bounded_for_large_multi_page_files(tmp_path: Path) -> None:
    """8 pages of 4096^2 RGB (400 MB decoded) in a small TIFF; 24 zlib pages of 2048^2 RGB."""
    big = Image.new("RGB", (4096, 4096), (200, 120, 180))
    big.save(tmp_path / "big.tif", save_all=True, append_images=[big] * 7, compression="tiff_adobe_deflate")
    del big
    assert (tmp_path / "big.tif").stat().st_size < 10 << 20
    assert stream_and_measure(tmp_path / "big.tif")[:2] == (8, 8)
    assert stream_and_measure(tmp_path / "big.tif")[2] < 200  # all pages at once: over 400
    page_bytes = 2048 * 2048 * 3
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(bytes(page_bytes)) for _ in range(24)) + packer.flush()
    mha_file(
        tmp_path / "bomb.mha",
        {"NDims": "3", "DimSize": "2048 2048 24", "ElementNumberOfChannels": "3", "CompressedData": "True"},
        data,
    )
    assert (tmp_path / "bomb.mha").stat().st_size < 1 << 20
    pages, crops, grown = stream_and_measure(tmp_path / "bomb.mha")
    assert (pages, crops) == (24, 24) and grown < 120  # decoded: 300 MB


def test_a_long_lzw_stack_maps_one_page_at_a_time(tmp_path: Path) -> None:
    """1,000 LZW pages of random 128^2 RGB (67 MB): libtiff, handed the whole file for each page,
    mapped it and walked every page header up to the page (+87 MiB peak, 5.8 s, 2 cores,
    2026-12-04); handed a copy of one page at a time (amf.stacks._one_page_tiff), +23 MiB, 1.3 s.
    The growth is then the batches', whatever the file's size."""
    rng = np.random.default_rng(0)
    pages = [Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)) for _ in range(8)]
    rest = (pages[index % 8] for index in range(1, 1000))
    pages[0].save(tmp_path / "long.tif", save_all=True, append_images=rest, compression="tiff_lzw")
    assert (tmp_path / "long.tif").stat().st_size > 60e6
    pages_read, crops, grown = stream_and_measure(tmp_path / "long.tif")
    assert (pages_read, crops) == (1000, 1000) and grown < 45


PEAK_SCRIPT = """
import resource, runpy, sys
sys.argv = ["inference.py", *sys.argv[1:]]
try:
    runpy.run_path("inference.py", run_name="__main__")
except SystemExit as end:
    assert not end.code, end.code
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def inference_peak_mib(input_path: Path, model: Path, output: Path) -> int:
    """Peak RSS of the whole `inference.py` process (ONNX Runtime) on `input_path`."""
    command = [sys.executable, "-c", PEAK_SCRIPT, "--input", str(input_path), "--output", str(output)]
    command += ["--model", str(model), "--backend", "onnx"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    return int(result.stdout.split()[-1])


@pytest.mark.slow
def test_a_run_on_large_pages_costs_about_one_decoded_page(exported_ensemble, tmp_path: Path) -> None:
    """`inference.py` on 8 pages of 4096^2 (deflate TIFF) against one 128^2 page: a large page is
    resized as it is decoded and freed buffers go back to the system, so the run holds about one
    decoded page (64 MiB) more: +64 MiB on the development machine (2 cores, 2026-12-04), +223
    before (the page, its array, the copies for resizing and the heap they left behind)."""
    one = tmp_path / "one.tif"
    Image.new("RGB", (128, 128), (200, 120, 180)).save(one)
    big = Image.new("RGB", (4096, 4096), (200, 120, 180))
    big.save(tmp_path / "big.tif", save_all=True, append_images=[big] * 7, compression="tiff_adobe_deflate")
    del big
    small = inference_peak_mib(one, exported_ensemble, tmp_path / "out-one")
    large = inference_peak_mib(tmp_path / "big.tif", exported_ensemble, tmp_path / "out-big")
    assert large - small < 170, (small, large)


TORCH_SCRIPT = """
import resource, sys
from pathlib import Path
import numpy as np
import torch
from amf import manifest
from amf.ensemble import Ensemble
ensemble = Ensemble.load(manifest.load(Path(sys.argv[1])), Path(sys.argv[1]), torch.device("cpu"))
batch = np.random.default_rng(0).standard_normal((int(sys.argv[2]), 3, 64, 64), dtype=np.float32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ensemble.predict(batch)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_torch_memory_does_not_follow_the_batch() -> None:
    """1,024 network inputs (an --batch-size of 128 crops with the 8 views) through the fixture
    ensemble on the CPU: peak RSS grows by ~20 MiB in passes of CPU_FORWARD_INPUTS, by ~400 MiB
    in one pass of 1,024 (the code before issue 22)."""
    script = [sys.executable, "-c", TORCH_SCRIPT, str(FIXTURE_ENSEMBLE), "1024"]
    result = subprocess.run(script, cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    assert int(result.stdout) < 100
