"""Method registry: options come from the registered functions' signatures, the
errors name the method and its valid options, and the method table of
docs/methods.md says exactly what the registry holds."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

import selrel_jax as sr
from selrel_jax import attribution
from selrel_jax.attribution import (
    Composite,
    baselines,
    composites,
    gradients,
    lrp,
    registry,
    rules,
)
from selrel_jax.attribution.registry import REQUIRED, register_composite
from selrel_jax.errors import OptionError

METHODS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "methods.md"
explain_module = importlib.import_module("selrel_jax.attribution.explain")


def test_methods_are_the_registered_functions():
    assert explain_module.METHODS == (
        "gradient", "gradient_x_input", "integrated_gradients", "smoothgrad", "grad_cam",
        "occlusion",
        "lrp.epsilon", "lrp.zplus", "lrp.epsilon_plus", "lrp.epsilon_plus_flat",
        "lrp.epsilon_gamma_box", "lrp.epsilon_alpha2_beta1", "lrp.epsilon_alpha2_beta1_flat",
        "lrp.dtd", "lrp.attn", "lrp.cp", "baseline.random", "baseline.frame_difference",
        "baseline.input_sobel",
    )  # fmt: skip
    assert attribution.METHODS == explain_module.METHODS
    assert registry.get("smoothgrad").build is gradients.smoothgrad
    assert registry.get("lrp.epsilon_gamma_box").build is composites.epsilon_gamma_box
    assert registry.get("lrp.attn").build is composites.attn
    assert registry.get("lrp.zplus").family == "lrp"
    assert registry.get("baseline.random").build is baselines.random_map
    assert registry.get("baseline.input_sobel").family == "baseline"
    assert explain_module.BASELINE_METHODS == registry.method_names("baseline")


def test_options_are_keyword_only_parameters_with_their_defaults():
    assert registry.get("integrated_gradients").options == {
        "steps": 20, "baseline": None, "chunk_size": None
    }  # fmt: skip
    box = registry.get("lrp.epsilon_gamma_box")
    assert box.options == {"low": REQUIRED, "high": REQUIRED, "gamma": 0.25,
                           "epsilon": 1e-6, "stabilizer": 1e-6}  # fmt: skip
    assert box.required == ("low", "high")
    assert registry.get("gradient").options == {}
    assert registry.get("occlusion").options == {
        "window": (2, 8, 8), "strides": None, "baseline": 0.0, "chunk_size": 8
    }  # fmt: skip
    assert registry.get("lrp.zplus").options == {"stabilizer": 1e-6}
    dtd = registry.get("lrp.dtd")
    assert dtd.options == {"low": REQUIRED, "high": REQUIRED, "stabilizer": 1e-6}
    assert dtd.build is composites.dtd


@pytest.mark.parametrize(
    ("method", "options", "message"),
    [
        ("lrp.nope", {}, r"unknown method 'lrp.nope'; choose one of gradient, .*lrp.epsilon,"),
        (3, {}, "unknown method 3"),
        ("lrp.epsilon", {"gamma": 0.3},
         r"unknown option\(s\) \['gamma'\] for method 'lrp.epsilon'; valid: "
         r"epsilon=1e-06, stabilizer=1e-06"),
        ("gradient", {"steps": 3}, r"for method 'gradient'; valid: none"),
        ("lrp.epsilon_gamma_box", {"low": 0.0},
         r"method 'lrp.epsilon_gamma_box' needs high=; options: low, high, gamma=0.25"),
        ("lrp.epsilon_gamma_box", {}, r"needs low= and high="),
    ],
)  # fmt: skip
def test_resolve_errors_name_the_method_and_valid_options(method, options, message):
    with pytest.raises(OptionError, match=message):
        registry.resolve(method, options)


def test_a_registered_composite_is_a_method(normal_clips, random_variables):
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.relu(nn.Conv(3, (1, 2, 2), name="conv")(x))
            return nn.Dense(2, name="fc")(h.mean(axis=(1, 2, 3)))

    @register_composite("test_all_gamma")
    def all_gamma(*, gamma: float = 0.25) -> Composite:
        return Composite(((nn.Conv, rules.Gamma(gamma)), (nn.Dense, rules.Epsilon())))

    try:
        x = normal_clips((1, 2, 3, 3, 2), 3)
        v = random_variables(Net(), x, 4)
        got = sr.make_explainer(Net(), "lrp.test_all_gamma", gamma=0.5)(v, x, jnp.array([1]))
        want = lrp(Net(), all_gamma(gamma=0.5))(v, x, jnp.array([1]))
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)
        with pytest.raises(OptionError, match="already registered"):
            register_composite("test_all_gamma")(lambda *, gamma=1.0: None)
    finally:
        registry._METHODS.pop("lrp.test_all_gamma")


# ---------------------------------------------------------------- docs/methods.md table


def _option_specs(cell: str) -> tuple[list[str], str]:
    """The backticked items of an options cell outside parentheses, and the rest of the
    text outside parentheses (explanations, which may hold backticks and commas, are
    in parentheses; a default may hold both too, inside its backticks)."""
    specs, rest, depth, i = [], [], 0, 0
    while i < len(cell):
        if cell[i] == "`":
            end = cell.index("`", i + 1)
            if depth == 0:
                specs.append(cell[i + 1 : end])
            i = end + 1
            continue
        depth += (cell[i] == "(") - (cell[i] == ")")
        if depth == 0 and cell[i] != ")":
            rest.append(cell[i])
        i += 1
    return specs, "".join(rest)


def _documented_method_table() -> dict[str, dict[str, object]]:
    """{method: {option: default or REQUIRED}} from the method table of docs/methods.md.

    Rows are ``| `method` | what it is | options |``; the options cell lists
    `name=default` (a Python literal) or `name` (required), comma-separated,
    each optionally followed by an explanation in parentheses, or "—"."""
    text = METHODS_PAGE.read_text()
    table = text[text.index("| method | what it is | options |") :]
    table = table[: table.index("\n\n")]
    rows = {}
    for line in table.splitlines()[2:]:
        name_cell, _, options_cell = (c.strip() for c in line.strip().strip("|").split("|"))
        (name,) = re.fullmatch(r"`([\w.]+)`", name_cell).groups()
        specs, rest = _option_specs(options_cell)
        options: dict[str, object] = {}
        if options_cell != "—":
            assert re.fullmatch(r"[\s,]*", rest), f"docs/methods.md row {name}: stray {rest!r}"
            for item in specs:
                spec = re.fullmatch(r"(\w+)(?:=(.+))?", item)
                assert spec, f"docs/methods.md row {name}: cannot read option {item!r}"
                key, default = spec.groups()
                options[key] = REQUIRED if default is None else ast.literal_eval(default)
        rows[name] = options
    return rows


def test_documented_method_table_matches_the_registry():
    table = _documented_method_table()
    assert tuple(table) == explain_module.METHODS
    for method, options in table.items():
        registered = dict(registry.get(method).options)
        assert options == registered, method
        assert list(options) == list(registered), f"{method}: option order"
