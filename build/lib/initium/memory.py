"""The memory one run will need, estimated before any data is loaded, against what the machine has.

A task estimates one run's memory from its config alone (:meth:`initium.tasks.Task.estimate_memory`),
and the runner refuses work that cannot fit (:func:`check_fits`) before loading or allocating
anything: without it, ``image-fit --size 100000`` decodes the image and then dies inside
scikit-image's resize asking numpy for 112 GiB, and a size that only just does not fit can swap the
machine to a halt before anything fails.

The estimate is rough by design, meant to catch orders of magnitude rather than to budget: the
data's tensors at their exact sizes, plus one training step counted as twice the bytes the model's
forward pass saves for backward at the full input (the backward pass holds gradients about as large
again). The saved bytes are measured by running the forward on the ``meta`` device, which computes
shapes only: no memory, no arithmetic, whatever the size. It leaves out the optimiser's state (three
copies of the parameters: small beside a full-batch coordinate net's activations), evaluation's
temporaries and the allocator's slack, so it errs low: a run it refuses would not have fitted.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.autograd.graph import saved_tensors_hooks

__all__ = ["MemoryEstimate", "check_fits", "format_bytes", "machine_memory", "step_bytes"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemoryEstimate:
    """What one run holds at once, in bytes, by part (``{"coordinate grid": ..., ...}``).

    ``option`` and ``value`` are the command-line option that sets the size and its value
    (``"--size"``, ``100000``): the error names them. ``host`` are the parts held in the machine's
    RAM whatever the training device (decoding and resizing an image); the others live on the
    training device. The total grows about as ``value ** exponent`` (2 for an image's side), which
    gives the largest value that would fit.
    """

    option: str
    value: int
    parts: Mapping[str, int]
    host: frozenset[str] = field(default_factory=frozenset)
    exponent: float = 2.0

    def total(self, names: Sequence[str] | None = None) -> int:
        return sum(b for k, b in self.parts.items() if names is None or k in names)


def format_bytes(n: float) -> str:
    """``1.5 GiB``: binary units, as ``free -h`` and the CUDA tools print them."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def step_bytes(model: nn.Module, shape: Sequence[int]) -> int | None:
    """Bytes one training step of ``model`` holds at an input of ``shape`` (float32): twice what its
    forward saves for backward (see the module docstring), measured on a ``meta`` copy of the model,
    so nothing is allocated at any size. ``None`` where the model cannot run on ``meta`` (a forward
    that reads values, e.g. ``.item()``): then the step is left out of the estimate."""
    saved: dict[int, int] = {}
    keep: list[torch.Tensor] = []  # ids are unique only while the tensors live

    def pack(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in saved:  # one tensor saved by two operations is held once
            saved[id(t)] = t.numel() * t.element_size()
            keep.append(t)
        return t

    try:
        meta = copy.deepcopy(model).to("meta")
        meta.train()
        x = torch.empty(tuple(shape), device="meta")
        with torch.enable_grad(), saved_tensors_hooks(pack, lambda t: t):
            meta(x)
    except Exception as exc:  # any forward that is not shape-only: estimate without the step
        log.debug("no memory estimate of a training step of %s: %s", type(model).__name__, exc)
        return None
    return 2 * sum(saved.values())


def _ram() -> int:
    """The machine's total RAM (``os.sysconf``, else ``/proc/meminfo``), or a container's memory
    limit where one is set and lower (cgroup v2, then v1)."""
    total = 0
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no sysconf names (not Linux or macOS)
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemTotal:"):
                    total = int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < (total or math.inf):  # "max" or a huge number: no limit
            total = int(text)
    return total


def machine_memory(device: torch.device) -> tuple[int, str]:
    """``(bytes, what)``: the total memory of ``device`` (a GPU's own memory; the RAM for the CPU),
    0 where it cannot be read."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return int(props.total_memory), f"memory on cuda:{index} ({props.name})"
    return _ram(), "RAM"


def check_fits(estimate: MemoryEstimate | None, device: torch.device) -> None:
    """Raise ``ValueError`` (naming the option, the estimate by part and the machine's memory)
    when ``estimate`` does not fit: on the CPU, everything in the RAM; on a GPU, the host parts in
    the RAM and the rest in the GPU's memory. Nothing is checked where a memory cannot be read."""
    if estimate is None:
        return
    host = [k for k in estimate.parts if k in estimate.host]
    budgets: list[tuple[list[str], tuple[int, str]]]
    if device.type == "cuda":
        on_device = [k for k in estimate.parts if k not in host]
        budgets = [(host, machine_memory(torch.device("cpu"))), (on_device, machine_memory(device))]
    else:
        budgets = [(list(estimate.parts), machine_memory(device))]
    for names, (have, what) in budgets:
        need = estimate.total(names)
        if have <= 0 or need <= have:
            continue
        # the estimate grows as value**exponent; at least 1, so the advice is never "--size 0"
        fits = max(1, math.floor(estimate.value * (have / need) ** (1 / estimate.exponent)))
        parts = ", ".join(f"{k} {format_bytes(estimate.parts[k])}" for k in names if estimate.parts[k])
        raise ValueError(
            f"{estimate.option} {estimate.value} needs about {format_bytes(need)} of {what} ({parts}), but this"
            f" machine has {format_bytes(have)}; use a smaller {estimate.option} (at most about {fits} would fit)"
        )
