"""amf.manifest: round trip, validation messages, missing files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from amf import manifest
from amf.errors import ModelError


def copy_fixture(fixture_ensemble: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(fixture_ensemble, tmp_path / "ensemble"))


def test_round_trip(fixture_ensemble: Path, tmp_path: Path) -> None:
    loaded = manifest.load(fixture_ensemble)
    manifest.save(loaded, tmp_path)
    assert manifest.load(fixture_ensemble) == manifest.from_dict(
        json.loads((tmp_path / "manifest.json").read_text())
    )


def test_fixture_is_labelled_as_a_fixture(fixture_ensemble: Path) -> None:
    loaded = manifest.load(fixture_ensemble)
    assert "TEST FIXTURE" in loaded.description and loaded.name == "test-fixture"


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"manifest\.json: no ensemble manifest here"):
        manifest.load(tmp_path)


def test_unknown_and_missing_keys_are_listed(fixture_ensemble: Path, tmp_path: Path) -> None:
    folder = copy_fixture(fixture_ensemble, tmp_path)
    data = json.loads((folder / "manifest.json").read_text())
    del data["threshold"]
    data["thresold"] = 0.5
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match=r"missing keys \['threshold'\], unknown keys \['thresold'\]"):
        manifest.load(folder)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"threshold": {"value": 1.5, "method": "x"}}, r"threshold.value must be in \[0, 1\]"),
        ({"folds": []}, "folds is empty"),
        ({"input": {"size": 64, "mean": [0, 0, 0], "std": [0, 1, 1]}}, "std > 0"),
        ({"reduction": "max"}, "reduction must be one of"),
        ({"tta": "spin"}, "tta must be one of"),
        ({"format": "other/9"}, "format 'other/9' is not"),
        ({"folds": [{"file": "a"}, {"file": "a"}]}, "lists a file twice"),
        ({"folds": [{"path": "a"}]}, r"folds\[\]\.file must be a relative path"),
    ],
)
def test_inconsistent_manifest(fixture_ensemble: Path, tmp_path: Path, change: dict, message: str) -> None:
    folder = copy_fixture(fixture_ensemble, tmp_path)
    data = json.loads((folder / "manifest.json").read_text()) | change
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match=message):
        manifest.load(folder)


def test_not_json(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(ModelError, match="not valid JSON"):
        manifest.load(tmp_path)


def test_missing_weight_file(fixture_ensemble: Path, tmp_path: Path) -> None:
    folder = copy_fixture(fixture_ensemble, tmp_path)
    (folder / "fold1.safetensors").unlink()
    with pytest.raises(ModelError, match=r"fold1\.safetensors: fold weight file listed in .* is missing"):
        manifest.load(folder)


def test_shipped_ensemble_is_a_trained_model_small_enough_for_git() -> None:
    from conftest import ROOT
    from safetensors import safe_open

    model_dir = ROOT / "model"
    if not (model_dir / "manifest.json").is_file():
        pytest.skip("no ensemble shipped in model/")
    shipped = manifest.load(model_dir)
    assert shipped.name != "test-fixture" and "FIXTURE" not in shipped.description
    assert len(shipped.folds) >= 5 and "youden" in shipped.threshold.method
    assert shipped.provenance["out_of_fold"]["n"] > 0 and shipped.provenance["versions"]["timm"]
    assert '": "/' not in json.dumps(shipped.to_dict())  # files by name and sha256, no absolute paths
    largest = max(path.stat().st_size for path in model_dir.iterdir())
    assert largest < 95 * 2**20  # GitHub refuses files over 100 MB
    with safe_open(str(model_dir / shipped.folds[0].file), "np") as weights:
        floats = {
            str(weights.get_tensor(k).dtype)
            for k in weights.keys()
            if "float" in str(weights.get_tensor(k).dtype)
        }
    assert floats == {"float16"}
