"""The training recipe: defaults, checks, and which differences matter on resume."""

from __future__ import annotations

import dataclasses

import pytest

from amf.config import TrainConfig, config_differences
from amf.errors import InputError


def test_defaults_are_the_papers_recipe() -> None:
    config = TrainConfig()
    assert (config.architecture, config.size, config.pretrained) == ("efficientvit_l2", 256, "hub")
    assert (config.epochs, config.lr, config.batch_size) == (20, 2e-4, 32)


def test_every_bad_setting_is_named_at_once() -> None:
    with pytest.raises(InputError, match="epochs must be >= 1.*batch size must be >= 2.*stain"):
        TrainConfig(epochs=0, batch_size=1, stain=1.5)


def test_only_settings_that_change_the_weights_differ() -> None:
    saved = TrainConfig(pretrained=None)
    assert config_differences(saved, dataclasses.replace(saved, workers=7, recipe_name="r4")) == {}
    assert config_differences(saved, dataclasses.replace(saved, lr=1e-3)) == {"lr": (2e-4, 1e-3)}
