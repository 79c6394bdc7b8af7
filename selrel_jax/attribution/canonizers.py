"""Canonizer: BatchNorm merged into the conv/dense layer whose output it receives.

The LRP rules are defined for ``z = W a + b``; a BatchNorm after a conv or
dense layer is an affine map of ``z``, so the pair is one linear layer with
``W' = W * gamma / sqrt(var + eps)`` and ``b' = (b - mean) * gamma /
sqrt(var + eps) + beta`` (spec: lrp-rules.md, "Canonization"). The engine runs
that merged layer under the layer's rule, whatever the rule (including the
plain gradient), and lets the BatchNorm pass its input through.

:class:`BatchNormPairing` finds the pairs while the engine's planning trace
runs: it sees every conv/dense output, every BatchNorm call and every module
call's inputs. The merge is only exact when nothing else reads the conv/dense
output (else that reader would see the merged, normalised value), so a second
module call receiving it is an :class:`UnsupportedLayerError`. Functional reuse
(``x + conv(x)`` written inline) is invisible to it, like every functional
operation.

Example::

    pairing = BatchNormPairing()
    pairing.linear_output(("conv",), y)            # during the trace
    pairing.batchnorm(bn_module, (y,), {})
    pairing.check_reuse()                          # after it
    params = merge_batchnorm(conv_params, pairing.merges[("conv",)], variables)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from selrel_jax.attribution.types import UnsupportedLayerError, path_str
from selrel_jax.errors import OptionError

__all__ = ["BatchNormInfo", "BatchNormPairing", "check_batchnorm", "merge_batchnorm"]

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class BatchNormInfo:
    """What the merge needs of one BatchNorm: where its variables live and its settings."""

    path: Path
    epsilon: float
    use_scale: bool
    use_bias: bool


def check_batchnorm(module: nn.BatchNorm, args: tuple, kwargs: dict) -> None:
    """A mergeable BatchNorm uses running averages and normalises the channel axis."""
    where = path_str(module.path)
    use_avg = kwargs.get("use_running_average", args[1] if len(args) > 1 else None)
    use_avg = module.use_running_average if use_avg is None else use_avg
    if not use_avg:
        raise OptionError(
            f"BatchNorm at '{where}' uses batch statistics (train mode); relevance needs "
            f"use_running_average=True"
        )
    axis = module.axis if isinstance(module.axis, int) else tuple(module.axis)
    if axis not in (-1, args[0].ndim - 1):
        raise UnsupportedLayerError(
            f"BatchNorm at '{where}' normalises axis {axis!r}; only the channel axis (-1) "
            f"can be merged into the preceding layer"
        )


def _subtree(tree: Mapping, path: Path) -> Mapping:
    for name in path:
        tree = tree[name]
    return tree


def merge_batchnorm(params: Mapping, info: BatchNormInfo, variables: Mapping) -> dict:
    """Conv/dense ``params`` with the BatchNorm at ``info.path`` folded in
    (a missing bias counts as zeros; the result always has one)."""
    stats = _subtree(variables["batch_stats"], info.path)
    bn = _subtree(variables["params"], info.path) if (info.use_scale or info.use_bias) else {}
    scale = jax.lax.rsqrt(stats["var"] + info.epsilon)
    if info.use_scale:
        scale = scale * bn["scale"]
    kernel = params["kernel"]
    bias = params.get("bias", jnp.zeros(kernel.shape[-1], kernel.dtype))
    new_bias = (bias - stats["mean"]) * scale
    if info.use_bias:
        new_bias = new_bias + bn["bias"]
    return {"kernel": kernel * scale.astype(kernel.dtype), "bias": new_bias.astype(kernel.dtype)}


def _is_within(path: Path, ancestor: Path) -> bool:
    return path[: len(ancestor)] == ancestor


class BatchNormPairing:
    """Pairs each BatchNorm with the conv/dense layer whose output it receives,
    during one abstract trace of the model (arrays are matched by identity)."""

    def __init__(self) -> None:
        self.merges: dict[Path, BatchNormInfo] = {}
        # id -> (array, conv/dense path); the array reference keeps its id unique.
        self._outputs: dict[int, tuple[Any, Path]] = {}
        self._readers: dict[int, list[Path]] = {}
        self._normalised: set[int] = set()  # ids of outputs a BatchNorm received

    @property
    def merged_batchnorms(self) -> frozenset[Path]:
        return frozenset(info.path for info in self.merges.values())

    def _source(self, x: Any) -> Path | None:
        entry = self._outputs.get(id(x))
        return entry[1] if entry is not None and entry[0] is x else None

    def linear_output(self, path: Path, out: Any) -> None:
        """Record the output of the conv/dense layer at ``path``."""
        self._outputs[id(out)] = (out, path)

    def module_inputs(self, path: Path, args: tuple, kwargs: dict) -> None:
        """Record which recorded outputs the module call at ``path`` reads."""
        for leaf in jax.tree.leaves((args, kwargs)):
            if self._source(leaf) is not None:
                self._readers.setdefault(id(leaf), []).append(path)

    def batchnorm(self, module: nn.BatchNorm, args: tuple, kwargs: dict) -> None:
        """Pair the BatchNorm call with the layer whose output it normalises."""
        check_batchnorm(module, args, kwargs)
        path = tuple(module.path)
        source = self._source(args[0])
        if source is None:
            raise UnsupportedLayerError(
                f"BatchNorm at '{path_str(path)}' does not directly follow a conv/dense "
                f"layer, so it cannot be merged (canonizer); no rule covers it"
            )
        known = self.merges.get(source)
        if known is not None and known.path != path:
            raise UnsupportedLayerError(
                f"'{path_str(source)}' feeds two BatchNorms, '{path_str(known.path)}' and "
                f"'{path_str(path)}'; only one can be merged into it"
            )
        self.merges[source] = BatchNormInfo(
            path, float(module.epsilon), bool(module.use_scale), bool(module.use_bias)
        )
        self._normalised.add(id(args[0]))

    def check_reuse(self) -> None:
        """After the trace: a merged layer's output must be read by its BatchNorm
        only (and the containers around that BatchNorm, which hand it down),
        and every call of a merged layer must feed that BatchNorm."""
        for x, source in self._outputs.values():
            info = self.merges.get(source)
            if info is None:
                continue
            if id(x) not in self._normalised:
                raise UnsupportedLayerError(
                    f"'{path_str(source)}' is called more than once and only some calls "
                    f"feed the BatchNorm '{path_str(info.path)}'; the merged weights would "
                    f"apply to every call"
                )
            for reader in self._readers.get(id(x), ()):
                if not _is_within(info.path, reader):
                    raise UnsupportedLayerError(
                        f"output of '{path_str(source)}' feeds the merged BatchNorm "
                        f"'{path_str(info.path)}' and also module '{path_str(reader)}'; "
                        f"merging would change what '{path_str(reader)}' sees. Apply the "
                        f"BatchNorm before reusing the output, or give the layer no BatchNorm"
                    )
