"""Training loop: loss goes down, data order is pure, and a killed run resumes bit for bit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from selrel_jax.errors import OptionError, SelrelError
from selrel_jax.train import Clips, TrainConfig, batch_rows, epoch_order, evaluate, fit

CLIP = (8, 32, 32)  # the "tiny_biased" synthetic_motion config: a static cue, quick to learn
CONFIG = dict(batch_size=8, learning_rate=1e-2, warmup_epochs=0.5, checkpoint_every=3, seed=3)

# Builds the model and data the same way in this process and in the killed subprocess.
SETUP = textwrap.dedent(
    """
    from selrel_jax import models
    from selrel_jax.data import synthetic_motion
    from selrel_jax.train import Clips

    def setup():
        model = models.create("c3d_small", 6, width=0.25, clip_size=(8, 32, 32))
        info = models.ModelInfo.for_arch(
            "c3d_small", 6, class_names=synthetic_motion.CLASS_NAMES, width=0.25,
            clip_length=8, crop_size=(32, 32),
        )
        tr = synthetic_motion.generate_split("tiny_biased", "train", 0, 32)
        va = synthetic_motion.generate_split("tiny_biased", "validation", 0, 12)
        return model, info, Clips(tr["video"], tr["label"]), Clips(va["video"], va["label"])
    """
)
namespace: dict = {}
exec(SETUP, namespace)
setup = namespace["setup"]


def leaves(variables) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(variables)]


def test_epoch_order_is_a_pure_permutation():
    a, b = epoch_order(5, 2, 50), epoch_order(5, 2, 50)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.sort(a), np.arange(50))
    assert not np.array_equal(epoch_order(5, 2, 50), epoch_order(5, 3, 50))
    assert not np.array_equal(epoch_order(5, 2, 50), epoch_order(6, 2, 50))


def test_batch_rows_cover_an_epoch_once_and_drop_the_remainder():
    n, batch = 23, 5  # 4 full steps per epoch, 3 clips dropped
    for epoch in range(3):
        rows = np.concatenate([batch_rows(1, epoch * 4 + b, n, batch) for b in range(4)])
        assert rows.shape == (20,)
        assert len(set(rows.tolist())) == 20
        np.testing.assert_array_equal(rows, epoch_order(1, epoch, n)[:20])


def test_config_rejects_bad_values():
    with pytest.raises(OptionError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(OptionError, match="learning_rate"):
        TrainConfig(epochs=1, learning_rate=0.0)


def test_training_lowers_the_loss(tmp_path):
    model, info, train, val = setup()
    result = fit(
        model, info, train, val, config=TrainConfig(epochs=4, **CONFIG), out_dir=tmp_path,
        progress=False,
    )  # fmt: skip
    losses = [h["train_loss"] for h in result.history]
    assert len(losses) == 4
    assert losses[-1] < losses[0] - 0.05, losses
    # and the trained model fits its training clips better than the initial one did
    init = jax.jit(lambda key: model.init(key, np.zeros((1, *CLIP, 3), np.float32)))
    before = evaluate(model, init(jax.random.key(0, impl="rbg")), info, train)["loss"]
    after = evaluate(model, result.final_variables, info, train)["loss"]
    assert after < before - 0.05, (before, after)
    assert (tmp_path / "checkpoints" / "best").is_dir()
    assert 1 <= result.best_epoch <= 4
    assert result.best_val_accuracy == max(h["val_accuracy"] for h in result.history)


KILLED_RUN = SETUP + textwrap.dedent(
    """
    import os, signal, sys
    from selrel_jax.train import TrainConfig, fit

    kill_at = int(sys.argv[2])
    def on_step(step):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    model, info, train, val = setup()
    config = TrainConfig(epochs=3, **{config!r})
    fit(model, info, train, val, config=config, out_dir=sys.argv[1], progress=False,
        on_step=on_step)
    """
).format(config=CONFIG)


def test_killed_run_resumes_to_bitwise_identical_parameters(tmp_path):
    model, info, train, val = setup()
    config = TrainConfig(epochs=3, **CONFIG)  # 4 steps per epoch, 12 steps
    straight = fit(model, info, train, val, config=config, out_dir=tmp_path / "a", progress=False)

    # SIGKILL after step 7: the last checkpoint is step 6, so step 7 is replayed.
    out = tmp_path / "b"
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, str(out), "7"], capture_output=True, text=True
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert sorted(os.listdir(out / "checkpoints" / "latest")) == ["6"]

    # An in-process interruption (an exception) after step 10, then the same call again.
    def interrupt(step):
        if step == 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(model, info, train, val, config=config, out_dir=out, progress=False,
            on_step=interrupt)  # fmt: skip
    resumed = fit(model, info, train, val, config=config, out_dir=out, progress=False)

    a, b = leaves(straight.final_variables), leaves(resumed.final_variables)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y)
    for x, y in zip(leaves(straight.best_variables), leaves(resumed.best_variables), strict=True):
        assert np.array_equal(x, y)

    def strip(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert strip(resumed.history) == strip(straight.history)
    assert resumed.best_epoch == straight.best_epoch

    # A finished run only reloads; other settings in the same directory are refused.
    again = fit(model, info, train, val, config=config, out_dir=out, progress=False)
    for x, y in zip(a, leaves(again.final_variables), strict=True):
        assert np.array_equal(x, y)
    other = TrainConfig(epochs=3, **{**CONFIG, "seed": 4})
    with pytest.raises(SelrelError, match="other settings"):
        fit(model, info, train, val, config=other, out_dir=out, progress=False)


def test_fit_rejects_mismatched_clips(tmp_path):
    model, info, train, val = setup()
    wrong = Clips(np.zeros((16, 8, 16, 16, 3), np.uint8), np.zeros(16, np.int32))
    with pytest.raises(SelrelError, match=r"\(8, 16, 16\)"):
        fit(model, info, wrong, val, config=TrainConfig(epochs=1), out_dir=tmp_path)
    with pytest.raises(OptionError, match="batch size"):
        fit(model, info, train, val, config=TrainConfig(epochs=1, batch_size=64), out_dir=tmp_path)
