"""Crops in memory, as the trainer samples them.

Crops are decoded once (they are small), then each training item is augmented from its uint8
crop and prepared by `amf.preprocess.prepare`, exactly as the container prepares its input.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, WeightedRandomSampler

from amf import dataset, stacks
from amf.augment import augment
from amf.dataset import Sample
from amf.manifest import InputSpec
from amf.preprocess import prepare

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


def sample_crops(table: Path, count: int, *, seed: int = 0, skip: int = 0) -> list[np.ndarray]:
    """`count` crops of a dataset table, drawn by `seed` (after the first `skip` draws: another
    call with skip=count gets other crops) and decoded in table order: what a calibration
    measures (batch norm of an import, int8 ranges). Every image must exist."""
    samples = dataset.check_images(dataset.load_table(table), strict=True)
    chosen = np.random.default_rng(seed).permutation(len(samples))[skip : skip + count]
    return list(load_crops([samples[i] for i in sorted(chosen)]).values())


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
