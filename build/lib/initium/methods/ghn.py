"""Graph hypernetwork init (Harder et al., "From Pointwise to Powerhouse", arXiv 2310.16695, section 3.2),
after GHN-2 (Knyazev, Drozdzal, Taylor & Romero, "Parameter Prediction for Unseen Deep Architectures",
NeurIPS 2021) and its noise GHN.

The family's whole logic: a graph hypernetwork :class:`GHN` that predicts every parameter of a
network from its computational graph (:mod:`initium.graph`), saving and loading it
(:func:`save`, :func:`load`), filling an existing model in place (:func:`fill`) and the method
``ghn(path=GHN, noise=False, seed=0)``. Public as ``initium.ghn`` (the same module). Training lives
beside it (``initium train ghn``).

**Node embeddings.** Each node ``v`` of the graph starts as

    h_v = E_op[op(v)] + E_out[b_c(C_out)] + E_in[b_c(C_in)] + E_kh[b_s(k_h)] + E_kw[b_s(k_w)]

with the op's index in the GHN's vocabulary (``config.ops``, :data:`initium.graph.OPS` when it was
made; an op it has not seen gets an extra "unknown" row) and the shape of the node's first
parameter bucketed as GHN-2 does: a linear layer is a ``1 x 1`` convolution ``(out, in, 1, 1)``, a
1-D convolution ``(out, in, 1, k)``, a 1-D parameter ``(C,)`` has only ``C_out``; absent dimensions
take bucket 0; channels ``b_c(c) = 1 + round(2 log2 c)`` (half-octaves, so 16, 24 and 32 differ),
kernels ``b_s(k) = k``, both capped at ``config.shape_buckets - 1``.

**Message passing** (a gated GNN, GHN-2's eq. 3-4, after Zhang et al. 2019). In topological order
(forward), then in reverse (backward), ``passes`` times, each node is updated from the nodes
before it in that direction:

    m_v = sum_{u -> v} MLP(h_u) + sum_{u ~> v, 2 <= d(u, v) <= cutoff} MLP_sp(h_u) / d(u, v)
    h_v = GRU(m_v, h_v)

where ``u ~> v`` are GHN-2's virtual edges (shortest directed path of length ``d``); backward, the
edges are reversed. Because every predecessor of a node lies in an earlier topological *level*
(:meth:`initium.graph.Graph.levels`), all nodes of one level can be updated at once: with
``mode="levels"`` (the default) the graphs of a meta-batch are joined as one disjoint graph
(node tensors concatenated, indices offset), and each level is ONE batched update: a node's
outgoing messages ``MLP(h_u)``, ``MLP_sp(h_u)`` are computed once, right after its own update, into
a table, and a level sums its incoming ones with one gather and one ``index_add``.
``mode="nodes"`` is GHN-2's loop (ppuda's ``GatedGNN``): one update per node *position* (node ``i``
of every graph of the meta-batch at once), each finding its incoming edges by masking the edge
list and applying the MLPs per edge. Both compute the same function (``tests/test_ghn.py`` checks
the predictions agree to float tolerance). The sequential steps are the levels (the longest path)
against the positions (the largest graph): for chain-like nets nearly as many, so the gain is the
cheaper step; ``benchmarks/ghn_speed.py`` measures it.

**Decoder.** The node states go through a LayerNorm; a noise GHN (``noise_dim > 0``) then
concatenates a standard normal vector per node, drawn from the caller's generator (the paper's
noise GHN: "an 8-dim noise vector ... before the conv decoder"; here it feeds every head). GHN-2's
conv decoder maps the result to a ``(block, block, k, k)`` tensor: a linear layer to a
``(d0, k, k)`` map, 1x1 convolutions to ``(d1, k, k)`` features, and a last 1x1 convolution to
``block * block`` channels. The last layer is pointwise, so only the channels and the centred
window a parameter needs are computed (the same numbers as decoding the whole block and slicing
it). The block is fitted to each parameter's shape ``(out, in, *kernel)``:

- channels: cropped (first ``out`` / ``in``) when smaller than ``block``; tiled (repeated, then
  cropped) when larger, as GHN-2 does (so a 256-channel layer repeats 64 predicted filters);
- kernel: centred crop of the ``k x k`` window (``k = 7``: 1, 3, 5 centred exactly, 7 whole; an
  even size ``s`` starts at ``(k - s) // 2``, one off centre as any even kernel); larger than ``k``:
  tiled (an odd number of copies, centre-cropped), so the density of the kernel, and with it the
  fan-in scale below, stays right; a linear weight is the centre tap of ``(out, in)``; a 1-D
  convolution the centre row;
- 1-D parameters (norm weights, norm/conv/linear biases) come from a small MLP head of ``2 block``
  numbers (the first half for norm weights, the second for biases), tiled or cropped to ``C``;
- the classifier (the last ``conv``/``linear`` node of the graph) has its own last 1x1
  convolution predicting ``num_classes`` rows of ``block`` inputs; a model whose classifier has
  another output size is refused with a clear error (:meth:`GHN.check`) before any work.

Parameters of three kernel dimensions (3-D convolutions' 5-D weights), 0-d parameters, >= 2-D
parameters of ops other than conv/linear/attention, 1-D ones that are neither a norm's weight nor
a bias, and parameters of modules the graph could not represent are *not* predicted: :func:`fill`
lists them. (A transposed convolution is read as ``conv``; its weight is ``(in, out, k, k)``, so its
fan-in scale is that of the transposed shape.)

**Normalisation** (GHN-2, section 4): weights ``w = p sqrt(beta / fan_in)`` with ``fan_in = in x
prod(kernel)`` and ``beta = 2`` for the ReLU networks of the space (He et al.'s gain), ``beta = 1``
for the classifier (its logits feed a softmax, not a ReLU); norm weights ``2 sigmoid(p / 2)`` (1 at
``p = 0``, in ``(0, 2)``); biases ``bias_scale tanh(p)`` (``0.5``). The decoder's layers are He
initialised and its last layers scaled so that an untrained GHN predicts ``p`` of about unit
variance: its weights already have He's scale.

**Filling a model** (:func:`fill`, ``ghn(model, example_input)``): builds the graph
(:func:`initium.graph.build`, ``strict=False``), predicts, copies into the parameters in place,
and re-estimates BatchNorm running statistics (GHN-2 does not predict them: a user's pitfall) from
``bn_inputs`` with one cumulative forward pass; every parameter it could not predict is listed in
the returned :class:`FillReport` and logged as a warning, never silently left random.

**Files.** ``GHN/ghn.safetensors`` (the GHN's state dict) and ``GHN/ghn.json`` (format, version,
the :class:`GHNConfig`, ``meta`` such as the training command and data, the sha256 of the weights,
checked before they are parsed). Nothing is unpickled. ``load(None)`` reads the GHN shipped with
the package (:data:`BUNDLED`); ``ghn(noise=true)`` with no path the noise GHN shipped beside it
(:data:`BUNDLED_NOISE`, warm-started from the plain one: ``initium train ghn --init``).

Python API::

    from initium import ghn
    net = ghn.load()                                          # the bundled GHN (or ghn.load("runs/ghn"))
    report = ghn.fill(model, x[:2], net, bn_inputs=x[:256])   # or net(model, x[:2])
    report.unpredicted                                        # [] for a fully supported model
    preds = net.predict([initium.graph.build(model, x[:2])])  # differentiable dicts name -> tensor
    states = net.encode([graph])                              # node states after message passing
    initium.create("ghn(noise=true)", seed=3)(model, x)      # the registered method
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from torch import nn

from .. import __version__
from .. import graph as graphs
from .._io import atomic_write_bytes, atomic_write_json, checked_record, sha256, tensors_to_bytes
from ..graph import Graph
from ._base import METHODS, Method

__all__ = [
    "BUNDLED", "BUNDLED_NOISE", "CONFIG_FILE", "FORMAT", "GHN", "WEIGHTS_FILE", "FillReport", "GHNConfig", "GHNError",
    "GHNInit", "GHNMethodConfig", "GHNTrainConfig", "fill", "load", "reestimate_batchnorm", "save", "train",
]  # fmt: skip

log = logging.getLogger(__name__)

FORMAT = "initium-ghn"
VERSION = 1
CONFIG_FILE = "ghn.json"
WEIGHTS_FILE = "ghn.safetensors"
BUNDLED = Path(__file__).parents[1] / "data" / "ghn"
"""The GHN shipped with the package (``load(None)``, ``create("ghn")``), trained by ``initium train ghn``."""
BUNDLED_NOISE = Path(__file__).parents[1] / "data" / "ghn-noise"
"""The noise GHN shipped with the package, when there is one: ``ghn(noise=true)`` without a path uses it."""

TRAIN_HINT = "initium train ghn --dataset digits --space small --steps 2000 --out GHN"
MODES = ("levels", "nodes")

_WEIGHT_OPS = frozenset({"conv", "linear", "attention"})  # ops whose >= 2-D parameters are weight matrices
_CLASSIFIER_OPS = ("conv", "linear")
_NORM_OPS = frozenset({"bn", "ln", "gn"})


class GHNError(ValueError):
    """A GHN that cannot be built, found, read or used on a model (names the file or argument and the fix)."""


@dataclass(frozen=True)
class GHNConfig:
    """Everything needed to rebuild a :class:`GHN` (saved in ``ghn.json``).

    ``hidden``: node state width; ``block``: channels of the decoded ``(block, block, k, k)``
    tensor; ``kernel``: ``k`` (odd); ``cutoff``: longest virtual edge; ``noise_dim``: > 0 for a noise
    GHN (the paper uses 8); ``num_classes``: rows of the classifier head; ``passes``: forward +
    backward message-passing rounds; ``decoder``: widths ``(d0, d1)`` of the conv decoder's hidden
    maps (GHN-2: ``4 hidden, 8 hidden``); ``shape_buckets``: rows of each shape embedding;
    ``beta`` / ``beta_classifier``: fan-in gains; ``bias_scale``: largest predicted bias; ``ops``:
    the op vocabulary of the embedding (``initium.graph.OPS`` when left empty)."""

    hidden: int = 32
    block: int = 64
    kernel: int = 7
    cutoff: int = 50
    noise_dim: int = 0
    num_classes: int = 10
    passes: int = 1
    decoder: tuple[int, int] = (128, 256)
    shape_buckets: int = 32
    beta: float = 2.0
    beta_classifier: float = 1.0
    bias_scale: float = 0.5
    ops: tuple[str, ...] = ()

    def check(self) -> None:
        """Raise :class:`GHNError` naming the first bad field."""
        for name, least in (("hidden", 1), ("block", 1), ("kernel", 1), ("cutoff", 1), ("noise_dim", 0),
                            ("num_classes", 1), ("passes", 1), ("shape_buckets", 16)):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise GHNError(f"GHNConfig: {name} must be an int >= {least}, got {value!r}")
        if self.kernel % 2 == 0:
            raise GHNError(f"GHNConfig: kernel must be odd (its centre is the 1x1 tap), got {self.kernel}")
        if (
            not isinstance(self.decoder, tuple)
            or len(self.decoder) != 2
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in self.decoder)
        ):
            raise GHNError(f"GHNConfig: decoder must be two ints >= 1 (d0, d1), got {self.decoder!r}")
        for name in ("beta", "beta_classifier", "bias_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise GHNError(f"GHNConfig: {name} must be a finite number > 0, got {value!r}")
        if not isinstance(self.ops, tuple) or not all(isinstance(o, str) for o in self.ops):
            raise GHNError(f"GHNConfig: ops must be a tuple of op names, got {self.ops!r}")

    @classmethod
    def from_json(cls, data: Any) -> GHNConfig:
        """From ``ghn.json``'s ``config`` object (lists become tuples); raises :class:`GHNError`."""
        if not isinstance(data, dict):
            raise GHNError(f"config must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(data) - names):
            raise GHNError(f"config has unknown field(s) {unknown} (this initium knows {sorted(names)})")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        config = cls(**kwargs)
        config.check()
        return config


# --- embedding --------------------------------------------------------------------------------------


def _channel_bucket(c: int, buckets: int) -> int:
    return 1 + min(round(2 * math.log2(max(c, 1))), buckets - 2)


def _shape4(shape: Sequence[int]) -> tuple[int, int, int, int]:
    """A parameter's shape as GHN-2's ``(out, in, kh, kw)``, 0 for an absent dimension: a linear
    weight is a 1x1 convolution, a 1-D convolution ``(out, in, 1, k)``, a vector ``(C, 0, 0, 0)``."""
    if len(shape) == 0:
        return (0, 0, 0, 0)
    if len(shape) == 1:
        return (shape[0], 0, 0, 0)
    if len(shape) == 2:
        return (shape[0], shape[1], 1, 1)
    if len(shape) == 3:
        return (shape[0], shape[1], 1, shape[2])
    return (shape[0], shape[1], shape[-2], shape[-1])


def _buckets(shape: Sequence[int], buckets: int) -> tuple[int, int, int, int]:
    o, i, kh, kw = _shape4(shape)
    return (
        _channel_bucket(o, buckets) if o else 0,
        _channel_bucket(i, buckets) if i else 0,
        min(kh, buckets - 1),
        min(kw, buckets - 1),
    )


class NodeEmbedding(nn.Module):
    """``h_v = E_op[op] + sum of the four shape-bucket embeddings`` (module docstring)."""

    def __init__(self, ops: Sequence[str], hidden: int, buckets: int) -> None:
        super().__init__()
        self.op = nn.Embedding(len(ops) + 1, hidden)  # the last row: an op this GHN was not made for
        self.shape = nn.ModuleList(nn.Embedding(buckets, hidden) for _ in range(4))

    def forward(self, op_index: torch.Tensor, shape_index: torch.Tensor) -> torch.Tensor:
        h = self.op(op_index)
        for k, emb in enumerate(self.shape):
            h = h + emb(shape_index[:, k])
        return h


# --- the graphs of a meta-batch, as tensors ---------------------------------------------------------


@dataclass(frozen=True)
class _Slot:
    """One parameter to predict: ``node`` (index in its graph), ``name``, ``shape``, ``role``
    (``weight``, ``classifier``, ``norm``, ``bias``)."""

    node: int
    name: str
    shape: tuple[int, ...]
    role: str


@dataclass(frozen=True)
class _GraphInfo:
    """What the GHN reads from one graph (cached per graph and cutoff)."""

    ops: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]  # each node's first parameter's shape (() for none)
    levels: tuple[tuple[int, ...], ...]
    messages: np.ndarray  # (E + V, 3) int64 rows (src, dst, d): the real edges (d = 1), then the virtual ones
    slots: tuple[_Slot, ...]
    unpredicted: tuple[str, ...]  # parameters in the graph's nodes that the GHN cannot predict
    classifier: tuple[str, tuple[int, ...]] | None  # (name, shape) of the classifier's weight


def _role(op: str, name: str, shape: tuple[int, ...], classifier: bool) -> str | None:
    leaf = name.rsplit(".", 1)[-1]
    if len(shape) >= 2:
        if len(shape) > 4 or op not in _WEIGHT_OPS:
            return None
        return "classifier" if classifier else "weight"
    if len(shape) == 1:
        if leaf.endswith("bias") or op == "bias":  # "bias": a parameter added to the data (x + b)
            return "bias"
        if op in _NORM_OPS and leaf == "weight":
            return "norm"
    return None


def _classifier_node(graph: Graph) -> int | None:
    """The last ``conv``/``linear`` node with a weight (GHN_API.md: found from the graph alone)."""
    for i in range(len(graph.nodes) - 1, -1, -1):
        node = graph.nodes[i]
        if node.op in _CLASSIFIER_OPS and node.params and len(node.params[0][1]) >= 2:
            return i
    return None


def _graph_info(graph: Graph, cutoff: int) -> _GraphInfo:
    """:func:`_read_graph`, cached for the last 256 graphs (a training run revisits its specs)."""
    try:
        hash(graph)
    except TypeError:  # a hand-made graph holding lists: read it every time
        return _read_graph(graph, cutoff)
    return _read_graph_cached(graph, cutoff)


def _read_graph(graph: Graph, cutoff: int) -> _GraphInfo:
    cls = _classifier_node(graph)
    slots, unpredicted = [], []
    for i, node in enumerate(graph.nodes):
        for name, shape in node.params:
            role = _role(node.op, name, tuple(shape), i == cls)
            if role is None:
                unpredicted.append(name)
            else:
                slots.append(_Slot(i, name, tuple(shape), role))
    real = np.array([(s, d, 1) for s, d in graph.edges], dtype=np.int64).reshape(-1, 3)
    virtual = np.zeros((0, 3), dtype=np.int64)
    if cutoff >= 2:  # graph.virtual_edges(cutoff), read from the distance matrix without a Python loop
        dist = graph.distances(cutoff)
        src, dst = torch.nonzero(dist >= 2, as_tuple=True)
        virtual = torch.stack([src, dst, dist[src, dst]], dim=1).numpy()
    return _GraphInfo(
        ops=tuple(n.op for n in graph.nodes),
        shapes=tuple(tuple(n.params[0][1]) if n.params else () for n in graph.nodes),
        levels=tuple(tuple(level) for level in graph.levels()),
        messages=np.concatenate([real, virtual]),
        slots=tuple(slots),
        unpredicted=tuple(unpredicted),
        classifier=(graph.nodes[cls].params[0][0], tuple(graph.nodes[cls].params[0][1])) if cls is not None else None,
    )


_read_graph_cached = functools.lru_cache(maxsize=256)(_read_graph)


@dataclass
class _Level:
    """One batched update: nodes ``idx`` (global); messages into row ``dst`` of ``idx`` from row
    ``src`` of the message table (``2u`` for a real edge from ``u``, ``2u + 1`` for a virtual one),
    weighted ``w`` (``(E, 1)``: 1, or ``1 / d``)."""

    idx: torch.Tensor
    src: torch.Tensor
    dst: torch.Tensor
    w: torch.Tensor


@dataclass
class _Direction:
    """All directed messages of one direction, for the per-node loop: ``src``, ``dst`` (global),
    ``w`` (1 for real edges), ``virtual`` mask."""

    src: torch.Tensor
    dst: torch.Tensor
    w: torch.Tensor
    virtual: torch.Tensor


@dataclass
class _Batch:
    infos: list[_GraphInfo]
    offsets: list[int]
    n: int
    op_index: torch.Tensor
    shape_index: torch.Tensor
    forward: list[_Level] = field(default_factory=list)
    backward: list[_Level] = field(default_factory=list)
    directions: dict[str, _Direction] = field(default_factory=dict)
    position: torch.Tensor | None = None  # node -> its index inside its graph
    graph_of: torch.Tensor | None = None  # node -> its graph


def _levels(groups: list[np.ndarray], messages: np.ndarray, n: int, device: torch.device) -> list[_Level]:
    """Batched updates for ``groups`` (arrays of global node indices, in processing order), each
    node receiving the ``messages`` (rows ``src, dst, d``; ``d = 1`` a real edge, ``d >= 2`` a
    virtual one weighted ``1 / d``) addressed to it: sorted by group once, then sliced."""
    level_of, row_of = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    for g, group in enumerate(groups):
        level_of[group] = g
        row_of[group] = np.arange(len(group))
    src, dst, d = messages.T if len(messages) else (np.zeros(0, np.int64),) * 3
    order = np.argsort(level_of[dst], kind="stable")
    bounds = np.searchsorted(level_of[dst][order], np.arange(len(groups) + 1)).tolist()
    src_t = torch.from_numpy((2 * src + (d >= 2))[order]).to(device)
    row_t = torch.from_numpy(row_of[dst[order]]).to(device)
    w_t = torch.from_numpy(1.0 / d[order].astype(np.float32)[:, None]).to(device)
    out = []
    for g, group in enumerate(groups):
        part = slice(bounds[g], bounds[g + 1])
        out.append(_Level(torch.from_numpy(group).to(device), src_t[part], row_t[part], w_t[part]))
    return out


def _batch(infos: list[_GraphInfo], config: GHNConfig, device: torch.device, mode: str) -> _Batch:
    op_of = {op: i for i, op in enumerate(config.ops)}
    unknown = len(config.ops)
    offsets, n = [], 0
    ops, shapes = [], []
    for info in infos:
        offsets.append(n)
        n += len(info.ops)
        ops.extend(op_of.get(op, unknown) for op in info.ops)
        shapes.extend(_buckets(s, config.shape_buckets) for s in info.shapes)
    batch = _Batch(
        infos, offsets, n, torch.tensor(ops, dtype=torch.long, device=device),
        torch.tensor(shapes, dtype=torch.long, device=device).reshape(n, 4),
    )  # fmt: skip
    # every directed message of the forward pass as (src, dst, d): real edges d = 1, virtual d >= 2
    fwd = np.concatenate([info.messages + np.array([off, off, 0]) for info, off in zip(infos, offsets, strict=True)])
    bwd = fwd[:, [1, 0, 2]]
    if mode == "levels":
        depth = max(len(info.levels) for info in infos)
        groups = [
            np.array(
                [
                    off + v
                    for info, off in zip(infos, offsets, strict=True)
                    if k < len(info.levels)
                    for v in info.levels[k]
                ],
                dtype=np.int64,
            )
            for k in range(depth)
        ]
        batch.forward = _levels(groups, fwd, n, device)
        batch.backward = _levels(groups[::-1], bwd, n, device)
    else:
        for name, messages in (("forward", fwd), ("backward", bwd)):
            m = torch.from_numpy(messages).to(device)
            batch.directions[name] = _Direction(m[:, 0], m[:, 1], 1.0 / m[:, 2].float(), m[:, 2] >= 2)
        batch.position = torch.cat([torch.arange(len(i.ops), device=device) for i in infos])
        batch.graph_of = torch.cat(
            [torch.full((len(i.ops),), g, dtype=torch.long, device=device) for g, i in enumerate(infos)]
        )
    return batch


# --- message passing --------------------------------------------------------------------------------


class GatedGNN(nn.Module):
    """GHN-2's gated GNN: ``m_v = sum MLP(h_u) + sum MLP_sp(h_u) / d``, ``h_v = GRU(m_v, h_v)``,
    forward then backward in topological order (module docstring); shared weights both ways."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.mlp_sp = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.gru = nn.GRUCell(hidden, hidden)

    def _update(
        self, h: torch.Tensor, idx: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
        vsrc: torch.Tensor, vdst: torch.Tensor, vw: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        """GHN-2's update of nodes ``idx``: each message's MLP applied to its source's state."""
        m = h.new_zeros(len(idx), h.shape[1])
        if len(src):
            m = m.index_add(0, dst, self.mlp(h[src]))
        if len(vsrc):
            m = m.index_add(0, vdst, self.mlp_sp(h[vsrc]) * vw.to(h.dtype)[:, None])
        return h.index_copy(0, idx, self.gru(m, h[idx]))

    def levels(self, h: torch.Tensor, batch: _Batch, passes: int) -> torch.Tensor:
        """One batched update per topological level, across all graphs of the batch.

        A node's outgoing messages ``MLP(h_u)`` and ``MLP_sp(h_u)`` depend on ``u`` alone, and ``u``
        is final in this direction once its level is done: so both are computed once per node,
        right after its update (the two MLPs as one: first layers stacked, second layers
        block-diagonal), into a table whose row ``u`` is ``[MLP(h_u), MLP_sp(h_u)]``, read as ``2N``
        rows of ``hidden`` (``2u``: the real-edge message, ``2u + 1``: the virtual one). A level
        then sums its messages with one gather and one ``index_add`` (GHN-2 applies the MLPs per
        edge: the same sums). The new states of a direction are written back once, at its end:
        within it, a node's own previous state is still the one before the direction."""
        n, hid = h.shape
        w1 = torch.cat([self.mlp[0].weight, self.mlp_sp[0].weight])
        b1 = torch.cat([self.mlp[0].bias, self.mlp_sp[0].bias])
        w2 = torch.block_diag(self.mlp[2].weight, self.mlp_sp[2].weight)
        b2 = torch.cat([self.mlp[2].bias, self.mlp_sp[2].bias])
        for _ in range(passes):
            for levels in (batch.forward, batch.backward):
                table, news = h.new_zeros(n, 2 * hid), []
                for k, level in enumerate(levels):
                    m = h.new_zeros(len(level.idx), hid)
                    if len(level.src):
                        m = m.index_add(0, level.dst, table.view(2 * n, hid)[level.src] * level.w)
                    new = self.gru(m, h[level.idx])
                    news.append(new)
                    if k + 1 < len(levels):  # the last level's messages go nowhere
                        rows = nn.functional.linear(torch.relu(nn.functional.linear(new, w1, b1)), w2, b2)
                        table = table.index_copy(0, level.idx, rows)
                h = h.index_copy(0, torch.cat([level.idx for level in levels]), torch.cat(news))
        return h

    def nodes(self, h: torch.Tensor, batch: _Batch, passes: int) -> torch.Tensor:
        """GHN-2's loop: one update per node position (that node of every graph at once), finding
        its messages by masking the whole edge list, as GHN-2 does."""
        assert batch.position is not None and batch.graph_of is not None
        sizes = [len(info.ops) for info in batch.infos]
        offsets = torch.tensor(batch.offsets, dtype=torch.long, device=h.device)
        count = torch.tensor(sizes, dtype=torch.long, device=h.device)
        longest = max(sizes)
        for _ in range(passes):
            for name, order in (("forward", range(longest)), ("backward", range(longest - 1, -1, -1))):
                d = batch.directions[name]
                for i in order:
                    active = (count > i).nonzero().flatten()
                    slot = torch.full((len(sizes),), -1, dtype=torch.long, device=h.device)
                    slot[active] = torch.arange(len(active), device=h.device)
                    idx = offsets[active] + i
                    into = batch.position[d.dst] == i
                    real, virtual = into & ~d.virtual, into & d.virtual
                    h = self._update(
                        h, idx, d.src[real], slot[batch.graph_of[d.dst[real]]], d.src[virtual],
                        slot[batch.graph_of[d.dst[virtual]]], d.w[virtual],
                    )  # fmt: skip
        return h


# --- decoder ----------------------------------------------------------------------------------------


def _tile(x: torch.Tensor, dim: int, n: int) -> torch.Tensor:
    """``n`` entries along ``dim``: the first ``n`` when there are enough, else repeated and cropped."""
    size = x.shape[dim]
    if n > size:
        reps = [1] * x.dim()
        reps[dim] = math.ceil(n / size)
        x = x.repeat(*reps)
    return x.narrow(dim, 0, n)


def _centre(x: torch.Tensor, dim: int, n: int) -> torch.Tensor:
    """``n`` entries along ``dim`` centred on the middle of the ``w`` (odd) there; when ``n > w``,
    an odd number of copies side by side, centre-cropped (the predicted kernel stays in the middle)."""
    w = x.shape[dim]
    if n > w:
        reps = math.ceil(n / w)
        reps += 1 - reps % 2
        shape = [1] * x.dim()
        shape[dim] = reps
        x, w = x.repeat(*shape), w * reps
    return x.narrow(dim, (w - n) // 2, n)


def _window(shape: tuple[int, ...], kernel: int) -> int:
    """The (odd) side of the centred window of the ``kernel x kernel`` block a parameter needs."""
    spatial = shape[2:]
    if not spatial:
        return 1
    need = max(s + 1 - s % 2 for s in spatial)
    return min(need, kernel)


def fit_block(block: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """A ``(rows, cols, w, w)`` decoded block (``w`` odd) fitted to a weight's ``shape`` ``(out, in,
    *kernel)``: channels cropped or tiled (:func:`_tile`), the kernel centre-cropped or tiled
    (:func:`_centre`); a linear weight takes the centre tap, a 1-D convolution the centre row."""
    shape = tuple(shape)
    x = _tile(_tile(block, 0, shape[0]), 1, shape[1])
    c = x.shape[2] // 2
    if len(shape) == 2:
        return x[:, :, c, c]
    if len(shape) == 3:
        return _centre(x[:, :, c, :], 2, shape[2])
    return _centre(_centre(x, 2, shape[2]), 3, shape[3])


class Decoder(nn.Module):
    """GHN-2's conv decoder and its two extra heads (module docstring): ``trunk`` maps a node
    vector to ``(d1, k, k)`` features; ``weight`` / ``classifier`` (1x1 convolutions, kept as
    matrices) to ``block x block`` / ``num_classes x block`` channels; ``vector`` (an MLP) to the
    ``2 block`` numbers of 1-D parameters."""

    def __init__(self, config: GHNConfig) -> None:
        super().__init__()
        c = config
        d0, d1 = c.decoder
        width = c.hidden + c.noise_dim
        self.config = c
        self.fc = nn.Linear(width, d0 * c.kernel * c.kernel)
        self.conv = nn.Conv2d(d0, d1, 1)
        self.weight = nn.Parameter(torch.empty(c.block, c.block, d1))
        self.weight_bias = nn.Parameter(torch.zeros(c.block, c.block))
        self.classifier = nn.Parameter(torch.empty(c.num_classes, c.block, d1))
        self.classifier_bias = nn.Parameter(torch.zeros(c.num_classes, c.block))
        self.vector = nn.Sequential(nn.Linear(width, 2 * c.hidden), nn.ReLU(), nn.Linear(2 * c.hidden, 2 * c.block))
        # He init through the ReLU trunk (unit second moment in, unit out), and last layers of
        # variance 1/d1: an untrained GHN predicts p ~ unit variance, i.e. He-scaled weights
        for layer in (self.fc, self.conv):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
        for p in (self.weight, self.classifier):
            nn.init.normal_(p, 0.0, 1.0 / math.sqrt(d1))
        nn.init.normal_(self.vector[-1].weight, 0.0, 0.5 / math.sqrt(2 * c.hidden))
        nn.init.zeros_(self.vector[-1].bias)

    def trunk(self, z: torch.Tensor) -> torch.Tensor:
        k = self.config.kernel
        x = torch.relu(self.fc(z)).reshape(len(z), -1, k, k)
        return torch.relu(self.conv(x))

    def weights(
        self, features: torch.Tensor, items: Sequence[tuple[int, tuple[int, ...], bool, float]]
    ) -> list[torch.Tensor]:
        """``scale p`` for each weight ``(row, shape, classifier, scale)``, from row ``row`` of the
        ``(n, d1, k, k)`` trunk ``features``: only the channels and centred window each needs of its
        ``(block, block, k, k)`` decoded tensor, scaled before it is tiled (the same numbers as
        decoding the whole block, far fewer operations). A weight that needs all ``block`` rows and
        columns uses the last layer as it is; the rows the others need are gathered once and split
        (one gradient for all of them, not one full-size gradient per weight as slicing each would
        give)."""
        c = self.config
        d1 = self.weight.shape[-1]
        feats = features.unbind(0)
        out: list[torch.Tensor] = [features] * len(items)
        for classifier in (False, True):
            mat = (self.classifier if classifier else self.weight).reshape(-1, d1)
            bias = (self.classifier_bias if classifier else self.weight_bias).reshape(-1)
            rows = c.num_classes if classifier else c.block
            todo, part, pairs = [], [], []
            for j, (_, shape, cls, _) in enumerate(items):
                if cls != classifier:
                    continue
                r, q = (rows if classifier else min(shape[0], rows)), min(shape[1], c.block)
                if (r, q) == (rows, c.block):
                    todo.append((j, r, q, mat, bias))
                else:
                    part.append((j, r, q))
                    pairs.append((np.arange(r)[:, None] * c.block + np.arange(q)[None, :]).ravel())
            if part:
                index = torch.from_numpy(np.concatenate(pairs)).to(mat.device)
                sizes = [len(p) for p in pairs]
                mats, biases = mat.index_select(0, index).split(sizes), bias.index_select(0, index).split(sizes)
                todo += [(j, r, q, m, b) for (j, r, q), m, b in zip(part, mats, biases, strict=True)]
            for j, r, q, m, b in todo:
                row, shape, _, scale = items[j]
                w = _window(shape, c.kernel)
                lo = (c.kernel - w) // 2
                f = feats[row][:, lo : lo + w, lo : lo + w].reshape(d1, w * w)
                out[j] = fit_block((torch.addmm(b[:, None], m, f) * scale).reshape(r, q, w, w), shape)
        return out

    def block(
        self, features: torch.Tensor, shape: tuple[int, ...], classifier: bool = False, scale: float = 1.0
    ) -> torch.Tensor:
        """One weight of ``shape`` from one node's ``(d1, k, k)`` features (:meth:`weights`)."""
        return self.weights(features[None], [(0, tuple(shape), classifier, scale)])[0]


# --- the GHN ----------------------------------------------------------------------------------------


class GHN(nn.Module):
    """A graph hypernetwork (module docstring): ``predict(graphs)`` gives every parameter of each
    graph's network; ``ghn(model, example_input)`` fills a model in place (:func:`fill`).

    ``__call__`` dispatches on its first argument: an ``nn.Module`` is filled (:func:`fill`, with
    this GHN), anything else goes to ``forward`` (= :meth:`predict`, so DDP and ``functional_call``
    see an ordinary module)."""

    def __init__(self, config: GHNConfig = GHNConfig()) -> None:
        super().__init__()
        if not isinstance(config, GHNConfig):
            raise GHNError(f"GHN(config): expected a GHNConfig, got {type(config).__name__}")
        if not config.ops:
            config = dataclasses.replace(config, ops=tuple(graphs.OPS))
        config.check()
        self.config = config
        self.meta: dict[str, Any] = {}  # load(): the file's meta (training command, data ...)
        self.digest = ""  # load(): the sha256 of the weights file
        self.embed = NodeEmbedding(config.ops, config.hidden, config.shape_buckets)
        self.gnn = GatedGNN(config.hidden)
        self.norm = nn.LayerNorm(config.hidden)
        self.decoder = Decoder(config)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if args and isinstance(args[0], nn.Module):
            return fill(args[0], *args[1:], ghn=self, **kwargs)
        return super().__call__(*args, **kwargs)

    def forward(
        self, graphs: Sequence[Graph], *, generator: torch.Generator | None = None, mode: str = "levels"
    ) -> list[dict[str, torch.Tensor]]:
        return self.predict(graphs, generator=generator, mode=mode)

    # --- checks ---

    def check(self, graph: Graph) -> None:
        """Raise :class:`GHNError` if this GHN cannot predict ``graph``'s classifier (another
        number of classes): before any work."""
        info = _graph_info(graph, self.config.cutoff)
        if info.classifier is not None and info.classifier[1][0] != self.config.num_classes:
            name, shape = info.classifier
            raise GHNError(
                f"ghn: the model's classifier {name} (the last conv/linear layer) has {shape[0]} outputs, "
                f"but this GHN predicts {self.config.num_classes}-class heads; use a GHN trained for "
                f"{shape[0]} classes ({TRAIN_HINT} on such data) or a model with {self.config.num_classes} outputs"
            )

    def unpredicted(self, graph: Graph) -> list[str]:
        """The parameters of ``graph``'s nodes that :meth:`predict` leaves out (0-d, 3-D convolutions,
        >= 2-D parameters of ops that are not conv/linear/attention, ...)."""
        return list(_graph_info(graph, self.config.cutoff).unpredicted)

    # --- prediction ---

    def predict(
        self, graphs: Sequence[Graph], *, generator: torch.Generator | None = None, mode: str = "levels"
    ) -> list[dict[str, torch.Tensor]]:
        """One dict per graph: parameter name -> predicted tensor of exactly its shape,
        differentiable w.r.t. the GHN's parameters. ``mode``: ``"levels"`` (batched per topological
        level across the graphs) or ``"nodes"`` (GHN-2's per-node loop; the same function). A noise
        GHN draws one ``noise_dim`` vector per node from ``generator`` (on the generator's device; a
        fresh draw from the global CPU generator when ``None``), in graph order, so both modes draw
        the same noise."""
        batch = self._batch(graphs, mode, "predict")
        if batch is None:
            return []
        c = self.config
        z = self.norm(self._message_passing(batch, mode))
        if c.noise_dim:
            where = generator.device if generator is not None else torch.device("cpu")
            noise = torch.randn(batch.n, c.noise_dim, generator=generator, device=where)
            z = torch.cat([z, noise.to(device=z.device, dtype=z.dtype)], dim=1)
        return self._decode(z, batch)

    def encode(self, graphs: Sequence[Graph], *, mode: str = "levels") -> list[torch.Tensor]:
        """The node states after message passing (before the decoder's LayerNorm): one ``(nodes,
        hidden)`` tensor per graph, rows in the graph's node order (for analysis, and to time the
        message passing alone)."""
        batch = self._batch(graphs, mode, "encode")
        if batch is None:
            return []
        sizes = [len(info.ops) for info in batch.infos]
        return list(self._message_passing(batch, mode).split(sizes))

    def _batch(self, graphs: Sequence[Graph], mode: str, what: str) -> _Batch | None:
        if mode not in MODES:
            raise GHNError(f"GHN.{what}: mode must be one of {MODES}, got {mode!r}")
        graphs = list(graphs)
        if not graphs:
            return None
        if not all(isinstance(g, Graph) for g in graphs):
            raise GHNError(f"GHN.{what} takes a sequence of initium.graph.Graph (initium.graph.build(model, x))")
        for g in graphs:
            self.check(g)
        infos = [_graph_info(g, self.config.cutoff) for g in graphs]
        return _batch(infos, self.config, self.decoder.weight.device, mode)

    def _message_passing(self, batch: _Batch, mode: str) -> torch.Tensor:
        h = self.embed(batch.op_index, batch.shape_index)
        passes = self.config.passes
        return self.gnn.levels(h, batch, passes) if mode == "levels" else self.gnn.nodes(h, batch, passes)

    def _decode(self, z: torch.Tensor, batch: _Batch) -> list[dict[str, torch.Tensor]]:
        c = self.config
        slots = [(off + s.node, s) for info, off in zip(batch.infos, batch.offsets, strict=True) for s in info.slots]
        trunk_nodes = sorted({v for v, s in slots if s.role in ("weight", "classifier")})
        vec_nodes = sorted({v for v, s in slots if s.role in ("norm", "bias")})
        row_t = {v: r for r, v in enumerate(trunk_nodes)}
        row_v = {v: r for r, v in enumerate(vec_nodes)}
        idx = functools.partial(torch.tensor, dtype=torch.long, device=z.device)
        features = self.decoder.trunk(z[idx(trunk_nodes)]) if trunk_nodes else None
        vectors = self.decoder.vector(z[idx(vec_nodes)]) if vec_nodes else None
        # which graph each slot is in (slots are in graph order)
        graph_of = np.searchsorted(np.array(batch.offsets), [v for v, _ in slots], side="right") - 1
        items = [
            (row_t[v], s.shape, s.role == "classifier",
             math.sqrt((c.beta_classifier if s.role == "classifier" else c.beta) / math.prod(s.shape[1:])))
            for v, s in slots if s.role in ("weight", "classifier")
        ]  # fmt: skip
        decoded = iter(self.decoder.weights(features, items)) if features is not None else iter(())
        rows = vectors.unbind(0) if vectors is not None else ()
        out: list[dict[str, torch.Tensor]] = [{} for _ in batch.infos]
        for g, (v, s) in zip(graph_of.tolist(), slots, strict=True):
            if s.role in ("weight", "classifier"):
                out[g][s.name] = next(decoded)
            else:
                if s.role == "norm":
                    p = 2 * torch.sigmoid(rows[row_v[v]][: c.block] / 2)
                else:
                    p = c.bias_scale * torch.tanh(rows[row_v[v]][c.block :])
                out[g][s.name] = _tile(p, 0, s.shape[0])
        return out


# --- IO ---------------------------------------------------------------------------------------------


def _where(path: Any) -> str:
    return f"ghn(path={str(path)!r})"


def save(ghn: GHN, path: str | os.PathLike[str], *, meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``ghn`` to the folder ``path``: ``ghn.safetensors`` (its state dict) and ``ghn.json``
    (format, version, config, ``meta`` (JSON-ready: the training command, data ...), the weights'
    sha256), each atomically; the weights first, so a reader never sees a JSON without them."""
    if not isinstance(ghn, GHN):
        raise GHNError(f"ghn.save: expected a GHN, got {type(ghn).__name__}")
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise GHNError(f"ghn.save: {folder} exists and is not a folder; give a folder path (it holds two files)")
    data = tensors_to_bytes(ghn.state_dict())
    record = {
        "format": FORMAT,
        "version": VERSION,
        "initium": __version__,
        "config": dataclasses.asdict(ghn.config),
        "meta": dict(meta or {}),
        "weights": {
            "file": WEIGHTS_FILE,
            "sha256": sha256(data),
            "parameters": sum(p.numel() for p in ghn.parameters()),
        },
    }
    try:
        json.dumps(record)
    except (TypeError, ValueError) as exc:
        raise GHNError(f"ghn.save: meta must be JSON-ready (str, numbers, lists, dicts): {exc}") from None
    atomic_write_bytes(folder / WEIGHTS_FILE, data)
    atomic_write_json(folder / CONFIG_FILE, record)
    return folder


def load(path: str | os.PathLike[str] | None = None) -> GHN:
    """Read the GHN in the folder ``path`` (or its ``ghn.json``); ``None`` or ``""``: the GHN
    bundled with the package (:data:`BUNDLED`). The JSON first, then the weights, whose sha256 must
    match the JSON's before they are parsed (safetensors: no code runs). Anything missing,
    malformed or mismatched is a :class:`GHNError` naming the file and the fix."""
    bundled = path is None or (isinstance(path, str) and not path.strip())
    if not bundled and not isinstance(path, str | os.PathLike):
        raise GHNError(f"ghn.load: path must be a folder path or None (the bundled GHN), got {path!r}")
    folder = BUNDLED if bundled else Path(path)  # type: ignore[arg-type]
    where = "the bundled GHN" if bundled else _where(path)
    if folder.name == CONFIG_FILE and folder.is_file():
        folder = folder.parent
    if bundled and not (folder / CONFIG_FILE).is_file():
        raise GHNError(
            f"{where}: this installation has no bundled GHN ({folder / CONFIG_FILE} is missing); train one with "
            f"`{TRAIN_HINT}` and use it with ghn(path=GHN), or copy it into {folder}"
        )
    try:
        if not folder.exists():
            raise GHNError(
                f"{where}: no such folder {folder}; train a GHN into it: {TRAIN_HINT.replace('GHN', str(path))}"
            )
        if not (folder / CONFIG_FILE).is_file():
            raise GHNError(
                f"{where}: {folder} is not a GHN: it has no {CONFIG_FILE} (made by ghn.save / initium train ghn)"
            )
        text = (folder / CONFIG_FILE).read_text()
        weights = folder / WEIGHTS_FILE
        if not weights.is_file():
            raise GHNError(
                f"{where}: {weights} is missing (the GHN's weights); copy it beside {CONFIG_FILE} or retrain"
            )
        data = weights.read_bytes()
    except (OSError, UnicodeDecodeError) as exc:
        raise GHNError(f"{where}: cannot read {folder} ({exc})") from None
    record = checked_record(
        text, data, error=GHNError, where=where, config=folder / CONFIG_FILE, weights=weights, fmt=FORMAT,
        version=VERSION, what="a GHN", fix="copy both files again or retrain",
    )  # fmt: skip
    recorded = record["weights"]
    try:
        config = GHNConfig.from_json(record.get("config"))
        ghn = GHN(config)
    except (GHNError, TypeError) as exc:
        raise GHNError(f"{where}: {folder / CONFIG_FILE}: {exc}") from None
    try:
        tensors = load_tensors(data)
    except (SafetensorError, ValueError) as exc:
        raise GHNError(f"{where}: {weights} is not a safetensors file ({exc})") from None
    try:
        ghn.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise GHNError(
            f"{where}: {weights} does not fit the GHN its {CONFIG_FILE} describes (wrong keys or shapes: "
            f"{str(exc).splitlines()[0]} ...); the two files are from different GHNs"
        ) from None
    ghn.meta = dict(record.get("meta") or {})
    ghn.digest = str(recorded["sha256"])
    ghn.eval()
    return ghn


# --- filling a model --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FillReport:
    """What :func:`fill` did: ``predicted`` and ``unpredicted`` parameter names (every parameter of
    the model is in one of them), the BatchNorm modules whose running statistics it re-estimated,
    and the graph's builder (``fx`` / ``autograd``)."""

    predicted: list[str]
    unpredicted: list[str]
    bn_updated: list[str] = field(default_factory=list)
    graph_method: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, inputs: torch.Tensor) -> list[str]:
    """Set every BatchNorm's running statistics to those of ``inputs``: reset them, use a cumulative
    average (``momentum=None``) for one forward pass with the BatchNorms in training mode and every
    other module in eval mode (dropout off), then restore each module's mode and momentum.
    Afterwards ``running_mean`` is the batch mean of each BatchNorm's input and ``running_var`` its
    unbiased variance. Returns the modules' names."""
    bns = [(name, m) for name, m in model.named_modules() if isinstance(m, _BATCHNORMS) and m.track_running_stats]
    if not bns:
        return []
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for _, m in bns}
    try:
        model.eval()
        for _, m in bns:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        model(inputs)
    finally:
        for m, mode in modes.items():
            m.train(mode)
        for m, momentum in momenta.items():
            m.momentum = momentum
    return [name for name, _ in bns]


def fill(
    model: nn.Module,
    example_input: torch.Tensor,
    ghn: GHN | None = None,
    *,
    seed: int | None = None,
    bn_inputs: torch.Tensor | None = None,
    mode: str = "levels",
) -> FillReport:
    """Predict every parameter of ``model`` with ``ghn`` (the bundled one when ``None``) and copy
    them in place; re-estimate BatchNorm running statistics on ``bn_inputs`` (default
    ``example_input``; :func:`reestimate_batchnorm`). The graph comes from
    ``initium.graph.build(model, example_input, strict=False)``: parameters of modules it could
    not represent, and those the GHN cannot predict, are returned in ``unpredicted`` and logged as
    a warning; they keep their values. ``seed`` seeds a noise GHN's draws (a fresh draw when
    ``None``; a plain GHN draws nothing). Raises :class:`GHNError` before changing anything if the
    model's classifier has another number of outputs than the GHN predicts."""
    if not isinstance(model, nn.Module):
        raise GHNError(f"ghn.fill: model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor):
        raise GHNError(
            "ghn.fill needs example_input, a batch of what the model takes (e.g. x[:2]): the graph is traced from it"
        )
    net = load(None) if ghn is None else ghn
    graph = graphs.build(model, example_input, strict=False)
    net.check(graph)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    with torch.no_grad():
        predicted = net.predict([graph], generator=generator, mode=mode)[0]
        params = dict(model.named_parameters())
        for name, value in predicted.items():
            p = params[name]
            p.copy_(value.to(device=p.device, dtype=p.dtype))
    unpredicted = [name for name in params if name not in predicted]
    if unpredicted:
        log.warning(
            "ghn: %d parameter(s) of %s were not predicted and keep their values: %s%s",
            len(unpredicted), type(model).__name__, ", ".join(unpredicted[:10]), " ..." * (len(unpredicted) > 10),
        )  # fmt: skip
    bn = reestimate_batchnorm(model, example_input if bn_inputs is None else bn_inputs)
    return FillReport(list(predicted), unpredicted, bn, graph.method)


# --- the method -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GHNMethodConfig:
    """Config of the ``ghn`` method: ``path`` of a GHN (``initium train ghn``; empty: the bundled
    one, or with ``noise`` the bundled noise GHN :data:`BUNDLED_NOISE`); ``noise``: draw a noise
    GHN's noise from a generator seeded by ``seed`` (the run's seed), which needs a GHN trained with
    noise; ``bn_samples``: how many of the inputs re-estimate the
    BatchNorm statistics."""

    path: str = ""
    noise: bool = False
    seed: int = 0
    bn_samples: int = 512


@METHODS.register("ghn", GHNMethodConfig)
class GHNInit(Method):
    """Graph-hypernetwork init: every parameter predicted from the model's computational graph
    (:func:`fill`); a plain GHN gives the same weights for every seed, a noise GHN
    (``noise=true``) different weights per seed, the same for one seed. Needs ``inputs`` (the
    task's training inputs: the graph is traced from two of them, BatchNorm statistics re-estimated
    on ``bn_samples``)."""

    name = "ghn"

    def __init__(self, config: GHNMethodConfig = GHNMethodConfig()) -> None:
        self.config = config
        if not isinstance(config.bn_samples, int) or isinstance(config.bn_samples, bool) or config.bn_samples < 1:
            raise GHNError(f"ghn: bn_samples must be an int >= 1, got {config.bn_samples!r}")
        if config.noise and not config.path:
            if not (BUNDLED_NOISE / CONFIG_FILE).is_file():
                raise GHNError(
                    f"ghn(noise=true): this installation ships no noise GHN ({BUNDLED_NOISE / CONFIG_FILE} is missing);"
                    f" train one with `{TRAIN_HINT} --noise` and pass path=GHN"
                )
            self.ghn = load(BUNDLED_NOISE)
        else:
            self.ghn = load(config.path or None)  # a missing or malformed GHN fails here, before any work
        if config.noise and self.ghn.config.noise_dim == 0:
            where = _where(config.path) if config.path else "the bundled GHN"
            raise GHNError(
                f"ghn(noise=true): {where} was trained without noise (noise_dim=0); train a noise GHN with "
                f"`{TRAIN_HINT} --noise` and pass path=GHN, or drop noise=true"
            )

    def describe(self) -> list[dict[str, Any]]:
        """The config, and the sha256 of the GHN's weights (which GHN the bundled default was)."""
        return [{"name": self.name, **dataclasses.asdict(self.config), "weights_sha256": self.ghn.digest}]

    def _inputs(self, inputs: torch.Tensor | None) -> torch.Tensor:
        if not isinstance(inputs, torch.Tensor) or inputs.dim() == 0 or len(inputs) == 0:
            raise GHNError(
                "ghn needs inputs, an example batch of what the model takes (method(model, x)): the graph is "
                "traced from it and BatchNorm statistics re-estimated on it"
            )
        return inputs

    def validate(self, model: nn.Module, inputs: torch.Tensor | None = None) -> None:
        x = self._inputs(inputs)
        self.ghn.check(graphs.build(model, x[:2], strict=False))

    def __call__(self, model: nn.Module, inputs: torch.Tensor | None = None) -> nn.Module:
        x = self._inputs(inputs)
        cfg = self.config
        device = next(iter(model.parameters()), torch.empty(0)).device
        self.ghn.to(device)
        report = fill(model, x[:2], self.ghn, seed=cfg.seed if cfg.noise else None, bn_inputs=x[: cfg.bn_samples])
        self.info = {
            "predicted": len(report.predicted),
            "unpredicted": report.unpredicted,
            "bn_updated": len(report.bn_updated),
            "graph": report.graph_method,
        }
        return model


# --- training (initium.methods.ghn_train: initium.ghn.train, `initium train ghn`) ----------------------------------

from .ghn_train import GHNTrainConfig as GHNTrainConfig  # noqa: E402  (it imports this module only inside functions)
from .ghn_train import train as train  # noqa: E402
