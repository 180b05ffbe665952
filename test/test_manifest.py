"""amf.manifest: round trip, validation messages, missing files."""

from __future__ import annotations

import hashlib
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


# Every field away from its default, a fold of another network, a graph entry, nested provenance.
RICH = {
    "format": manifest.FORMAT,
    "architecture": "test_efficientnet",
    "input": {"size": 48, "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6], "interpolation": "bilinear"},
    "folds": [
        {"file": "fold0/weights.safetensors", "sha256": "ab" * 32},
        {"file": "fold1.safetensors", "sha256": None, "architecture": "test_byobnet"},
    ],
    "threshold": {"value": 0.37, "method": "youden on 12 out-of-fold predictions"},
    "name": "rich",
    "description": "every field set",
    "tta": "flips",
    "onnx": {"fp32": {"file": "ensemble.fp32.onnx", "sha256": "cd" * 32}, "opset": 18},
    "provenance": {"seed": 3, "nested": {"list": [1, 2.5, "x"]}},
}


def test_every_field_survives_to_dict_json_and_from_dict() -> None:
    rich = manifest.from_dict(RICH)
    assert rich.input == manifest.InputSpec(48, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), "bilinear")
    assert (rich.threshold.value, rich.tta, rich.provenance) == (0.37, "flips", RICH["provenance"])
    assert rich.architectures == ("test_efficientnet", "test_byobnet")
    assert [rich.architecture_of(fold) for fold in rich.folds] == ["test_efficientnet", "test_byobnet"]
    data = rich.to_dict()
    assert set(data) == set(RICH) | {"reduction", "positive_class"}
    assert "architecture" not in data["folds"][0] and data["folds"][1]["architecture"] == "test_byobnet"
    again = manifest.from_dict(json.loads(json.dumps(data)))
    assert again == rich and again.to_dict() == data


def test_save_then_load_gives_the_same_manifest(tmp_path: Path) -> None:
    rich = manifest.from_dict(RICH)
    for fold in rich.folds:
        (tmp_path / fold.file).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / fold.file).write_bytes(b"weights")
    assert manifest.save(rich, tmp_path) == tmp_path / manifest.MANIFEST_NAME
    assert manifest.load(tmp_path) == rich
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fold0", "fold1.safetensors", "manifest.json"]


def test_create_hashes_the_folds_and_names_only_a_differing_architecture(tmp_path: Path) -> None:
    files = ["a.safetensors", "b.safetensors", "c.safetensors"]
    for k, name in enumerate(files):
        (tmp_path / name).write_bytes(bytes([k]) * 100)
    created = manifest.create(
        tmp_path,
        files,
        ["test_efficientnet", "test_efficientnet", "test_byobnet"],
        input=manifest.InputSpec(32, (0.5,) * 3, (0.5,) * 3),
        threshold=manifest.Threshold(0.5, "fixed"),
        tta="flips",
    )
    assert [fold.sha256 for fold in created.folds] == [
        hashlib.sha256(bytes([k]) * 100).hexdigest() for k in range(3)
    ]
    assert [fold.architecture for fold in created.folds] == [None, None, "test_byobnet"]
    assert ["architecture" in fold for fold in created.to_dict()["folds"]] == [False, False, True]
    assert created.architecture == "test_efficientnet" and created.tta == "flips"
    with pytest.raises(ModelError, match="one architecture each"):
        manifest.create(tmp_path, files, ["a", "b"], input=created.input, threshold=created.threshold)
    with pytest.raises(ModelError, match="relative path"):
        manifest.create(tmp_path, ["../a.safetensors"], "x", input=created.input, threshold=created.threshold)
    with pytest.raises(ModelError, match=r"threshold\.value must be in \[0, 1\], got 1\.5"):
        manifest.create(tmp_path, files, "x", input=created.input, threshold=manifest.Threshold(1.5, "x"))


def test_every_problem_is_named_in_one_error_with_its_source() -> None:
    with pytest.raises(ModelError) as error:
        manifest.from_dict(RICH | {"reduction": "max", "tta": "spin"}, source="somewhere/manifest.json")
    message = str(error.value)
    assert message.startswith("somewhere/manifest.json: ")
    assert "reduction must be one of" in message and "tta must be one of" in message and "'spin'" in message


def test_recorded_sha256_is_checked_and_none_is_not(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"weights")
    manifest.check_sha256(path, hashlib.sha256(b"weights").hexdigest())
    manifest.check_sha256(path, None)
    with pytest.raises(ModelError, match=r"w\.safetensors: sha256 differs"):
        manifest.check_sha256(path, hashlib.sha256(b"other").hexdigest())


def test_oversized_manifest_is_refused_unread(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(" " * (manifest.MAX_MANIFEST_BYTES + 1))
    with pytest.raises(ModelError, match="larger than .* bytes; not a manifest"):
        manifest.load(tmp_path)


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
    # Five folds or more, or one refit whose threshold and figures come from its 5-fold run.
    held_out = shipped.provenance.get("held_out_folds", [])
    assert len(shipped.folds) >= 5 or ("refit" in shipped.provenance and len(held_out) >= 5)
    assert "youden" in shipped.threshold.method
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
