"""amf.recipes: each named recipe is a complete, valid TrainConfig that records its name; the
command line starts from it (flags override it), and a .tflite recipe imports its weights into
the run folder before training."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import timm

from amf import models, recipes, runs, train, weight_packages
from amf.__main__ import main
from amf.config import TrainConfig, config_differences

EXPECTED = {"r1", "r4", "r6", "r7", "lite0-128", "lite1-128", "lite2-128", "lite2-160", "lite2-192"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_recipe_is_a_valid_config_that_records_its_name(name: str) -> None:
    config = recipes.RECIPES[name]
    assert isinstance(config, TrainConfig) and config.recipe_name == name
    assert TrainConfig(**json.loads(json.dumps(dataclasses.asdict(config)))) == config  # as run.json holds it
    assert train.recipe(config)["recipe_name"] == name  # the provenance every trained model keeps
    assert timm.is_model(config.architecture) and models.default_input_spec(config.architecture, config.size)
    source = config.pretrained
    assert (
        source is None
        or source in weight_packages.PACKAGES
        or (Path(source).suffix == ".tflite" and Path(source).is_file())
    )


def test_the_recipes_are_those_the_card_names() -> None:
    assert set(recipes.RECIPES) == EXPECTED
    r1, r4 = recipes.RECIPES["r1"], recipes.RECIPES["r4"]
    assert config_differences(r1, r4) == {"soft_labels": (False, True)}
    assert (r4.architecture, r4.pretrained, r4.epochs, r4.lr) == ("efficientvit_m0", None, 15, 2e-3)
    lite0 = recipes.RECIPES["lite0-128"]
    assert (lite0.architecture, lite0.pretrained, lite0.size, lite0.epochs, lite0.lr) == (
        "tf_efficientnet_lite0",
        "efficientnet-lite0",
        128,
        10,
        1e-3,
    )
    assert config_differences(lite0, recipes.RECIPES["lite2-128"]) == {
        "architecture": ("tf_efficientnet_lite0", "tf_efficientnet_lite2"),
        "pretrained": ("efficientnet-lite0", "efficientnet-lite2"),
    }
    assert config_differences(lite0, recipes.RECIPES["lite1-128"]) == {
        "architecture": ("tf_efficientnet_lite0", "tf_efficientnet_lite1"),
        "pretrained": ("efficientnet-lite0", "efficientnet-lite1"),
    }
    lite2 = recipes.RECIPES["lite2-128"]
    assert config_differences(lite2, recipes.RECIPES["lite2-160"]) == {"size": (128, 160)}
    assert config_differences(lite2, recipes.RECIPES["lite2-192"]) == {"size": (128, 192)}


def _trained_config(monkeypatch: pytest.MonkeyPatch, *argv: str) -> TrainConfig:
    """The settings `amf train ARGV` would train with (run_plan replaced by a recorder)."""
    seen = []
    monkeypatch.setattr(runs, "run_plan", lambda plan, out, config, **kwargs: seen.append(config))
    assert main(["train", *argv]) == 0
    return seen[0]


def test_the_command_line_starts_from_the_recipe_and_flags_override_it(
    lodo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, plan, _ = lodo
    common = ("--plan", str(plan), "--out", str(tmp_path / "run"))
    assert _trained_config(monkeypatch, *common, "--recipe", "r4") == recipes.RECIPES["r4"]
    overridden = _trained_config(
        monkeypatch, *common, "--recipe", "r4", "--epochs", "3", "--pretrained", "hub"
    )
    assert overridden == dataclasses.replace(recipes.RECIPES["r4"], epochs=3, pretrained="hub")
    # a run folder's saved settings give way to a named recipe (a difference is then refused on training)
    saved = dataclasses.replace(recipes.RECIPES["r1"], lr=0.5, recipe_name=None)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / runs.RUN_FILE).write_text(
        json.dumps({"plan": str(plan), "config": dataclasses.asdict(saved)})
    )
    assert _trained_config(monkeypatch, *common, "--recipe", "r4") == recipes.RECIPES["r4"]
    assert _trained_config(monkeypatch, *common) == saved


def test_a_tflite_recipe_trains_from_its_import_in_the_run_folder(
    lodo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, plan, samples = lodo
    run = tmp_path / "run"
    config = _trained_config(monkeypatch, "--plan", str(plan), "--out", str(run), "--recipe", "r6")
    imported = run / "pretrained" / "mobilenet_v2_1.0_224_quant-128px.safetensors"
    assert config == dataclasses.replace(recipes.RECIPES["r6"], pretrained=str(imported))
    metadata = models.file_metadata(imported)
    assert metadata["source"] == "mobilenet_v2_1.0_224_quant.tflite"
    assert metadata["calibration"] == f"batch norm statistics of {len(samples)} crops at 128 px"
    made = imported.stat().st_mtime_ns
    assert _trained_config(monkeypatch, "--plan", str(plan), "--out", str(run), "--recipe", "r6") == config
    assert imported.stat().st_mtime_ns == made  # imported once
