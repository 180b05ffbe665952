"""Does a network start to learn? Three short epochs of one fold, the training loss against chance.

The probe behind model/MODEL_CARD.md, "Why r3 and the naive MobileNet import did not learn":
fold 0 of a plan, 3 epochs of 640 crops each, hard labels, the r1 recipe otherwise. Each
epoch's `train_loss` and `chance_loss` (always answering 50 %) land in the run's metrics.csv.

    python bench/probe_learning.py --plan ../runs/plan-all.json --out ../runs/probe \\
        --arch efficientvit_b0 [--lr 2e-4] [--random-head]

`--random-head` keeps timm's random head (the trainer otherwise starts pretrained heads at zero;
for a network from scratch it zeroes the head here, to test that on its own).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from amf import models, runs  # noqa: E402
from amf.config import TrainConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--plan", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="run folder (one per probe)")
    parser.add_argument("--arch", default="efficientvit_b0")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--random-head", action="store_true", help="do not zero the head")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.random_head:
        create = models.create

        def zero_head(architecture: str, **kwargs) -> torch.nn.Module:
            model = create(architecture, **kwargs)
            torch.nn.init.zeros_(model.get_classifier().weight)
            torch.nn.init.zeros_(model.get_classifier().bias)
            return model

        models.create = zero_head
    config = TrainConfig(
        architecture=args.arch, size=128, epochs=3, epoch_size=640, lr=args.lr, batch_size=32,
        weight_decay=0.05, stain=0.05, soft_labels=False, workers=0, seed=0, pretrained=None,
    )  # fmt: skip
    runs.run_plan(args.plan, args.out, config, fold=0)


if __name__ == "__main__":
    main()
