"""Training throughput (images/s) and the share of step time spent waiting for data.

Runs `amf.train.train` for a few short epochs on real AMi-Br crops (synthetic crops when the
data is absent) and reports the last epoch, after warm-up. The same command runs on the CPU
and on a GPU (where mixed precision is on):

    .venv/bin/python bench/bench_train.py --arch efficientvit_m0 --size 128 --workers 1
    .venv/bin/python bench/bench_train.py --arch efficientvit_l2 --size 256 --batch-size 64 --workers 8
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from amf import dataset, train, writing  # noqa: E402
from amf.config import TrainConfig  # noqa: E402

AMIBR = ROOT.parent / "shared" / "data" / "ami-br"


def crops(count: int, folder: Path) -> list[dataset.Sample]:
    """`count` real AMi-Br samples when present, else synthetic 128 px PNG crops written to `folder`."""
    if AMIBR.is_dir():
        samples = dataset.read_amibr(AMIBR, split="train")
        return [samples[i] for i in np.random.default_rng(0).permutation(len(samples))[:count]]
    from PIL import Image

    rng = np.random.default_rng(0)
    samples = []
    for i in range(count):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(path)
        samples.append(dataset.Sample(str(i), str(path), i % 4 == 0, "t", f"s{i}", "sc", "sp", "synthetic"))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="efficientvit_m0")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--epoch-size", type=int, default=640, help="crops per measured epoch")
    parser.add_argument("--epochs", type=int, default=2, help="the last one is reported")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = TrainConfig(
        pretrained=None,
        architecture=args.arch,
        size=args.size,
        batch_size=args.batch_size,
        workers=args.workers,
        epochs=args.epochs,
        epoch_size=args.epoch_size,
        lr=1e-3,
    )
    with tempfile.TemporaryDirectory() as scratch:
        samples = crops(1000, Path(scratch))
        train.train(samples[64:], samples[:64], config, Path(scratch) / "model")
        last = writing.read_rows(Path(scratch) / "model" / train.METRICS)[-1]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.machine()})"
    result = {
        "device": device,
        "threads": torch.get_num_threads(),
        "arch": args.arch,
        "size": args.size,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "images_per_s": round(float(last["images_per_s"]), 1),
        "data_wait_share": round(float(last["data_wait_share"]), 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
