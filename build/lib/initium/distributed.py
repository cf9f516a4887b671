"""Jobs past one process: ``torchrun`` ranks, their devices and their share of the work.

Built on ``torch.distributed`` alone (NCCL on GPUs, gloo on the CPU), never on home-made process
pools or RPC: ``torchrun --nproc_per_node K -m initium.cli run ...`` starts K copies of the same
command, each reads which one it is from torchrun's environment (:func:`rank_info`), takes every
K-th item of the work (:func:`shard`) and trains on its own GPU (:func:`device_for`). Without
torchrun every helper describes one process and costs nothing, so the same code serves both.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

__all__ = ["Rank", "all_ok", "barrier", "device_for", "init", "is_joined", "rank_info", "shard", "shutdown"]

T = TypeVar("T")


@dataclass(frozen=True)
class Rank:
    """Which process this is: ``rank`` of ``world_size`` in all, ``local_rank`` on its machine
    (the GPU it owns)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone merges results and prints: one copy, not K."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"${name} must be an integer (torchrun sets it), got {text!r}") from None


def rank_info() -> Rank:
    """This process's place, from torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; one
    process (rank 0 of 1) where they are not set. Read from the environment, not from a process
    group, so it is right before :func:`init` and in code that never starts one."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}")
    return Rank(rank=rank, world_size=world, local_rank=local)


def _backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init() -> Rank:
    """Join the process group when torchrun started several processes (``WORLD_SIZE > 1``) and
    none is joined yet: NCCL where CUDA is available, else gloo. Safe to call again, and a no-op
    for one process, so library entry points (``initium.runner.run``) call it themselves."""
    me = rank_info()
    if me.is_distributed and dist.is_available() and not dist.is_initialized():
        backend = _backend()
        if backend == "nccl":
            count = torch.cuda.device_count()
            if me.local_rank >= count:
                raise ValueError(
                    f"LOCAL_RANK {me.local_rank}: this machine has {count} CUDA device(s); start at most {count}"
                    f" processes per machine (torchrun --nproc_per_node {count}), or hide the GPUs"
                    " (CUDA_VISIBLE_DEVICES=) to run on the CPU"
                )
            torch.cuda.set_device(me.local_rank)  # NCCL's collectives run on this rank's own GPU
        dist.init_process_group(backend=backend)
    return me


def is_joined() -> bool:
    """Whether this process is in a process group (its own :func:`init`'s or its caller's)."""
    return dist.is_available() and dist.is_initialized()


def _active() -> bool:
    return is_joined() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait until every rank gets here (no-op for one process): e.g. all shards written before
    rank 0 merges them."""
    if not _active():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def all_ok(ok: bool) -> bool:
    """Whether every rank got here with ``ok`` (one all-reduce; just ``ok`` for one process), so
    that a failure on one rank stops all of them instead of leaving the others at a barrier."""
    if not _active():
        return ok
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    flag = torch.tensor([int(ok)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def shutdown() -> None:
    """Leave the process group, if one is joined (NCCL warns at exit otherwise). Objects that hold
    the group (a ``DistributedDataParallel`` wrapper caught in a reference cycle) are collected first:
    one destroyed after the group, at interpreter exit, can abort the process ("terminate called
    without an active exception")."""
    if is_joined():
        gc.collect()
        dist.destroy_process_group()


def shard(items: Iterable[T], rank: Rank) -> list[T]:
    """This rank's share of ``items``: every ``world_size``-th, from its ``rank`` on (round robin,
    so runs of one method spread over all ranks rather than piling onto one)."""
    return list(items)[rank.rank :: rank.world_size]


def device_for(rank: Rank, device: str | None) -> torch.device:
    """The device this rank trains on. ``None``: its own GPU, ``cuda:LOCAL_RANK``, when CUDA is
    present, else the CPU; a bare ``"cuda"`` likewise means this rank's GPU; an explicit index or
    another device is taken as given, after checking that this machine has it (decided now,
    never at import)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"--device {device!r} is not a device name (cpu, cuda, cuda:1, mps)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: CUDA is not available on this machine; use --device cpu")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", rank.local_rank)
        if rank.local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK {rank.local_rank}: this machine has {torch.cuda.device_count()} CUDA device(s);"
                " start at most one process per GPU (torchrun --nproc_per_node), or use --device cpu"
            )
    if dev.type == "cuda" and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device!r}: MPS is not available on this machine; use --device cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {device!r}: initium runs on cpu, cuda or mps")
    return dev
