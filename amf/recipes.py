"""Named training recipes: the settings of each model the card reports, as data (no torch).

As nnU-Net keeps its configurations in its plans and trains one by name, `amf train --recipe
NAME` starts from `RECIPES[NAME]` (a flag given beside it overrides that one setting) and every
model trained records the name (`TrainConfig.recipe_name`). model/MODEL_CARD.md ("Recipes tried")
reports each recipe's results under the same name; model/reproduce.sh trains by these names.

Every setting is written out, so a recipe does not move when a built-in default does. The
ImageNet MobileNets (r6, r7) start from Google's TF-slim graphs vendored in resources/pretrained/:
`amf train` imports a `.tflite` `pretrained` into the run folder first, exactly as `amf
import-tflite --table <the plan's table> --size <size>` would (`amf.tflite_import.for_run`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from amf.config import TrainConfig

TFLITE = Path(__file__).resolve().parent.parent / "resources" / "pretrained"

# What every recipe here shares; each names the rest.
_COMMON = TrainConfig(
    architecture="efficientvit_m0",
    size=128,
    pretrained=None,
    epochs=10,
    lr=1e-3,
    batch_size=32,
    weight_decay=0.05,
    warmup=0.1,
    stain=0.05,
    soft_labels=True,
    focal_gamma=2.0,
    focal_alpha=-1.0,
    epoch_size=None,
    patience=0,
    teacher=(),
    teacher_weight=1.0,
    amp=True,
    workers=0,
    seed=0,
)
# From scratch: efficientvit_m0, 15 epochs at lr 2e-3 (r1: hard labels; r4: soft labels).
_SCRATCH = replace(_COMMON, epochs=15, lr=2e-3, workers=1)
_LITE2 = replace(_COMMON, architecture="tf_efficientnet_lite2", pretrained="efficientnet-lite2")

RECIPES: dict[str, TrainConfig] = {
    name: replace(config, recipe_name=name)
    for name, config in {
        "r1": replace(_SCRATCH, soft_labels=False),
        "r4": _SCRATCH,
        "r6": replace(
            _COMMON,
            architecture="tf_mobilenetv2_100",
            pretrained=str(TFLITE / "mobilenet_v2_1.0_224_quant.tflite"),
        ),
        "r7": replace(
            _COMMON,
            architecture="tf_mobilenetv1_100",
            pretrained=str(TFLITE / "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"),
        ),
        "lite0-128": replace(_COMMON, architecture="tf_efficientnet_lite0", pretrained="efficientnet-lite0"),
        "lite1-128": replace(_COMMON, architecture="tf_efficientnet_lite1", pretrained="efficientnet-lite1"),
        "lite2-128": _LITE2,
        # The same network on the 128 px crops resized to 160 or 192 px: objects nearer ImageNet's scale.
        "lite2-160": replace(_LITE2, size=160),
        "lite2-192": replace(_LITE2, size=192),
    }.items()
}
