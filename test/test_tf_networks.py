"""amf.tf_networks: the TF-padded MobileNets are timm names, built by timm.create_model once the
module is imported, with TF-slim's input in their config; their weights (the shipped folds', and
random ones for a network model/ does not ship) load into them strictly and compute what timm's
own network with "SAME" padding computes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from conftest import ROOT, SAMPLE_INPUT

from amf import manifest, models, stacks, tf_networks
from amf.errors import ModelError
from amf.preprocess import prepare

SHIPPED = ROOT / "model"
BASES = {"tf_mobilenetv2_100": "mobilenetv2_100", "tf_mobilenetv1_100": "mobilenetv1_100"}


def test_the_architectures_build_with_timm_once_the_module_is_imported() -> None:
    assert set(manifest.load(SHIPPED).architectures) <= set(tf_networks.ARCHITECTURES)
    names = list(tf_networks.ARCHITECTURES)
    script = (
        "import sys, timm\n"
        "names = sys.argv[1:]\n"
        "assert not any(timm.is_model(n) for n in names), 'registered before the import'\n"
        "import amf.tf_networks\n"
        "for name in names:\n"
        "    timm.create_model(name, num_classes=1)\n"
        "print('built', *names)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *names], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["built", *names]


@pytest.mark.parametrize("architecture", tf_networks.ARCHITECTURES)
def test_the_config_holds_tf_slim_input(architecture: str) -> None:
    config = timm.get_pretrained_cfg(architecture)
    assert (config.mean, config.std, config.interpolation) == ((0.5,) * 3, (0.5,) * 3, "bilinear")
    assert models.default_input_spec(architecture, 128) == manifest.InputSpec(
        128, (0.5,) * 3, (0.5,) * 3, "bilinear"
    )
    shipped = manifest.load(SHIPPED).input
    assert models.default_input_spec(architecture, shipped.size) == shipped


@pytest.mark.parametrize("architecture", tf_networks.ARCHITECTURES)
def test_weights_load_strictly_and_compute_what_timm_same_padding_computes(
    architecture: str, tmp_path: Path
) -> None:
    shipped = manifest.load(SHIPPED)
    fold = next((f for f in shipped.folds if shipped.architecture_of(f) == architecture), None)
    if fold is None:
        torch.manual_seed(0)
        weights = tmp_path / "random.safetensors"
        models.save_weights(models.create(architecture), weights)
    else:
        weights = SHIPPED / fold.file
    registered = models.load_weights(models.create(architecture), weights).eval()
    base = timm.create_model(BASES[architecture], pad_type="same", num_classes=1)
    base = models.load_weights(base, weights).eval()  # the network before registration
    pages = stacks.read_pages(stacks.discover(SAMPLE_INPUT).files[0])
    crops = torch.from_numpy(prepare(pages, shipped.input))
    with torch.no_grad():
        logits = registered(crops)
        torch.testing.assert_close(logits, base(crops), rtol=0, atol=0)
    assert logits.std() > 0  # the crops are told apart: padding differences would show


def test_no_hub_weights_are_published_for_them() -> None:
    with pytest.raises(ModelError, match="cannot get timm's pretrained weights for 'tf_mobilenetv1_100'"):
        models.create("tf_mobilenetv1_100", pretrained="hub")
