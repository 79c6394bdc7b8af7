"""grain input pipelines: seeded shuffling, normalisation, batching, worker processes.

The batch order is computed here, not by grain's samplers: batch ``b`` is
:func:`~selrel_jax.data.batch_indices` (epoch ``b // batches_per_epoch`` of a permutation
drawn from ``default_rng([seed, epoch])``, the same formula training uses).
grain then reads batches by index (``MapDataset`` -> ``IterDataset``, ``mp_prefetch`` for
worker processes), so a batch's contents depend only on the seed, never on the number
of workers or threads, and iterators can be checkpointed with ``get_state``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

import numpy as np

from selrel_jax._checks import integer, positive_int
from selrel_jax.data._normalize import normalize
from selrel_jax.data._order import batch_indices, batches_per_epoch
from selrel_jax.errors import ShapeError


class ArraySource(Sequence):
    """Random-access source over a dict of equally long arrays (e.g. ``generate_split``).

    Examples:
        >>> from selrel_jax.data import ArraySource, synthetic_motion
        >>> source = ArraySource(synthetic_motion.generate_split("tiny", "test", 7, 6))
        >>> len(source), sorted(source[0])
        (6, ['boxes', 'label', 'mask', 'static_mask', 'video'])
    """

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        lengths = {key: len(value) for key, value in arrays.items()}
        if not lengths or len(set(lengths.values())) != 1:
            raise ShapeError(f"arrays must be non-empty and equally long, got lengths {lengths}")
        self._arrays = dict(arrays)
        self._length = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {key: value[index] for key, value in self._arrays.items()}

    def __repr__(self) -> str:
        return f"ArraySource({self._length} examples, keys {sorted(self._arrays)})"


class NormalizedBatches(Sequence):
    """Batch ``b`` of a seeded, epoch-wise shuffled pass over ``source``, normalised.

    A picklable random-access sequence (grain worker processes receive a copy).
    """

    def __init__(
        self,
        source: Sequence,
        *,
        batch_size: int,
        seed: int,
        shuffle: bool,
        num_epochs: int | None,
        drop_remainder: bool,
        normalization: Mapping,
    ):
        self.source = source
        self.batch_size = batch_size
        self.seed = int(seed)
        self.shuffle = shuffle
        self.num_epochs = num_epochs
        self.drop_remainder = drop_remainder
        self.normalization = dict(normalization)
        n = len(source)
        self.batches_per_epoch = batches_per_epoch(n, batch_size, drop_remainder=drop_remainder)
        if self.batches_per_epoch == 0:
            raise ShapeError(
                f"source has {n} examples, fewer than one batch of {batch_size} "
                "with drop_remainder=True"
            )

    def __len__(self) -> int:
        if self.num_epochs is None:
            return sys.maxsize // 2  # "forever": grain needs a finite length
        return self.num_epochs * self.batches_per_epoch

    def indices(self, batch: int) -> np.ndarray:
        """Example indices of batch ``batch``."""
        return batch_indices(
            self.seed,
            int(batch),
            len(self.source),
            self.batch_size,
            shuffle=self.shuffle,
            drop_remainder=self.drop_remainder,
        )

    def __getitem__(self, batch: int) -> dict[str, np.ndarray]:
        if not 0 <= batch < len(self):
            raise IndexError(f"batch {batch} out of range for {len(self)} batches")
        examples = [self.source[int(i)] for i in self.indices(batch)]
        videos = np.stack([np.asarray(e["video"]) for e in examples])
        return {
            "video": normalize(videos, **self.normalization),
            "label": np.array([e["label"] for e in examples], dtype=np.int32),
        }


def _own_memory(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Plain in-process arrays instead of grain's shared-memory views (freed at exit)."""
    return {key: np.array(value) for key, value in batch.items()}


def _mark_flags_parsed() -> None:
    """grain's worker processes read absl flags; outside an absl app they are unparsed."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_loader(
    source: Sequence | Mapping[str, np.ndarray],
    *,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = 1,
    mean: float | Sequence[float],
    std: float | Sequence[float],
    value_range: tuple[float, float] = (0.0, 1.0),
    channel_order: str = "RGB",
    worker_count: int = 0,
    drop_remainder: bool = False,
    prefetch: int = 2,
):
    """A grain ``IterDataset`` of normalised batches from ``source``.

    ``source`` is any random-access source of example dicts with ``"video"`` (uint8
    (T,H,W,3) RGB) and ``"label"`` (e.g. :func:`load_source`, :class:`VideoFolder`) or a
    dict of arrays (wrapped in :class:`ArraySource`). Each batch is
    ``{"video": float32 (B,T,H,W,3), "label": int32 (B,)}``, normalised by
    :func:`normalize` with ``mean``, ``std``, ``value_range`` and ``channel_order``.

    Every epoch is a fresh permutation from ``default_rng([seed, epoch])`` (identity when
    ``shuffle=False``), cut into batches (a short last batch unless ``drop_remainder``);
    batches never straddle epochs, ``num_epochs=None`` repeats forever. The batches depend
    only on these arguments, not on ``worker_count`` (worker processes, 0 = read in this
    process with ``prefetch`` threads). ``iter(loader)`` has ``get_state()`` /
    ``set_state()`` to resume mid-run.

    Examples:
        >>> from selrel_jax.data import make_loader, synthetic_motion
        >>> arrays = synthetic_motion.generate_split("tiny", "train", 0, 6)
        >>> loader = make_loader(arrays, batch_size=4, seed=0, mean=0.45, std=0.225,
        ...                      num_epochs=1)
        >>> for batch in loader:
        ...     print(batch["video"].shape, batch["video"].dtype, batch["label"].shape)
        (4, 8, 32, 32, 3) float32 (4,)
        (2, 8, 32, 32, 3) float32 (2,)
    """
    if isinstance(source, Mapping):
        source = ArraySource(source)
    batch_size = positive_int("batch_size", batch_size)
    worker_count = integer("worker_count", worker_count, minimum=0)
    if num_epochs is not None:
        num_epochs = positive_int("num_epochs", num_epochs)
    if len(source) == 0:
        raise ShapeError("source is empty")
    normalization = dict(mean=mean, std=std, value_range=value_range, channel_order=channel_order)
    normalize(np.zeros((1, 1, 1, 3), np.uint8), **normalization)  # fail now, not in a worker
    batches = NormalizedBatches(
        source,
        batch_size=batch_size,
        seed=seed,
        shuffle=shuffle,
        num_epochs=num_epochs,
        drop_remainder=drop_remainder,
        normalization=normalization,
    )
    return _grain_dataset(batches, worker_count, prefetch)


def _grain_dataset(batches: NormalizedBatches, worker_count: int, prefetch: int):
    """grain reads ``batches`` by index: in this process with threads, or in workers."""
    import grain  # slow to import: only when a loader is made

    read_options = grain.ReadOptions(
        num_threads=max(1, prefetch) if worker_count == 0 else 1,
        prefetch_buffer_size=max(1, prefetch),
    )
    dataset = grain.MapDataset.source(batches).to_iter_dataset(read_options)
    if worker_count > 0:
        _mark_flags_parsed()
        dataset = dataset.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=1)
        ).map(_own_memory)
    return dataset
