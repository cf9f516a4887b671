"""Numeric precision of the training step: ``fp32``, ``tf32`` or ``bf16``.

- ``fp32``: every matmul in float32 (the reference).
- ``tf32``: float32 tensors, but CUDA matmuls and convolutions on TF32 tensor cores (10-bit
  mantissa inputs, float32 accumulation). CUDA only: CPUs have no TF32 units.
- ``bf16``: the forward pass and the loss under ``torch.autocast(dtype=torch.bfloat16)``; weights,
  gradients and the optimiser state stay float32 (mixed precision, Micikevicius et al. 2018).
  bfloat16 keeps 7 explicit mantissa bits (8 with the implicit one), so a fit's PSNR levels off
  where the rounding error of the output dominates (see BENCHMARKS.md): fine for early
  convergence, not for 50 dB fits.

``auto`` is the fastest setting expected to keep the result (a PSNR curve within 0.3 dB of fp32
up to 35 dB): ``fp32`` on the CPU, where tf32 does not exist and bf16, though 2.7-2.9x faster on a
CPU with bf16 matmul units, leaves the fp32 curve at 34.0 dB on astronaut (35.3 dB on camera) and
ends 3-6 dB lower (BENCHMARKS.md, "Speed"); ``tf32`` on CUDA, whose matmul inputs keep 10 explicit mantissa
bits against bf16's 7. The CUDA choice is not yet measured on a GPU: ``benchmarks/speed.py
curves`` is the measurement that should confirm or change it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["PRECISIONS", "autocast", "matmul_precision", "resolve_precision"]

PRECISIONS = ("fp32", "tf32", "bf16")


def resolve_precision(
    precision: str | None, device: torch.device, supported: tuple[str, ...] = PRECISIONS, who: str = ""
) -> str:
    """``None``/``"auto"`` -> the device's default, or fp32 where ``supported`` (a task's
    precisions) lacks it; anything else is checked against the device and ``supported``."""
    if precision is None or precision == "auto":
        best = "tf32" if device.type == "cuda" else "fp32"
        return best if best in supported else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision!r} is not one of: auto, {', '.join(PRECISIONS)}")
    if precision == "tf32" and device.type != "cuda":
        raise ValueError(f"--precision tf32 needs a CUDA device (got {device.type}); use fp32 or bf16")
    if precision not in supported:
        raise ValueError(f"--precision {precision}: {who or 'this task'} trains in {', '.join(supported)} only")
    return precision


@contextlib.contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """Inside the block, CUDA float32 matmuls and convolutions use TF32 when ``precision == "tf32"``
    and full float32 otherwise; the global flags are restored on exit."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[object]:
    """The context the forward pass and loss run in: bf16 autocast, or nothing."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
