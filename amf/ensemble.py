"""The PyTorch ensemble: every fold of a manifest, run on one batch, P(atypical) averaged.

Out-of-fold validation, evaluation and the container all predict through this class.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from amf import models
from amf.manifest import Manifest, check_sha256

log = logging.getLogger(__name__)

# Network inputs per forward pass on the CPU. The shipped ensemble on one 16-crop stack with the
# 8 views (128 inputs), peak RSS of the process: 1552 MiB in one pass of 128, 1168 MiB in passes
# of 32, 1016 MiB in passes of 16, the same P(atypical) and no slower (docs/speed.md).
CPU_FORWARD_INPUTS = 16


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def serving_dtype(device: torch.device) -> torch.dtype:
    """fp16 on CUDA (a T4 on grand-challenge; timm keeps EfficientViT's attention in fp32)."""
    return torch.float16 if device.type == "cuda" else torch.float32


class Ensemble:
    """The folds of one manifest, in eval mode, on one device (fp16 on CUDA, fp32 on CPU)."""

    def __init__(self, members: list[torch.nn.Module], device: torch.device) -> None:
        self.members = members
        self.device = device
        self.dtype = serving_dtype(device)

    @classmethod
    def load(cls, manifest: Manifest, model_dir: Path, device: torch.device | None = None) -> Ensemble:
        """Build each fold's network from the manifest and load its checked weights."""
        device = device or default_device()
        members = []
        for fold in manifest.folds:
            path = Path(model_dir) / fold.file
            check_sha256(path, fold.sha256)
            model = models.load_weights(models.create(manifest.architecture_of(fold)), path)
            model = model.to(device=device, dtype=serving_dtype(device), memory_format=torch.channels_last)
            members.append(model.eval())
        log.info("loaded %d folds of %s on %s", len(members), " + ".join(manifest.architectures), device)
        return cls(members, device)

    @torch.inference_mode()
    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) float32 from `prepare` -> (N,) float64 mean P(atypical) over folds.

        On the CPU the folds run on at most CPU_FORWARD_INPUTS inputs at a time: a forward
        pass's activations, not the weights, set PyTorch's peak memory, while the time per input
        does not follow the pass's size. On CUDA the whole batch goes in one pass.
        """
        step = CPU_FORWARD_INPUTS if self.device.type == "cpu" else max(len(batch), 1)
        parts = [self._predict(batch[start : start + step]) for start in range(0, len(batch), step)]
        return np.concatenate(parts) if parts else np.zeros(0)

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).to(self.device, self.dtype).contiguous(memory_format=torch.channels_last)
        total = torch.zeros(len(batch), dtype=torch.float64, device=self.device)
        for member in self.members:
            total += torch.sigmoid(member(x).float().reshape(-1)).double()
        return (total / len(self.members)).cpu().numpy()
