"""Training the graph hypernetwork (public as ``initium.ghn.train``; ``initium train ghn``).

Each step (GHN-2, Knyazev et al., NeurIPS 2021, section 4; the noise GHN of paper 002):

1. a meta-batch of ``meta_batch`` architectures drawn from the training half of an architecture
   space (:func:`initium.nn.split_space`; the held-out half is never trained on), their graphs
   built once and cached per spec;
2. one batch of ``batch_size`` images from the classify task's *training* split (its test split is
   never seen, its validation split only measured);
3. the GHN predicts every parameter of every net of the meta-batch; each net runs on the shared
   batch through ``torch.func.functional_call(model, {**buffers, **predicted}, x)`` in train mode
   (BatchNorm on the batch's statistics), and the loss is the mean cross-entropy over the
   meta-batch, ``L = (1/M) sum_m CE(f_m(x; H(g_m)), y)``;
4. noise GHN (``noise=True``, a GHN with ``noise_dim > 0``): two stochastic passes per net, and
   ``L = (1/M) sum_m [ (CE_1 + CE_2) / 2 + lambda cos(z_1, z_2) ]`` with ``cos`` the cosine
   similarity of the two passes' logits per image, averaged over the batch, and
   ``lambda = diversity`` (1 in the paper): the penalty pushes the members of an ensemble apart.

Adam with cosine decay, the global gradient norm clipped at ``clip``, through the one engine
(:func:`initium.train.loop` over :meth:`~initium.train.Steps.drawn`, a :class:`~initium.train.Checkpoint`
every ``checkpoint_every`` steps: a killed job resumes from there and, on the CPU, ends
bit-identical to an uninterrupted one, because every draw of step ``k`` (architectures, images,
noise) is seeded by ``(seed, k)`` alone). Under ``torchrun`` the ranks split each meta-batch
(rank ``r`` takes nets ``r, r + W, ...``) and :class:`~torch.nn.parallel.DistributedDataParallel`
averages their gradients; each rank's loss is weighted ``W * n_r / M`` so that the average is the
gradient of the whole meta-batch's mean loss, that of one process on the same step.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .. import distributed
from ..nn import split_space
from ..train import Checkpoint, ProgressFn, Steps, TrainingDiverged, adam, cosine, loop, progress_hook, sgd

__all__ = ["GHNTrainConfig", "accuracy", "new_ghn", "task_data", "train", "warm_start"]

log = logging.getLogger(__name__)

WORK = ".work"  # the checkpoints of a job in progress, inside --out


@dataclass(frozen=True)
class GHNTrainConfig:
    """What :func:`train` does (saved in the GHN's JSON as ``training``)."""

    dataset: str = "digits"
    space: str = "small"
    steps: int = 2000
    meta_batch: int = 8
    batch_size: int = 64
    lr: float = 1e-3
    clip: float = 1.0
    noise: bool = False
    diversity: float = 1.0
    seed: int = 0
    train_specs: int = 2000
    held_out: int = 200
    checkpoint_every: int = 200
    eval_specs: int = 16
    optimizer: str = "adam"

    def check(self) -> None:
        for name, least in (("steps", 1), ("meta_batch", 1), ("batch_size", 2), ("train_specs", 1), ("held_out", 0),
                            ("checkpoint_every", 1), ("eval_specs", 0), ("seed", 0)):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"train ghn {name.replace('_', '-')} must be an int >= {least}, got {value!r}")
        for name in ("lr", "clip"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf):
                raise ValueError(f"train ghn --{name} must be a finite number > 0, got {value!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"train ghn optimizer must be adam or sgd, got {self.optimizer!r}")
        if not (isinstance(self.diversity, int | float) and 0 <= self.diversity < math.inf):
            raise ValueError(f"train ghn --diversity must be a finite number >= 0, got {self.diversity!r}")


def _derive(*parts: Any) -> int:
    """A 63-bit seed from ``parts`` (stable across processes and runs, unlike ``hash``)."""
    return random.Random("/".join(map(str, parts))).getrandbits(63)


@dataclass
class _Arch:
    """A spec's model (its own parameters unused: the GHN's predictions replace them), graph and buffers."""

    spec: str
    model: nn.Module
    graph: Any
    buffers: dict[str, torch.Tensor]


class _Nets:
    """Models and graphs of the space's specs, built once per spec on first use."""

    def __init__(self, task: Any, example: torch.Tensor) -> None:
        self.task, self.example, self.cache = task, example, {}

    def __getitem__(self, spec: str) -> _Arch:
        if spec not in self.cache:
            from ..graph import build

            model = self.task.build_model(*self.task.parse_arch(spec)).to(self.example.device)
            model.train()
            graph = build(model, self.example)
            covered = {name for _, name, _ in graph.parameters()}
            missing = [n for n, _ in model.named_parameters() if n not in covered]
            if missing:
                raise ValueError(f"the graph of {spec} lacks parameters {missing[:3]}: the GHN cannot train on it")
            self.cache[spec] = _Arch(spec, model, graph, dict(model.named_buffers()))
        return self.cache[spec]


class _MetaStep(nn.Module):
    """One step's loss over this rank's share of the meta-batch, as a module holding the GHN so
    that DDP wraps it (and averages the GHN's gradients over the ranks)."""

    def __init__(self, ghn: nn.Module, cfg: GHNTrainConfig, rank: int, world: int) -> None:
        super().__init__()
        self.ghn, self.cfg, self.rank, self.world = ghn, cfg, rank, world
        self.archs: list[_Arch] = []  # set before each step: this rank's share
        self.step = 0

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, archs = self.cfg, self.archs
        passes = 2 if cfg.noise else 1
        graphs = [a.graph for a in archs]
        ce = x.new_zeros(())
        similarity = x.new_zeros(())
        logits = []
        for p in range(passes):
            gen = None
            if cfg.noise:
                gen = torch.Generator(device=x.device).manual_seed(_derive(cfg.seed, self.step, self.rank, p))
            predicted = self.ghn.predict(graphs, generator=gen)
            outs = []
            for arch, params in zip(archs, predicted, strict=True):
                out = torch.func.functional_call(arch.model, {**arch.buffers, **params}, (x,))
                ce = ce + F.cross_entropy(out, y) / passes
                outs.append(out)
            logits.append(outs)
        if cfg.noise:
            for a, b in zip(*logits, strict=True):
                similarity = similarity + F.cosine_similarity(a, b, dim=-1).mean()
        loss = (ce + cfg.diversity * similarity) * (self.world / cfg.meta_batch)
        return loss, torch.stack([o.detach() for o in logits[0]]) if logits[0] else x.new_zeros(0)


def new_ghn(cfg: GHNTrainConfig, num_classes: int, ghn_config: Any = None) -> nn.Module:
    """The untrained GHN :func:`train` starts from: ``ghn_config`` (default: ``GHNConfig()``) with
    ``num_classes`` and, for a noise GHN, ``noise_dim=8`` (the paper's) unless set; its weights
    drawn from a seed derived from ``cfg.seed`` (the global RNG is left alone)."""
    from . import ghn as ghn_module

    base = ghn_config if ghn_config is not None else ghn_module.GHNConfig()
    overrides: dict[str, Any] = {"num_classes": num_classes}
    if cfg.noise and base.noise_dim == 0:
        overrides["noise_dim"] = 8
    if not cfg.noise:
        overrides["noise_dim"] = 0  # a plain GHN: deterministic predictions
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_derive(cfg.seed, "init"))
        return ghn_module.GHN(dataclasses.replace(base, **overrides))


NOISE_START = 0.1
"""Scale of the noise columns of a warm-started noise GHN (:func:`warm_start`) against a fresh
GHN's init: small, so that it starts near the plain GHN it comes from."""


def warm_start(
    cfg: GHNTrainConfig, num_classes: int, path: str | os.PathLike[str], *, noise_start: float = NOISE_START
) -> nn.Module:
    """The GHN :func:`train` starts from with ``init=path``: the saved GHN's weights in a GHN of
    its config (``noise_dim=8`` when ``cfg.noise`` and it has none, ``num_classes`` checked). The
    decoder layers that read the noise (``decoder.fc``, ``decoder.vector.0``) get extra input
    columns: a fresh GHN's init times ``noise_start``; every other tensor is copied."""
    from . import ghn as ghn_module

    saved = ghn_module.load(path)
    if saved.config.num_classes != num_classes:
        raise ValueError(
            f"--init {path}: that GHN predicts {saved.config.num_classes}-class heads, the dataset has {num_classes}"
        )
    fresh = new_ghn(cfg, num_classes, dataclasses.replace(saved.config, noise_dim=0))
    state = fresh.state_dict()
    old = saved.state_dict()
    for name, value in old.items():
        target = state[name]
        if target.shape == value.shape:
            target.copy_(value)
        elif target.dim() == 2 and target.shape[0] == value.shape[0] and target.shape[1] > value.shape[1]:
            target[:, value.shape[1] :] *= noise_start  # the new noise inputs
            target[:, : value.shape[1]] = value
        else:
            raise ValueError(f"--init {path}: its {name} has shape {tuple(value.shape)}, not {tuple(target.shape)}")
    fresh.load_state_dict(state)
    return fresh


def task_data(dataset: str, device: torch.device) -> Any:
    """The classify task's data (its train / validation / test split): the GHN trains on its
    training split only."""
    from ..tasks import TASKS

    task = TASKS.build("classify", {"dataset": dataset, "ood": False, "corrupt": False, "track": False})
    task.setup(device)
    return task


@torch.no_grad()
def accuracy(ghn: nn.Module, specs: Sequence[str], task: Any, *, split: str = "val", seed: int = 0) -> list[float]:
    """Accuracy of each spec's net with every parameter predicted (``initium.ghn.fill``, BatchNorm
    statistics re-estimated on 256 training images) on the task's ``split`` (train / val / test),
    no training."""
    from .ghn import fill

    x, y = {"train": (task.inputs, task.target), "val": (task.val_x, task.val_y), "test": (task.test_x, task.test_y)}[
        split
    ]
    out = []
    training = ghn.training
    ghn.eval()
    try:
        for spec in specs:
            model = task.build_model(*task.parse_arch(spec)).to(x.device)
            fill(model, task.inputs[:256], ghn, seed=seed)
            model.eval()
            out.append(float((model(x).argmax(-1) == y).float().mean()))
    finally:
        ghn.train(training)
    return out


def train(
    out: str | os.PathLike[str],
    *,
    dataset: str = GHNTrainConfig.dataset,
    space: str = GHNTrainConfig.space,
    steps: int = GHNTrainConfig.steps,
    meta_batch: int = GHNTrainConfig.meta_batch,
    batch_size: int = GHNTrainConfig.batch_size,
    lr: float = GHNTrainConfig.lr,
    clip: float = GHNTrainConfig.clip,
    noise: bool = GHNTrainConfig.noise,
    diversity: float = GHNTrainConfig.diversity,
    seed: int = GHNTrainConfig.seed,
    train_specs: int = GHNTrainConfig.train_specs,
    held_out: int = GHNTrainConfig.held_out,
    checkpoint_every: int = GHNTrainConfig.checkpoint_every,
    eval_specs: int = GHNTrainConfig.eval_specs,
    optimizer: str = GHNTrainConfig.optimizer,
    ghn_config: Any = None,
    device: str | None = None,
    progress: ProgressFn | None = None,
    command: str | None = None,
    init: str | os.PathLike[str] | None = None,
    noise_start: float | None = None,
) -> nn.Module:
    """Train a GHN on the architecture space ``space`` and the classify dataset ``dataset``, save it
    in the folder ``out`` (``initium.ghn.save``: safetensors + JSON carrying the config, the
    training options, ``command``, the space, the data and the final accuracies) and return it.

    The options are :class:`GHNTrainConfig`'s (module docstring for the step); ``ghn_config`` (a
    :class:`initium.ghn.GHNConfig`) sets the GHN's own size (default: its defaults, with
    ``noise_dim=8`` when ``noise`` and the dataset's number of classes). ``progress`` receives the
    engine's events (phase ``"ghn"``). A job killed in the middle resumes from its last checkpoint
    in ``out/.work`` when called again with the same options. Under torchrun every rank trains its
    share of each meta-batch; rank 0 writes the files; every rank returns the GHN.

    ``init``: a saved GHN (folder) to start from instead of a fresh one (:func:`warm_start`: e.g. a
    noise GHN from a trained plain one); ``ghn_config`` is then ignored: the sizes are the saved GHN's;
    ``noise_start`` scales its new noise columns (default :data:`NOISE_START`).
    """
    from . import ghn as ghn_module

    cfg = GHNTrainConfig(dataset, space, steps, meta_batch, batch_size, lr, clip, noise, diversity, seed,
                         train_specs, held_out, checkpoint_every, eval_specs, optimizer)  # fmt: skip
    cfg.check()
    if noise_start is not None and not (isinstance(noise_start, int | float) and 0 <= noise_start < math.inf):
        raise ValueError(f"train ghn --noise-start must be a finite number >= 0, got {noise_start!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder for a GHN")
    if out.is_dir() and any(p.name != WORK for p in out.iterdir()):
        raise ValueError(f"--out {out} is not empty; give a new or empty folder (a finished GHN is never overwritten)")
    started = time.perf_counter()
    joined_here = not distributed.is_joined()
    me = distributed.init()
    try:
        if cfg.meta_batch < me.world_size:
            raise ValueError(
                f"--meta-batch {cfg.meta_batch} is smaller than the {me.world_size} ranks: give at least one net"
                " per rank"
            )
        dev = distributed.device_for(me, device)
        ghn_init_digest = ghn_module.load(init).digest if init is not None else None
        task = task_data(cfg.dataset, dev)
        train_list, held_list = split_space(cfg.space, cfg.train_specs, cfg.held_out)
        nets = _Nets(task, task.inputs[:2])
        if init is not None:
            start = NOISE_START if noise_start is None else noise_start
            ghn = warm_start(cfg, task.num_classes, init, noise_start=start).to(dev)
        else:
            ghn = new_ghn(cfg, task.num_classes, ghn_config).to(dev)
        ghn.train()
        step_module = _MetaStep(ghn, cfg, me.rank, me.world_size)
        step_fn: Any = step_module
        if me.is_distributed:
            step_fn = DistributedDataParallel(step_module, find_unused_parameters=True)
        n = len(task.inputs)
        if cfg.batch_size > n:
            raise ValueError(f"--batch-size {cfg.batch_size} is larger than the {n} training images")

        def batch(k: int) -> tuple[torch.Tensor, torch.Tensor]:
            # everything of step k from (seed, k): the same on every rank and after a resume
            rng = random.Random(_derive(cfg.seed, "archs", k))
            chosen = rng.sample(train_list, cfg.meta_batch) if cfg.meta_batch <= len(train_list) else [
                rng.choice(train_list) for _ in range(cfg.meta_batch)]  # fmt: skip
            step_module.archs = [nets[s] for s in chosen[me.rank :: me.world_size]]
            step_module.step = k
            gen = torch.Generator().manual_seed(_derive(cfg.seed, "images", k))
            idx = torch.randperm(n, generator=gen)[: cfg.batch_size].to(dev)
            return task.inputs[idx], task.target[idx]

        params = [p for p in ghn.parameters() if p.requires_grad]
        opt = adam(params, cfg.lr) if cfg.optimizer == "adam" else sgd(params, cfg.lr)
        ckpt = Checkpoint(out / WORK / f"rank{me.rank}", every=cfg.checkpoint_every)
        try:
            with progress_hook(progress):
                history = loop(
                    step_fn, opt, Steps.drawn(batch), steps=cfg.steps, schedule=cosine, clip_grad=cfg.clip,
                    phase="ghn", checkpoint=ckpt, state=ghn.state_dict(),
                )  # fmt: skip
        except TrainingDiverged as exc:
            raise ValueError(f"GHN training diverged at step {exc.step}; lower --lr or --clip") from exc
        seconds = time.perf_counter() - started
        ghn.eval()
        rng = random.Random(_derive(cfg.seed, "eval"))
        measured_train = rng.sample(train_list, min(cfg.eval_specs, len(train_list)))
        measured_held = held_list[: cfg.eval_specs]
        results: dict[str, Any] = {}
        if cfg.eval_specs and me.is_main:
            results = {
                "train_specs_train_acc": _mean(accuracy(ghn, measured_train, task, split="train")),
                "train_specs_val_acc": _mean(accuracy(ghn, measured_train, task, split="val")),
                "held_out_specs_val_acc": _mean(accuracy(ghn, measured_held, task, split="val")),
                "specs_measured": cfg.eval_specs,
            }
        split = task.split_index
        meta = {
            "training": dataclasses.asdict(cfg),
            "command": command,
            "init": None
            if init is None
            else {
                "path": str(init),
                "sha256": ghn_init_digest,
                "noise_start": NOISE_START if noise_start is None else noise_start,
            },
            "space": {
                "name": cfg.space,
                "train": len(train_list),
                "held_out": len(held_list),
                "split": "initium.nn.split_space",
            },
            "data": {
                "dataset": cfg.dataset,
                "split_seed": task.config.split_seed,
                "train": len(split["train"]),
                "val": len(split["val"]),
                "test": len(split["test"]),
                "trained_on": "train split only",
            },
            "final_loss": float(history[-1]),
            "loss": [float(v) for v in history[:: max(1, cfg.steps // 100)]],
            "accuracy": results,
            "world_size": me.world_size,
            "device": str(dev),
            "wall_s": round(seconds, 1),
            "torch_version": torch.__version__,
        }
        if me.is_main:
            ghn_module.save(ghn, out, meta=meta)
            import shutil

            shutil.rmtree(out / WORK, ignore_errors=True)
            log.info("GHN saved in %s: %s", out, results)
        distributed.barrier()
        return ghn
    finally:
        if joined_here:
            distributed.shutdown()


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
