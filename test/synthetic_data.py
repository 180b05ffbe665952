"""A tiny synthetic dataset for training-pipeline tests: PNG crops on disk plus their table.

Atypical crops are darker, so even a few training steps learn something; each of the
`domains` has its own slides, so leave-one-domain-out plans work.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from amf.config import TrainConfig
from amf.dataset import Sample, save_table

TINY = TrainConfig(
    pretrained=None,
    architecture="test_efficientnet",
    size=32,
    epochs=2,
    lr=1e-2,
    batch_size=8,
    epoch_size=32,
    workers=0,
    seed=0,
)


def make_samples(
    root: Path,
    *,
    domains: tuple[str, ...] = ("alpha", "beta"),
    slides: int = 6,
    per_slide: int = 6,
    size: int = 40,
) -> list[Sample]:
    """Write crops under `root` and return their samples (1 in 3 atypical, per slide)."""
    rng = np.random.default_rng(0)
    samples = []
    for domain in domains:
        for slide in range(slides):
            for k in range(per_slide):
                label = int(k % 3 == 0)
                base = rng.integers(120, 220, size=3) - 60 * label
                pixels = np.clip(base + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
                path = root / domain / f"s{slide}_{k}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path)
                samples.append(
                    Sample(
                        id=f"{domain}/{slide}/{k}",
                        image=str(path),
                        label=label,
                        cancer_type=domain,
                        slide=f"{domain}/{slide}",
                        scanner="scanner-a" if slide % 2 else "scanner-b",
                        species="test",
                        source="synthetic",
                        votes_atypical=2 * label,
                        votes_total=3,
                    )
                )
    return samples


def make_table(root: Path, **kwargs) -> tuple[Path, list[Sample]]:
    samples = make_samples(root / "crops", **kwargs)
    return save_table(samples, root / "table.csv"), samples
