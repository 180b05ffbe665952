"""The one preprocessing function: RGB uint8 crops -> the network's normalised float input.

Inference, training and the ONNX parity check all call `prepare`, so what is trained is exactly
what is served. It needs only numpy and Pillow: the ONNX Runtime path never imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from amf.manifest import InputSpec

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}


def resize(page: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Resize an (H, W, 3) uint8 page to spec.size squared; a page already that size is kept."""
    if page.shape[:2] == (spec.size, spec.size):
        return page
    image = Image.fromarray(page).resize((spec.size, spec.size), _RESAMPLE[spec.interpolation])
    return np.asarray(image)


def prepare(pages: Sequence[np.ndarray], spec: InputSpec) -> np.ndarray:
    """(H, W, 3) uint8 pages of any size -> (N, 3, size, size) float32, normalised by mean/std."""
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(3, 1, 1) * 255.0
    std = np.asarray(spec.std, dtype=np.float32).reshape(3, 1, 1) * 255.0
    batch = np.empty((len(pages), 3, spec.size, spec.size), dtype=np.float32)
    for i, page in enumerate(pages):
        batch[i] = (resize(page, spec).transpose(2, 0, 1) - mean) / std
    return batch
