"""Feedback alignment with random-noise pretraining (Cheon, Lee & Paik, NeurIPS 2024, arXiv 2405.16731).

The family's whole logic: the converter, the measurements, noise pretraining, the ``fa-noise``
method and the learning rules the runner applies (``initium run --rule fa``); its layers and
registered modes live in :mod:`initium.nn.feedback`. Public as ``initium.fa`` (the same module).

Feedback alignment (FA) trains a network without weight transport: the error travels down through
fixed random matrices ``B`` instead of the forward weights' transposes (:mod:`initium.nn.feedback`).
It learns only as far as the forward weights come to *align* with ``B``. Cheon et al. show that
training on pure noise (Gaussian inputs, uniformly random labels) before any data is seen, under
the FA rule itself, already aligns ``W`` with ``B``; the pre-aligned network then learns nearly as
fast as backprop, generalises better out of distribution and adapts faster to new tasks.

::

    from initium import fa
    model = fa.convert(model, mode="fa", seed=0)        # swap Linear/Conv layers, keep the weights
    fa.summary(model)                                   # what was converted (printable, never printed)
    fa.noise_pretrain(model, input_shape=(64,), num_classes=10, steps=3000, noise_set=4096)
    fa.alignment(model)                                 # {layer: angle between W and B in degrees}
    fa.measure(model, x, y)                             # + update-vs-backprop angle, |B|/|W|, D_eff
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..metrics import angle, effective_dimensionality
from ..nn.feedback import MODES, DFAOutputError, FAConv1d, FAConv2d, FALinear, FeedbackLayer, FeedbackMode, get_mode
from ..records import PlotSpec
from ..train import Steps, fit
from ._base import METHODS, RULES, LearningRule, Method

__all__ = [
    "MODES",
    "Conversion",
    "FANoise",
    "FANoiseConfig",
    "FeedbackRule",
    "alignment",
    "backprop",
    "convert",
    "feedback_layers",
    "measure",
    "noise_pretrain",
    "summary",
    "update_alignment",
]

log = logging.getLogger(__name__)

# Exact types only: a subclass of nn.Linear may have its own forward, which a swap would drop.
_SWAP: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: FALinear, FALinear: FALinear,
    nn.Conv1d: FAConv1d, FAConv1d: FAConv1d,
    nn.Conv2d: FAConv2d, FAConv2d: FAConv2d,
}  # fmt: skip
# Layers whose backward uses only their own elementwise parameters (no weight transport): kept.
_LOCAL = (
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.Embedding, nn.EmbeddingBag, nn.PReLU,
)  # fmt: skip
_SUMMARY = "_initium_fa_conversion"
_DFA_HANDLES = "_initium_fa_dfa_handles"


@dataclass(frozen=True)
class Conversion:
    """What :func:`convert` did: ``converted`` rows are ``(path, old type, new type)``; ``kept`` are
    layers with parameters of their own left on backprop (norms, embeddings: no weight transport)."""

    mode: str
    converted: tuple[tuple[str, str, str], ...]
    kept: tuple[tuple[str, str], ...]

    def __str__(self) -> str:
        lines = [f"feedback alignment, mode {self.mode!r}: {len(self.converted)} layer(s) converted"]
        lines += [f"  {path or '<root>'}: {old} -> {new}" for path, old, new in self.converted]
        lines += [f"  {path}: {kind} kept (local backward)" for path, kind in self.kept]
        return "\n".join(lines)


def _check_convertible(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], list[tuple[str, str]]]:
    """The layers to swap and the local ones to keep; raise on any other module with parameters."""
    swap, kept = [], []
    for path, module in model.named_modules():
        where = f"{type(module).__name__} at {path or '<root>'!r}"
        if type(module) in _SWAP:
            if isinstance(module.weight, nn.parameter.UninitializedParameter):
                raise ValueError(f"cannot convert the uninitialised {where}; run one forward pass first")
            if isinstance(module, nn.Conv1d | nn.Conv2d) and (
                module.padding_mode != "zeros" or isinstance(module.padding, str)
            ):
                raise ValueError(
                    f"cannot convert {where}: FA convolutions need numeric padding and padding_mode='zeros'"
                    f" (got padding={module.padding!r}, padding_mode={module.padding_mode!r})"
                )
            swap.append((path, module))
        elif isinstance(module, _LOCAL):
            kept.append((path, type(module).__name__))
        elif any(True for _ in module.parameters(recurse=False)):
            raise ValueError(
                f"cannot convert {where}: feedback alignment supports nn.Linear, nn.Conv1d and nn.Conv2d"
                f" (and keeps norm and embedding layers on backprop); its own parameters would stay on"
                f" backprop. Replace it with supported layers, or pass strict=False to leave it as it is"
            )
    return swap, kept


def convert(
    model: nn.Module,
    mode: str = "fa",
    *,
    output_dim: int | None = None,
    seed: int = 0,
    strict: bool = True,
) -> nn.Module:
    """Swap every ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` of ``model`` (nested modules included)
    for its feedback-alignment layer in ``mode`` (one of :data:`MODES`) and return the model.

    The new layers hold the *same* weight and bias ``Parameter`` objects (so an optimizer built
    before still trains them) and a fresh feedback matrix ``B ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))``
    (PyTorch's default init of the layer) drawn from ``seed``, layers in module order; the global
    RNG is not touched. ``output_dim`` (the model's output size) is needed for ``dfa``; by default
    it is ``model.out_features``. Layers already converted are converted again to ``mode``.
    ``strict=False`` leaves unsupported modules with parameters on backprop instead of raising.
    Returns ``model`` (the new layer, where ``model`` itself is a bare layer).
    :func:`summary` tells what was converted.
    """
    rule = get_mode(mode)
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert takes an nn.Module, got {type(model).__name__}")
    if rule.output_error:
        output_dim = output_dim if output_dim is not None else getattr(model, "out_features", None)
        if not isinstance(output_dim, int) or isinstance(output_dim, bool) or output_dim < 1:
            raise ValueError(
                f"mode={rule.name!r} sends the output error straight to every layer and needs the size of the model's"
                f" output: pass output_dim=... ({type(model).__name__} has no int out_features attribute)"
            )
    if strict:
        swap, kept = _check_convertible(model)
    else:
        swap = [(p, m) for p, m in model.named_modules() if type(m) in _SWAP]
        kept = []
    if not swap:
        raise ValueError(f"{type(model).__name__} has no nn.Linear, nn.Conv1d or nn.Conv2d layer to convert")
    gen = torch.Generator().manual_seed(_feedback_seed(seed))
    source = DFAOutputError(output_dim) if rule.output_error else None  # type: ignore[arg-type]
    rows, root = [], model
    for path, old in swap:
        new = _swap_layer(old, rule, output_dim, gen)
        new.dfa_source = source
        rows.append((path, type(old).__name__, type(new).__name__))
        if path:
            parent, _, name = path.rpartition(".")
            setattr(model.get_submodule(parent), name, new)
        else:
            root = new
    for handle in root.__dict__.pop(_DFA_HANDLES, ()):
        handle.remove()
    if source is not None:
        root.__dict__[_DFA_HANDLES] = (
            root.register_forward_pre_hook(source.pre_hook),
            root.register_forward_hook(source.hook),
        )
    root.__dict__[_SUMMARY] = Conversion(rule.name, tuple(rows), tuple(kept))
    return root


def _feedback_seed(seed: int) -> int:
    """``B``'s RNG seed, derived from ``seed`` but never equal to it: ``U(-1/sqrt(fan_in), ...)`` is
    exactly PyTorch's default init, so with ``torch.manual_seed(s)`` before building the model and
    ``B`` drawn from ``s`` too, the first layer's ``B`` would *be* its ``W`` (backprop in disguise)."""
    digest = hashlib.sha256(f"initium.fa.feedback:{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _swap_layer(old: nn.Module, mode: FeedbackMode, output_dim: int | None, gen: torch.Generator) -> FeedbackLayer:
    cls = _SWAP[type(old)]
    w = old.weight
    if isinstance(old, nn.Linear):
        args: tuple = (old.in_features, old.out_features, old.bias is not None)
    else:
        conv: nn.Conv1d | nn.Conv2d = old  # type: ignore[assignment]
        args = (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                conv.dilation, conv.groups, conv.bias is not None)  # fmt: skip
    # Built on the meta device: no memory and no draw from the global RNG for weights we replace.
    new = cls(*args, mode=mode, output_dim=output_dim, device="meta", dtype=w.dtype)
    new.weight = old.weight
    new.bias = old.bias
    new.feedback = torch.empty(new.feedback.shape, device=w.device, dtype=w.dtype)
    new.reset_feedback(gen)
    new.train(old.training)
    return new  # type: ignore[return-value]


def summary(model: nn.Module) -> Conversion:
    """What :func:`convert` did to ``model`` (``print(fa.summary(model))`` for a table)."""
    conv = model.__dict__.get(_SUMMARY)
    if conv is None:
        raise ValueError(f"{type(model).__name__} was not converted; call initium.fa.convert(model, mode=...)")
    return conv


def feedback_layers(model: nn.Module) -> list[tuple[str, FeedbackLayer]]:
    """The feedback-alignment layers of ``model`` with their qualified names, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, FeedbackLayer)]


@contextlib.contextmanager
def backprop(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block every FA layer of ``model`` back-propagates with its true ``W`` (to measure
    the gradient FA approximates); outside it, each layer's own mode again."""
    layers = [m for _, m in feedback_layers(model)]
    before = [m.true_gradient for m in layers]
    for m in layers:
        m.true_gradient = True
    try:
        yield model
    finally:
        for m, b in zip(layers, before, strict=True):
            m.true_gradient = b


def alignment(model: nn.Module) -> dict[str, float]:
    """``{layer: angle between W and B in degrees}`` for every FA layer whose ``B`` has ``W``'s shape.

    With ``W`` of shape ``(out, in)`` and the backward ``dx = dy @ B``, ``B`` plays the role of
    ``W`` (of ``W^T`` in the papers' ``delta = B e`` notation): the angle is
    ``arccos(<W, B>_F / (|W|_F |B|_F))``, 90 degrees for an unrelated ``B``, 0 for backprop. DFA
    layers other than the last have a ``B`` of another shape and are left out.
    """
    out = {}
    for name, layer in feedback_layers(model):
        b = layer.feedback_weight()
        if b.shape == layer.weight.shape:
            out[name] = angle(layer.weight, b)
    return out


def update_alignment(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
) -> dict[str, float]:
    """``{layer: angle in degrees between the weight update of the model's rule and backprop's}``
    on one batch: ``angle(dL/dW under FA, dL/dW under BP)``. The last layer's is 0 (it gets the true
    error); the others tell how useful the FA signal is. Measured in eval mode (``brsf`` keeps its
    last ``|R|``) with ``torch.autograd.grad``, so no ``.grad`` of the model changes."""
    layers = feedback_layers(model)
    if not layers:
        return {}
    params = [m.weight for _, m in layers]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            g_rule = torch.autograd.grad(loss_fn(model(inputs), targets), params)
            with backprop(model):
                g_bp = torch.autograd.grad(loss_fn(model(inputs), targets), params)
    finally:
        model.train(was_training)
    return {name: angle(a, b) for (name, _), a, b in zip(layers, g_rule, g_bp, strict=True)}


def measure(
    model: nn.Module,
    inputs: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
) -> dict[str, dict[str, float]]:
    """Per FA layer: ``wb_angle`` (:func:`alignment`), ``update_angle`` (:func:`update_alignment`,
    only with ``inputs`` and ``targets``), ``norm_ratio`` ``|B|_F / |W|_F`` and ``eff_dim``, the
    participation ratio of the singular values of ``W`` (:func:`initium.metrics.effective_dimensionality`);
    per plain ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` (a backprop model): ``eff_dim`` only."""
    wb = alignment(model)
    upd = update_alignment(model, inputs, targets, loss_fn) if inputs is not None and targets is not None else {}
    out: dict[str, dict[str, float]] = {}
    for name, layer in model.named_modules():
        if not isinstance(layer, nn.Linear | nn.Conv1d | nn.Conv2d):
            continue
        w = layer.weight.detach()
        row = {"eff_dim": effective_dimensionality(w)}
        if not isinstance(layer, FeedbackLayer):
            out[name] = row
            continue
        b = layer.feedback_weight()
        row["norm_ratio"] = float(b.norm() / w.norm()) if w.norm() > 0 else math.nan
        if name in wb:
            row["wb_angle"] = wb[name]
        if name in upd:
            row["update_angle"] = upd[name]
        out[name] = row
    return out


def check_pretrain_args(
    input_shape: Sequence[int],
    num_classes: int,
    steps: int,
    batch_size: int,
    lr: float,
    momentum: float,
    input_std: float,
    noise_set: int | None,
) -> tuple[int, ...]:
    """Check :func:`noise_pretrain`'s arguments before any work; return ``input_shape`` as a tuple."""

    def whole(value: object, least: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= least

    shape = tuple(input_shape) if isinstance(input_shape, Sequence) else ()
    if not shape or not all(whole(n, 1) for n in shape):
        raise ValueError(f"input_shape must be the shape of one input, e.g. (64,) or (1, 8, 8); got {input_shape!r}")
    if not whole(num_classes, 2):
        raise ValueError(
            f"num_classes must be an int >= 2 (random labels need two classes at least), got {num_classes!r}"
        )
    if not whole(steps, 0):
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if not whole(batch_size, 1):
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not (isinstance(lr, int | float) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if not (isinstance(momentum, int | float) and 0 <= momentum < 1):
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    if not (isinstance(input_std, int | float) and input_std > 0 and math.isfinite(input_std)):
        raise ValueError(f"input_std must be a finite number > 0, got {input_std!r}")
    if noise_set is not None and not whole(noise_set, 1):
        raise ValueError(f"noise_set must be None (fresh noise every batch) or an int >= 1, got {noise_set!r}")
    return shape


def noise_pretrain(
    model: nn.Module,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    steps: int = 3000,
    batch_size: int = 64,
    lr: float = 0.01,
    momentum: float = 0.9,
    input_std: float = 1.0,
    noise_set: int | None = 4096,
    seed: int = 0,
    track_every: int = 0,
    on_track: Callable[[int, dict[str, float]], None] | None = None,
) -> nn.Module:
    """Random-noise pretraining (Cheon et al. 2024): train ``model`` in place, under its own
    learning rule, on Gaussian inputs ``x ~ N(0, input_std^2)`` of shape ``input_shape`` with
    uniformly random labels ``y ~ U{0..num_classes-1}``, by ``steps`` minibatch SGD steps on the
    cross-entropy (``lr``, ``momentum``, ``batch_size``); return the model.

    ``noise_set``: the size of one fixed set of noise samples and labels, drawn once and trained on
    in shuffled epochs; ``None`` draws fresh noise every batch. The size matters: with fresh noise
    there is nothing to fit and the FA signal stays random, so the W-B angle stays near 90 degrees
    (our benchmark: BENCHMARKS.md); memorising a fixed set of a few hundred to a thousand samples
    is what aligns ``W`` with ``B``. The defaults, 3000 steps over 4096 samples, scored best of 8
    settings on the *validation* split of digits (FA, accuracy after 1 epoch; BENCHMARKS.md); with
    them FA on digits then learns about as fast as backprop (1000 steps over 1024 align about as
    well, to ~40 degrees, but gain less). Everything random is drawn from ``seed``, on the
    CPU, then moved to the model's device. ``on_track(step, fa.alignment(model))`` is called at step
    0, every ``track_every`` steps (0: never in between) and at the end.
    """
    shape = check_pretrain_args(input_shape, num_classes, steps, batch_size, lr, momentum, input_std, noise_set)
    if track_every < 0:
        raise ValueError(f"track_every must be >= 0, got {track_every!r}")
    param = next(model.parameters(), None)
    if param is None:
        raise ValueError(f"{type(model).__name__} has no parameters to pretrain")
    device = param.device
    gen = torch.Generator().manual_seed(seed)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn((n, *shape), generator=gen) * input_std
        y = torch.randint(num_classes, (n,), generator=gen)
        return x.to(device, param.dtype), y.to(device)

    try:
        with torch.no_grad():
            probe = model(draw(2)[0])
    except RuntimeError as exc:  # shape mismatches inside the model
        raise ValueError(f"{type(model).__name__} does not take inputs of input_shape={shape}: {exc}") from exc
    if tuple(probe.shape) != (2, num_classes):
        raise ValueError(
            f"{type(model).__name__} maps 2 inputs of shape {shape} to {tuple(probe.shape)}, but num_classes="
            f"{num_classes} needs (2, {num_classes}); check input_shape and num_classes"
        )
    fixed = draw(noise_set) if noise_set is not None else None
    order = torch.empty(0, dtype=torch.long)

    def batch(_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal order
        if fixed is None:
            return draw(batch_size)
        if len(order) < batch_size:  # next epoch through the fixed set (a short tail joins it)
            order = torch.cat([order, torch.randperm(noise_set, generator=gen)])  # type: ignore[arg-type]
        idx, order = order[:batch_size].to(device), order[batch_size:]
        return fixed[0][idx], fixed[1][idx]

    if not feedback_layers(model):
        log.warning("noise_pretrain: %s has no FA layers; it pretrains under backprop", type(model).__name__)
    every = range(0, steps + 1, track_every) if track_every else ()
    fit(
        model, Steps.drawn(batch, generator=gen), steps=steps, lr=lr, optimizer="sgd", momentum=momentum,
        loss_fn=F.cross_entropy, evaluate_at={0, steps, *every} if on_track is not None else (),
        on_eval=(lambda step, _pred: on_track(step, alignment(model))) if on_track is not None else None,
        phase="fa-noise",
    )  # fmt: skip
    return model


# --- the method ``fa-noise`` ------------------------------------------------------------------------


@dataclass(frozen=True)
class FANoiseConfig:
    """Options of :func:`initium.fa.noise_pretrain`; ``num_classes=None`` takes the width of the
    model's output, ``track_every`` the interval of the alignment curve kept in the run's record.

    Defaults (3000 steps over a fixed set of 4096 samples): the best of the 8 settings in
    BENCHMARKS.md by the validation accuracy of FA on digits after 1 epoch (scored on ``classify``'s
    validation split, never on its test split); with them FA learns about as fast as backprop
    (1000 steps over 1024 samples align the last layer too, to about 42 degrees, but gain less)."""

    steps: int = 3000
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    input_std: float = 1.0
    noise_set: int | None = 4096
    num_classes: int | None = None
    seed: int = 0
    track_every: int = 100


@METHODS.register("fa-noise", FANoiseConfig)
class FANoise(Method):
    """Random-noise pretraining: Gaussian inputs, random labels, the model's own learning rule."""

    name = "fa-noise"

    def __init__(self, config: FANoiseConfig = FANoiseConfig()) -> None:
        self.config = config

    def _shape_and_classes(self, model: nn.Module, inputs: torch.Tensor | None) -> tuple[tuple[int, ...], int]:
        if not isinstance(inputs, torch.Tensor) or inputs.ndim < 2 or len(inputs) < 1:
            raise ValueError(
                "fa-noise needs a batch of the training inputs (N, ...) to take the input shape from;"
                f" got {type(inputs).__name__}"
            )
        classes = self.config.num_classes
        if classes is None:
            with torch.no_grad():
                out = model(inputs[:2])
            classes = int(out.shape[-1]) if out.ndim == 2 else 0
        return tuple(inputs.shape[1:]), classes

    def validate(self, model: nn.Module, inputs: torch.Tensor | None = None) -> None:
        c = self.config
        shape, classes = self._shape_and_classes(model, inputs)
        if c.num_classes is None and classes < 2:
            raise ValueError(
                f"fa-noise pretrains a classifier (random labels), but {type(model).__name__}'s output has {classes}"
                " unit(s) per input; use it on a classification task (classify) or give num_classes=..."
            )
        try:
            check_pretrain_args(shape, classes, c.steps, c.batch_size, c.lr, c.momentum, c.input_std, c.noise_set)
        except ValueError as exc:
            raise ValueError(f"fa-noise: {exc}") from None
        if not isinstance(c.track_every, int) or c.track_every < 0:
            raise ValueError(f"fa-noise option track_every must be an int >= 0, got {c.track_every!r}")

    def __call__(self, model: nn.Module, inputs: torch.Tensor | None = None) -> nn.Module:
        self.validate(model, inputs)
        c = self.config
        shape, classes = self._shape_and_classes(model, inputs)
        curve: dict[str, Any] = {"step": []}

        def track(step: int, angles: dict[str, float]) -> None:
            curve["step"].append(step)
            for name, value in angles.items():
                curve.setdefault(name, []).append(round(value, 3))

        noise_pretrain(
            model, shape, classes, steps=c.steps, batch_size=c.batch_size, lr=c.lr, momentum=c.momentum,
            input_std=c.input_std, noise_set=c.noise_set, seed=c.seed, track_every=c.track_every, on_track=track,
        )  # fmt: skip
        self.info = {"wb_angle": curve}
        return model


# --- learning rules --------------------------------------------------------------------------------


class FeedbackRule(LearningRule):
    """A feedback-alignment mode as the runner's learning rule (``initium run --rule fa``): converts
    each run's model (``B`` drawn from the run's seed), and measures it at every evaluation point
    on the task's probe batch (:func:`measure`: ``wb_angle/<layer>``, ``update_angle/<layer>``,
    ``norm_ratio/<layer>``, ``eff_dim/<layer>``). The backprop mode keeps the model as it is (its
    plain layers are exact backprop) and measures the effective dimensionality only."""

    def __init__(self, mode: FeedbackMode) -> None:
        self.mode = mode
        self.name = mode.name
        # W-B and update-vs-backprop angles per layer, one panel each (backprop has neither)
        angles = (
            PlotSpec("layer_curves", "wb_angle", caption="Angle in degrees between each layer's forward weights W"
                     " and its feedback matrix B against training time: 90 for an unrelated B, falling as W comes"
                     " to align with B (how feedback alignment learns)."),
            PlotSpec("layer_curves", "update_angle", caption="Angle in degrees between each layer's weight"
                     " update under the learning rule and backprop's on the task's probe batch: below 90 the"
                     " update still descends the loss; the last layer's is 0 (it gets the true error)."),
        )  # fmt: skip
        self.plots = () if mode.backprop else angles

    def __call__(self, model: nn.Module, *, seed: int = 0) -> nn.Module:
        return model if self.mode.backprop else convert(model, self.mode, seed=seed)

    def measure(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        return {f"{key}/{layer}": v for layer, row in measure(model, inputs, targets).items() for key, v in row.items()}

    def analyse(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        measured = measure(model, inputs, targets)
        return {"fa": measured} if measured else {}


def _rule_factory(mode: FeedbackMode) -> Callable[[], FeedbackRule]:
    def make() -> FeedbackRule:
        return FeedbackRule(mode)

    make.__doc__ = type(mode).__doc__
    return make


for _mode in MODES.values():
    RULES.register(_mode.name)(_rule_factory(_mode))
