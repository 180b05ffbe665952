"""Folder-mode throughput of `python inference.py`: crops per second, with and without views.

Runs the whole process (as a user does on a folder of crops) on N1 and N2 AMi-Br crops, for the
shipped ensemble's own test-time views and for the same ensemble with `"tta": "none"` (a copy of
its folder with that one manifest field changed; the graphs are the same files). Reports the
whole-run rate at N2 and the steady rate (N2 - N1) / (t2 - t1), which leaves out start-up.

Usage: python bench/bench_folder.py [--crops DIR] [--sizes 200 1000] [--model model/] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from bench_inference import AMIBR_PATCHES, ROOT, emit, heading, run_child


def folder_of(crops: list[Path], folder: Path) -> Path:
    folder.mkdir(parents=True)
    for crop in crops:
        shutil.copyfile(crop, folder / f"{crop.parent.name}-{crop.name}")
    return folder


def without_views(model: Path, folder: Path) -> Path:
    """The ensemble with "tta": "none": its files linked, its manifest rewritten."""
    folder.mkdir()
    for path in model.iterdir():
        if path.is_file() and path.name != "manifest.json":
            os.link(path, folder / path.name)
    data = json.loads((model / "manifest.json").read_text()) | {"tta": "none"}
    (folder / "manifest.json").write_text(json.dumps(data))
    return folder


def seconds(input_dir: Path, model: Path, work: Path) -> float:
    """Wall time of one `python inference.py` process on `input_dir` with `model`."""
    io_args = ["--input", str(input_dir), "--output", str(work / "out"), "--model", str(model)]
    return run_child([sys.executable, "inference.py", *io_args], work)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=Path, default=AMIBR_PATCHES, help="folder searched for *.png crops")
    parser.add_argument("--sizes", type=int, nargs=2, default=(200, 1000))
    parser.add_argument("--model", type=Path, default=ROOT / "model")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args()
    crops = sorted(args.crops.rglob("*.png"))[: max(args.sizes)]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        inputs = [folder_of(crops[:n], work / f"in{n}") for n in args.sizes]
        views = json.loads((args.model / "manifest.json").read_text())["tta"]
        models = {
            f"shipped views ({views})": args.model,
            "no views": without_views(args.model, work / "none"),
        }
        lines = [
            *heading("Folder mode of `python inference.py`"),
            f"| ensemble | crops/s, whole run of {args.sizes[1]} | crops/s, steady |",
            "|---|---|---|",
        ]
        for name, model in models.items():
            small, large = (seconds(folder, model, work) for folder in inputs)
            steady = (args.sizes[1] - args.sizes[0]) / (large - small)
            lines.append(f"| {name} | {args.sizes[1] / large:.1f} | {steady:.1f} |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
