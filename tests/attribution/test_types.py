"""The layer vocabulary (types.py), where the old names still resolve, and the
package's layering: what each attribution module may import."""

from __future__ import annotations

import ast
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from selrel_jax.attribution import composites, engine, rules, types
from selrel_jax.layers import AvgPool, GlobalAvgPool, MaxPool, Sum
from tests.house_rules import function_lengths

PACKAGE = Path(__file__).resolve().parents[2] / "selrel_jax" / "attribution"


def test_layer_vocabulary():
    assert types.CONV_TYPES == (nn.Conv,) and types.DENSE_TYPES == (nn.Dense,)
    assert types.LINEAR_TYPES == (nn.Conv, nn.Dense)
    assert types.PRIMITIVE_TYPES == (nn.Conv, nn.Dense, Sum, AvgPool, GlobalAvgPool, MaxPool,
                                     nn.Dropout, types.Softmax, types.Product,
                                     types.Normalization)  # fmt: skip
    assert types.path_str(("layer1_0", "conv1")) == "layer1_0/conv1"
    assert types.path_str(()) == "<root>"


def test_one_hot_seed():
    logits = jnp.array([[0.1, 2.0, -1.0], [3.0, 0.0, 1.0]])
    np.testing.assert_array_equal(np.asarray(types.one_hot_seed(logits, None)),
                                  [[0, 1, 0], [1, 0, 0]])  # fmt: skip
    np.testing.assert_array_equal(np.asarray(types.one_hot_seed(logits, jnp.array([2, 1]))),
                                  [[0, 0, 1], [0, 1, 0]])  # fmt: skip


def test_one_hot_seed_gives_a_nan_row_for_an_out_of_range_target():
    """Under jit a target can't be range-checked: its seed row is NaN, never the
    all-zero row of jax.nn.one_hot (which gives a plausible all-zero relevance)."""
    logits = jnp.zeros((3, 3))
    seed = np.asarray(jax.jit(types.one_hot_seed)(logits, jnp.array([1, 3, -1])))
    np.testing.assert_array_equal(seed[0], [0, 1, 0])
    assert np.isnan(seed[1:]).all()


def test_old_names_resolve_to_the_vocabulary():
    for name in ("CONV_TYPES", "DENSE_TYPES", "LINEAR_TYPES", "PRIMITIVE_TYPES"):
        assert getattr(composites, name) is getattr(types, name)
    assert engine.one_hot_seed is types.one_hot_seed and engine.path_str is types.path_str
    assert engine.UnsupportedLayerError is types.UnsupportedLayerError
    assert rules.LayerCall is types.LayerCall


def _imports(path: Path) -> set[str]:
    """Absolute names of the selrel_jax modules ``path`` imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("selrel_"):
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("selrel_jax")}
    return found


def _attribution_modules(names: set[str]) -> set[str]:
    prefix = "selrel_jax.attribution."
    return {n[len(prefix) :].split(".")[0] for n in names if n.startswith(prefix)}


def test_attribution_imports_nothing_to_its_right():
    right = ("selective", "metrics", "viz", "sweep", "train", "cli")
    for path in PACKAGE.glob("*.py"):
        bad = {n for n in _imports(path) if n.split(".")[1] in right}
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_gradients_and_the_vocabulary_do_not_import_the_lrp_engine():
    lrp_side = {"engine", "rules", "composites", "canonizers", "_planner", "_graph",
                "_frontends", "explain"}  # fmt: skip
    for name in ("gradients", "types", "registry"):
        used = _attribution_modules(_imports(PACKAGE / f"{name}.py"))
        assert not used & lrp_side, f"{name}.py imports {sorted(used & lrp_side)}"


def test_functions_are_short():
    """House rule: functions of at most ~60 lines."""
    long = {f: n for f, n in function_lengths(PACKAGE.glob("*.py")).items() if n > 60}
    assert not long, f"functions over 60 lines: {long}"
