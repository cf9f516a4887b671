"""Feedback-alignment layers: the backward pass sends the error through a fixed matrix ``B``.

Backprop computes the error at a layer's input as ``delta_in = delta_out @ W`` (``W`` of shape
``(out, in)``): the backward pass needs the forward weights, which a brain cannot transport.
Feedback alignment (Lillicrap et al. 2016, *Nat. Commun.* 7:13276) replaces ``W`` there by a fixed
random ``B`` of the same shape::

    y = x @ W^T + b                       (forward: unchanged)
    dL/dx = dL/dy @ B                     (backward: B instead of W)
    dL/dW = (dL/dy)^T @ x,  dL/db = sum dL/dy   (the usual local outer-product update)

so ``W`` is trained by the usual outer product of the layer's own input and the error it
receives; the error reaching lower layers has travelled through ``B``. The modes (as in the
biotorch library, Sanfiz & Akrout 2021, arXiv 2108.13446):

- ``bp``: ``B = W`` (plain backprop, the control);
- ``fa``: ``B`` random, fixed (Lillicrap et al. 2016);
- ``dfa``: direct feedback alignment (Nokland 2016, arXiv 1609.01596): the error at the model's
  *output* ``e = dL/dy_out`` goes straight to every layer's input, ``dL/dx = e @ B`` with ``B`` of
  shape ``(output_dim, in)`` (for a convolution ``e`` is broadcast over the output positions and
  sent back through a ``(output_dim, C_in, k...)`` kernel, as in biotorch);
- ``usf``: uniform sign-concordant feedback, ``B = sign(W) * s`` with ``s`` the standard deviation of
  PyTorch's default init of the layer, ``1 / sqrt(3 fan_in)`` (Liao et al. 2016, Xiao et al. 2018);
- ``brsf``: batchwise random-magnitude sign-concordant feedback, ``B = |R| * sign(W)``, ``R`` drawn
  anew at every training forward pass;
- ``frsf``: fixed random-magnitude sign-concordant feedback, ``B = |R| * sign(W)``, ``R`` fixed.

``B`` (or ``|R|``) is the buffer ``feedback``: in the ``state_dict``, never a parameter, never
trained. Layers subclass ``nn.Linear`` / ``nn.ConvNd`` so that code which looks for those (inits,
weight counts) keeps working; :func:`initium.fa.convert` swaps them into any model.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MODES",
    "DFAOutputError",
    "FAConv1d",
    "FAConv2d",
    "FALinear",
    "FeedbackLayer",
    "FeedbackMode",
    "check_mode",
    "get_mode",
    "register_mode",
]


class FeedbackMode:
    """A learning rule of a feedback layer: what ``B`` is, how it is stored and drawn, and what
    happens before each training step. Modes are registered objects (:data:`MODES`); the layers
    ask their mode, never compare its name.

    ``stores`` is what the ``feedback`` buffer holds: ``"none"`` (an empty buffer, so the
    ``state_dict``'s keys stay the same), ``"matrix"`` (``B`` itself) or ``"magnitude"`` (``|R|``,
    multiplied by ``sign(W)``). ``output_error`` modes receive the model's output error (DFA)."""

    name: ClassVar[str] = ""
    stores: ClassVar[str] = "matrix"
    backprop: ClassVar[bool] = False  # the true W^T route: no custom backward at all
    output_error: ClassVar[bool] = False

    def buffer_shape(self, weight: torch.Tensor, output_dim: int | None) -> tuple[int, ...]:
        return (0,) if self.stores == "none" else tuple(weight.shape)

    def feedback_weight(self, layer: FeedbackLayer) -> torch.Tensor:
        """The ``B`` the next backward pass uses (``weight``'s shape; ``(output_dim, ...)`` for dfa)."""
        if self.stores == "magnitude":
            return layer.feedback * torch.sign(layer.weight)
        return layer.feedback

    def before_step(self, layer: FeedbackLayer) -> None:
        """Called before every training forward pass (with grad, in train mode)."""

    def __repr__(self) -> str:
        return f"FeedbackMode({self.name!r})"


MODES: dict[str, FeedbackMode] = {}
"""The registered learning rules of a feedback layer, by name (see the module docstring);
iterating gives the names: ``bp``, ``fa``, ``dfa``, ``usf``, ``brsf``, ``frsf``."""


def register_mode(cls: type[FeedbackMode]) -> type[FeedbackMode]:
    """Class decorator: register one instance of ``cls`` under ``cls.name``."""
    if cls.name in MODES:
        raise ValueError(f"feedback mode {cls.name!r} is registered twice")
    MODES[cls.name] = cls()
    return cls


@register_mode
class Backprop(FeedbackMode):
    """``bp``: ``B = W``, plain backprop (the control)."""

    name = "bp"
    stores = "none"
    backprop = True

    def feedback_weight(self, layer: FeedbackLayer) -> torch.Tensor:
        return layer.weight.detach()


@register_mode
class FeedbackAlignment(FeedbackMode):
    """``fa``: ``B`` random and fixed (Lillicrap et al. 2016)."""

    name = "fa"


@register_mode
class DirectFeedbackAlignment(FeedbackMode):
    """``dfa``: the output error straight to every layer through ``B`` of shape ``(output_dim, in)``
    (Nokland 2016)."""

    name = "dfa"
    output_error = True

    def buffer_shape(self, weight: torch.Tensor, output_dim: int | None) -> tuple[int, ...]:
        return (int(output_dim or 0), *weight.shape[1:])


@register_mode
class UniformSignConcordant(FeedbackMode):
    """``usf``: ``B = sign(W) * s``, ``s`` the std of the layer's default init (Liao et al. 2016)."""

    name = "usf"
    stores = "none"

    def feedback_weight(self, layer: FeedbackLayer) -> torch.Tensor:
        return torch.sign(layer.weight) * (layer.bound / math.sqrt(3.0))  # the std of U(-bound, bound)


@register_mode
class BatchRandomSignConcordant(FeedbackMode):
    """``brsf``: ``B = |R| * sign(W)``, ``R`` drawn anew at every training forward pass."""

    name = "brsf"
    stores = "magnitude"

    def before_step(self, layer: FeedbackLayer) -> None:
        layer.reset_feedback()  # a new |R| for every training batch (global RNG: seeded by the runner)


@register_mode
class FixedRandomSignConcordant(FeedbackMode):
    """``frsf``: ``B = |R| * sign(W)``, ``R`` fixed."""

    name = "frsf"
    stores = "magnitude"


def get_mode(mode: str | FeedbackMode) -> FeedbackMode:
    """The registered mode object of ``mode`` (a name or a mode), else a ValueError listing them."""
    if isinstance(mode, FeedbackMode):
        return mode
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"unknown feedback-alignment mode {mode!r}; expected one of: {', '.join(MODES)}")
    return MODES[mode]


def check_mode(mode: object) -> str:
    """Return ``mode``'s name if it is a registered mode, else raise a ValueError listing them."""
    return get_mode(mode).name  # type: ignore[arg-type]


class DFAOutputError:
    """Carries the output error ``e = dL/dy`` of a model's latest backward pass to its DFA layers.

    Installed on the root module by :func:`initium.fa.convert`: a forward pre-hook numbers the
    forward pass, a forward hook registers a tensor hook on the output that stores the gradient
    arriving there. The gradient at the output is computed before that of any layer below it, so
    every DFA layer's backward finds it; a layer checks that it belongs to the same forward pass,
    so a backward that did not start at the model's output fails loudly instead of reusing a
    stale error.
    """

    def __init__(self, output_dim: int) -> None:
        self.output_dim = output_dim
        self.forward_id = 0
        self.inside = False  # within a forward pass of the root module
        self._error: tuple[int, torch.Tensor] | None = None

    def pre_hook(self, module: nn.Module, args: Any) -> None:
        self.forward_id += 1
        self.inside = True

    def hook(self, module: nn.Module, args: Any, output: Any) -> None:
        self.inside = False
        if not isinstance(output, torch.Tensor) or output.ndim != 2:
            what = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(f"dfa needs a model whose output is one (batch, output_dim) tensor; got {what}")
        if output.shape[-1] != self.output_dim:
            raise ValueError(
                f"dfa: the model's output has {output.shape[-1]} features but its feedback matrices were"
                f" built for output_dim={self.output_dim}; convert again with output_dim={output.shape[-1]}"
            )
        if output.requires_grad:
            fid = self.forward_id
            output.register_hook(lambda grad: self._store(fid, grad))

    def _store(self, fid: int, grad: torch.Tensor) -> None:
        self._error = (fid, grad.detach())

    def error(self, forward_id: int) -> torch.Tensor:
        if self._error is None or self._error[0] != forward_id:
            raise RuntimeError(
                "dfa: no output error for this backward pass; a DFA layer's backward must start from the"
                " output of the model it was converted in (loss = f(model(x)); loss.backward())"
            )
        return self._error[1]


class _LinearFn(torch.autograd.Function):
    """``y = x W^T + b``; backward: ``dx = dy @ B`` (or ``e @ B`` for DFA), ``dW = dy^T x``."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        feedback: torch.Tensor,
        source: DFAOutputError | None,
        forward_id: int,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, feedback)
        ctx.source, ctx.forward_id, ctx.has_bias = source, forward_id, bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, feedback = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            err = grad_out if ctx.source is None else ctx.source.error(ctx.forward_id)
            if ctx.source is not None and err.shape[:-1] != x.shape[:-1]:
                raise RuntimeError(
                    f"dfa: output error of shape {tuple(err.shape)} does not match input {tuple(x.shape)}"
                )
            grad_x = err @ feedback
        flat_out = grad_out.reshape(-1, grad_out.shape[-1])
        if ctx.needs_input_grad[1]:
            grad_w = flat_out.T @ x.reshape(-1, x.shape[-1])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = flat_out.sum(0)
        return grad_x, grad_w, grad_b, None, None, None


_CONV = {1: (F.conv1d, torch.nn.grad.conv1d_input, torch.nn.grad.conv1d_weight),
         2: (F.conv2d, torch.nn.grad.conv2d_input, torch.nn.grad.conv2d_weight)}  # fmt: skip


class _ConvFn(torch.autograd.Function):
    """``y = conv(x, W) + b``; backward: ``dx = conv_input_grad(dy, B)`` (DFA: of the output error
    broadcast over the output positions), ``dW = conv_weight_grad(x, dy)``."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        feedback: torch.Tensor,
        source: DFAOutputError | None,
        forward_id: int,
        conv: tuple[int, tuple[int, ...], tuple[int, ...], tuple[int, ...], int],
    ) -> torch.Tensor:
        dim, stride, padding, dilation, groups = conv
        ctx.save_for_backward(x, feedback)
        ctx.source, ctx.forward_id, ctx.conv, ctx.has_bias = source, forward_id, conv, bias is not None
        ctx.weight_shape = weight.shape
        return _CONV[dim][0](x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, feedback = ctx.saved_tensors
        dim, stride, padding, dilation, groups = ctx.conv
        _, conv_input, conv_weight = _CONV[dim]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            if ctx.source is None:
                grad_x = conv_input(x.shape, feedback, grad_out, stride, padding, dilation, groups)
            else:
                err = ctx.source.error(ctx.forward_id)
                if err.shape != grad_out.shape[:1] + err.shape[1:] or err.ndim != 2:
                    raise RuntimeError(
                        f"dfa: output error of shape {tuple(err.shape)} does not fit input {tuple(x.shape)}"
                    )
                spread = err.reshape(*err.shape, *([1] * dim)).expand(*err.shape, *grad_out.shape[2:])
                grad_x = conv_input(x.shape, feedback, spread.contiguous(), stride, padding, dilation, 1)
        if ctx.needs_input_grad[1]:
            grad_w = conv_weight(x, ctx.weight_shape, grad_out, stride, padding, dilation, groups)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(dim=(0, *range(2, grad_out.ndim)))
        return grad_x, grad_w, grad_b, None, None, None, None


class FeedbackLayer:
    """Mixin of the FA layers: the ``feedback`` buffer, its init and the effective ``B``; what
    each of these is comes from the layer's registered :class:`FeedbackMode` (``rule``)."""

    rule: FeedbackMode
    weight: nn.Parameter
    feedback: torch.Tensor
    training: bool
    dfa_source: DFAOutputError | None
    true_gradient: bool  # set by initium.fa.backprop(): the next backward uses W, whatever the mode
    _output_dim: int | None
    base: ClassVar[type[nn.Module]]

    @property
    def mode(self) -> str:
        """The name of the layer's mode (``rule.name``)."""
        return self.rule.name

    def _init_feedback(
        self, mode: str | FeedbackMode, output_dim: int | None, generator: torch.Generator | None
    ) -> None:
        self.rule = get_mode(mode)
        if self.rule.output_error and (not isinstance(output_dim, int) or output_dim < 1):
            raise ValueError(
                f"mode={self.rule.name!r} sends the model's output error to every layer and needs output_dim"
                f" (the size of the model's output), got {output_dim!r}"
            )
        self._output_dim = output_dim if self.rule.output_error else None
        self.true_gradient = False  # set by initium.fa.backprop(): measure the true gradient
        self.dfa_source = None  # set by initium.fa.convert for DFA
        w = self.weight
        shape = self.rule.buffer_shape(w, output_dim)
        self.register_buffer("feedback", torch.empty(shape, device=w.device, dtype=w.dtype))  # type: ignore[attr-defined]
        self.reset_feedback(generator)

    @property
    def bound(self) -> float:
        """``1 / sqrt(fan_in)``: the bound of PyTorch's default ``U(-bound, bound)`` weight init."""
        fan_in = self.weight[0].numel()
        return 1.0 / math.sqrt(fan_in) if fan_in else 0.0

    @torch.no_grad()
    def reset_feedback(self, generator: torch.Generator | None = None) -> None:
        """Draw ``B`` (``fa``, ``dfa``) or ``|R|`` (``brsf``, ``frsf``) from ``U(-bound, bound)``, the
        distribution of PyTorch's default init of this layer, so that ``|B|`` is about ``|W|`` at init."""
        if self.feedback.numel() == 0:
            return
        device = generator.device if generator is not None else self.feedback.device
        draw = torch.rand(self.feedback.shape, generator=generator, device=device, dtype=self.feedback.dtype)
        draw = (2 * draw - 1) * self.bound
        self.feedback.copy_(draw.abs() if self.rule.stores == "magnitude" else draw)

    @torch.no_grad()
    def feedback_weight(self) -> torch.Tensor:
        """The ``B`` the next backward pass uses (shape of ``weight``; ``(output_dim, ...)`` for dfa)."""
        return self.rule.feedback_weight(self)

    def _feedback_for_step(self) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            self.rule.before_step(self)
        return self.feedback_weight()

    def _uses_backprop(self) -> bool:
        return self.rule.backprop or self.true_gradient

    def _dfa(self) -> tuple[DFAOutputError | None, int]:
        if not self.rule.output_error:
            return None, 0
        if self.dfa_source is None:
            raise RuntimeError(
                "this DFA layer is not attached to a model output; build DFA models with"
                " initium.fa.convert(model, mode='dfa', output_dim=...)"
            )
        # a layer called on its own, outside its model's forward, gets no output error (-1 never matches)
        return self.dfa_source, self.dfa_source.forward_id if self.dfa_source.inside else -1

    def extra_repr(self) -> str:
        return f"{self.base.extra_repr(self)}, mode={self.mode}" + (  # type: ignore[arg-type]
            f", output_dim={self._output_dim}" if self._output_dim else ""
        )


class FALinear(FeedbackLayer, nn.Linear):
    """``nn.Linear`` whose backward sends the error through ``B`` (see the module docstring).

    ``mode`` is one of :data:`MODES`; ``output_dim`` (the model's output size) is needed for ``dfa``;
    ``generator`` draws ``B``.
    """

    base = nn.Linear

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        mode: str | FeedbackMode = "fa",
        output_dim: int | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias, device=device, dtype=dtype)
        self._init_feedback(mode, output_dim, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._uses_backprop():
            return F.linear(x, self.weight, self.bias)
        source, fid = self._dfa()
        return _LinearFn.apply(x, self.weight, self.bias, self._feedback_for_step(), source, fid)


class _FAConvNd(FeedbackLayer):
    """One constructor for every FA convolution: ``base`` (``nn.Conv1d`` / ``nn.Conv2d``) builds the
    layer with its own signature, then the feedback matrix is drawn."""

    dim: ClassVar[int]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: int | tuple[int, ...] = 0,
        dilation: int | tuple[int, ...] = 1,
        groups: int = 1,
        bias: bool = True,
        *,
        mode: str | FeedbackMode = "fa",
        output_dim: int | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.base.__init__(
            self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
            device=device, dtype=dtype,
        )  # fmt: skip
        self._check_conv()
        self._init_feedback(mode, output_dim, generator)

    def _check_conv(self) -> None:
        conv: Any = self
        if conv.padding_mode != "zeros":
            raise ValueError(f"FA convolutions support padding_mode='zeros' only, got {conv.padding_mode!r}")
        if isinstance(conv.padding, str):
            raise ValueError(f"FA convolutions take numeric padding, got padding={conv.padding!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv: Any = self
        if self._uses_backprop():
            return conv._conv_forward(x, conv.weight, conv.bias)
        source, fid = self._dfa()
        if source is not None and conv.groups != 1:
            raise ValueError("dfa convolutions need groups=1")
        spec = (self.dim, conv.stride, conv.padding, conv.dilation, conv.groups)
        return _ConvFn.apply(x, conv.weight, conv.bias, self._feedback_for_step(), source, fid, spec)


class FAConv1d(_FAConvNd, nn.Conv1d):
    """``nn.Conv1d`` whose backward sends the error through ``B`` (see :class:`FALinear`)."""

    base = nn.Conv1d
    dim = 1


class FAConv2d(_FAConvNd, nn.Conv2d):
    """``nn.Conv2d`` whose backward sends the error through ``B`` (see :class:`FALinear`)."""

    base = nn.Conv2d
    dim = 2
