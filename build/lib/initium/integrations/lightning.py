"""A Lightning callback that initialises the model with any initium method at fit start.

Install with ``pip install "initium[lightning]"``. ::

    import lightning as L
    from initium.integrations.lightning import InitCallback

    trainer = L.Trainer(max_steps=2000, callbacks=[InitCallback("rwf+noise(steps=300)")])
    trainer.fit(module, train_loader)       # the init runs once, on a batch from train_loader

Without Lightning it is one call on the model and a batch of its training inputs::

    initium.create("rwf+noise(steps=300)", seed=0)(model, inputs)

The callback does exactly that call, at ``on_fit_start``: on the LightningModule or one of its
submodules (``submodule="net"``), with the inputs of the first ``batches`` batches of the training
dataloader (concatenated along the first dimension), after Lightning has moved the module to its
device and before the first training step. Taking the batches and running the method happen
under :func:`torch.random.fork_rng`, so the training that follows draws the same random numbers
(shuffling, dropout) as without the callback.

A method that adds or replaces parameters (``rwf``, ``wn``, ``aa`` reparametrise the layers)
runs after Lightning has built the optimizers; the callback then builds them again
(``Strategy.setup_optimizers``), so that they train the new parameters. Under a strategy that
wraps the module (DDP, FSDP) that is not possible: apply such a method in the module's
``__init__`` instead. Under several processes the initialised weights are broadcast from rank 0,
so every rank starts from the same model.

Resuming (``trainer.fit(..., ckpt_path=...)``, or a second ``fit`` with the same callback) does not
initialise again: the checkpoint's weights are the model. When the checkpoint was saved from a
reparametrised model (its parameter names differ from the freshly built module's), the parts of
the method that need no inputs (``rwf``, ``wn`` ...) are applied first to give the module the
structure the checkpoint's weights load into, and the checkpoint's weights then replace theirs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..methods import Compose, Method, create

try:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback
except ImportError as exc:  # pragma: no cover - the extra is installed wherever the tests run
    raise ImportError(
        'initium.integrations.lightning needs Lightning (lightning>=2.2): pip install "initium[lightning]"'
    ) from exc

__all__ = ["InitCallback", "batch_inputs"]

log = logging.getLogger(__name__)

InputsOf = str | int | Callable[[Any], torch.Tensor] | None
"""Which part of a training batch is the model's input: ``None`` (the batch itself when it is a
tensor, else the first element of a tuple or list), an ``int`` (that element), a ``str`` (that key
of a dict batch) or a function ``batch -> tensor``."""


def batch_inputs(batch: Any, inputs: InputsOf = None) -> torch.Tensor:
    """The model's inputs in one training ``batch``, chosen by ``inputs`` (:data:`InputsOf`)."""
    if callable(inputs):
        x = inputs(batch)
    elif isinstance(inputs, str):
        if not isinstance(batch, Mapping) or inputs not in batch:
            keys = f"its keys: {', '.join(map(str, batch))}" if isinstance(batch, Mapping) else type(batch).__name__
            raise ValueError(f"InitCallback(inputs={inputs!r}): the batch has no key {inputs!r} ({keys})")
        x = batch[inputs]
    elif isinstance(batch, torch.Tensor) and inputs is None:
        x = batch
    elif isinstance(batch, Sequence) and not isinstance(batch, str):
        x = batch[0 if inputs is None else inputs]
    else:
        raise ValueError(
            f"InitCallback: cannot tell the inputs in a batch of type {type(batch).__name__}; pass inputs='key'"
            " (a dict batch), inputs=0 (a tuple) or inputs=lambda batch: ..."
        )
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"InitCallback: the batch's inputs must be a tensor, got {type(x).__name__}; set inputs=...")
    return x


def _parts(method: Method) -> list[Method]:
    return list(method.methods) if isinstance(method, Compose) else [method]


class InitCallback(Callback):
    """Apply ``initium.create(spec, seed=seed, **options)`` to the LightningModule (or its
    ``submodule``) once, at fit start, with the inputs of ``batches`` training batches.

    ``inputs`` says which part of a batch is the input (:data:`InputsOf`; default: the first
    element of a tuple or list). The spec is checked when the callback is built, so a misspelt
    method or option fails before Lightning starts. After the init, :attr:`summary` says what it
    did (method, config, seconds, parameter tensors changed, added and removed, the method's
    ``info`` such as a cache hit); it is logged (``logging``, and ``init/seconds`` and
    ``init/changed_fraction`` to the trainer's loggers) and saved in the checkpoint's callback state.
    """

    def __init__(
        self,
        spec: str,
        submodule: str | None = None,
        seed: int = 0,
        batches: int = 1,
        *,
        inputs: InputsOf = None,
        **options: Any,
    ) -> None:
        if not isinstance(batches, int) or isinstance(batches, bool) or batches < 1:
            raise ValueError(f"InitCallback(batches=...) must be an int >= 1, got {batches!r}")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"InitCallback(seed=...) must be an int >= 0, got {seed!r}")
        self.spec, self.submodule, self.seed, self.batches, self.inputs = spec, submodule, seed, batches, inputs
        self.method = create(spec, seed=seed, **options)
        self.summary: dict[str, Any] | None = None
        self._resumed = False
        self._hook: Any = None

    @property
    def state_key(self) -> str:
        # two callbacks (one per submodule) keep separate states in a checkpoint
        return self._generate_state_key(spec=self.spec, submodule=self.submodule, seed=self.seed)

    def _target(self, pl_module: nn.Module) -> nn.Module:
        if self.submodule is None:
            return pl_module
        try:
            return pl_module.get_submodule(self.submodule)
        except AttributeError:
            names = [n for n, _ in pl_module.named_children()]
            raise ValueError(
                f"InitCallback(submodule={self.submodule!r}): {type(pl_module).__name__} has no such submodule;"
                f" its children: {', '.join(names) or 'none'}"
            ) from None

    # -- resuming: the checkpoint's weights are the model -------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self._hook is None:  # a restore happens between setup and on_fit_start
            self._hook = pl_module.register_load_state_dict_pre_hook(self._on_restore)

    def _on_restore(self, module: nn.Module, state_dict: Mapping[str, Any], prefix: str, *_: Any) -> None:
        """Lightning is loading a checkpoint into the module: mark the fit as resumed and give the
        target the structure the checkpoint was saved with (its reparametrisations)."""
        self._resumed = True
        target = self._target(module)
        sub = prefix + (self.submodule + "." if self.submodule else "")
        saved = {k[len(sub) :] for k in state_dict if k.startswith(sub)}
        if saved == set(target.state_dict()):
            return
        for part in _parts(self.method):
            try:
                part.validate(target, None)
            except (ValueError, TypeError):  # a part that needs inputs changes weights, not structure
                continue
            part(target, None)
            log.info("InitCallback: applied %s to rebuild the structure the checkpoint was saved with", part.name)
            if saved == set(target.state_dict()):
                return

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resumed = True
        self.summary = state_dict.get("summary")

    def state_dict(self) -> dict[str, Any]:
        return {"summary": self.summary}

    # -- the init -----------------------------------------------------------------------------
    def _inputs(self, trainer: pl.Trainer, device: torch.device) -> torch.Tensor:
        trainer.fit_loop.setup_data()  # what the fit loop does next; idempotent
        loader = trainer.train_dataloader
        if loader is None:
            raise ValueError("InitCallback: the trainer has no training dataloader to take a batch from")
        if isinstance(loader, Mapping | Sequence):  # several loaders: the first one's batches
            loader = next(iter(loader.values() if isinstance(loader, Mapping) else loader))
        xs = []
        for batch in loader:
            xs.append(batch_inputs(batch, self.inputs))
            if len(xs) == self.batches:
                break
        if not xs:
            raise ValueError("InitCallback: the training dataloader is empty")
        return (xs[0] if len(xs) == 1 else torch.cat(xs)).to(device)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._resumed or trainer.ckpt_path is not None or self.summary is not None:
            log.info("InitCallback(%r): resuming, the checkpoint's weights are kept; not initialising", self.spec)
            return
        target = self._target(pl_module)
        before = {name: p.detach().clone() for name, p in target.named_parameters()}
        ids = [id(p) for p in pl_module.parameters()]
        with torch.random.fork_rng(devices=[]):  # the training's random stream stays as without the callback
            x = self._inputs(trainer, pl_module.device)
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize(pl_module.device)
            t0 = time.perf_counter()
            self.method(target, x)
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize(pl_module.device)
            seconds = time.perf_counter() - t0
        after = dict(target.named_parameters())
        if [id(p) for p in pl_module.parameters()] != ids:  # reparametrised: the optimizers must see the new ones
            if trainer.strategy.model is not pl_module:
                raise RuntimeError(
                    f"InitCallback({self.spec!r}) replaced parameters, which {type(trainer.strategy).__name__} has"
                    f" already wrapped; apply it in the module's __init__ instead: initium.create({self.spec!r})(net)"
                )
            trainer.strategy.setup_optimizers(trainer)
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            for tensor in (*target.parameters(), *target.buffers()):  # every rank starts from rank 0's init
                torch.distributed.broadcast(tensor.data, src=0)
        changed = [n for n, p in after.items() if n in before and not torch.equal(before[n], p.detach())]
        self.summary = {
            "spec": self.spec,
            "method": self.method.describe(),
            "submodule": self.submodule,
            "inputs_shape": list(x.shape),
            "seconds": seconds,
            "changed": changed,
            "added": sorted(after.keys() - before.keys()),
            "removed": sorted(before.keys() - after.keys()),
            "info": self.method.info,
        }
        fraction = (len(changed) + len(self.summary["added"])) / max(1, len(after))
        log.info(
            "InitCallback: %s on %s in %.2f s (inputs %s): %d parameter tensors changed, %d added, %d removed; %s",
            self.spec, self.submodule or type(pl_module).__name__, seconds, tuple(x.shape), len(changed),
            len(self.summary["added"]), len(self.summary["removed"]), self.method.info or "no info",
        )  # fmt: skip
        for logger in trainer.loggers:
            logger.log_metrics({"init/seconds": seconds, "init/changed_fraction": fraction}, step=0)
