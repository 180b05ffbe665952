"""The one preprocessing function: RGB uint8 crops -> the network's normalised float input.

Inference, training and the ONNX parity check all call `prepare`, so what is trained is exactly
what is served. It needs only numpy and Pillow: the ONNX Runtime path never imports torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import islice

import numpy as np
from PIL import Image

from amf.manifest import TTA_VIEWS, InputSpec

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}


def resize_image(image: Image.Image, spec: InputSpec) -> Image.Image:
    """The one resize rule: to spec.size squared with the spec's filter. amf.stacks applies it to
    a large page as it is decoded, so that page never becomes a full-size array."""
    return image.resize((spec.size, spec.size), _RESAMPLE[spec.interpolation])


def resize(page: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Resize an (H, W, 3) uint8 page to spec.size squared; a page already that size is kept."""
    if page.shape[:2] == (spec.size, spec.size):
        return page
    return np.asarray(resize_image(Image.fromarray(page), spec))


def prepare(pages: Sequence[np.ndarray], spec: InputSpec) -> np.ndarray:
    """(H, W, 3) uint8 pages of any size -> (N, 3, size, size) float32, normalised by mean/std."""
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(3, 1, 1) * 255.0
    std = np.asarray(spec.std, dtype=np.float32).reshape(3, 1, 1) * 255.0
    batch = np.empty((len(pages), 3, spec.size, spec.size), dtype=np.float32)
    for i, page in enumerate(pages):
        batch[i] = (resize(page, spec).transpose(2, 0, 1) - mean) / std
    return batch


def prepared_batches(crops: Iterable[np.ndarray], spec: InputSpec, batch_size: int) -> Iterator[np.ndarray]:
    """`prepare`d batches of at most `batch_size` crops, in order: every batching loop (serving, scoring,
    validation, calibration). Each crop is resized as it arrives, so at most `batch_size` network-sized
    crops are held, whatever the pages' size."""
    resized = (resize(crop, spec) for crop in crops)
    while batch := list(islice(resized, batch_size)):
        yield prepare(batch, spec)


def dihedral(array: np.ndarray, k: int, axes: tuple[int, int] = (-3, -2)) -> np.ndarray:
    """Symmetry k (0..7) of the square on two axes: k % 4 quarter turns, then a mirror if k >= 4.

    The default axes are H and W of (..., H, W, C) crops; test-time views use those of (N, C, H, W).
    """
    if not 0 <= k < 8:
        raise ValueError(f"dihedral transform index must be in 0..7, got {k}")
    rotated = np.rot90(array, k % 4, axes=axes)
    return np.ascontiguousarray(np.flip(rotated, axes[1]) if k >= 4 else rotated)


def views(batch: np.ndarray, tta: str) -> list[np.ndarray]:
    """A prepared (N, 3, S, S) batch under each symmetry of the test-time augmentation `tta`."""
    return [dihedral(batch, k, axes=(-2, -1)) for k in TTA_VIEWS[tta]]
