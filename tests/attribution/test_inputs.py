"""The relevance methods' policy for bad input (private module ``_inputs``):
eager calls raise a one-line SelrelError naming the argument; under jit an
invalid value makes every relevance value of its clip NaN and leaves the other
clips untouched; ``checked=True`` raises under checkify instead."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import selrel_jax as sr
from selrel_jax.attribution import METHODS as METHOD_NAMES
from selrel_jax.attribution import gradients, registry
from selrel_jax.errors import DTypeError, NonFiniteError, OptionError, ShapeError
from tests.attribution.flax_nets import ResNet, with_positive_batch_stats

# ResNet has BatchNorm (merged by the canonizer), a residual Sum and a conv for Grad-CAM.
METHODS = {
    "gradient": {},
    "gradient_x_input": {},
    "integrated_gradients": {"steps": 3},
    "smoothgrad": {"samples": 2},
    "grad_cam": {},
    "occlusion": {"window": (1, 2, 2)},
    "baseline.frame_difference": {},
    "baseline.input_sobel": {},
    "lrp.epsilon_plus_flat": {},
    "lrp.epsilon_gamma_box": {"low": -3.0, "high": 3.0},
    "lrp.epsilon_alpha2_beta1": {},
}
TARGET = jnp.array([0, 2, 1])


@pytest.fixture(scope="module")
def problem(normal_clips, random_variables):
    model = ResNet(batchnorm=True)
    x = normal_clips((3, 2, 4, 4, 2), 40)
    v = with_positive_batch_stats(random_variables(model, x, 41))
    return model, v, x


@pytest.fixture(scope="module")
def jitted():
    """One compiled explainer per method, shared by the tests below."""
    cache: dict = {}

    def get(model, method):
        if method not in cache:
            cache[method] = jax.jit(sr.make_explainer(model, method, **METHODS[method]))
        return cache[method]

    return get


def _with_bad_values(x):
    """Clip 0 gets a NaN, clip 2 an infinite value; clip 1 stays clean."""
    bad = np.array(x)
    bad[0, 1, 2, 3, 0] = np.nan
    bad[2, 0, 0, 0, 1] = -np.inf
    return jnp.asarray(bad)


def _assert_nan_clips(got, clean, nan_clips):
    got, clean = np.asarray(got), np.asarray(clean)
    for n in range(len(got)):
        if n in nan_clips:
            assert np.isnan(got[n]).all(), f"clip {n} is not all NaN"
        else:
            np.testing.assert_allclose(got[n], clean[n], rtol=1e-6, atol=1e-9 * np.abs(clean).max())


# ---------------------------------------------------------------- case 1: NaN / Inf clips


@pytest.mark.parametrize("method", sorted(METHODS))
def test_nonfinite_clips_raise_nonfinite_error_eagerly(problem, method):
    model, v, x = problem
    bad = _with_bad_values(x)
    message = r"2 non-finite values \(1 NaN, 1 infinite\) in clip\(s\) \[0, 2\]"
    with pytest.raises(NonFiniteError, match=message):
        sr.explain(model, v, bad, TARGET, method, **METHODS[method])
    with pytest.raises(NonFiniteError, match=message):
        sr.make_explainer(model, method, **METHODS[method])(v, bad, TARGET)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_nonfinite_clips_give_nan_relevance_under_jit_and_leave_other_clips_untouched(
    problem, jitted, method
):
    model, v, x = problem
    fn = jitted(model, method)
    _assert_nan_clips(fn(v, _with_bad_values(x), TARGET), fn(v, x, TARGET), {0, 2})


# ---------------------------------------------------------------- case 4: target out of range


@pytest.mark.parametrize("method", sorted(METHODS))
def test_out_of_range_target_under_jit_gives_nan_for_that_clip(problem, jitted, method):
    model, v, x = problem
    fn = jitted(model, method)
    clean = fn(v, x, TARGET)
    _assert_nan_clips(fn(v, x, jnp.array([0, 3, -1])), clean, {1, 2})


def test_eager_out_of_range_target_raises_through_make_explainer_too(problem):
    model, v, x = problem
    for method in ("gradient", "lrp.epsilon_plus_flat"):
        with pytest.raises(OptionError, match=r"target \[3\] out of range for 3 classes"):
            sr.make_explainer(model, method)(v, x, jnp.array([0, 3, 1]))


def test_a_traced_int64_target_beyond_int32_is_out_of_range_not_wrapped():
    """Under jax_enable_x64 a traced int64 target 2**32 + 1 was cast to int32 before its
    range check and explained as class 1; it is out of range: NaN for its clip (eager
    calls raise). Without x64, jax.jit itself converts an int64 argument to int32 before
    any of the library's code sees it (docs/robustness.md, the limits)."""
    code = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        import selrel_jax as sr
        from selrel_jax import metrics
        def apply_fn(p, x): return x.mean(axis=(1, 2, 3)) @ p
        p, x = jnp.ones((3, 4), jnp.float32), jnp.ones((2, 3, 4, 4, 3), jnp.float32)
        t = np.array([2**32 + 1, 0], np.int64)
        for method in ("gradient", "gradient_x_input", "lrp.epsilon_plus_flat"):
            r = np.asarray(jax.jit(sr.make_explainer(apply_fn, method))(p, x, t))
            print(method, bool(np.isnan(r[0]).all()), bool(np.isfinite(r[1]).all()))
        f = jax.jit(lambda x, t: metrics.frame_freezing(lambda c: apply_fn(p, c), x, t).original)
        print("frame_freezing", *np.isnan(np.asarray(f(x, t))).tolist())
    """)
    env = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:4] == [
        "gradient True True",
        "gradient_x_input True True",
        "lrp.epsilon_plus_flat True True",
        "frame_freezing True False",
    ]


# ---------------------------------------------------------------- traced options


def test_traced_nonfinite_baseline_gives_nan_for_the_affected_clips(problem):
    model, v, x = problem

    def run(baseline):
        return sr.make_explainer(model, "integrated_gradients", steps=2, baseline=baseline)(
            v, x, TARGET
        )

    fn = jax.jit(run)
    clean = fn(jnp.zeros(x.shape))
    baseline = np.zeros(x.shape, np.float32)
    baseline[1, 0, 0, 0, 0] = np.nan
    _assert_nan_clips(fn(jnp.asarray(baseline)), clean, {1})
    _assert_nan_clips(fn(jnp.float32(np.inf)), clean, {0, 1, 2})  # a scalar: every clip


# ---------------------------------------------------------------- checkify


@pytest.mark.parametrize("method", ["lrp.epsilon_plus_flat", "smoothgrad"])
def test_checked_explainer_raises_under_checkify(problem, method):
    model, v, x = problem
    explainer = sr.make_explainer(model, method, checked=True, **METHODS[method])
    fn = jax.jit(checkify.checkify(explainer))
    error, relevance = fn(v, x, TARGET)
    assert error.get() is None and np.isfinite(np.asarray(relevance)).all()
    error, _ = fn(v, _with_bad_values(x), TARGET)
    with pytest.raises(checkify.JaxRuntimeError, match="clips hold NaN or infinite values"):
        error.throw()
    error, _ = fn(v, x, jnp.array([0, 5, 1]))
    with pytest.raises(checkify.JaxRuntimeError, match="target out of range for 3 classes"):
        error.throw()


# ---------------------------------------------------------------- case 7: hostile arguments


class ReturnsVector(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1, name="fc")(x.reshape(x.shape[0], -1))[:, 0]


class ReturnsTuple(nn.Module):
    @nn.compact
    def __call__(self, x):
        logits = nn.Conv(3, (1, 1, 1), name="conv")(x).mean(axis=(1, 2, 3))
        return logits, logits


def _odd_model(cls, x):
    model = cls()
    return model, model.init(jax.random.key(0), x)


HOSTILE = {
    # name: (call(model, v, x), error, message)
    "clips_of_rank_4_gradient": (
        lambda m, v, x: sr.make_explainer(m, "gradient")(v, x[0]),
        ShapeError, r"clips must have shape \(N, T, H, W, C\); got shape \(2, 4, 4, 2\)"),
    "clips_of_rank_4_lrp": (
        lambda m, v, x: sr.make_explainer(m, "lrp.epsilon")(v, x[0]),
        ShapeError, r"clips must have shape \(N, T, H, W, C\)"),
    "clips_of_rank_4_direct_gradient_call": (
        lambda m, v, x: gradients.smoothgrad(lambda c: m.apply(v, c), x[0]),
        ShapeError, r"clips must have shape \(N, T, H, W, C\)"),
    "int_clips": (
        lambda m, v, x: sr.make_explainer(m, "gradient_x_input")(v, x.astype(jnp.int32)),
        DTypeError, "clips must be a float array"),
    "zero_clips": (
        lambda m, v, x: sr.explain(m, v, x[:0], None, "gradient"),
        ShapeError, "at least one clip"),
    "zero_clips_lrp": (
        lambda m, v, x: sr.make_explainer(m, "lrp.epsilon")(v, x[:0]),
        ShapeError, "at least one clip"),
    "target_of_shape_n_1": (
        lambda m, v, x: sr.make_explainer(m, "lrp.epsilon")(v, x, jnp.array([[0], [1], [2]])),
        ShapeError, r"target must have shape \(3,\) \(one class per clip\); got \(3, 1\)"),
    "string_target": (
        lambda m, v, x: sr.make_explainer(m, "gradient")(v, x, "cat"),
        ShapeError, r"target must have shape \(3,\).*got a scalar"),
    "string_targets": (
        lambda m, v, x: sr.make_explainer(m, "gradient")(v, x, np.array(["a", "b", "c"])),
        DTypeError, "target must be an int array"),
    "bool_target": (
        lambda m, v, x: sr.make_explainer(m, "grad_cam")(v, x, np.array([True, False, True])),
        DTypeError, "target must be an int array; got dtype bool"),
    "float_target_traced": (
        lambda m, v, x: jax.jit(sr.make_explainer(m, "gradient"))(v, x, jnp.zeros(3)),
        DTypeError, "target must be an int array"),
    "method_not_a_string": (
        lambda m, v, x: sr.explain(m, v, x, None, ["gradient"]),
        OptionError, r"unknown method \['gradient'\]; choose one of"),
    "model_returning_a_vector_lrp": (
        lambda m, v, x: sr.make_explainer(*_odd_model(ReturnsVector, x)[:1], "lrp.epsilon")(
            _odd_model(ReturnsVector, x)[1], x),
        ShapeError, r"to logits \(N, classes\); got shape \(3,\)"),
    "model_returning_a_vector_gradient": (
        lambda m, v, x: sr.make_explainer(*_odd_model(ReturnsVector, x)[:1], "gradient")(
            _odd_model(ReturnsVector, x)[1], x),
        ShapeError, r"to logits \(N, classes\); got shape \(3,\)"),
    "model_returning_a_tuple_lrp": (
        lambda m, v, x: sr.explain(*_odd_model(ReturnsTuple, x), x, None, "lrp.epsilon"),
        ShapeError, "to one logits array .*; got a tuple of 2 arrays"),
    "model_returning_a_tuple_gradient": (
        lambda m, v, x: sr.make_explainer(*_odd_model(ReturnsTuple, x)[:1], "smoothgrad")(
            _odd_model(ReturnsTuple, x)[1], x),
        ShapeError, "to one logits array .*; got a tuple of 2 arrays"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_arguments_raise_one_line_selrel_errors(problem, case):
    model, v, x = problem
    call, error, message = HOSTILE[case]
    with pytest.raises(error, match=message) as info:
        call(model, v, x)
    assert "\n" not in str(info.value)


# Every registered method with an option of the wrong type (or out of range).
BAD_OPTIONS = [
    ("integrated_gradients", {"steps": "2"}, OptionError, "steps must be a positive int"),
    ("integrated_gradients", {"chunk_size": 1.5}, OptionError, "chunk_size must be a positive"),
    ("integrated_gradients", {"baseline": "zeros"}, OptionError,
     "baseline must be a real number or array of them; got 'zeros'"),
    ("integrated_gradients", {"baseline": np.array([0.0, np.nan])}, OptionError,
     r"baseline holds 1 non-finite values"),
    ("integrated_gradients", {"baseline": np.zeros(3)}, ShapeError,
     r"baseline of shape \(3,\) does not broadcast to clips"),
    ("smoothgrad", {"samples": None}, OptionError, "samples must be a positive int"),
    ("smoothgrad", {"noise_level": "0.1"}, OptionError, "noise_level must be a finite number"),
    ("smoothgrad", {"key": 0.5}, OptionError, "smoothgrad key must be a JAX PRNG key"),
    ("smoothgrad", {"key": 2**70}, OptionError, r"an int in \[0, 2\*\*32\)"),  # not Overflow
    ("smoothgrad", {"key": np.uint64(2**63)}, OptionError, r"an int in \[0, 2\*\*32\)"),
    ("smoothgrad", {"key": -1}, OptionError, r"an int in \[0, 2\*\*32\)"),
    ("grad_cam", {"layer": 3}, OptionError, r"grad_cam layer must be a module path \(str\)"),
    ("grad_cam", {"layer": "nope"}, OptionError, "grad_cam layer 'nope' not found"),
    ("lrp.epsilon", {"epsilon": "small"}, OptionError, "Epsilon epsilon must be a finite"),
    ("lrp.zplus", {"stabilizer": True}, OptionError, "ZPlus stabilizer must be a finite"),
    ("lrp.epsilon_plus", {"epsilon": None}, OptionError, "Epsilon epsilon must be a finite"),
    ("lrp.epsilon_plus_flat", {"stabilizer": -1.0}, OptionError, "stabilizer must be a finite"),
    ("lrp.epsilon_gamma_box", {"low": None, "high": 1.0}, OptionError,
     "ZBox low must be a real number or array of them; got None"),
    ("lrp.epsilon_gamma_box", {"low": -1.0, "high": "1"}, OptionError,
     "ZBox high must be a real number"),
    ("lrp.epsilon_gamma_box", {"low": -1.0, "high": 1.0, "gamma": "x"}, OptionError,
     "Gamma gamma must be a finite number"),
    ("lrp.epsilon_alpha2_beta1", {"alpha": "2"}, OptionError, "AlphaBeta alpha must be a finite"),
    ("lrp.epsilon_alpha2_beta1_flat", {"beta": None}, OptionError,
     "AlphaBeta beta must be a finite"),
    ("lrp.dtd", {"low": -1.0, "high": [1.0, np.inf]}, OptionError,
     r"ZBox high holds 1 non-finite values"),
    ("lrp.dtd", {"low": 1.0, "high": -1.0}, OptionError, "ZBox needs low <= high everywhere"),
    ("lrp.attn", {"gate_constant": "yes"}, OptionError,
     "Uniform gate_constant must be one of True, False; got 'yes'"),
    ("lrp.attn", {"epsilon": -1.0}, OptionError, "Epsilon epsilon must be a finite"),
    ("lrp.cp", {"stabilizer": "x"}, OptionError, "stabilizer must be a finite"),
    ("occlusion", {"window": (1, 2)}, OptionError, r"window must be 3 positive ints"),
    ("occlusion", {"window": (1, 9, 2)}, ShapeError, r"occlusion window \(1, 9, 2\) is larger"),
    ("occlusion", {"baseline": "zeros"}, OptionError, "baseline must be a real number"),
    ("baseline.random", {"key": -1}, OptionError, "baseline.random key must be a JAX PRNG key"),
    ("baseline.input_sobel", {"temporal_padding": None}, OptionError,
     "temporal_padding must be one of zero, edge; got None"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "options", "error", "message"), BAD_OPTIONS)
def test_options_of_the_wrong_type_raise_for_every_method(problem, method, options, error, message):
    model, v, x = problem
    with pytest.raises(error, match=message) as info:
        sr.explain(model, v, x, TARGET, method, **options)
    assert "\n" not in str(info.value)


def test_every_method_has_a_bad_option_case():
    with_options = {m for m in METHOD_NAMES if registry.get(m).options}
    assert with_options <= {case[0] for case in BAD_OPTIONS}
