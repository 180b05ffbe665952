"""Crops in memory, as the trainer samples them and as ensembles score them.

Crops are decoded once (they are small), then each training item is augmented from its uint8
crop and prepared by `amf.preprocess.prepare`, exactly as the container prepares its input.
Also the small CSV helpers the training outputs share.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, WeightedRandomSampler

from amf import stacks
from amf.augment import augment
from amf.dataset import Sample
from amf.ensemble import Ensemble
from amf.errors import InputError
from amf.manifest import TTA_VIEWS, InputSpec
from amf.predict import predict_views
from amf.preprocess import prepare
from amf.writing import write_text_atomic

log = logging.getLogger(__name__)


def load_crops(samples: Sequence[Sample]) -> dict[str, np.ndarray]:
    """Decode every sample's crop once into memory as (H, W, 3) uint8 (threads: decoding frees the GIL)."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        pages = pool.map(lambda s: stacks.read_pages(Path(s.image))[0], samples)
        crops = {s.id: page for s, page in zip(samples, pages, strict=True)}
    log.info(
        "decoded %d crops into memory (%.0f MiB)", len(crops), sum(c.nbytes for c in crops.values()) / 2**20
    )
    return crops


def predict_crops(
    ensemble: Ensemble,
    crops: Sequence[np.ndarray],
    spec: InputSpec,
    *,
    tta: str = "none",
    batch_size: int = 64,
) -> np.ndarray:
    """Mean P(atypical) of `ensemble` over the test-time views `tta`, batch by batch, as served."""
    if tta not in TTA_VIEWS:
        raise InputError(f"test-time augmentation must be one of {list(TTA_VIEWS)}, got {tta!r}")
    scores = np.zeros(len(crops))
    for start in range(0, len(crops), batch_size):
        batch = crops[start : start + batch_size]
        scores[start : start + len(batch)] = predict_views(ensemble, prepare(batch, spec), tta)
    return scores


class CropDataset(Dataset):
    """Augmented, prepared crops; item (index, draw) seeds the augmentation by (seed, epoch, draw)."""

    def __init__(
        self, crops: list[np.ndarray], targets: np.ndarray, spec: InputSpec, *, stain: float, seed: int
    ):
        self.crops, self.targets, self.spec, self.stain, self.seed = crops, targets, spec, stain, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, draw = item
        rng = np.random.default_rng((self.seed, self.epoch, draw))
        crop = augment(self.crops[index], rng, stain=self.stain)
        return torch.from_numpy(prepare([crop], self.spec)[0]), torch.tensor(
            self.targets[index], dtype=torch.float32
        )


class BalancedSampler(Sampler):
    """Class-balanced draws with replacement, reseeded every epoch, dealt out across DDP ranks."""

    def __init__(self, labels: np.ndarray, *, num_samples: int, seed: int, rank: int = 0, world: int = 1):
        counts = np.bincount(labels, minlength=2)
        self.weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.float64)
        self.num_samples = num_samples // world * world
        self.seed, self.rank, self.world = seed, rank, world
        self.epoch = 0

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        draws = list(
            WeightedRandomSampler(self.weights, self.num_samples, replacement=True, generator=generator)
        )
        return ((draws[k], k) for k in range(self.rank, self.num_samples, self.world))

    def __len__(self) -> int:
        return self.num_samples // self.world


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write dict rows as CSV atomically (a killed run never leaves half a file)."""
    text = StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, text.getvalue())


def read_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV written by this module (metrics, validation predictions)."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))
