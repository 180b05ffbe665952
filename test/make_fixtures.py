"""Build the committed test fixtures deterministically from a seed.

- test/fixtures/ensemble/: a 3-fold ensemble of timm's tiny `test_efficientnet` with random
  weights. A TEST FIXTURE, not a model: it exercises the code path, its outputs mean nothing.
- test/input/: a small synthetic stack in grand-challenge layout (the real sample may not be
  committed).
- test/expected_output.json: what the shipped ensemble in model/ (or, without one, the fixture)
  writes for test/input; rerun this script when the shipped ensemble changes.

Usage: python test/make_fixtures.py
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from amf import manifest, models, predict, stacks, writing  # noqa: E402

SEED = 2025
TEST = ROOT / "test"
FIXTURE_DIR = TEST / "fixtures" / "ensemble"
INPUT_DIR = TEST / "input"
EXPECTED = TEST / "expected_output.json"
STACK_NAME = "stack_fixture.tiff"
FIXTURE_ARCH = "test_efficientnet"


def synthetic_crops(count: int, rng: np.random.Generator, size: int = 128) -> list[np.ndarray]:
    """Pink stroma with one dark purple blob per crop, roughly like an H&E mitosis crop."""
    yy, xx = np.mgrid[:size, :size]
    crops = []
    for _ in range(count):
        base = np.array([230, 170, 200]) + rng.normal(0, 12, (size, size, 3))
        cy, cx = rng.uniform(0.35, 0.65, 2) * size
        radius = rng.uniform(6, 20)
        blob = np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2)))[..., None]
        crop = base * (1 - 0.7 * blob) + np.array([60, 30, 110]) * 0.7 * blob
        crops.append(np.clip(crop, 0, 255).astype(np.uint8))
    return crops


def write_stack(path: Path, pages: list[np.ndarray]) -> None:
    """A multi-page RGB TIFF like the challenge's: deflate, DPI set (0.25 um/px)."""
    images = [Image.fromarray(page) for page in pages]
    images[0].save(
        path,
        save_all=True,
        append_images=images[1:],
        compression="tiff_adobe_deflate",
        dpi=(101600, 101600),
    )


def build_fixture_ensemble(folds: int = 3) -> None:
    FIXTURE_DIR.mkdir(parents=True, exist_ok=True)
    files = []
    for fold in range(folds):
        torch.manual_seed(SEED + fold)
        files.append(f"fold{fold}.safetensors")
        models.save_weights(models.create(FIXTURE_ARCH), FIXTURE_DIR / files[-1])
    ensemble_manifest = manifest.create(
        FIXTURE_DIR,
        files,
        FIXTURE_ARCH,
        input=models.default_input_spec(FIXTURE_ARCH, 64),
        threshold=manifest.Threshold(value=0.5, method="fixed 0.5 (test fixture, not tuned)"),
        name="test-fixture",
        description=f"TEST FIXTURE: random weights, seed {SEED}; exercises the code, predicts nothing.",
        provenance={"made_by": "test/make_fixtures.py", "seed": SEED},
    )
    manifest.save(ensemble_manifest, FIXTURE_DIR)


def build_sample_input(pages: int = 6) -> None:
    shutil.rmtree(INPUT_DIR, ignore_errors=True)
    folder = INPUT_DIR / "images" / stacks.SLUG
    folder.mkdir(parents=True)
    write_stack(folder / STACK_NAME, synthetic_crops(pages, np.random.default_rng(SEED)))
    inputs = [
        {
            "image": {"name": STACK_NAME},
            "interface": {"slug": stacks.SLUG, "kind": "Image", "relative_path": f"images/{stacks.SLUG}"},
        }
    ]
    (INPUT_DIR / "inputs.json").write_text(json.dumps(inputs, indent=2) + "\n")


def expected_model_dir() -> Path:
    """The ensemble test/expected_output.json comes from: the shipped one, else the fixture."""
    if (predict.BAKED_MODEL_DIR / manifest.MANIFEST_NAME).is_file():
        return predict.BAKED_MODEL_DIR
    return FIXTURE_DIR


def build_expected_output() -> None:
    model_dir = expected_model_dir()
    with tempfile.TemporaryDirectory() as out:
        predict.run(INPUT_DIR, Path(out), model_dir)
        shutil.copy(Path(out) / writing.OUTPUT_NAME, EXPECTED)
    print(f"{EXPECTED} from {model_dir}")


if __name__ == "__main__":
    build_fixture_ensemble()
    build_sample_input()
    build_expected_output()
