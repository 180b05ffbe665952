"""amf.preprocess: shape, normalisation, resizing, the dihedral symmetries and test-time views."""

from __future__ import annotations

import numpy as np
import pytest

from amf.manifest import InputSpec
from amf.preprocess import dihedral, prepare, prepared_batches, resize, views

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


def test_dihedral_gives_eight_distinct_invertible_views() -> None:
    crops = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    image = crops[0]
    symmetries = [dihedral(image, k) for k in range(8)]
    assert len({v.tobytes() for v in symmetries}) == 8
    np.testing.assert_array_equal(symmetries[4], image[:, ::-1])
    np.testing.assert_array_equal(dihedral(crops, 1)[2], np.rot90(crops[2]))
    with pytest.raises(ValueError, match="0..7"):
        dihedral(image, 8)


@pytest.mark.parametrize("tta, count", [("none", 1), ("flips", 4), ("dihedral", 8)])
def test_views_of_a_prepared_batch_are_the_prepared_symmetric_crops(tta: str, count: int) -> None:
    """Turning the network input equals preparing turned crops of the input size.

    (Crops that need resizing can differ by a few grey levels on quarter turns: Pillow resamples
    width then height, rounding and clipping in between.)
    """
    pages = [np.random.default_rng(k).integers(0, 256, (32, 32, 3), dtype=np.uint8) for k in range(3)]
    batch = prepare(pages, SPEC)
    turned = views(batch, tta)
    assert len(turned) == count
    for view, k in zip(turned, (0, 2, 4, 6) if tta == "flips" else range(count), strict=True):
        np.testing.assert_array_equal(view, prepare([dihedral(p, k) for p in pages], SPEC))


def test_prepared_batches_are_prepare_in_order_and_pull_lazily() -> None:
    pages = [np.full((40 + k, 50, 3), 10 * k, np.uint8) for k in range(5)]
    pulled = []

    def source():
        for page in pages:
            pulled.append(page)
            yield page

    batches = prepared_batches(source(), SPEC, 2)
    first = next(batches)
    assert len(pulled) == 2  # a generator's pages are read one batch at a time
    rest = list(batches)
    assert [len(b) for b in [first, *rest]] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate([first, *rest]), prepare(pages, SPEC))
    assert list(prepared_batches([], SPEC, 2)) == []
