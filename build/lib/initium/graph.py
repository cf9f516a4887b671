"""The computational graph of a network, as a graph hypernetwork reads it.

GHN-2 (Knyazev, Drozdzal, Taylor & Romero-Soriano, "Parameter Prediction for Unseen Deep
Architectures", NeurIPS 2021) predicts every parameter of a network from its computational graph:
a directed acyclic graph with a node per operation (convolution, linear layer, normalisation,
pooling, sum, concatenation, ...), an edge per data dependency, and "virtual" edges between nodes
up to a shortest-path distance ``s_max = 50`` apart (weighted ``1 / distance`` by the GHN), which
let messages skip over long chains. :func:`build` makes that graph for any ``nn.Module``:

- a node per parameterised op (its parameters' names and shapes, weight first) and per structural
  op of :data:`OPS`; ``nodes[0]`` is the input, ``nodes[-1]`` the output;
- ops that only move or reshape data without mixing it (``getitem``, ``permute``, ``size``,
  dropout, identity, padding, upsampling, multiplication by a constant ...) are *contracted*: they
  are no node, and the edges run through them;
- nodes in a canonical topological order: by level (longest path from the input), then the
  position of the node's first parameter in ``model.named_parameters()``, then the op, then the
  indices of its predecessors. The order depends only on the graph, not on how it was read.

Two ways to read the graph, one result. ``torch.fx`` (``method="fx"``) traces ``forward``
symbolically: exact, and no autograd graph to hold, but it fails on data-dependent control flow
(``if x.sum() > 0:``, checks of ``x.ndim``, ``len(x)``). GHN-2's own code walks the autograd graph of
one forward pass (``method="autograd"``): from the output's ``grad_fn`` through ``next_functions``
to the ``AccumulateGrad`` leaves, which name the parameters. That reads any model that runs, but
sees only differentiable paths and a library's internal decomposition of each op; forward hooks on
the leaf modules therefore fold a module call's autograd nodes into one node of the module's op, so
that both readings map modules by type and functions by what they compute, and give the same graph
(same ops in the same order, edges and parameters; only structural nodes' names differ) for
networks both can read. ``method="auto"`` (the default) uses fx, and the autograd walk where fx
cannot trace.

Modules map by type (``Conv1d/2d/3d`` -> conv, ``Linear`` -> linear, ``BatchNorm`` -> bn,
``LayerNorm`` -> ln, ``GroupNorm`` -> gn, pools, ``AdaptiveAvgPool`` to size 1 -> global_pool,
``MultiheadAttention`` -> attention, activations -> act, ``Flatten`` -> flatten); functional calls
on parameters map too (``F.linear``/``x @ W`` -> linear, ``F.conv2d`` -> conv, ``x + b`` with a
parameter ``b`` -> bias ...). A parameterised op outside this vocabulary (``nn.Embedding``, RNNs, a
parameter multiplied into the data) raises :class:`GraphError` naming the module; with
``strict=False`` it is contracted, its parameters are in no node, and its module is listed in
:attr:`Graph.unsupported` (and logged as a warning). So is a parameter that does not reach the
output (a module never called, or called with its result dropped). Reshapes (``view``, ``reshape``,
``flatten``) are flatten nodes, not contracted: they change what the next linear layer sees.
A module called twice is two nodes; its parameters are on the first.

Where the readings can differ (measured equal on every arch of ``initium.nn.ARCHS`` and 120 nets of
the GHN's architecture space): a ``torch.flatten`` call that changes nothing (data already flat)
is a node in a trace but no autograd node (an ``nn.Flatten`` of flat data is contracted in both);
autograd runs a batched matrix product outside a module (``F.linear`` of 3-D data, ``q @ k.T``)
with views around mm/bmm, which the walk contracts, so a reshape written right before or after
such a product is a node in a trace only; and the autograd walk sees no non-differentiable path
(integer inputs, ``detach``).
"""

from __future__ import annotations

import functools
import io
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from ._io import atomic_write_bytes

__all__ = ["OPS", "Graph", "GraphError", "Node", "arch_example", "build", "plot"]

log = logging.getLogger(__name__)

# The op vocabulary, in a fixed order: the GHN embeds OPS.index(op). Append only.
OPS: tuple[str, ...] = (
    "input", "conv", "linear", "bn", "ln", "gn", "max_pool", "avg_pool", "global_pool", "sum", "concat",
    "attention", "act", "flatten", "output",
    "bias",  # a parameter added to the data (x + b): GHN-2's "bias" op
    "mul",  # a product of two data tensors (elementwise or matrix): gates, DeepONet's branch * trunk
)  # fmt: skip
METHODS: tuple[str, ...] = ("auto", "fx", "autograd")
_UNSUPPORTED = "?"  # a raw node's op: a parameterised op the vocabulary cannot represent


class GraphError(ValueError):
    """A model the graph cannot represent (or that fails on the example input); the message names
    the module or op and the fix."""


@dataclass(frozen=True)
class Node:
    """One op of the graph: ``op`` (one of :data:`OPS`), ``name`` (the module's qualified name, or
    the traced op's name for a structural op) and ``params``: ``(name in model.named_parameters(),
    shape)`` pairs, weights (2-D and up) first, then vectors, each in the model's order; ``()`` for
    structural ops."""

    op: str
    name: str
    params: tuple[tuple[str, tuple[int, ...]], ...] = ()


@dataclass(frozen=True)
class Graph:
    """A network's computational graph: ``nodes`` in topological order (``nodes[0]`` the input,
    ``nodes[-1]`` the output), data-flow ``edges`` ``(src, dst)`` with ``src < dst``, the ``method``
    that read it (``"fx"`` or ``"autograd"``) and the modules it could not represent
    (``strict=False`` only)."""

    nodes: tuple[Node, ...]
    edges: tuple[tuple[int, int], ...]
    method: str
    unsupported: tuple[str, ...] = ()
    title: str = field(default="", compare=False)  # the model's class, for describe()

    def __post_init__(self) -> None:
        n = len(self.nodes)
        if n < 2 or self.nodes[0].op != "input" or self.nodes[-1].op != "output":
            raise GraphError("a graph needs at least an input node first and an output node last")
        bad = [node.op for node in self.nodes if node.op not in OPS]
        if bad:
            raise GraphError(f"unknown ops {bad}; the vocabulary is {OPS}")
        if len(set(self.edges)) != len(self.edges) or any(not 0 <= s < d < n for s, d in self.edges):
            raise GraphError("edges must be unique (src, dst) pairs of node indices with src < dst")

    def predecessors(self) -> list[list[int]]:
        """``preds[j]``: the nodes with an edge into ``j``, ascending."""
        preds: list[list[int]] = [[] for _ in self.nodes]
        for s, d in self.edges:
            preds[d].append(s)
        return [sorted(p) for p in preds]

    def levels(self) -> list[list[int]]:
        """Node indices grouped by their longest-path depth from the input: every predecessor of a
        node is in an earlier level (so a level's nodes can be updated together)."""
        depth = [0] * len(self.nodes)
        for s, d in sorted(self.edges, key=lambda e: e[1]):  # nodes are topologically ordered
            depth[d] = max(depth[d], depth[s] + 1)
        out: list[list[int]] = [[] for _ in range(max(depth) + 1)]
        for i, lv in enumerate(depth):
            out[lv].append(i)
        return out

    def distances(self, cutoff: int = 50) -> torch.Tensor:
        """``(N, N)`` int64: ``[i, j]`` is the length of the shortest directed path ``i -> j`` when
        ``1 <= d <= cutoff``, else 0 (no path, ``i == j``, or farther than ``cutoff``)."""
        return _distances(len(self.nodes), self.edges, _check_cutoff(cutoff)).clone()

    def virtual_edges(self, cutoff: int = 50) -> list[tuple[int, int, int]]:
        """GHN-2's virtual edges: ``(src, dst, d)`` for every pair ``d`` apart, ``2 <= d <= cutoff``
        (the GHN weights their messages by ``1 / d``)."""
        d = _distances(len(self.nodes), self.edges, _check_cutoff(cutoff))
        src, dst = torch.nonzero(d >= 2, as_tuple=True)
        return [(int(s), int(t), int(d[s, t])) for s, t in zip(src, dst, strict=True)]

    def parameters(self) -> list[tuple[int, str, tuple[int, ...]]]:
        """``(node index, parameter name, shape)`` for every parameter, in node order."""
        return [(i, name, shape) for i, node in enumerate(self.nodes) for name, shape in node.params]

    def describe(self) -> str:
        """A text dump: a summary line, then one line per node (index, op, name, parameter shapes,
        the nodes it reads)."""
        params = self.parameters()
        values = sum(int(np.prod(shape)) for _, _, shape in params)
        head = (
            f"graph{' of ' + self.title if self.title else ''} ({self.method}): {len(self.nodes)} nodes,"
            f" {len(self.edges)} edges, {len(params)} parameter tensors ({values:,} values)"
        )
        lines = [head]
        if self.unsupported:
            lines.append(f"unsupported (parameters in no node): {', '.join(self.unsupported)}")
        preds = self.predecessors()
        width = max(len(n.name) for n in self.nodes)
        for i, node in enumerate(self.nodes):
            shapes = ", ".join(f"{_short(p, node.name)} {'x'.join(map(str, s)) or 'scalar'}" for p, s in node.params)
            inputs = ",".join(map(str, preds[i]))
            lines.append(f"{i:>4}  {node.op:<11} {node.name:<{width}}  {shapes:<34} <- {inputs}".rstrip(" <-"))
        return "\n".join(lines)


def _short(param: str, node: str) -> str:
    """A parameter's name relative to its node's module (``weight``, ``out_proj.weight``)."""
    return param[len(node) + 1 :] if param.startswith(node + ".") else param


def _check_cutoff(cutoff: int) -> int:
    if not isinstance(cutoff, int) or isinstance(cutoff, bool) or cutoff < 1:
        raise ValueError(f"cutoff must be an int >= 1 (GHN-2 uses 50), got {cutoff!r}")
    return cutoff


@functools.lru_cache(maxsize=64)
def _distances(n: int, edges: tuple[tuple[int, int], ...], cutoff: int) -> torch.Tensor:
    """Breadth-first search from every node at once (scipy's csgraph, O(N (N + E)))."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import shortest_path

    if not edges:
        return torch.zeros(n, n, dtype=torch.int64)
    src, dst = np.array(edges, dtype=np.int64).T
    adj = csr_matrix((np.ones(len(src)), (src, dst)), shape=(n, n))
    d = shortest_path(adj, method="D", directed=True, unweighted=True)
    d[~np.isfinite(d) | (d > cutoff)] = 0
    return torch.from_numpy(d.astype(np.int64))


# ---------------------------------------------------------------------------------------------
# What each module type, function and autograd node is.

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_MAX = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_AVG = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_ADAPTIVE_AVG = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)


def _module_op(m: nn.Module) -> str | None:
    """The op of a module by its type, or None (contracted if it has no parameters, else unsupported)."""
    if isinstance(m, _CONV):
        return "conv"
    if isinstance(m, nn.Linear):
        return "linear"
    if isinstance(m, _BN):
        return "bn"
    if isinstance(m, nn.LayerNorm):
        return "ln"
    if isinstance(m, nn.GroupNorm):
        return "gn"
    if isinstance(m, _MAX):
        return "max_pool"
    if isinstance(m, _AVG):
        return "avg_pool"
    if isinstance(m, _ADAPTIVE_AVG):
        return "global_pool" if _all_ones(m.output_size) else "avg_pool"
    if isinstance(m, nn.MultiheadAttention):
        return "attention"
    if isinstance(m, (nn.Flatten, nn.Unflatten)):
        return "flatten"
    if type(m).__module__ == "torch.nn.modules.activation" or isinstance(m, tuple(_activation_types())):
        return "act"
    return None


@functools.cache
def _activation_types() -> tuple[type, ...]:
    from torch.nn.modules import activation

    return tuple(
        v for v in vars(activation).values() if isinstance(v, type) and issubclass(v, nn.Module) and v is not nn.Module
        and v is not nn.MultiheadAttention
    )  # fmt: skip


def _all_ones(size: Any) -> bool:
    sizes = size if isinstance(size, (tuple, list)) else (size,)
    return all(s == 1 for s in sizes)


# Function / method names (fx) -> category; the categories resolve to ops in _resolve.
_FN: dict[str, str] = {}
for _names, _cat in (
    ("add iadd sub isub rsub", "add"),
    ("mul imul truediv itruediv div", "mul"),
    ("matmul mm bmm linear addmm", "linear"),
    ("conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d", "conv"),
    ("batch_norm", "bn"), ("layer_norm", "ln"), ("group_norm", "gn"),
    ("max_pool1d max_pool2d max_pool3d max_pool1d_with_indices max_pool2d_with_indices max_pool3d_with_indices"
     " adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d", "max_pool"),
    ("avg_pool1d avg_pool2d avg_pool3d", "avg_pool"),
    ("adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d", "adaptive"),
    ("mean", "global_pool"),
    ("cat concat concatenate stack", "concat"),
    ("relu relu6 gelu silu sigmoid tanh sin cos elu selu celu leaky_relu hardtanh hardswish hardsigmoid softplus"
     " mish softmax log_softmax exp prelu glu logsigmoid erf threshold softsign tanhshrink", "act"),
    ("flatten view reshape unflatten view_as reshape_as", "flatten"),
    ("scaled_dot_product_attention multi_head_attention_forward", "attention"),
    # results that carry no data flow (sizes, masks, fresh tensors): no edge runs through them
    ("size dim numel detach zeros_like ones_like empty_like full_like rand_like randn_like new_zeros new_ones"
     " new_empty new_full new_tensor eq ne gt lt ge le argmax argmin len", "const"),
):  # fmt: skip
    for _name in _names.split():
        _FN[_name] = _cat
_CONST_ATTRS = frozenset(("shape", "dtype", "device", "ndim", "layout", "requires_grad", "is_cuda"))

# Autograd node names (without "Backward" and the version digit) -> category.
_GRAD: dict[str, str] = {}
for _names, _cat in (
    ("Add Sub Rsub", "add"),
    ("Mul Div", "mul"),
    ("Mm Bmm Addmm Linear", "linear"),
    ("NativeLayerNorm", "ln"), ("NativeGroupNorm", "gn"),
    ("Mean", "global_pool"),
    ("Cat Stack", "concat"),
    ("Relu Threshold Gelu Silu Sigmoid Tanh Sin Cos Elu LeakyRelu Hardtanh Hardswish Hardsigmoid Softplus Mish"
     " Softmax LogSoftmax Exp Prelu PreluKernel Glu LogSigmoid Erf Softshrink", "act"),
    ("View UnsafeView ReshapeAlias", "flatten"),
):  # fmt: skip
    for _name in _names.split():
        _GRAD[_name] = _cat
del _names, _cat, _name


def _grad_category(fn: Any) -> str | None:
    name = re.sub(r"Backward\d*$", "", type(fn).__name__)
    if name in _GRAD:
        return _GRAD[name]
    if "Conv" in name:  # ConvolutionBackward, SlowConv2DBackward, MkldnnConvolutionBackward ...
        return "conv"
    if "BatchNorm" in name:
        return "bn"
    if "MaxPool" in name:
        return "max_pool"
    if "AvgPool" in name:  # adaptive pooling to size 1 runs as a mean: this one keeps a map
        return "avg_pool"
    if "ScaledDotProduct" in name:
        return "attention"
    return None


def _is_matmul(fn: Any) -> bool:
    return re.sub(r"Backward\d*$", "", type(fn).__name__) in ("Mm", "Bmm", "Addmm", "Baddbmm")


def _resolve(category: str | None, n_data: int, has_params: bool) -> str | None:
    """The op of a call from its category, its number of data operands and whether it reads
    parameters: None contracts it, ``_UNSUPPORTED`` is a parameterised op outside the vocabulary."""
    if category == "add":
        if n_data >= 2:
            return _UNSUPPORTED if has_params else "sum"
        return "bias" if has_params else None  # x + b: a bias; x + 1 or x + a buffer: contracted
    if category == "mul":
        if has_params:
            return _UNSUPPORTED
        return "mul" if n_data >= 2 else None  # x * 30 or x * a buffer: contracted
    if category == "linear":
        if has_params:
            return "linear" if n_data == 1 else _UNSUPPORTED
        return "mul" if n_data >= 2 else None
    if category in ("conv", "bn", "ln", "gn", "act", "attention"):
        return category
    if category in ("max_pool", "avg_pool", "global_pool", "concat", "flatten"):
        return _UNSUPPORTED if has_params else category
    return _UNSUPPORTED if has_params else None


# ---------------------------------------------------------------------------------------------
# The raw graph both readers produce, and the one function that turns it into a Graph.


@dataclass
class _Raw:
    op: str | None  # an OPS entry, None (contract) or _UNSUPPORTED
    name: str
    params: list[int]  # positions in model.named_parameters()
    inputs: list[int]  # raw indices of the data operands, with multiplicity
    what: str = ""  # an unsupported op: the module, its type and what it does
    module: str = ""  # an unsupported op: the module's qualified name


class _Params:
    """The model's parameters: names, shapes and positions (by identity: a tied parameter has one)."""

    def __init__(self, model: nn.Module) -> None:
        named = list(model.named_parameters())
        self.model = model
        self.names = [n for n, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.pos = {id(p): i for i, (_, p) in enumerate(named)}

    def of_module(self, m: nn.Module) -> list[int]:
        return [self.pos[id(p)] for p in m.parameters() if id(p) in self.pos]

    def weight_first(self, i: int) -> tuple[bool, int]:
        """Sort key of parameters: weights (2-D and up) before vectors, each in the model's order."""
        return len(self.shapes[i]) < 2, i

    def owner(self, i: int) -> tuple[str, str]:
        """(qualified name, type name) of the module that holds parameter ``i``."""
        prefix = self.names[i].rpartition(".")[0]
        return prefix, type(self.model.get_submodule(prefix)).__name__

    def describe_use(self, params: list[int], how: str) -> tuple[str, str]:
        """(what the error says about this use of parameters, the name Graph.unsupported lists: the module,
        or the parameter itself for one of the model's own)."""
        prefix, kind = self.owner(params[0])
        names = ", ".join(repr(self.names[i]) for i in params)
        where = f"module {prefix!r} ({kind})" if prefix else f"the model itself ({kind})"
        return f"{where}: parameter {names} used by {how}", prefix or self.names[params[0]]


def _is_leaf(m: nn.Module, name: str) -> bool:
    """The modules both readers keep whole: those of a known op, and torch.nn's own modules that
    have no children (Dropout, Embedding, LSTM ...); a container or a user's module is read
    through, op by op."""
    if _module_op(m) is not None:
        return True
    return _default_tracer().is_leaf_module(m, name) and next(m.children(), None) is None


@functools.cache
def _default_tracer() -> fx.Tracer:
    return fx.Tracer()


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return _is_leaf(m, module_qualified_name)


def _finalize(raws: list[_Raw], params: _Params, method: str, strict: bool, title: str) -> Graph:
    """Contract, prune, order canonically and check a raw graph (``raws`` topologically ordered,
    the input first and the output last)."""
    bad = [r for r in raws if r.op == _UNSUPPORTED]
    if strict and bad:
        others = f" (and {len(bad) - 1} more: {', '.join(r.module for r in bad[1:])})" if len(bad) > 1 else ""
        raise GraphError(
            f"the graph vocabulary cannot represent {bad[0].what}{others}. Supported: Conv1d/2d/3d, Linear,"
            " BatchNorm, LayerNorm, GroupNorm, max/avg/adaptive pooling, MultiheadAttention, activations,"
            " Flatten, sums, concatenations and products of tensors, x + bias. Pass strict=False to build"
            " the graph without it (its parameters in no node, listed in Graph.unsupported), or replace it"
            " with supported layers"
        )
    unsupported: list[str] = []
    left_out: set[int] = set()
    for r in bad:
        log.warning("graph: leaving out %s (not in the graph vocabulary); its parameters are in no node", r.what)
        left_out.update(r.params)
        r.op, r.params = None, []
        unsupported.append(r.module)

    # contract: a contracted node's consumers read its own sources
    n = len(raws)
    sources: list[list[int]] = [[] for _ in range(n)]
    for i, r in enumerate(raws):
        srcs: list[int] = []
        for j in r.inputs:
            srcs.extend([j] if raws[j].op is not None else sources[j])
        sources[i] = list(dict.fromkeys(srcs))
    # keep what reaches the output
    alive = [False] * n
    alive[n - 1] = alive[0] = True
    for i in range(n - 1, -1, -1):
        if alive[i] and raws[i].op is not None:
            for j in sources[i]:
                alive[j] = True
    kept = [i for i in range(n) if alive[i] and raws[i].op is not None]

    covered = left_out.union(*(raws[i].params for i in kept))
    unused = [params.names[i] for i in range(len(params.names)) if i not in covered]
    if strict and unused:
        raise GraphError(
            f"parameters {unused[:5]}{' ...' if len(unused) > 5 else ''} do not contribute to the model's output on"
            " the example input, so no node can hold them; pass strict=False to list their modules as unsupported,"
            " or remove them from the model"
        )
    for name in unused:
        log.warning("graph: parameter %r does not contribute to the output; it is in no node", name)
        unsupported.append(name.rpartition(".")[0] or name)
    unsupported = list(dict.fromkeys(unsupported))
    preds = {i: (sources[i] or [0]) if i != 0 else [] for i in kept}  # a node that reads no data hangs off the input
    depth: dict[int, int] = {}
    for i in kept:
        depth[i] = max((depth[j] + 1 for j in preds[i]), default=0)
    succs: dict[int, list[int]] = {i: [] for i in kept}
    for i in kept:
        for j in preds[i]:
            succs[j].append(i)
    big = len(params.names)
    first = {i: min(raws[i].params, default=big) for i in kept}
    below = dict(first)  # the first parameter position of a node and everything after it: breaks ties of branches
    for i in reversed(kept):
        for j in succs[i]:
            below[i] = min(below[i], below[j])
    by_level: dict[int, list[int]] = {}
    for i in kept:
        by_level.setdefault(depth[i], []).append(i)
    index: dict[int, int] = {}
    for lv in sorted(by_level):
        members = by_level[lv]
        members.sort(
            key=lambda i: (first[i], OPS.index(raws[i].op), sorted(index[j] for j in preds[i]), below[i])  # type: ignore[arg-type]
        )
        for i in members:
            index[i] = len(index)
    order = sorted(kept, key=index.__getitem__)
    seen: set[int] = set()
    nodes = []
    for i in order:
        r = raws[i]
        # weights (2-D and up) first, then vectors, each in the model's order; a module called twice: its first call
        mine = [p for p in sorted(set(r.params), key=params.weight_first) if p not in seen]
        seen.update(mine)
        nodes.append(Node(r.op, r.name, tuple((params.names[p], params.shapes[p]) for p in mine)))  # type: ignore[arg-type]
    edges = sorted((index[j], index[i]) for i in kept for j in preds[i])
    return Graph(tuple(nodes), tuple(edges), method, tuple(unsupported), title)


# ---------------------------------------------------------------------------------------------
# torch.fx


def _fx_raw(model: nn.Module, params: _Params, no_ops: frozenset[str] = frozenset()) -> list[_Raw]:
    """The raw graph of a symbolic trace (raises whatever tracing raises); ``no_ops``: modules that
    returned their input unchanged on the example (a Flatten of flat data), contracted."""
    graph = _Tracer().trace(model)
    raws: list[_Raw] = []
    # fx node -> ("data", raw index) | ("param", [positions]) | ("const", None)
    kind: dict[fx.Node, tuple[str, Any]] = {}
    const: tuple[str, Any] = ("const", None)
    for node in graph.nodes:
        if node.op == "placeholder":
            if raws:
                kind[node] = const  # a further argument with a default: not the example input
            else:
                raws.append(_Raw("input", "input", [], []))
                kind[node] = ("data", 0)
            continue
        if node.op == "get_attr":
            obj = _fetch_attr(model, node.target)  # type: ignore[arg-type]
            kind[node] = ("param", [params.pos[id(obj)]]) if id(obj) in params.pos else const
            continue
        operands: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), operands.append)
        data = [kind[a][1] for a in operands if kind[a][0] == "data"]
        used = [p for a in operands if kind[a][0] == "param" for p in kind[a][1]]
        if node.op == "output":
            raws.append(_Raw("output", "output", [], data))
            break
        if node.op == "call_module":
            m = model.get_submodule(node.target)  # type: ignore[arg-type]
            own = params.of_module(m) + used
            op = _module_op(m) if node.target not in no_ops else None
            op = op if op is not None else (_UNSUPPORTED if own else None)
            what = f"module {node.target!r} ({type(m).__name__})"
            raws.append(_Raw(op, str(node.target), own, data, what, str(node.target)))
            kind[node] = ("data", len(raws) - 1)
            _in_place(node, kind, getattr(m, "inplace", False) is True)
            continue
        key = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
        key = key.strip("_")
        category = _FN.get(key)
        if key == "getattr" and len(node.args) > 1 and node.args[1] in _CONST_ATTRS:
            category = "const"
        if category == "const" or not data:
            kind[node] = ("param", used) if used and category != "const" else const
            continue
        if category == "adaptive":
            size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
            category = "global_pool" if _all_ones(size) else "avg_pool"
        op = _resolve(category, len(data), bool(used))
        what, module = params.describe_use(used, key) if used else ("", "")
        name = _param_node_name(params, used) if used else node.name
        raws.append(_Raw(op, name, used, data, what, module))
        kind[node] = ("data", len(raws) - 1)
        method = node.target if node.op == "call_method" and isinstance(node.target, str) else ""
        _in_place(
            node, kind, (method.endswith("_") and not method.endswith("__")) or node.kwargs.get("inplace") is True
        )
    return raws


def _in_place(node: fx.Node, kind: dict[fx.Node, tuple[str, Any]], in_place: bool) -> None:
    """After ``x.relu_()`` later reads of ``x`` read the op (as they do in the autograd graph)."""
    mutated = node.args[0] if node.args else None
    if in_place and isinstance(mutated, fx.Node) and kind[mutated][0] == "data":
        kind[mutated] = kind[node]


def _fetch_attr(model: nn.Module, target: str) -> Any:
    obj: Any = model
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _param_node_name(params: _Params, used: list[int]) -> str:
    """A functional op on parameters is named after the module holding them (the parameter itself
    for one of the model's own)."""
    name = params.names[min(used, key=params.weight_first)]
    return name.rpartition(".")[0] or name


# ---------------------------------------------------------------------------------------------
# The autograd walk


def _leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules a trace keeps whole (not the model itself, not inside another leaf)."""
    out, inside = [], None
    for name, m in model.named_modules():
        if not name or (inside is not None and name.startswith(inside)):
            continue
        if _is_leaf(m, name):
            out.append((name, m))
            inside = name + "."
    return out


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


@dataclass
class _Call:
    name: str
    module: nn.Module
    inputs: set[Any]  # the grad_fns of its tensor arguments, at call time
    outputs: list[Any] = field(default_factory=list)


def _autograd_raw(model: nn.Module, example: torch.Tensor, params: _Params) -> list[_Raw]:
    """The raw graph of one forward pass's autograd graph, leaf-module calls folded by hooks."""
    for p in model.parameters():
        if p.is_floating_point() or p.is_complex():
            p.requires_grad_(True)  # (restored by _untouched)
    x: Any = example
    if example.is_floating_point() or example.is_complex():
        # not a leaf: the model may change its input in place; x's own grad_fn marks the input
        x = example.clone().requires_grad_(True).clone()
    input_fn = x.grad_fn
    calls: list[_Call] = []
    stacks: dict[int, list[int]] = {}

    def pre(m: nn.Module, args: Any, kwargs: Any, name: str) -> None:
        stacks.setdefault(id(m), []).append(len(calls))
        fns = {t.grad_fn for t in _tensors((args, kwargs)) if t.grad_fn is not None}
        calls.append(_Call(name, m, fns))

    def post(m: nn.Module, args: Any, output: Any) -> None:
        call = calls[stacks[id(m)].pop()]
        call.outputs = [t.grad_fn for t in _tensors(output) if t.grad_fn is not None]

    handles = []
    try:
        for name, m in _leaf_modules(model):
            handles.append(m.register_forward_pre_hook(functools.partial(_bind, pre, name=name), with_kwargs=True))
            handles.append(m.register_forward_hook(post))
        with torch.enable_grad():
            out = _run(model, x)
    finally:
        for h in handles:
            h.remove()
    roots = [t.grad_fn for t in _tensors(out) if t.grad_fn is not None]
    if not roots:
        raise GraphError(
            "the model's output does not depend on its input or parameters through differentiable ops;"
            " the autograd walk has nothing to read (try method='fx')"
        )
    owner: dict[Any, int] = {}
    for c, call in enumerate(calls):
        for fn in call.outputs:
            if fn not in call.inputs:  # an identity (Dropout in eval, Identity) folds nothing
                owner.setdefault(fn, c)

    data_memo: dict[Any, bool] = dict.fromkeys(owner, True)  # a module's output is data, as in a trace
    data_memo[input_fn] = True

    def is_data(fn: Any) -> bool:
        """Whether ``fn`` depends on the input (else only on parameters)."""
        stack = [fn]
        while stack:
            f = stack[-1]
            if f in data_memo:
                stack.pop()
                continue
            if type(f).__name__ == "AccumulateGrad":
                data_memo[f] = False
                stack.pop()
                continue
            todo = [c for c, _ in f.next_functions if c is not None and c not in data_memo]
            if todo:
                stack.extend(todo)
                continue
            data_memo[f] = any(data_memo[c] for c, _ in f.next_functions if c is not None)
            stack.pop()
        return data_memo[fn]

    def param_leaves(fn: Any) -> list[int]:
        found, stack, seen = [], [fn], set()
        while stack:
            f = stack.pop()
            if f in seen:
                continue
            seen.add(f)
            if type(f).__name__ == "AccumulateGrad":
                if id(f.variable) in params.pos:
                    found.append(params.pos[id(f.variable)])
                continue
            stack.extend(c for c, _ in f.next_functions if c is not None)
        return found

    def operand(c: Any, data: list[Any], used: list[int]) -> None:
        """Sort one autograd input into data operands and parameters."""
        if c is input_fn:
            data.append("input")
        elif type(c).__name__ == "AccumulateGrad":
            if id(c.variable) in params.pos:
                used.append(params.pos[id(c.variable)])
        elif is_data(c):
            data.append(owner_key(c))
        else:
            used.extend(param_leaves(c))

    def through_views(fn: Any) -> list[Any]:
        """``fn``, or the inputs of the reshapes that ``fn`` ends (not a module's output, not the input)."""
        if fn in owner or fn is input_fn or _grad_category(fn) != "flatten":
            return [fn]
        return [d for c, _ in fn.next_functions if c is not None for d in through_views(c)]

    def owner_key(fn: Any) -> Any:
        return ("call", owner[fn]) if fn in owner else fn

    def expand(key: Any) -> _Raw:
        data: list[Any] = []
        used: list[int] = []
        if isinstance(key, tuple):  # a leaf module's call: every autograd node between its inputs and outputs
            call = calls[key[1]]
            stack = [f for f in call.outputs if owner.get(f) == key[1]]
            seen: set[Any] = set()
            while stack:
                f = stack.pop()
                if f in seen:
                    continue
                seen.add(f)
                for c, _ in f.next_functions:
                    if c is None:
                        continue
                    if c in call.inputs or type(c).__name__ == "AccumulateGrad" or owner.get(c, key[1]) != key[1]:
                        operand(c, data, used)
                    else:
                        stack.append(c)
            used = list(dict.fromkeys(params.of_module(call.module) + used))
            op = _module_op(call.module)
            op = op if op is not None else (_UNSUPPORTED if used else None)
            what = f"module {call.name!r} ({type(call.module).__name__})"
            return _Raw(op, call.name, used, data, what, call.name)
        category = _grad_category(key)
        children = [c for c, _ in key.next_functions if c is not None]
        # a matrix product of batched data runs as views around mm/bmm: the views are the product's
        if _is_matmul(key):
            children = [d for c in children for d in through_views(c)]
        elif category == "flatten" and any(_is_matmul(c) for c in children):
            category = None
        for c in children:
            operand(c, data, used)
        name = type(key).__name__
        op = _resolve(category, len(data), bool(used))
        what, module = params.describe_use(used, name) if used else ("", "")
        return _Raw(op, _param_node_name(params, used) if used else name, used, data, what, module)

    # depth-first, children before parents: a topological order from the input to the output
    info: dict[Any, _Raw] = {}
    order: list[Any] = []
    done: set[Any] = set()
    stack: list[tuple[Any, bool]] = [(owner_key(r), False) for r in reversed(roots)]
    while stack:
        key, finished = stack.pop()
        if finished:
            if key not in done:
                done.add(key)
                order.append(key)
            continue
        if key in info:
            continue
        info[key] = expand(key)
        stack.append((key, True))
        stack.extend((k, False) for k in reversed(info[key].inputs) if k != "input" and k not in info)
    where = {key: i + 1 for i, key in enumerate(order)}
    where["input"] = 0
    raws = [_Raw("input", "input", [], [])]
    for key in order:
        r = info[key]
        r.inputs = [where[k] for k in r.inputs]
        raws.append(r)
    raws.append(_Raw("output", "output", [], [where[owner_key(r)] for r in roots]))
    return raws


def _bind(hook: Any, m: nn.Module, args: Any, kwargs: Any, *, name: str) -> None:
    hook(m, args, kwargs, name)


# ---------------------------------------------------------------------------------------------


@contextmanager
def _untouched(model: nn.Module) -> Iterator[None]:
    """Eval mode and every parameter requiring grad while reading the graph; afterwards each
    module's training flag, each parameter's requires_grad and every buffer's value as before."""
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        model.eval()
        yield
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in grads:
            p.requires_grad_(flag)
        with torch.no_grad():
            for b, saved in buffers:
                if b.shape == saved.shape:
                    b.copy_(saved)


def build(model: nn.Module, example_input: torch.Tensor, *, strict: bool = True, method: str = "auto") -> Graph:
    """The computational graph of ``model`` on ``example_input`` (one batch it accepts).

    ``method``: ``"fx"`` (symbolic trace), ``"autograd"`` (walk one forward pass's autograd graph)
    or ``"auto"`` (fx, falling back to the autograd walk where the model does not trace).
    ``strict``: a parameterised op outside :data:`OPS` (or a parameter the forward pass never
    uses) raises :class:`GraphError`; with ``strict=False`` it is logged, contracted and listed in
    ``Graph.unsupported``. The model's training flags, ``requires_grad`` flags and buffers are left as
    they were. Raises :class:`GraphError` first if the model fails on ``example_input``.
    """
    if not isinstance(model, nn.Module):
        raise GraphError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor):
        raise GraphError(
            f"example_input must be one tensor (a batch the model accepts), got {type(example_input).__name__}"
        )
    if method not in METHODS:
        raise GraphError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    params = _Params(model)
    title = type(model).__name__
    x = example_input.detach()
    with _untouched(model):
        if method in ("auto", "fx"):  # (the autograd walk's own forward pass is the check)
            with torch.no_grad(), _no_op_reshapes(model) as no_ops:
                _run(model, x)
            try:
                raws = _fx_raw(model, params, frozenset(no_ops))
            except GraphError:
                raise
            except Exception as exc:
                if method == "fx":
                    raise GraphError(
                        f"torch.fx cannot trace {title} ({type(exc).__name__}: {exc}); use method='autograd'"
                        " or 'auto', which walk the autograd graph of one forward pass instead"
                    ) from exc
                log.info("graph: torch.fx cannot trace %s (%s); walking the autograd graph", title, exc)
            else:
                return _finalize(raws, params, "fx", strict, title)
        raws = _autograd_raw(model, x, params)
        return _finalize(raws, params, "autograd", strict, title)


@contextmanager
def _no_op_reshapes(model: nn.Module) -> Iterator[set[str]]:
    """The names of the Flatten modules that return their input itself (``torch.flatten`` of flat
    data): no autograd node, so no graph node either."""
    found: set[str] = set()
    handles = []

    def hook(name: str, m: nn.Module, args: Any, output: Any) -> None:
        if args and output is args[0]:
            found.add(name)

    for name, m in model.named_modules():
        if name and _module_op(m) == "flatten":
            handles.append(m.register_forward_hook(functools.partial(hook, name)))
    try:
        yield found
    finally:
        for h in handles:
            h.remove()


def _run(model: nn.Module, x: torch.Tensor) -> Any:
    """``model(x)``; a failure is a GraphError saying so (the original exception chained)."""
    try:
        return model(x)
    except Exception as exc:
        raise GraphError(
            f"the model fails on the example input of shape {tuple(x.shape)} ({x.dtype}):"
            f" {type(exc).__name__}: {exc}. Pass an input the model accepts (a batch, e.g. (2, 1, 8, 8)"
            " for 8x8 one-channel images)"
        ) from exc


# ---------------------------------------------------------------------------------------------

DIGITS_SHAPE = (1, 8, 8)  # what the classify task gives models on its default dataset (digits)


def arch_example(
    spec: str, input_shape: tuple[int, ...] | None = None, *, batch: int = 2, seed: int = 0
) -> tuple[nn.Module, torch.Tensor]:
    """A model of the registered architecture ``spec`` (``initium.nn.ARCHS``, e.g.
    ``"resnet(depth=8,width=8)"``) and a random input batch of ``input_shape`` (one sample's shape)
    for it. The arch's sizes come from ``input_shape`` as a task would fix them: ``in_shape`` (a
    classifier; default digits' ``(1, 8, 8)``, 10 classes), ``in_features`` (a coordinate network;
    default 2 coordinates, 1 output) or ``in_channels`` (default the arch's own, at its smallest
    image side)."""
    from .nn import ARCHS

    parts = ARCHS.parse(spec)
    if len(parts) != 1:
        raise ValueError(f"--arch takes one architecture, got {spec!r}")
    name, kwargs = parts[0]
    shape = tuple(input_shape) if input_shape is not None else None
    if shape is not None and (not shape or any(not isinstance(n, int) or n < 1 for n in shape)):
        raise ValueError(f"input_shape must list one sample's sizes >= 1, e.g. (1, 8, 8); got {input_shape!r}")
    options = ARCHS.options(name)
    defaults: dict[str, Any] = {}
    if "in_shape" in options:
        defaults.update(in_shape=shape or DIGITS_SHAPE, out_features=10)
    elif "in_features" in options:
        defaults.update(in_features=shape[-1] if shape else 2, out_features=1)
    elif "in_channels" in options and shape:
        defaults.update(in_channels=shape[0])
    model = ARCHS.build(name, kwargs, **defaults)
    if shape is None:
        config = getattr(model, "config", {})
        if "in_shape" in config:
            shape = tuple(config["in_shape"])
        elif "in_features" in config:
            shape = (int(config["in_features"]),)
        elif "in_channels" in config:
            side = int(getattr(model, "min_side", 32))
            shape = (int(config["in_channels"]), side, side)
        else:
            raise ValueError(f"arch {name!r}: give the shape of one input (--input-shape C,H,W)")
    gen = torch.Generator().manual_seed(seed)
    return model, torch.randn((batch, *shape), generator=gen)


def plot(graph: Graph, path: str | Path, *, virtual: bool = False, cutoff: int = 50) -> Path:
    """Draw ``graph`` to ``path`` (a PNG): nodes laid out by level from left to right, coloured by
    op; ``virtual`` also draws the virtual edges (thin, grey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    levels = graph.levels()
    pos: dict[int, tuple[float, float]] = {}
    for lv, members in enumerate(levels):
        for k, i in enumerate(members):
            pos[i] = (float(lv), (len(members) - 1) / 2 - k)
    height = max(len(m) for m in levels)
    width = min(40.0, max(6.0, 0.45 * len(levels)))  # a ResNet-50 is ~170 levels: squeezed, not 9000 pixels wide
    fig, ax = plt.subplots(figsize=(width, max(3.0, 0.9 * height + 1.5)), layout="constrained")
    if virtual:
        lines = [(pos[s], pos[d]) for s, d, _ in graph.virtual_edges(cutoff)]
        ax.add_collection(LineCollection(lines, colors="0.85", linewidths=0.4, zorder=0))
    # every edge runs to a later level, left to right: lines need no arrowheads
    ax.add_collection(LineCollection([(pos[s], pos[d]) for s, d in graph.edges], colors="0.35", linewidths=0.8))
    cmap = plt.get_cmap("tab20")
    used = sorted({n.op for n in graph.nodes}, key=OPS.index)
    for op in used:
        idx = [i for i, n in enumerate(graph.nodes) if n.op == op]
        ax.scatter(
            [pos[i][0] for i in idx], [pos[i][1] for i in idx], s=120, color=cmap(OPS.index(op) % 20),
            edgecolors="black", linewidths=0.5, label=op, zorder=2,
        )  # fmt: skip
    for i, n in enumerate(graph.nodes):  # the index inside the node, the name slanted above it
        ax.annotate(str(i), pos[i], ha="center", va="center", fontsize=5, zorder=3)
        if len(graph.nodes) <= 120:
            ax.annotate(n.name, pos[i], xytext=(3, 7), textcoords="offset points", fontsize=5, rotation=35)
    ax.set_xlabel("level (longest path from the input)")
    ax.set_yticks([])
    ax.set_title(
        f"{graph.title or 'graph'} ({graph.method}): {len(graph.nodes)} nodes, {len(graph.edges)} edges",
        fontsize=10,
        pad=16,
    )
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=120, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())
