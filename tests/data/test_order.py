"""The one formula for the order of a seeded pass: epoch permutations cut into batches,
shared by the grain loader and training."""

from __future__ import annotations

import numpy as np
import pytest

from selrel_jax import data
from selrel_jax.errors import OptionError, ShapeError


def test_epoch_order_is_a_pure_permutation():
    a, b = data.epoch_order(5, 2, 50), data.epoch_order(5, 2, 50)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.sort(a), np.arange(50))
    np.testing.assert_array_equal(a, np.random.default_rng([5, 2]).permutation(50))
    assert not np.array_equal(data.epoch_order(5, 2, 50), data.epoch_order(5, 3, 50))
    assert not np.array_equal(data.epoch_order(5, 2, 50), data.epoch_order(6, 2, 50))


def test_batch_indices_cover_an_epoch_once_and_drop_the_remainder():
    n, batch = 23, 5  # 4 full batches per epoch, 3 examples dropped
    assert data.batches_per_epoch(n, batch) == 4
    for epoch in range(3):
        rows = np.concatenate([data.batch_indices(1, epoch * 4 + b, n, batch) for b in range(4)])
        assert rows.shape == (20,)
        assert len(set(rows.tolist())) == 20
        np.testing.assert_array_equal(rows, data.epoch_order(1, epoch, n)[:20])


def test_short_last_batch_and_no_shuffle():
    assert data.batches_per_epoch(23, 5, drop_remainder=False) == 5
    last = data.batch_indices(1, 4, 23, 5, drop_remainder=False)
    np.testing.assert_array_equal(last, data.epoch_order(1, 0, 23)[20:])
    np.testing.assert_array_equal(
        data.batch_indices(1, 6, 23, 5, drop_remainder=False), data.epoch_order(1, 1, 23)[5:10]
    )
    np.testing.assert_array_equal(data.batch_indices(9, 5, 10, 4, shuffle=False), [4, 5, 6, 7])


def test_bad_arguments():
    with pytest.raises(ShapeError, match="fewer than one batch"):
        data.batch_indices(0, 0, 3, 4)
    with pytest.raises(OptionError, match="batch_size"):
        data.batch_indices(0, 0, 3, 0)
    with pytest.raises(OptionError, match="batch must be an int >= 0"):
        data.batch_indices(0, -1, 30, 4)


def test_loader_batches_are_batch_indices():
    n = 11
    video = np.broadcast_to(
        np.arange(n, dtype=np.uint8)[:, None, None, None, None], (n, 1, 1, 1, 3)
    )
    source = {"video": video.copy(), "label": np.zeros(n, np.int32)}
    loader = data.make_loader(
        source, batch_size=4, seed=3, num_epochs=2, mean=0.0, std=1.0, value_range=(0.0, 255.0)
    )
    seen = [np.rint(b["video"][:, 0, 0, 0, 0]).astype(int).tolist() for b in loader]
    expected = [
        data.batch_indices(3, b, n, 4, drop_remainder=False).tolist() for b in range(len(seen))
    ]
    assert len(seen) == 6 and seen == expected
