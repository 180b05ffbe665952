"""The ensembles and inputs bench_inference.py and gpu_check.py measure: the shipped model/ (or
a random stand-in while it is empty), random ensembles of a given architecture, synthetic crops.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from amf import manifest, predict  # noqa: E402

FOLDS = 5
STAND_IN = ("efficientvit_m0", 128)  # while model/ holds no trained ensemble
PAPER = ("efficientvit_l2", 256)


def random_ensemble(folder: Path, architecture: str, size: int, crops: Path, parity_crops: int) -> Path:
    """FOLDS random-weight folds of `architecture` + manifest + ONNX; reused if already built."""
    if (folder / manifest.MANIFEST_NAME).is_file() and manifest.load(folder).onnx:
        return folder
    from amf import onnx_export

    onnx_export.export(random_folds(folder, architecture, size), crops, max_crops=parity_crops)
    return folder


def random_folds(folder: Path, architecture: str, size: int) -> Path:
    """FOLDS seeded random-weight folds of `architecture` and their manifest (no ONNX graphs)."""
    import torch

    from amf import models

    folder.mkdir(parents=True, exist_ok=True)
    files = [f"fold{fold}.safetensors" for fold in range(FOLDS)]
    for fold, file in enumerate(files):
        torch.manual_seed(fold)
        models.save_weights(models.create(architecture), folder / file)
    ensemble_manifest = manifest.create(
        folder,
        files,
        architecture,
        input=models.default_input_spec(architecture, size),
        threshold=manifest.Threshold(0.5, "fixed (benchmark, random weights)"),
        name=f"bench-{architecture}-{size}",
        description="Random weights, for timing only.",
    )
    manifest.save(ensemble_manifest, folder)
    return folder


def shipped_ensemble(workdir: Path, crops: Path) -> tuple[Path, str]:
    """model/ (exported to ONNX in a copy if it has no graph yet), else the random stand-in."""
    baked = predict.BAKED_MODEL_DIR
    if not (baked / manifest.MANIFEST_NAME).is_file():
        folder = random_ensemble(workdir / "stand-in", *STAND_IN, crops, 16)
        return folder, f"stand-in (model/ is empty): {FOLDS} x {STAND_IN[0]} @{STAND_IN[1]} px, random"
    shipped = manifest.load(baked)
    label = f"shipped model/: {len(shipped.folds)} x {shipped.architecture} @{shipped.input.size} px"
    if shipped.onnx:
        return baked, label
    from amf import onnx_export

    folder = workdir / "shipped"
    if not (folder / manifest.MANIFEST_NAME).is_file() or not manifest.load(folder).onnx:
        shutil.rmtree(folder, ignore_errors=True)
        onnx_export.export(Path(shutil.copytree(baked, folder)), crops)
    return folder, f"{label} (ONNX exported for this run)"


def synthetic_folder(folder: Path, count: int) -> Path:
    """`count` 128 px PNG crops of smooth noise, for machines without AMi-Br."""
    if len(list(folder.glob("*.png"))) >= count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        coarse = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((128, 128), Image.Resampling.BICUBIC).save(folder / f"{index:05d}.png")
    return folder
