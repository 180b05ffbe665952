"""The model factory: with `amf.tf_networks` (networks it registers with timm), the only module
that imports timm.

Every network in the project, trained or served, is `create(architecture)`: a timm model with
one output logit whose sigmoid is P(atypical).
"""

from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import amf.tf_networks  # noqa: F401  (registers the TF-padded MobileNets with timm)
from amf import weight_packages, writing
from amf.errors import ModelError
from amf.manifest import INTERPOLATIONS, InputSpec

log = logging.getLogger(__name__)

IMAGENET_CLASSES = 1000


def create(
    architecture: str, *, pretrained: str | Path | None = None, num_classes: int = 1
) -> torch.nn.Module:
    """Build `architecture` with a one-logit head (`num_classes` only for checking imports).

    Args:
        architecture: a timm model name, optionally with a pretrained tag
            (`efficientvit_l2.r256_in1k`); `amf.tf_networks` adds the TF-padded MobileNets.
        pretrained: None for random initialisation; "hub" for timm's pretrained weights
            (downloaded once; offline, a ModelError says what to use instead); the name of a
            pinned weight package (`amf.weight_packages`, e.g. "efficientnet-lite2"); or a local
            .safetensors/.pth/.bin state dict of the same architecture, e.g. from
            `amf import-tflite`. The new head starts at zero, so the first steps do not push
            large random logits through the pretrained features.
    """
    if not timm.is_model(architecture.split(".")[0]):
        raise ModelError(f"unknown timm architecture {architecture!r}")
    weights = weight_packages.package(str(pretrained)) if pretrained is not None else None
    if weights is not None:
        model = _from_package(weights, architecture)
        if num_classes == IMAGENET_CLASSES:
            return model  # the published classifier, for checking the conversion
        model.reset_classifier(num_classes)
    else:
        model = _from_timm(architecture, pretrained, num_classes)
        if pretrained not in (None, "hub"):
            _load_backbone(model, Path(pretrained))
    if pretrained is not None:
        head = model.get_classifier()
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
    return model


def _from_timm(architecture: str, pretrained: str | Path | None, num_classes: int) -> torch.nn.Module:
    try:
        return timm.create_model(architecture, num_classes=num_classes, pretrained=pretrained == "hub")
    except Exception as error:  # huggingface_hub, urllib and timm raise many types when offline
        if pretrained != "hub":
            raise
        raise ModelError(
            f"cannot get timm's pretrained weights for {architecture!r} from the hub "
            f"({type(error).__name__}: {str(error)[:200]}); offline, or none published? "
            f"train with --pretrained {'|'.join(weight_packages.PACKAGES)}, --pretrained FILE "
            "(see `amf import-tflite`) or --pretrained none"
        ) from None


def _from_package(weights: weight_packages.WeightPackage, architecture: str) -> torch.nn.Module:
    """The package's ImageNet network, its 1000-class head included, loaded strictly."""
    if architecture != weights.architecture:
        raise ModelError(
            f"--pretrained {weights.name} holds weights for {weights.architecture!r}, not {architecture!r}; "
            f"train it with --arch {weights.architecture}"
        )
    model = timm.create_model(architecture, num_classes=IMAGENET_CLASSES)
    model.load_state_dict(weight_packages.timm_state_dict(weights, model), strict=True)
    return model


def _load_backbone(model: torch.nn.Module, path: Path) -> None:
    """Every weight but the classifier from a local state dict; any other mismatch is an error."""
    if not path.is_file():
        raise ModelError(f"{path}: pretrained weight file not found")
    try:
        state = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)
    except Exception as error:  # safetensors and torch raise their own types for bad files
        raise ModelError(f"{path}: not a readable state dict ({error})") from None
    head = model.pretrained_cfg["classifier"] + "."
    state = {k: v for k, v in state.items() if not k.startswith(head)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    wrong = [k for k in missing if not k.startswith(head)] + list(unexpected)
    if wrong:
        raise ModelError(f"{path}: weights do not fit {type(model).__name__}: {', '.join(wrong[:5])}")


def default_input_spec(architecture: str, size: int) -> InputSpec:
    """The architecture's own normalisation and interpolation from its timm config, at `size` px."""
    config = timm.get_pretrained_cfg(architecture)
    cfg = config.to_dict() if config is not None else {}
    interpolation = cfg.get("interpolation", "bicubic")
    return InputSpec(
        size=size,
        mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        interpolation=interpolation if interpolation in INTERPOLATIONS else "bicubic",
    )


def save_weights(model: torch.nn.Module, path: Path, *, fp16: bool = True) -> None:
    """Save the state dict as safetensors (fp16 floats by default: half the size)."""
    state = {
        name: (t.half() if fp16 and t.is_floating_point() else t).detach().cpu().contiguous()
        for name, t in model.state_dict().items()
    }
    writing.write_with(path, lambda tmp: save_file(state, str(tmp)))
    Path(path).chmod(0o644)  # readable by the container's non-root user


def load_weights(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    """Load safetensors weights into `model` (cast to its dtype); a mismatch names the file."""
    try:
        state = load_file(str(path))
    except Exception as error:  # safetensors raises its own types for corrupt headers
        raise ModelError(f"{path}: not a readable safetensors file ({error})") from None
    reference = model.state_dict()
    state = {
        k: v.to(reference[k].dtype) if k in reference and v.is_floating_point() else v
        for k, v in state.items()
    }
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        raise ModelError(
            f"{path}: weights do not fit the manifest's architecture ({' '.join(first[:2])[:300]})"
        ) from None
    return model


def file_metadata(path: Path) -> dict[str, str]:
    """The metadata a safetensors file carries (source and licence of imported weights); {} if none."""
    if Path(path).suffix != ".safetensors":
        return {}
    with safe_open(str(path), "pt") as handle:
        return dict(handle.metadata() or {})
