"""TensorFlow-trained MobileNets as timm networks: registered with timm the way timm registers
its own `tf_*` variants, so `timm.create_model("tf_mobilenetv2_100")` builds them once this module
is imported (`amf.models` imports it).

Each is timm's network with TensorFlow's "SAME" padding (`pad_type="same"`), which the weights
of Google's TF-slim MobileNets need (`amf.tflite_import` brings them from `resources/pretrained/`),
and a default config holding TF-slim's input: pixels scaled to [-1, 1] (mean = std = 0.5),
bilinear resizing. Batch norm keeps timm's default epsilon, as the shipped folds were trained with.
timm publishes no weights for them: `amf import-tflite` writes them.
"""

from __future__ import annotations

from timm.models import generate_default_cfgs, register_model
from timm.models.efficientnet import EfficientNet, _gen_mobilenet_v1, _gen_mobilenet_v2


def _cfg(**kwargs: object) -> dict[str, object]:
    """timm's EfficientNet-family config, with TF-slim's input normalisation and resizing."""
    return {
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bilinear",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "first_conv": "conv_stem",
        "classifier": "classifier",
        "license": "apache-2.0",
        **kwargs,
    }


# timm's register_model reads this module's `default_cfgs` (the name is timm's convention).
default_cfgs = generate_default_cfgs({"tf_mobilenetv2_100": _cfg(), "tf_mobilenetv1_100": _cfg()})


@register_model
def tf_mobilenetv2_100(pretrained: bool = False, **kwargs: object) -> EfficientNet:
    """MobileNet-V2 1.0 with TF "SAME" padding (Google's TF-slim `mobilenet_v2_1.0_224`)."""
    kwargs.setdefault("pad_type", "same")
    return _gen_mobilenet_v2("tf_mobilenetv2_100", 1.0, pretrained=pretrained, **kwargs)


@register_model
def tf_mobilenetv1_100(pretrained: bool = False, **kwargs: object) -> EfficientNet:
    """MobileNet-V1 1.0 with TF "SAME" padding (Google's TF-slim `mobilenet_v1_1.0_224`)."""
    kwargs.setdefault("pad_type", "same")
    return _gen_mobilenet_v1("tf_mobilenetv1_100", 1.0, pretrained=pretrained, **kwargs)


ARCHITECTURES = ("tf_mobilenetv2_100", "tf_mobilenetv1_100")  # what `amf import-tflite` builds
