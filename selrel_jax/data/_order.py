"""The order in which a seeded pass visits a dataset: one formula for loaders and training.

Batch ``b`` of a pass over ``n`` examples is epoch ``b // batches_per_epoch``'s
permutation ``default_rng([seed, epoch]).permutation(n)`` cut into batches. It is a
pure function of its arguments, so a loader or a training run restarted at batch
``b`` reads exactly the examples an uninterrupted one would.
"""

from __future__ import annotations

import numpy as np

from selrel_jax._checks import integer, positive_int
from selrel_jax.errors import ShapeError


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits ``n`` examples (a permutation of range(n))."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def batches_per_epoch(n: int, batch_size: int, *, drop_remainder: bool = True) -> int:
    """Batches in one epoch of ``n`` examples: a short last batch counts unless dropped."""
    n = integer("n", n, minimum=0, error=ShapeError)
    batch_size = positive_int("batch_size", batch_size)
    return n // batch_size if drop_remainder else -(-n // batch_size)


def batch_indices(
    seed: int,
    batch: int,
    n: int,
    batch_size: int,
    *,
    shuffle: bool = True,
    drop_remainder: bool = True,
) -> np.ndarray:
    """Example indices of batch ``batch`` of a seeded, epoch-wise shuffled pass.

    ``epoch, b = divmod(batch, batches_per_epoch)``; the batch is rows
    ``b * batch_size : (b + 1) * batch_size`` of :func:`epoch_order` (of ``range(n)``
    when ``shuffle=False``). Batches never straddle epochs.

    Examples:
        >>> from selrel_jax.data import batch_indices
        >>> batch = batch_indices(seed=0, batch=7, n=100, batch_size=32)   # epoch 2, batch 1
        >>> batch.shape
        (32,)
        >>> batch_indices(seed=0, batch=7, n=100, batch_size=32, shuffle=False)[:4]
        array([32, 33, 34, 35])
    """
    per_epoch = batches_per_epoch(n, batch_size, drop_remainder=drop_remainder)
    if per_epoch == 0:
        raise ShapeError(
            f"{n} examples are fewer than one batch of {batch_size} with drop_remainder=True"
        )
    epoch, b = divmod(integer("batch", batch, minimum=0), per_epoch)
    order = epoch_order(seed, epoch, n) if shuffle else np.arange(n)
    return order[b * batch_size : (b + 1) * batch_size]
