"""normalize and the grain input pipeline: seeded, epoch-wise shuffling, batching,
identical batches for the same seed with or without worker processes, resumable state."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from selrel_jax import data
from selrel_jax.errors import DTypeError, NonFiniteError, OptionError, ShapeError

# ------------------------------------------------------------------ normalize


@settings(max_examples=40, deadline=None)
@given(
    clips=hnp.arrays(np.uint8, st.sampled_from([(2, 3, 4, 5, 3), (3, 2, 2, 3)])),
    mean=st.lists(st.floats(-2, 2), min_size=3, max_size=3),
    std=st.lists(st.floats(0.05, 3), min_size=3, max_size=3),
    value_range=st.sampled_from([(0.0, 1.0), (0.0, 255.0), (-1.0, 1.0)]),
    order=st.sampled_from(["RGB", "BGR"]),
)
def test_normalize_matches_the_formula(clips, mean, std, value_range, order):
    out = data.normalize(clips, mean=mean, std=std, value_range=value_range, channel_order=order)
    lo, hi = value_range
    scaled = lo + clips.astype(np.float64) / 255.0 * (hi - lo)
    if order == "BGR":
        scaled = scaled[..., [2, 1, 0]]
    expected = (scaled - np.array(mean)) / np.array(std)
    assert out.dtype == np.float32 and out.shape == clips.shape
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)


def test_normalize_accepts_jax_arrays_and_scalars():
    import jax.numpy as jnp

    clips = np.arange(48, dtype=np.uint8).reshape(1, 4, 4, 3)
    out = data.normalize(jnp.asarray(clips), mean=0.5, std=0.25)
    np.testing.assert_allclose(np.asarray(out), (clips / 255.0 - 0.5) / 0.25, rtol=1e-5, atol=1e-5)


def test_normalize_rejects_bad_input():
    clips = np.zeros((2, 4, 4, 3), np.uint8)
    with pytest.raises(DTypeError, match="float32"):
        data.normalize(clips.astype(np.float32), mean=0, std=1)
    with pytest.raises(ShapeError, match=r"\(4, 4, 3\)"):
        data.normalize(clips[0], mean=0, std=1)
    with pytest.raises(OptionError, match="'YUV'"):
        data.normalize(clips, mean=0, std=1, channel_order="YUV")
    with pytest.raises(OptionError, match="std"):
        data.normalize(clips, mean=0, std=(1, 0, 1))
    with pytest.raises(ShapeError, match="mean"):
        data.normalize(clips, mean=(0, 0), std=1)
    with pytest.raises(NonFiniteError, match="nan"):
        data.normalize(clips, mean=float("nan"), std=1)
    with pytest.raises(OptionError, match="value_range"):
        data.normalize(clips, mean=0, std=1, value_range=(1.0, 0.0))


# ---------------------------------------------------------------------- loader


def _numbered(n: int) -> dict[str, np.ndarray]:
    """Example i is a clip filled with the value i, labelled i % 6."""
    video = np.broadcast_to(
        np.arange(n, dtype=np.uint8)[:, None, None, None, None], (n, 2, 3, 3, 3)
    ).copy()
    return {"video": video, "label": (np.arange(n) % 6).astype(np.int32)}


def _ids(batch) -> list[int]:
    # std=1, mean=0, value_range (0, 255): the video value is the example index.
    return np.rint(batch["video"][:, 0, 0, 0, 0]).astype(int).tolist()


KW = dict(mean=0.0, std=1.0, value_range=(0.0, 255.0))


def test_batches_are_seeded_epochwise_permutations():
    source = _numbered(10)
    batches = list(data.make_loader(source, batch_size=4, seed=7, num_epochs=3, **KW))
    assert [len(_ids(b)) for b in batches] == [4, 4, 2] * 3
    ids = [i for b in batches for i in _ids(b)]
    orders = [ids[10 * e : 10 * e + 10] for e in range(3)]
    for order in orders:
        assert sorted(order) == list(range(10))  # every example exactly once per epoch
    assert orders[0] != orders[1] != orders[2]  # reshuffled each epoch
    for b in batches:
        assert b["video"].dtype == np.float32 and b["label"].dtype == np.int32
        assert b["label"].tolist() == [i % 6 for i in _ids(b)]
    again = list(data.make_loader(source, batch_size=4, seed=7, num_epochs=3, **KW))
    assert [_ids(b) for b in again] == [_ids(b) for b in batches]
    other = list(data.make_loader(source, batch_size=4, seed=8, num_epochs=3, **KW))
    assert [_ids(b) for b in other] != [_ids(b) for b in batches]


def test_no_shuffle_drop_remainder_and_forever():
    source = _numbered(10)
    plain = list(data.make_loader(source, batch_size=4, seed=0, shuffle=False, **KW))
    assert [_ids(b) for b in plain] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    dropped = list(
        data.make_loader(
            source, batch_size=4, seed=0, shuffle=False, drop_remainder=True, num_epochs=2, **KW
        )
    )
    assert [_ids(b) for b in dropped] == [[0, 1, 2, 3], [4, 5, 6, 7]] * 2
    forever = iter(data.make_loader(source, batch_size=3, seed=0, num_epochs=None, **KW))
    assert len([next(forever) for _ in range(25)]) == 25
    with pytest.raises(ShapeError, match="fewer than one batch"):
        data.make_loader(source, batch_size=11, seed=0, drop_remainder=True, **KW)
    with pytest.raises(OptionError, match="batch_size"):
        data.make_loader(source, batch_size=0, seed=0, **KW)
    with pytest.raises(OptionError, match="'HSV'"):
        data.make_loader(source, batch_size=2, seed=0, mean=0, std=1, channel_order="HSV")


def test_iterator_state_resumes_exactly():
    source = _numbered(13)
    loader = data.make_loader(source, batch_size=3, seed=5, num_epochs=2, **KW)
    full = [_ids(b) for b in loader]
    it = iter(loader)
    head = [_ids(next(it)) for _ in range(6)]
    state = it.get_state()
    resumed = iter(data.make_loader(source, batch_size=3, seed=5, num_epochs=2, **KW))
    resumed.set_state(state)
    assert head + [_ids(b) for b in resumed] == full


def test_tfds_source_with_two_workers_gives_the_same_batches(tmp_path):
    source = data.load_source("synthetic_motion/tiny", "train", data_dir=tmp_path)
    kwargs = dict(batch_size=5, seed=3, num_epochs=2, mean=(0.4, 0.5, 0.6), std=0.25)
    in_process = list(data.make_loader(source, worker_count=0, **kwargs))
    workers = list(data.make_loader(source, worker_count=2, **kwargs))
    assert len(in_process) == len(workers) == 2 * 10
    for a, b in zip(in_process, workers, strict=True):
        assert a["video"].shape[1:] == (8, 32, 32, 3)
        np.testing.assert_array_equal(a["video"], b["video"])
        np.testing.assert_array_equal(a["label"], b["label"])
    first = in_process[0]
    expected = np.stack(
        [source[i]["video"] for i in np.random.default_rng([3, 0]).permutation(len(source))[:5]]
    )
    np.testing.assert_allclose(
        first["video"], data.normalize(expected, mean=(0.4, 0.5, 0.6), std=0.25), rtol=1e-6
    )
