"""amf.ensemble: fold averaging, sha256 check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from amf import manifest, models
from amf.ensemble import Ensemble
from amf.errors import ModelError


def test_mean_of_fold_probabilities(fixture_ensemble: Path) -> None:
    ensemble_manifest = manifest.load(fixture_ensemble)
    batch = np.random.default_rng(0).normal(size=(5, 3, 64, 64)).astype(np.float32)
    ensemble = Ensemble.load(ensemble_manifest, fixture_ensemble, torch.device("cpu"))
    expected = []
    for fold in ensemble_manifest.folds:
        model = models.load_weights(
            models.create(ensemble_manifest.architecture), fixture_ensemble / fold.file
        ).eval()
        with torch.no_grad():
            expected.append(torch.sigmoid(model(torch.from_numpy(batch))).numpy().ravel())
    probabilities = ensemble.predict(batch)
    assert probabilities.shape == (5,) and probabilities.dtype == np.float64
    np.testing.assert_allclose(probabilities, np.mean(expected, axis=0), atol=1e-6)


def test_sha256_mismatch_is_refused(fixture_ensemble: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(fixture_ensemble, tmp_path / "e"))
    shutil.copy(folder / "fold0.safetensors", folder / "fold2.safetensors")
    with pytest.raises(ModelError, match=r"fold2\.safetensors: sha256 differs"):
        Ensemble.load(manifest.load(folder), folder, torch.device("cpu"))


def test_architecture_mismatch_names_the_file(fixture_ensemble: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(fixture_ensemble, tmp_path / "e"))
    data = json.loads((folder / "manifest.json").read_text()) | {"architecture": "test_resnet"}
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match=r"fold0\.safetensors: weights do not fit"):
        Ensemble.load(manifest.load(folder), folder, torch.device("cpu"))
