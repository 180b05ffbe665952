"""Crops in memory: class-balanced sampling, seeded augmentation."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic_data import TINY, make_samples

from amf import models, training_data


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return make_samples(tmp_path_factory.mktemp("crops"), domains=("alpha",), slides=1)


def test_balanced_sampler_is_seeded_balanced_and_split_across_ranks():
    labels = np.array([0] * 90 + [1] * 10)
    sampler = training_data.BalancedSampler(labels, num_samples=4000, seed=0)
    draws = [i for i, _ in sampler]
    assert 0.45 < labels[draws].mean() < 0.55
    assert draws == [i for i, _ in training_data.BalancedSampler(labels, num_samples=4000, seed=0)]
    sampler.epoch = 1
    assert draws != [i for i, _ in sampler]
    ranks = [
        list(training_data.BalancedSampler(labels, num_samples=11, seed=0, rank=r, world=2)) for r in (0, 1)
    ]
    assert sorted(k for rank in ranks for _, k in rank) == list(range(10))
    assert [i for i, _ in sorted(ranks[0] + ranks[1], key=lambda d: d[1])] == draws[:10]


def test_augmentation_is_seeded_by_epoch_and_draw(samples):
    crops = training_data.load_crops(samples[:2])
    targets = np.array([s.soft_label for s in samples[:2]], dtype=np.float32)
    spec = models.default_input_spec(TINY.architecture, TINY.size)
    dataset = training_data.CropDataset(list(crops.values()), targets, spec, stain=0.05, seed=0)
    first, target = dataset[(0, 5)]
    assert first.shape == (3, 32, 32) and target.item() == pytest.approx(samples[0].soft_label)
    assert np.array_equal(first.numpy(), dataset[(0, 5)][0].numpy())
    assert not np.array_equal(first.numpy(), dataset[(0, 6)][0].numpy())
    dataset.epoch = 1
    assert not np.array_equal(first.numpy(), dataset[(0, 5)][0].numpy())
