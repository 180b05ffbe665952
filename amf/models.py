"""The model factory: the only module that imports timm.

Every network in the project, trained or served, is `create(architecture)`: a timm model with
one output logit whose sigmoid is P(atypical).
"""

from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file, save_file

from amf.errors import ModelError
from amf.manifest import INTERPOLATIONS, InputSpec

log = logging.getLogger(__name__)


def create(architecture: str, *, pretrained: str | Path | None = None) -> torch.nn.Module:
    """Build `architecture` with a one-logit head.

    Args:
        architecture: a timm model name, optionally with a pretrained tag
            (`efficientvit_l2.r256_in1k`).
        pretrained: None for random initialisation, "hub" for timm's pretrained weights
            (needs the network once), or a path to a local .safetensors/.pth/.bin file of
            ImageNet weights for the same architecture; its classifier is replaced.
    """
    if not timm.is_model(architecture.split(".")[0]):
        raise ModelError(f"unknown timm architecture {architecture!r}")
    kwargs: dict = {"num_classes": 1}
    if pretrained == "hub":
        kwargs["pretrained"] = True
    elif pretrained is not None:
        path = Path(pretrained)
        if not path.is_file():
            raise ModelError(f"{path}: pretrained weight file not found")
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    return timm.create_model(architecture, **kwargs)


def default_input_spec(architecture: str, size: int) -> InputSpec:
    """The architecture's own normalisation and interpolation from timm, at `size` px."""
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
    save_file(state, str(path))
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
