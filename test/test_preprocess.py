"""amf.preprocess: shape, normalisation, resizing."""

from __future__ import annotations

import numpy as np

from amf.manifest import InputSpec
from amf.preprocess import prepare, resize

SPEC = InputSpec(size=32, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))


def test_normalisation_matches_formula() -> None:
    page = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    batch = prepare([page], SPEC)
    expected = (page.transpose(2, 0, 1) / 255.0 - np.array(SPEC.mean)[:, None, None]) / np.array(SPEC.std)[
        :, None, None
    ]
    assert batch.shape == (1, 3, 32, 32) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[0], expected, atol=1e-5)


def test_pages_of_other_sizes_are_resized() -> None:
    pages = [np.zeros((128, 128, 3), np.uint8), np.full((17, 41, 3), 255, np.uint8)]
    batch = prepare(pages, SPEC)
    assert batch.shape == (2, 3, 32, 32)
    np.testing.assert_allclose(batch[1, 0], (1.0 - 0.5) / 0.5, atol=1e-5)


def test_resize_keeps_pages_of_the_right_size() -> None:
    page = np.zeros((32, 32, 3), np.uint8)
    assert resize(page, SPEC) is page
    assert resize(np.zeros((64, 64, 3), np.uint8), SPEC).shape == (32, 32, 3)


def test_accepts_a_stack_array() -> None:
    stack = np.zeros((4, 32, 32, 3), np.uint8)
    assert prepare(stack, SPEC).shape == (4, 3, 32, 32)
