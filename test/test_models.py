"""amf.models: one-logit heads, pretrained sources, safetensors round trip, mismatch errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from amf import models
from amf.errors import ModelError


def test_one_logit_head() -> None:
    model = models.create("test_efficientnet").eval()
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 1)


def test_unknown_architecture() -> None:
    with pytest.raises(ModelError, match="unknown timm architecture 'not_a_model'"):
        models.create("not_a_model")


def test_pretrained_from_local_file_replaces_the_classifier(tmp_path: Path) -> None:
    torch.manual_seed(0)
    imagenet = models.timm.create_model("test_efficientnet", num_classes=1000)
    path = tmp_path / "imagenet.pth"
    torch.save(imagenet.state_dict(), path)
    model = models.create("test_efficientnet", pretrained=path)
    torch.testing.assert_close(model.conv_stem.weight, imagenet.conv_stem.weight)
    assert model.get_classifier().out_features == 1


def test_pretrained_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="pretrained weight file not found"):
        models.create("test_efficientnet", pretrained=tmp_path / "none.pth")


def test_save_load_round_trip_in_fp16(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = models.create("test_efficientnet")
    models.save_weights(source, tmp_path / "w.safetensors")
    loaded = models.load_weights(models.create("test_efficientnet"), tmp_path / "w.safetensors")
    for (name, a), b in zip(source.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert a.dtype == b.dtype, name
        torch.testing.assert_close(a.float(), b.float(), atol=2e-3, rtol=1e-3)
    assert oct((tmp_path / "w.safetensors").stat().st_mode)[-3:] == "644"


def test_weights_of_another_architecture(tmp_path: Path, fixture_ensemble: Path) -> None:
    with pytest.raises(ModelError, match=r"fold0\.safetensors: weights do not fit"):
        models.load_weights(models.create("test_resnet"), fixture_ensemble / "fold0.safetensors")


def test_corrupt_weight_file(tmp_path: Path) -> None:
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ModelError, match=r"bad\.safetensors: not a readable safetensors file"):
        models.load_weights(models.create("test_efficientnet"), tmp_path / "bad.safetensors")


def test_default_input_spec_from_timm() -> None:
    spec = models.default_input_spec("efficientvit_l2.r256_in1k", 256)
    assert spec.size == 256 and spec.mean == (0.485, 0.456, 0.406) and spec.interpolation == "bicubic"
