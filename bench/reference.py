"""The organisers' reference approach, reimplemented for speed comparison only (bench code).

MIDOG 2025 Track 2's reference container classifies with one EfficientNetV2-M, one crop at a time
(batch 1) at 224 px, in PyTorch. This script does the same with timm's `efficientnetv2_m`
(random weights, two classes: speed does not depend on the values) and reads and writes through
`amf.stacks`, so that only the model and its use differ from our container.

Usage: python bench/reference.py --input DIR --output DIR [--weights FILE]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from amf import stacks, writing  # noqa: E402

ARCHITECTURE = "efficientnetv2_m"
SIZE = 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

log = logging.getLogger("reference")


class Reference:
    """One EfficientNetV2-M scoring crops one by one, as the reference container does."""

    def __init__(self, weights: Path | None = None) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = timm.create_model(ARCHITECTURE, num_classes=2)
        if weights is not None:
            model.load_state_dict(torch.load(weights, map_location="cpu"))
        self.model = model.eval().to(self.device)
        self.mean = torch.tensor(MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, device=self.device).view(1, 3, 1, 1)

    @torch.inference_mode()
    def predict(self, pages: list[np.ndarray]) -> np.ndarray:
        """P(atypical) of each (H, W, 3) uint8 page, one forward pass per page."""
        scores = []
        for page in pages:
            crop = torch.from_numpy(page).to(self.device).permute(2, 0, 1)[None].float() / 255
            crop = F.interpolate(crop, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
            logits = self.model((crop - self.mean) / self.std)
            scores.append(torch.softmax(logits, dim=1)[0, 1].item())
        return np.asarray(scores, dtype=np.float64)


def save_random_weights(path: Path, seed: int = 0) -> None:
    """A checkpoint for the reference to load at start-up, as the real container loads its own."""
    torch.manual_seed(seed)
    torch.save(timm.create_model(ARCHITECTURE, num_classes=2).state_dict(), path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument(
        "--weights", type=Path, help="state dict from save_random_weights (default: random init)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    job = stacks.discover(args.input)
    pages = [page for path in job.files for page in stacks.read_pages(path)]
    scores = Reference(args.weights).predict(pages)
    writing.write_predictions(args.output, writing.predictions(scores, 0.5), None)
    log.info("%d crops -> %s", len(pages), args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
