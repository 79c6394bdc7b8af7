"""Which rule each operation of a traced model gets: the LRP engine's plan.
Private: :mod:`~selrel_jax.attribution.engine` runs the plan.

Every operation on the relevance path (a floating value between the clips and
the logits) of the flat graph (:mod:`~selrel_jax.attribution._graph`) is
assigned, in trace order:

* ``conv_general_dilated`` / ``dot_general`` with one clip-dependent operand
  start a *linear layer* (kind ``nn.Conv`` / ``nn.Dense``); the elementwise
  steps after it whose other operand depends only on parameters and varies per
  output channel (its bias add, a BatchNorm in inference, written any way) are
  merged into it (:mod:`~selrel_jax.attribution.canonizers`) while each is the
  only reader of the value before it;
* an addition or subtraction of two activations, and chains of them, is a
  *sum* (kind ``Sum``); ``reduce_sum`` (``jnp.mean``, ``jnp.sum``) and
  ``reduce_window_sum`` (``nn.avg_pool``), with the constant scaling after
  them, are *pooling* (kinds ``GlobalAvgPool``, ``AvgPool``); by default all
  get the Norm rule;
* ``reduce_window_max`` / ``reduce_max`` (and min) are *max pooling* (kind
  ``MaxPool``): plain gradient by default;
* elementwise operations of one activation (``nn.relu``, ``jnp.tanh``,
  ``jnp.maximum(x, 0)``, a GELU written out, in-model normalisation) form a
  *Pass region* rooted at that activation: relevance passes through unchanged;
* shape-only operations (reshape, transpose, broadcast, slice, concatenate,
  stack, pad, gather, ...) keep their exact gradient;
* a softmax (kind ``Softmax``, from its logits), a product of two activations
  (``Product``: attention's ``q k^T`` and ``attn v``, a gate; its inputs marked
  when they are sigmoid or softmax outputs) and an activation times or over
  its own statistics (``Normalization``, the statistics held constant, the
  affine map after it merged), found by
  :mod:`~selrel_jax.attribution._structures`; a parameter array added to an
  activation that no linear layer can take (a position embedding) is a
  ``Sum``. Composites give them rules by kind (``lrp.attn``, ``lrp.cp``).

A layer's path is the path of the parameter it consumes (``conv1/kernel`` ->
``conv1``); a parameter-free layer of a linen model has the path of the
module that computes it. Anything else on the relevance path raises
:class:`UnsupportedLayerError` naming the primitive and its source line.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax

from selrel_jax.attribution._graph import (
    ELEMENTWISE,
    RELABEL,
    Analysis,
    Atom,
    Graph,
    Node,
    analyse,
    follow_axes,
    varying_axes,
)
from selrel_jax.attribution._structures import Structures, find_structures
from selrel_jax.attribution.canonizers import AffineStep, affine_step, linear_axes
from selrel_jax.attribution.composites import Composite
from selrel_jax.attribution.rules import Gradient, Rule
from selrel_jax.attribution.types import (
    Normalization,
    Product,
    Softmax,
    UnsupportedLayerError,
    path_str,
)
from selrel_jax.layers import AvgPool, GlobalAvgPool, MaxPool, Sum

__all__ = ["Layer", "Plan", "Region", "Structures", "find_structures", "make_plan"]

Path = tuple[str, ...]

_LINEAR = {"conv_general_dilated": nn.Conv, "dot_general": nn.Dense}
_SUMS = frozenset({"add", "add_any", "sub"})
_POOLS = {"reduce_sum": GlobalAvgPool, "reduce_window_sum": AvgPool}
_MAX_POOLS = frozenset({"reduce_max", "reduce_min", "reduce_window_max", "reduce_window_min"})
_SHAPE_OPS = frozenset({
    "reshape", "transpose", "broadcast_in_dim", "squeeze", "expand_dims", "slice",
    "dynamic_slice", "dynamic_update_slice", "concatenate", "stack", "pad", "rev", "gather",
    "split", "copy", "copy_p", "sharding_constraint", "reduce_precision", "convert_element_type",
})  # fmt: skip


_PRODUCTS = frozenset({"mul", "div", "dot_general", "conv_general_dilated"})
_PRODUCT_REASON = (
    "it divides by an activation that is neither a softmax's sum nor a statistic of the "
    "activation divided (a variance or norm of it, as in LayerNorm), which no rule covers; "
    "explain the model with a gradient method (method='gradient', "
    "'integrated_gradients', ...) or leave that block out"
)
# Primitives the engine refuses whatever their operands, with the reason.
_REASONS = (
    (frozenset({"scan", "while"}),
     "it is a loop the engine cannot write out step by step (a lax.while_loop, a "
     "fori_loop with bounds that depend on values, or a lax.scan / nn.scan of more than "
     "64 steps); write the repeated layers out with a Python for loop"),
    (frozenset({"cond", "switch"}),
     "it is control flow (lax.cond / lax.switch) whose branch depends on the clips; "
     "compute both branches and pick one with jnp.where, or decide outside the model"),
    (frozenset({"sort", "top_k", "approx_top_k", "argsort"}),
     "it is a data-dependent selection (sort / top_k): which values it keeps depends on "
     "the clips, and no relevance rule covers that; select with a fixed index instead"),
    (frozenset({"psum", "pmean", "pmax", "pmin", "psum2", "all_gather", "all_to_all",
                "ppermute", "reduce_scatter", "psum_scatter"}),
     "it reduces over the batch (a collective over a named axis: a BatchNorm in training "
     "mode?), which mixes clips; run the model in inference mode (linen "
     "use_running_average=True, hk.BatchNorm is_training=False, eqx BatchNorm "
     "inference=True)"),
)  # fmt: skip


@dataclasses.dataclass
class Layer:
    """Operations run as one layer under one rule: ``nodes`` (node indices, in
    order) compute ``output`` from the activations ``inputs``."""

    kind: type | None  # vocabulary class (nn.Conv, Sum, ...); None for a custom layer
    nodes: list[int]
    inputs: list[int]
    output: int
    path: Path | None
    classes: tuple[type, ...]
    rule: Rule | None = None
    nonneg: bool = False
    # linear layers: the kernel operand, its position, the merged affine steps,
    # the shape-only operations after the conv/dense op (run after the merged
    # bias) and where its output channels (out_axes) are after them
    kernel: Atom | None = None
    kernel_position: int = 1
    steps: list[AffineStep] = dataclasses.field(default_factory=list)
    out_axes: tuple[int, ...] = ()
    kernel_axes: tuple[int, ...] = ()
    relabels: list[int] = dataclasses.field(default_factory=list)
    channels: tuple[int | None, ...] = ()
    # custom layers: parameter operands by the name the rule sees
    params: dict[str, Atom] = dataclasses.field(default_factory=dict)
    # softmaxes: ``channels`` are the axes they normalise over
    # products: per input, whether it is a gate (a sigmoid or softmax output)
    gates: tuple[bool, ...] = ()

    @property
    def linear(self) -> bool:
        return self.kernel is not None


@dataclasses.dataclass
class Region:
    """Elementwise operations of one activation ``root`` (the Pass rule). Each
    value read outside the region is an exit, computed from the root by the
    region nodes in ``exits[value]``."""

    root: int
    nodes: list[int] = dataclasses.field(default_factory=list)
    params: list[Atom] = dataclasses.field(default_factory=list)
    param_nodes: list[int] = dataclasses.field(default_factory=list)  # nodes reading params
    # nodes adding a closed-over per-unit array (an unmerged bias of a closure model)
    bias_nodes: list[int] = dataclasses.field(default_factory=list)
    exits: dict[int, list[int]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Plan:
    """Per node: None (run it as is), a :class:`Layer` (at the node computing
    its output), a :class:`Region` (at a region node computing exits) or
    ``"inside"`` (computed by a layer or region elsewhere)."""

    graph: Graph
    actions: list[Any]
    layers: list[Layer]
    outputs: Any  # the model's outputs as ShapeDtypeStructs
    treedef: Any  # the structure of the model's outputs


class _Planner:
    """One pass over the graph in trace order (see the module docstring)."""

    def __init__(
        self, graph: Graph, info: Analysis, traced: Any, composite: Composite,
        structures: Structures,
    ) -> None:  # fmt: skip
        self.graph, self.info, self.traced, self.composite = graph, info, traced, composite
        self.structures = structures
        self.open: dict[int, Layer] = {}  # layer output value -> layer that may still grow
        self.member: dict[int, Layer | Region] = {}  # node index -> its layer or region
        self.regions: dict[int, Region] = {}  # root -> region
        self.root_of: dict[int, int] = {}  # value computed in a region -> its root
        self.layers: list[Layer] = []
        self.memo: dict = {}

    # ---------------------------------------------------------------- naming

    def module(self, node: Node) -> tuple[Path, type] | None:
        return self.traced.scopes.get(node.scope) if node.scope is not None else None

    def param_path(self, atom: Atom) -> tuple[Path, str] | None:
        """``(layer path, leaf name)`` of the first parameter leaf ``atom`` is computed from."""
        leaves = self.info.sources.get(atom, frozenset()) if isinstance(atom, int) else ()
        if not leaves:
            return None
        first = min(leaves)
        return self.traced.leaf_paths[first], self.traced.leaf_names[first]

    def where(self, node: Node) -> str:
        text = node.name + (f" at {node.source}" if node.source else "")
        module = self.module(node)
        return text + (f" in module '{path_str(module[0])}'" if module and module[0] else "")

    def unsupported(self, node: Node, why: str) -> UnsupportedLayerError:
        return UnsupportedLayerError(
            f"LRP has no rule for {self.where(node)}: {why}. The engine assigns conv/dense "
            f"layers (with per-channel affine maps after them merged), sums of two "
            f"activations, sum/average/max pooling, elementwise functions of one activation "
            f"and shape operations"
        )

    # ---------------------------------------------------------------- the sweep

    def run(self) -> None:
        for x, nodes, axes in self.structures.softmaxes:
            node = self.graph.nodes[nodes[-1]]
            self.add_layer(Layer(Softmax, list(nodes), [x], node.outputs[0],
                                 self.module_path(node), self.classes(Softmax, None, node),
                                 channels=axes))  # fmt: skip
        for node in self.graph.nodes:
            active = [a for a in node.inputs if isinstance(a, int) and a in self.info.relevant]
            if node.index in self.member or not active:
                continue
            if not any(o in self.info.relevant for o in node.outputs):
                continue
            self.assign(node, active)

    def assign(self, node: Node, active: list[int]) -> None:
        name = node.name
        if node.index in self.structures.normalisers:
            return self.start_normalization(node, active)
        if (name in _LINEAR and len(active) > 1) or self.product(node, active):
            return self.start_product(node, active)
        if name in _LINEAR:
            return self.start_linear(node, active)
        if len(active) == 1 and self.absorb(node, active[0]):
            return None
        if self.join_region(node, active):
            return None
        if name in _SUMS and len(active) == 2:
            return self.start_sum(node)
        if name in _POOLS or name in _MAX_POOLS:
            return self.start_pool(node, active)
        if name in _SHAPE_OPS or (name == "select_n" and node.inputs[0] not in self.info.active):
            return None
        raise self.unsupported(node, self.reason(node, active))

    def reason(self, node: Node, active: list[int]) -> str:
        """Why ``node`` has no rule, and what the user can do about it."""
        name = node.name
        for names, why in _REASONS:
            if name in names:
                return why
        shapes = {self.graph.shape(a) for a in active} | {self.graph.shape(node.outputs[0])}
        if name in _PRODUCTS and (len(set(active)) > 1 or len(shapes) > 1):
            return _PRODUCT_REASON
        if len(set(active)) > 1:
            return "it combines two activations in a way no rule covers"
        if len(shapes) > 1:
            return "it broadcasts an activation (copies its values along a new axis)"
        return "no rule covers this primitive"

    def add_layer(self, layer: Layer) -> None:
        self.layers.append(layer)
        self.open[layer.output] = layer
        for index in layer.nodes:
            self.member[index] = layer

    def product(self, node: Node, active: list[int]) -> bool:
        """An elementwise product of two activations that are not functions of one
        activation (those are Pass regions: SiLU, GELU)."""
        if node.name != "mul" or len(active) != 2:
            return False
        return len({self.root_of.get(a, a) for a in active}) == 2

    def start_product(self, node: Node, active: list[int]) -> None:
        """A product of two activations (Product): attention's q k^T, attn v, a gate."""
        positions = [i for i, a in enumerate(node.inputs) if isinstance(a, int)
                     and a in self.info.relevant]  # fmt: skip
        inputs = [node.inputs[i] for i in positions]
        gates = tuple(self.gate(a) for a in inputs)
        layer = Layer(Product, [node.index], inputs, node.outputs[0], self.module_path(node),
                      self.classes(Product, None, node), gates=gates)  # fmt: skip
        self.add_layer(layer)

    def gate(self, atom: int) -> bool:
        """Whether ``atom`` is a sigmoid or softmax output (through shape operations)."""
        while True:
            index = self.graph.producer.get(atom)
            if index is None:
                return False
            node = self.graph.nodes[index]
            member = self.member.get(index)
            if node.name == "logistic" or (isinstance(member, Layer) and member.kind is Softmax):
                return True
            if node.name not in _SHAPE_OPS:
                return False
            atom = node.inputs[0]

    def start_normalization(self, node: Node, active: list[int]) -> None:
        """The activation times (or over) its statistics, held constant (Normalization)."""
        layer = Layer(Normalization, [node.index], active, node.outputs[0],
                      self.module_path(node), self.classes(Normalization, None, node))  # fmt: skip
        self.add_layer(layer)

    def start_linear(self, node: Node, active: list[int]) -> None:
        position = node.inputs.index(active[0])
        kernel = node.inputs[1 - position] if len(node.inputs) == 2 else None
        if (
            len(active) != 1
            or kernel is None
            or (isinstance(kernel, int) and kernel in self.info.active)
        ):
            raise self.unsupported(node, "its kernel depends on the clips but carries no "
                                         "relevance, which no rule covers")  # fmt: skip
        out_axes, kernel_axes = linear_axes(self.graph, node, 1 - position)
        named = self.param_path(kernel)
        kind = _LINEAR[node.name]
        layer = Layer(kind, [node.index], active, node.outputs[0], named and named[0],
                      self.classes(kind, named and named[0], node), kernel=kernel,
                      kernel_position=1 - position, out_axes=out_axes,
                      kernel_axes=kernel_axes, channels=out_axes)  # fmt: skip
        self.add_layer(layer)

    def classes(self, kind: type | None, path: Path | None, node: Node) -> tuple[type, ...]:
        """The vocabulary class and the module class that computes the layer."""
        owner = self.traced.classes.get(path) if path is not None else None
        if owner is None and self.module(node) is not None:
            owner = self.module(node)[1]
        return tuple(c for c in (kind, owner) if c is not None)

    def absorb(self, node: Node, active: int) -> bool:
        """Merge an affine step (linear layers) or a constant scaling (sums and
        pooling) into the layer whose output ``active`` is, if it is its only
        reader; a linear layer also takes the shape-only operations that keep
        its channels whole (a reshape, a transpose, vmap's broadcasts), so its
        bias and BatchNorm are merged however far behind them they come."""
        layer = self.open.get(active)
        if layer is None or layer.output != active or not self.only_reader(active, node):
            return False
        if layer.kind is Normalization:
            return self.absorb_affine(layer, node, active)
        if layer.linear and node.name in RELABEL:
            channels = follow_axes(self.graph, node, layer.channels)
            if channels is None:
                return False
            layer.relabels.append(node.index)
            layer.channels = channels
            return self.extend(layer, node)
        position = node.inputs.index(active)
        others = [a for i, a in enumerate(node.inputs) if i != position]
        if any(isinstance(a, int) and a in self.info.active for a in others):
            return False
        channels = frozenset(a for a in layer.channels if a is not None)
        axes = channels if layer.linear else frozenset(range(len(self.graph.shape(active))))
        step = affine_step(self.graph, node, active, axes, self.memo)
        if step is None or (not layer.linear and not self.scaling(step)):
            return False
        if layer.linear:
            frame = (self.graph.shape(active), layer.channels)
            layer.steps.append(dataclasses.replace(step, frame=frame))
        return self.extend(layer, node)

    def absorb_affine(self, layer: Layer, node: Node, active: int) -> bool:
        """A normalisation takes the affine map after it (its scale and bias, however
        they vary) and shape operations: the layer runs them as they are."""
        if node.name in RELABEL:
            return self.extend(layer, node)
        others = [a for a in node.inputs if a is not active]
        if any(isinstance(a, int) and a in self.info.active for a in others):
            return False
        every = frozenset(range(len(self.graph.shape(active))))
        if affine_step(self.graph, node, active, every, self.memo) is None:
            return False
        return self.extend(layer, node)

    def extend(self, layer: Layer, node: Node) -> bool:
        del self.open[layer.output]
        layer.nodes.append(node.index)
        layer.output = node.outputs[0]
        self.open[layer.output] = layer
        self.member[node.index] = layer
        return True

    def scaling(self, step: AffineStep) -> bool:
        """A constant factor keeps a sum or pooling linear without a bias."""
        if step.op not in ("mul", "div", "neg"):
            return False
        operand = step.operand
        return not isinstance(operand, int) or not self.info.sources.get(operand, frozenset())

    def only_reader(self, value: int, node: Node) -> bool:
        return self.info.consumers.get(value) == [node.index] and value not in self.info.outputs

    def join_region(self, node: Node, active: list[int]) -> bool:
        if node.name not in ELEMENTWISE or len(node.outputs) != 1:
            return False
        shape = self.graph.shape(node.outputs[0])
        roots = {self.root_of.get(a, a) for a in active}
        if len(roots) != 1 or any(self.graph.shape(a) != shape for a in active):
            return False
        root = roots.pop()
        region = self.regions.setdefault(root, Region(root))
        region.nodes.append(node.index)
        params = [a for a in node.inputs if isinstance(a, int)
                  and a not in self.info.active and self.param_path(a)]  # fmt: skip
        region.params += params
        region.param_nodes += [node.index] if params else []
        if not params and root != self.graph.clips and self.adds_array(node):
            region.bias_nodes.append(node.index)
        self.root_of[node.outputs[0]] = root
        self.member[node.index] = region
        return True

    def adds_array(self, node: Node) -> bool:
        """Whether ``node`` adds a clip-independent array that varies (a bias): the
        Pass rule would hand relevance through it as if it were an activation."""
        if node.name not in _SUMS:
            return False
        return any(isinstance(a, int) and a not in self.info.active
                   and varying_axes(self.graph, a, self.memo)
                   for a in node.inputs)  # fmt: skip

    def start_sum(self, node: Node) -> None:
        """A sum of activations; sums it reads alone are fused into one n-ary sum."""
        inputs, nodes = [], []
        for atom in node.inputs:
            layer = self.open.get(atom)
            if layer is not None and layer.kind is Sum and self.only_reader(atom, node):
                inputs += [a for a in layer.inputs if a not in inputs]
                nodes += layer.nodes
                self.layers.remove(layer)
                del self.open[atom]
            elif atom not in inputs:
                inputs.append(atom)
        layer = Layer(Sum, [*sorted(nodes), node.index], inputs, node.outputs[0],
                      self.module_path(node), self.classes(Sum, None, node))  # fmt: skip
        self.add_layer(layer)

    def module_path(self, node: Node) -> Path | None:
        module = self.module(node)
        return module[0] if module else None

    def start_pool(self, node: Node, active: list[int]) -> None:
        if _reads_batch_axis(node):
            raise self.unsupported(node, "it reduces over axis 0, the batch, which mixes clips "
                                         "(a BatchNorm in training mode?); run the model in "
                                         "inference mode")  # fmt: skip
        kind = _POOLS.get(node.name, MaxPool)
        layer = Layer(kind, [node.index], active, node.outputs[0], self.module_path(node),
                      self.classes(kind, None, node))  # fmt: skip
        self.add_layer(layer)


def _reads_batch_axis(node: Node) -> bool:
    if "axes" in node.params:
        return 0 in tuple(node.params["axes"])
    window = node.params.get("window_dimensions")
    return bool(window) and (window[0] != 1 or node.params["window_strides"][0] != 1)


# --------------------------------------------------------------------------
# After the sweep: regions' exits, custom layers, rules.


def _exits(planner: _Planner, region: Region) -> None:
    """Each region value read outside the region, with the region nodes computing it."""
    graph, inside = planner.graph, set(region.nodes)
    for index in region.nodes:
        for value in graph.nodes[index].outputs:
            readers = planner.info.consumers.get(value, [])
            if value in planner.info.outputs or any(r not in inside for r in readers):
                region.exits[value] = _ancestors(graph, value, inside)


def _ancestors(graph: Graph, value: int, inside: set[int]) -> list[int]:
    needed, stack = set(), [graph.producer[value]]
    while stack:
        index = stack.pop()
        if index in needed:
            continue
        needed.add(index)
        stack += [graph.producer[a] for a in graph.nodes[index].inputs
                  if isinstance(a, int) and graph.producer.get(a) in inside]  # fmt: skip
    return sorted(needed)


def _custom_layer(planner: _Planner, region: Region) -> Layer:
    """A region with parameters, or one adding a constant array in the params form: a
    layer if the composite gives it a rule, else an error. In the params form a
    constant is no parameter (a fixed position table) and, added alone, a ``Sum`` like
    a parameter array; in the closure form it may be a bias the engine cannot see as
    one, so it is refused."""
    graph, composite = planner.graph, planner.composite
    first_node = graph.nodes[region.nodes[0]]
    sums_only = all(graph.nodes[i].name in _SUMS for i in region.nodes)
    if region.params:
        path, _ = planner.param_path(region.params[0])
        classes = planner.classes(None, path, first_node)
    elif planner.traced.leaf_paths and sums_only:
        module = planner.module(first_node)
        path, classes = module[0] if module else None, planner.classes(None, None, first_node)
    else:
        raise UnsupportedLayerError(_custom_message(planner, region, None))
    kind = None
    if sums_only:
        kind = Sum  # an activation plus a parameter or constant array (a position embedding)
        classes = (Sum, *classes)
    rule = composite.rule_for(classes, path_str(path), first=False, leaf=True)
    if rule is None or len(region.exits) != 1:
        raise UnsupportedLayerError(
            _custom_message(planner, region, path if region.params else None)
        )
    names: dict[str, Atom] = {}
    for atom in dict.fromkeys(region.params):
        name = planner.param_path(atom)[1]
        names[name if name not in names else f"{name}_{len(names)}"] = atom
    (output,) = region.exits
    return Layer(kind, list(region.nodes), [region.root], output, path, classes, rule,
                 params=names)  # fmt: skip


def _custom_message(planner: _Planner, region: Region, path: Path | None) -> str:
    graph, info = planner.graph, planner.info
    if path is None:  # a closure model's bias: its parameters have no path
        node = graph.nodes[region.bias_nodes[0]]
        text = (f"no relevance rule for {planner.where(node)}: it adds a closed-over array "
                f"(a bias?) to an activation")  # fmt: skip
    else:
        node = graph.nodes[region.param_nodes[0]]
        text = (f"no relevance rule for '{path_str(path)}': {planner.where(node)} applies "
                f"parameters to an activation")  # fmt: skip
    advice = ("give it a rule by path or module type in the composite" if path is not None
              else "pass the parameters in the params form explain(apply_fn, params, clips) "
                   "and give it a rule by path in the composite")  # fmt: skip
    source = next((la for la in planner.layers if la.output == region.root), None)
    if source is None or not source.linear or region.root not in node.inputs:
        return (f"{text} that is not the output of a conv/dense layer (nor that output "
                f"reshaped or transposed with its channels kept whole), so it cannot be merged "
                f"into one (canonizer); {advice}")  # fmt: skip
    name = f"'{path_str(source.path)}'" if source.path is not None else "a conv/dense layer"
    readers = [r for r in info.consumers.get(region.root, []) if r != node.index]
    if not readers:
        return (f"{text}. It follows {name} but varies along more than its output channels, "
                f"so it cannot be merged into it (canonizer); {advice}")  # fmt: skip
    others = ", ".join(sorted({_reader(planner, r) for r in readers}))
    return (f"{text}. It reads the output of {name}, which is also read by {others}: "
            f"merging it into {name} (canonizer) would change what they see. Apply it "
            f"before reusing the output")  # fmt: skip


def _reader(planner: _Planner, index: int) -> str:
    member = planner.member.get(index)
    if isinstance(member, Layer) and member.path:
        return f"'{path_str(member.path)}'"
    node = planner.graph.nodes[index]
    module = planner.module(node)
    return f"'{path_str(module[0])}'" if module and module[0] else planner.where(node)


def _assign_rules(planner: _Planner) -> None:
    composite, first_done = planner.composite, False
    for layer in sorted(planner.layers, key=lambda la: la.nodes[0]):
        first = False
        if not first_done and _matches(layer.classes, composite.first_types):
            first = first_done = True
        if layer.rule is None:
            path = path_str(layer.path) if layer.path is not None else None
            layer.rule = composite.rule_for(layer.classes, path, first=first, leaf=True)
        if layer.rule is None:
            node = planner.graph.nodes[layer.nodes[0]]
            name = f"'{path_str(layer.path)}'" if layer.path else planner.where(node)
            raise UnsupportedLayerError(_no_rule_message(layer, name, planner.where(node)))
        layer.nonneg = all(a in planner.info.nonneg for a in layer.inputs)


def _no_rule_message(layer: Layer, name: str, where: str) -> str:
    kind = layer.kind.__name__
    if layer.kind in (Softmax, Product, Normalization):
        what = {
            Softmax: "a softmax",
            Product: "a product of two activations (attention's q.k or attn.v, or a gate)",
            Normalization: "a normalisation by the "
            "activation's own statistics (LayerNorm, RMSNorm, GroupNorm)",
        }[layer.kind]
        name = name if name.startswith("'") else "layer"
        return (f"no relevance rule for {name} ({where}): it is {what} (kind {kind}), which this "
                f"composite does not cover; use method 'lrp.attn' (AttnLRP) or 'lrp.cp' "
                f"(CP-LRP), or add a rule for {kind} to the composite's layer_map")  # fmt: skip
    return (
        f"no relevance rule for layer {name} of kind {kind} (it has parameters); add one "
        f"to the composite's layer_map or path_map"
    )


def _matches(classes: tuple[type, ...], types: Any) -> bool:
    return any(issubclass(c, types) for c in classes)


def make_plan(graph: Graph, info: Analysis, traced: Any, composite: Composite) -> Plan:
    """The plan of a relevance pass through ``graph`` under ``composite``."""
    structures = find_structures(graph, info)
    if structures.cut:  # the normalisers' statistics are held constant
        info = analyse(graph, structures.cut)
    planner = _Planner(graph, info, traced, composite, structures)
    planner.run()
    for region in planner.regions.values():
        _exits(planner, region)
        if region.params or region.bias_nodes:
            planner.layers.append(_custom_layer(planner, region))
            for index in region.nodes:
                planner.member[index] = planner.layers[-1]
    _assign_rules(planner)
    actions: list[Any] = [None] * len(graph.nodes)
    for index in planner.member:
        actions[index] = "inside"
    for layer in planner.layers:
        if layer.kind is MaxPool and isinstance(layer.rule, Gradient):
            for index in layer.nodes:
                actions[index] = None  # the plain gradient is autodiff's
        else:
            actions[graph.producer[layer.output]] = layer
    for region in planner.regions.values():
        if not region.params and not region.bias_nodes:  # the others are layers now
            for value in region.exits:
                actions[graph.producer[value]] = region
    treedef = jax.tree.structure(traced.outputs)
    return Plan(graph, actions, planner.layers, traced.outputs, treedef)
