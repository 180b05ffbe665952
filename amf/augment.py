"""Training augmentation on uint8 crops: H&E stain jitter (Tellez et al. 2018) and dihedral transforms.

Pure functions of an explicit numpy Generator, applied before `amf.preprocess.prepare`, so the
network sees augmented crops through exactly the preprocessing it is served with.

Stain jitter: RGB -> optical density -> haematoxylin, eosin, residual (scikit-image's
`hed_from_rgb` deconvolution matrix), each channel scaled by U(1-s, 1+s) and shifted by U(-s, s)
(optical density units, log10), then back to RGB. `skimage.color.rgb2hed` itself clips negative
stain values, which moves some pixels by up to ~80 grey levels even without any jitter; the same
matrices without that clip make the round trip exact up to uint8 rounding.
"""

from __future__ import annotations

import numpy as np
from skimage.color import hed_from_rgb, rgb_from_hed

from amf.preprocess import dihedral

_LOG_FLOOR = 1e-6  # as scikit-image: black pixels get a finite optical density


def rgb_to_hed(image: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> (..., 3) float64 H, E, residual stain densities (log10 units)."""
    rgb = np.maximum(image.astype(np.float64) / 255.0, _LOG_FLOOR)
    return -np.log10(rgb) @ hed_from_rgb


def hed_to_rgb(hed: np.ndarray) -> np.ndarray:
    """Inverse of `rgb_to_hed`, rounded and clipped to uint8."""
    rgb = np.power(10.0, -(hed @ rgb_from_hed))
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def stain_jitter(image: np.ndarray, rng: np.random.Generator, *, strength: float) -> np.ndarray:
    """Scale and shift each stain channel at random; `strength` 0 returns the image unchanged."""
    if strength <= 0:
        return image
    scale = rng.uniform(1.0 - strength, 1.0 + strength, size=3)
    shift = rng.uniform(-strength, strength, size=3)
    return hed_to_rgb(rgb_to_hed(image) * scale + shift)


def augment(image: np.ndarray, rng: np.random.Generator, *, stain: float) -> np.ndarray:
    """A random dihedral transform, then stain jitter: (H, W, 3) uint8 -> (H, W, 3) uint8."""
    return stain_jitter(dihedral(image, int(rng.integers(8))), rng, strength=stain)
