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
        """(N, 3, S, S) float32 from `prepare` -> (N,) float64 mean P(atypical) over folds."""
        x = torch.from_numpy(batch).to(self.device, self.dtype).contiguous(memory_format=torch.channels_last)
        total = torch.zeros(len(batch), dtype=torch.float64, device=self.device)
        for member in self.members:
            total += torch.sigmoid(member(x).float().reshape(-1)).double()
        return (total / len(self.members)).cpu().numpy()
