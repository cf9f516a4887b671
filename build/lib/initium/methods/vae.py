"""Weight-group VAE init (Harder et al., "From Pointwise to Powerhouse", arXiv 2310.16695, section 3.1),
after Atanov et al.'s Deep Weight Prior (ICLR 2019).

The family's whole logic: cutting a model zoo's weights into groups, training one VAE per layer
position, saving and loading them, and the method ``vae(path=VAE)`` that samples a new model's
weights from them. Public as ``initium.vae`` (the same module); the small VAEs live in
:mod:`initium.nn.vae`.

**Weight groups.** From every convolution of the zoo's nets (:class:`~initium.zoo.Zoo`), one slice
per (out, in) channel pair, of the kernel's shape (``3 x 3``); from every linear layer, its rows.
Within each net, the ``drop`` (5 %) lowest-norm slices of each layer are dropped: dead kernels
would pile the distribution up at zero. The nets are split into training and validation nets
(``val_fraction``, at least one each): slices of one net are never on both sides, so the validation
loss measures how well the VAE generalises to a *new net*, not to new slices of nets it has seen.

**One VAE per layer position** (:class:`~initium.nn.vae.ConvSliceVAE` for 3x3 slices, latent 8,
hidden 32, ELU, as in the DWP code; :class:`~initium.nn.vae.MLPSliceVAE` for rows and other kernel
sizes), trained on the layer's slices divided by their RMS ``scale`` (a linear change of variables,
so every layer is modelled at unit scale), by minimising the negative evidence lower bound per slice

    L(w) = -ELBO(w) = E_{q(z|w)} [ -log N(w; mu(z), diag sigma(z)^2) ] + KL( q(z|w) || N(0, I) )

with Adam and a cosine-decaying learning rate, minibatch epochs of the one training engine
(:func:`initium.train.fit` with :class:`~initium.train.Epochs` and a
:class:`~initium.train.Checkpoint` every epoch). Losses are reported in nats per slice *of the
weights themselves*: ``L_weights = L_scaled + d log(scale)`` for slices of ``d`` numbers.

**Sampling** (:meth:`WeightVAE.init`, method ``vae``). Each ``nn.Linear`` / ``nn.ConvNd`` of the
target model is matched to one VAE: the zoo layer of the *same name* when it has the same kind
(conv or linear) and slice shape; otherwise the zoo layer of the same kind and slice shape at the
nearest *relative depth* (position among the weight layers / (count - 1)). Its slices are decoded
from prior samples ``z ~ N(0, I)`` (plus the decoder's Gaussian noise, ``noise=True``), drawn from a
CPU generator seeded by the run's seed and the layer's name. Layers without a match (another
kind, kernel size or row length), biases and normalisation layers keep their default init; the
method's ``info`` (the run's record) says which VAE filled which layer and which layers kept it.

**Another width.** Slices are sampled per (out, in) channel pair (per row for linear layers), so a
convolution of any width is filled: a ``resnet(width=6)`` from a ``width=4`` zoo gets slices of the
zoo's distribution, ``6 x 6`` pairs instead of ``4 x 4``. A linear layer needs the zoo's row length
(its ``in_features``); a wider head keeps its default init. The slices keep the zoo's scale, so a
wider layer sums more of them: its pre-activations grow by ``sqrt(fan_in / fan_in_zoo)``. Nets with
BatchNorm after each convolution (the ResNets) do not care; ``match_fan_in=True`` multiplies the
slices by ``sqrt(fan_in_zoo / fan_in)`` to keep the zoo's pre-activation variance instead.

**Baseline** ``zoo-stats(path=ZOO)`` (:class:`ZooStatsInit`): the same matching, but each matched
layer drawn i.i.d. from ``N(mean, std^2)`` of its zoo layer's weights (pooled over the zoo's nets,
:func:`zoo_stats`), from a generator seeded by the run's seed and the layer's name: what the VAE
adds beyond a layer's first two moments.

**Files.** ``VAE/vae.safetensors`` (every layer's VAE, ``layers.<i>.<param>``) and ``VAE/vae.json``
(format, the zoo's path, catalog :meth:`~initium.zoo.Zoo.digest`, architecture and split; the
training config; the layer map: name, kind, weight and slice shape, relative depth, VAE
architecture, latent and hidden size, scale, slice counts, loss curves; the sha256 of the weights,
checked before they are parsed). Nothing is unpickled; a missing or malformed file is a
:class:`VAEError` (a ``ValueError``) that names it.

**Resume and torchrun.** :func:`train` keeps ``VAE/.work/`` while it runs: each finished layer's
VAE, and the checkpoint of the layer in progress (saved every epoch); started again with the same
arguments it keeps the finished layers, resumes the one in progress from its last epoch and ends
bit-identical (on the CPU) to an uninterrupted run. Under ``torchrun`` the *layers* are dealt out
over the ranks (largest first, to the least-loaded rank), each rank trains its own VAEs, and rank 0
writes the files once all are done. The VAEs are independent and small (49 k parameters for 3x3):
data parallelism (DDP) inside one of them would spend its time exchanging gradients; whole layers
per rank need no communication at all, and give exactly the VAEs of a one-process run (the same
seed and data per layer, whichever rank trains it; bit-identical on CPUs with the same thread
count). The ranks share the work folder: on several machines it must be on a shared file system.
Past one rank per layer (more ranks than layers) the extra ranks idle. ``train(ddp=True)``
(``initium train vae --ddp``) is the data-parallel alternative: every rank trains every layer's
VAE together through the engine's ``fit(data_parallel=True)`` (DDP; rank 0 writes), slower here
(a 2-rank CPU run took 10.5 s against 7.9 s sharded) and equal to the one-process VAEs only up to
rounding and noise (``tests/test_ddp.py``).

Python API::

    from initium import vae
    bank = vae.train("runs/zoo", "runs/vae", epochs=30)      # a WeightVAE; also `initium train vae`
    bank = vae.load("runs/vae")                              # checks the sha256, never unpickles
    bank.layers[0].val_loss[-1]                              # validation -ELBO, nats per slice
    info = bank.init(model, seed=3)                          # fill model in place: which VAE where
    initium.create("vae(path=runs/vae)+rwf", seed=3)(model)  # the registered, composable method
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from torch import nn

from .. import __version__, distributed
from .._io import atomic_write_bytes, atomic_write_json, checked_record, sha256, tensors_to_bytes
from ..nn.vae import SLICE_VAES, SliceVAE, slice_vae_for
from ..train import Checkpoint, Epochs, Progress, ProgressFn, TrainingDiverged, cosine, fit, progress_hook
from ..zoo import Zoo, ZooEntry
from ._base import METHODS, Method
from .classic import weight_layers

__all__ = [
    "CONFIG_FILE", "FORMAT", "WEIGHTS_FILE", "Layer", "LayerPosition", "LayerStats", "Match", "TrainConfig",
    "VAEConfig", "VAEError", "VAEInit", "WeightVAE", "ZooStatsConfig", "ZooStatsInit", "load", "slices", "train",
    "zoo_stats",
]  # fmt: skip

log = logging.getLogger(__name__)

FORMAT = "initium-vae"
VERSION = 1
CONFIG_FILE = "vae.json"
WEIGHTS_FILE = "vae.safetensors"
WORK = ".work"
_PLAN = "plan.json"
_VAL_CHUNK = 65536  # slices per forward pass when measuring the validation loss (bounds the memory)


class VAEError(ValueError):
    """A weight VAE that cannot be trained, found, read or used (names the file or argument)."""


# --- weight groups ---------------------------------------------------------------------------------


def _kind(module: nn.Module) -> str:
    return "linear" if isinstance(module, nn.Linear) else "conv"


def _slice_shape(kind: str, weight_shape: Sequence[int]) -> tuple[int, ...]:
    """A conv layer's slices are its kernels, ``weight[o, i]``; a linear layer's are its rows."""
    return tuple(weight_shape[2:]) if kind == "conv" else (int(weight_shape[1]),)


def slices(weight: torch.Tensor, kind: str = "conv") -> torch.Tensor:
    """A layer's weight groups: ``(out * in, *kernel)`` kernel slices of a convolution's
    ``(out, in, *kernel)`` weight, one per (out, in) channel pair; a linear weight's rows."""
    if kind == "linear":
        return weight.reshape(weight.shape[0], -1)
    return weight.reshape(-1, *weight.shape[2:])


def _drop_lowest(groups: torch.Tensor, drop: float) -> torch.Tensor:
    """``groups`` without its ``floor(drop * n)`` lowest-norm members (a stable order: ties keep
    the earlier slice)."""
    n = len(groups)
    keep = n - math.floor(drop * n)
    norms = groups.flatten(1).norm(dim=1)
    order = torch.sort(norms, descending=True, stable=True).indices[:keep]
    return groups[torch.sort(order).values]


def _derive(seed: int, name: str) -> int:
    """A seed of its own for ``name`` (a layer), from the run's ``seed``: the same whichever rank
    or order handles the layer."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:8], "little") & (2**63 - 1)


# --- configuration and the layer map --------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """How :func:`train` trains: ``epochs`` of minibatches of ``batch_size`` slices, Adam at ``lr``
    decaying to 0 (cosine), VAEs of ``latent`` / ``hidden`` size, the ``drop`` fraction of lowest-norm
    slices of each layer of each net left out, ``val_fraction`` of the nets held out for
    validation, ``seed`` for the split, the VAEs' init, the batches and the reparametrisation noise."""

    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    latent: int = 8
    hidden: int = 32
    drop: float = 0.05
    val_fraction: float = 0.2
    seed: int = 0

    def check(self) -> None:
        """Raise :class:`VAEError` naming the first bad field (before any work)."""
        for name, least in (("epochs", 1), ("batch_size", 1), ("latent", 1), ("hidden", 1), ("seed", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise VAEError(f"VAE training: {name} must be an int >= {least}, got {value!r}")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise VAEError(f"VAE training: lr must be a finite number > 0, got {self.lr!r}")
        if not (isinstance(self.drop, int | float) and 0 <= self.drop < 1):
            raise VAEError(f"VAE training: drop must be a fraction in [0, 1), got {self.drop!r}")
        if not (isinstance(self.val_fraction, int | float) and 0 < self.val_fraction < 1):
            raise VAEError(f"VAE training: val_fraction must be in (0, 1), got {self.val_fraction!r}")


@dataclass(frozen=True)
class LayerPosition:
    """One layer position of the zoo's architecture, what a target layer is matched against:
    ``name`` (module name in the zoo's architecture), ``kind`` (``conv`` or ``linear``), the zoo
    layer's weight ``shape``, the ``slice_shape`` of its groups, its ``position`` among the weight
    layers and relative ``depth`` (position / (count - 1))."""

    name: str
    kind: str
    shape: tuple[int, ...]
    slice_shape: tuple[int, ...]
    position: int
    depth: float


@dataclass(frozen=True)
class Layer(LayerPosition):
    """One layer position of the zoo's architecture (:class:`LayerPosition`) and its VAE: an entry
    of the layer map. The VAE's architecture (``vae``, a
    :data:`~initium.nn.vae.SLICE_VAES` name), ``latent`` and ``hidden`` size, the ``scale`` the slices
    were divided by, how many slices it was trained and validated on, and its loss curves
    (``-ELBO`` in nats per slice of the weights, index = epoch; ``val_loss[0]`` is before training)."""

    vae: str
    latent: int
    hidden: int
    scale: float
    train_slices: int
    val_slices: int
    train_loss: tuple[float, ...]
    val_loss: tuple[float, ...]

    @property
    def fan_in(self) -> int:
        return math.prod(self.shape[1:])

    @classmethod
    def from_json(cls, data: Any) -> Layer:
        """From the JSON of the layer map; raises ``TypeError``/``ValueError``/``KeyError`` on bad fields."""
        if not isinstance(data, dict):
            raise TypeError(f"expected an object, got {type(data).__name__}")

        def ints(key: str) -> tuple[int, ...]:
            value = data[key]
            if not isinstance(value, list) or not value or not all(type(v) is int and v >= 1 for v in value):
                raise ValueError(f"{key} must be a list of positive ints, got {value!r}")
            return tuple(value)

        def number(key: str, least: float, integer: bool = True) -> Any:
            value = data[key]
            kinds = int if integer else int | float
            if isinstance(value, bool) or not isinstance(value, kinds) or not value >= least:  # also rejects NaN
                raise ValueError(f"{key} must be {'an int' if integer else 'a number'} >= {least}, got {value!r}")
            return value

        def curve(key: str) -> tuple[float, ...]:
            value = data[key]
            if not isinstance(value, list) or not all(isinstance(v, int | float) for v in value):
                raise ValueError(f"{key} must be a list of numbers")
            return tuple(float(v) for v in value)

        if not isinstance(data["name"], str) or data["kind"] not in ("conv", "linear"):
            raise ValueError(f"name must be a string and kind conv or linear, got {data['name']!r}, {data['kind']!r}")
        if data["vae"] not in SLICE_VAES:
            raise ValueError(f"unknown slice VAE {data['vae']!r} (known: {', '.join(SLICE_VAES.names())})")
        scale = float(number("scale", 0.0, integer=False))
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
        return cls(
            name=data["name"], kind=data["kind"], shape=ints("shape"), slice_shape=ints("slice_shape"),
            position=number("position", 0), depth=float(number("depth", 0.0, integer=False)), vae=data["vae"],
            latent=number("latent", 1), hidden=number("hidden", 1), scale=scale,
            train_slices=number("train_slices", 0), val_slices=number("val_slices", 0),
            train_loss=curve("train_loss"), val_loss=curve("val_loss"),
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclass(frozen=True)
class Match:
    """Where one weight layer of a target model gets its slices: ``layer``, the index of a VAE in
    :attr:`WeightVAE.layers` (``None``: it keeps its init), ``by`` ``"name"`` or ``"depth"``."""

    target: str
    layer: int | None
    by: str | None


def _layer_map(model: nn.Module) -> list[tuple[str, str, tuple[int, ...], float]]:
    """(name, kind, weight shape, relative depth) of every Linear / ConvNd of ``model``, in order."""
    layers = weight_layers(model)
    last = max(1, len(layers) - 1)
    return [(name, _kind(m), tuple(m.weight.shape), i / last) for i, (name, m) in enumerate(layers)]


def _match(layers: Sequence[LayerPosition], model: nn.Module) -> list[Match]:
    """Match each Linear / ConvNd of ``model`` to one of ``layers`` (a zoo's layer map: objects with
    ``name``, ``kind``, ``slice_shape``, ``depth`` and ``position``): the layer of the same name,
    kind and slice shape; else the same kind and slice shape at the nearest relative depth (ties:
    the shallower); else none. The one matching of the family (``vae`` and ``zoo-stats``)."""
    by_name = {layer.name: i for i, layer in enumerate(layers)}
    out = []
    for name, kind, shape, depth in _layer_map(model):
        key = (kind, _slice_shape(kind, shape))
        same = [i for i, layer in enumerate(layers) if (layer.kind, tuple(layer.slice_shape)) == key]
        if name in by_name and by_name[name] in same:
            out.append(Match(name, by_name[name], "name"))
        elif same:
            best = min(same, key=lambda i: (abs(layers[i].depth - depth), layers[i].position))
            out.append(Match(name, best, "depth"))
        else:
            out.append(Match(name, None, None))
    return out


def _check_match(layers: Sequence[LayerPosition], model: nn.Module, prefix: str) -> list[Match]:
    """:func:`_match`, raising :class:`VAEError` (``prefix`` + what each side has) when no layer
    of ``model`` can be matched."""
    matches = _match(layers, model)
    if not any(m.layer is not None for m in matches):
        have = sorted({f"{m.kind} {'x'.join(map(str, m.slice_shape))}" for m in layers})
        theirs = sorted(
            {f"{kind} {'x'.join(map(str, _slice_shape(kind, shape)))}" for _, kind, shape, _ in _layer_map(model)}
        )
        raise VAEError(
            f"{prefix} {', '.join(have)} slices (conv kernels; linear rows of that length), the model has"
            f" {', '.join(theirs) or 'no Linear or ConvNd layer'}"
        )
    return matches


# --- the trained VAEs ------------------------------------------------------------------------------


def _json_number(value: float) -> float:
    return json.loads(json.dumps(float(value)))


class WeightVAE:
    """A trained weight VAE: :attr:`meta` (what ``vae.json`` holds), :attr:`layers` (the layer map)
    and :attr:`vaes`, one :class:`~initium.nn.vae.SliceVAE` per layer (on the CPU, eval mode).
    Made by :func:`train`, read by :func:`load`, written by :meth:`save`."""

    def __init__(self, meta: Mapping[str, Any], vaes: Sequence[SliceVAE]) -> None:
        self.meta: dict[str, Any] = json.loads(json.dumps(meta))  # JSON-ready, as the file holds it
        self.layers: tuple[Layer, ...] = tuple(Layer.from_json(d) for d in self.meta["layers"])
        if len(vaes) != len(self.layers):
            raise VAEError(f"{len(vaes)} VAEs for a layer map of {len(self.layers)} layers")
        self.vaes = nn.ModuleList(vaes).eval()
        self.path: Path | None = None

    def __repr__(self) -> str:
        arch = self.meta.get("zoo", {}).get("arch_spec", "?")
        return f"WeightVAE({len(self.layers)} layers of {arch}, zoo {self.zoo_digest[:12]})"

    @property
    def zoo_digest(self) -> str:
        """The :meth:`~initium.zoo.Zoo.digest` of the zoo it was trained on."""
        return str(self.meta.get("zoo", {}).get("digest", ""))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every VAE's tensors, ``layers.<i>.<param>``: what ``vae.safetensors`` holds."""
        return {f"layers.{i}.{k}": v for i, vae in enumerate(self.vaes) for k, v in vae.state_dict().items()}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``vae.safetensors`` then ``vae.json`` (each atomically; the JSON carries the
        weights' sha256) into the folder ``path``; returns the folder."""
        folder = Path(path)
        data = tensors_to_bytes(self.state_dict())
        atomic_write_bytes(folder / WEIGHTS_FILE, data)
        self.meta["weights"] = {"file": WEIGHTS_FILE, "sha256": sha256(data), "bytes": len(data)}
        atomic_write_json(folder / CONFIG_FILE, self.meta)
        self.path = folder
        return folder

    # --- sampling ---------------------------------------------------------------------------------

    def match(self, model: nn.Module) -> list[Match]:
        """Which VAE fills each Linear / ConvNd of ``model`` (see the module docstring): the zoo
        layer of the same name, kind and slice shape; else the same kind and slice shape at the
        nearest relative depth (ties: the shallower); else none."""
        return _match(self.layers, model)

    def check_model(self, model: nn.Module) -> list[Match]:
        """:meth:`match`, raising :class:`VAEError` when no layer of ``model`` can be matched."""
        return _check_match(self.layers, model, f"vae: no layer of {type(model).__name__} can be matched to the VAE"
                            f" {self.path or ''}: it has VAEs for")  # fmt: skip

    def sample(
        self, index: int, n: int, generator: torch.Generator | None = None, *, noise: bool = True
    ) -> torch.Tensor:
        """``n`` slices from the VAE of layer ``index``, in the weights' units: decoded prior
        samples times the layer's scale, ``(n, *slice_shape)``."""
        return self.vaes[index].sample(n, generator, noise=noise) * self.layers[index].scale

    @torch.no_grad()
    def init(
        self, model: nn.Module, seed: int = 0, *, noise: bool = True, match_fan_in: bool = False
    ) -> dict[str, Any]:
        """Fill ``model``'s matched weights in place with sampled slices (each layer's from a CPU
        generator seeded by ``seed`` and its name); return what was done (JSON-ready):
        ``filled`` {target layer: {"vae": zoo layer, "match": "name" or "depth"}} and ``kept``
        (the layers that keep their init). Raises :class:`VAEError` when nothing matches."""
        matches = self.check_model(model)
        modules = dict(model.named_modules())
        filled: dict[str, dict[str, str]] = {}
        for m in matches:
            if m.layer is None:
                continue
            weight = modules[m.target].weight
            layer = self.layers[m.layer]
            kind = _kind(modules[m.target])
            count = len(slices(weight, kind))
            gen = torch.Generator().manual_seed(_derive(seed, m.target))
            drawn = self.sample(m.layer, count, gen, noise=noise)
            if match_fan_in:  # keep the zoo's pre-activation variance at another width
                drawn = drawn * math.sqrt(layer.fan_in / math.prod(weight.shape[1:]))
            weight.copy_(drawn.reshape(weight.shape).to(weight))
            filled[m.target] = {"vae": layer.name, "match": str(m.by)}
        kept = [m.target for m in matches if m.layer is None]
        return {
            "vae": str(self.path) if self.path is not None else None, "zoo_digest": self.zoo_digest,
            "filled": filled, "kept": kept,
        }  # fmt: skip


# --- loading ----------------------------------------------------------------------------------------


def _where(path: Any) -> str:
    return f"vae(path={str(path)!r})"


def load(path: str | os.PathLike[str]) -> WeightVAE:
    """Read the weight VAE in the folder ``path`` (or its ``vae.json``): the JSON first, then the
    weights, whose sha256 must match the one the JSON records before they are parsed (safetensors:
    no code runs). Anything missing or malformed is a :class:`VAEError` naming the file."""
    if not isinstance(path, str | os.PathLike) or not str(path).strip():
        raise VAEError(
            f"vae needs path=FOLDER, a weight VAE made by `initium train vae --zoo ZOO --out FOLDER`; got {path!r}"
        )
    where = _where(path)
    try:
        folder = Path(path)
        if folder.name == CONFIG_FILE and folder.is_file():
            folder = folder.parent
        if not folder.exists():
            raise VAEError(f"{where}: no such folder; train one: initium train vae --zoo ZOO --out {path}")
        if not (folder / CONFIG_FILE).is_file():
            raise VAEError(f"{where}: {folder} is not a weight VAE: it has no {CONFIG_FILE}")
        text = (folder / CONFIG_FILE).read_text()
        weights = folder / WEIGHTS_FILE
        if not weights.is_file():
            raise VAEError(f"{where}: {weights} is missing (the VAE's weights)")
        data = weights.read_bytes()
    except (OSError, ValueError) as exc:
        if isinstance(exc, VAEError):
            raise
        raise VAEError(f"{where}: cannot read it ({exc})") from None
    meta = checked_record(
        text, data, error=VAEError, where=where, config=folder / CONFIG_FILE, weights=weights, fmt=FORMAT,
        version=VERSION, what="a weight VAE",
    )  # fmt: skip
    layers = meta.get("layers")
    if not isinstance(layers, list) or not layers:
        raise VAEError(f"{where}: {CONFIG_FILE} has no layer map ('layers')")
    try:
        tensors = load_tensors(data)
    except (SafetensorError, ValueError) as exc:
        raise VAEError(f"{where}: {weights} is not a safetensors file ({exc})") from None
    vaes, used = [], set()
    for i, entry in enumerate(layers):
        try:
            layer = Layer.from_json(entry)
            vae = _new_vae(layer.vae, layer.slice_shape, layer.latent, layer.hidden, seed=0)
            prefix = f"layers.{i}."
            own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            vae.load_state_dict(own, strict=True)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise VAEError(
                f"{where}: layer {i} of {CONFIG_FILE} does not describe its VAE in {WEIGHTS_FILE}: {exc}"
            ) from None
        used.update(prefix + k for k in own)
        vaes.append(vae)
    if extra := sorted(set(tensors) - used):
        raise VAEError(f"{where}: {WEIGHTS_FILE} holds tensors no layer names: {extra[:3]}")
    try:
        bank = WeightVAE(meta, vaes)
    except (KeyError, TypeError, ValueError) as exc:
        raise VAEError(f"{where}: {CONFIG_FILE} is malformed ({exc})") from None
    bank.path = folder
    return bank


def _new_vae(arch: str, slice_shape: tuple[int, ...], latent: int, hidden: int, seed: int) -> SliceVAE:
    """A fresh VAE, its init drawn from a forked RNG seeded with ``seed`` (the caller's random
    stream is left alone, and a layer's VAE starts the same in every process)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SLICE_VAES.build(arch, {"slice_shape": tuple(slice_shape), "latent": latent, "hidden": hidden})


# --- the method -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VAEConfig:
    """Config of the ``vae`` method: ``path`` of a trained weight VAE (``initium train vae``);
    ``seed`` of the prior samples; ``noise``: add the decoder's Gaussian noise to its mean (the
    model's full distribution); ``match_fan_in``: rescale slices by ``sqrt(fan_in_zoo / fan_in)``
    for layers wider or narrower than the zoo's."""

    path: str = ""
    seed: int = 0
    noise: bool = True
    match_fan_in: bool = False


@METHODS.register("vae", VAEConfig)
class VAEInit(Method):
    """Weight-VAE init: sample each layer's kernel slices / rows from per-layer VAEs of a model zoo."""

    name = "vae"

    def __init__(self, config: VAEConfig = VAEConfig()) -> None:
        self.config = config
        self.bank = load(config.path)  # a missing or malformed VAE fails here, before any work

    def validate(self, model: nn.Module, inputs: torch.Tensor | None = None) -> None:
        self.bank.check_model(model)

    def __call__(self, model: nn.Module, inputs: torch.Tensor | None = None) -> nn.Module:
        cfg = self.config
        self.info = self.bank.init(model, cfg.seed, noise=cfg.noise, match_fan_in=cfg.match_fan_in)
        return model


# --- the zoo-statistics baseline ----------------------------------------------------------------------


@dataclass(frozen=True)
class LayerStats(LayerPosition):
    """One layer position of a zoo's architecture (:class:`LayerPosition`, so the VAE's matching
    applies) and the statistics of its trained weights over the zoo's nets: ``mean`` and ``std`` of
    every weight of the layer, pooled over ``nets`` nets."""

    mean: float
    std: float
    nets: int


def zoo_stats(zoo: str | os.PathLike[str] | Zoo, arch: str | None = None) -> list[LayerStats]:
    """Per layer position, the mean and std of a zoo's trained weights (one architecture; every
    net whose file checks out; at least 2 nets, as for a VAE). Raises :class:`VAEError` otherwise."""
    try:
        store = zoo if isinstance(zoo, Zoo) else Zoo(zoo)
        entries = store.entries(arch=arch or None, check=True)
    except (OSError, ValueError) as exc:
        raise VAEError(f"zoo-stats path={str(zoo)!r}: {exc}") from None
    if len(entries) < 2:
        raise VAEError(f"zoo-stats: zoo {store.path} has {len(entries)} usable net(s) (arch={arch!r}); it needs >= 2")
    if len({(e.arch_spec, json.dumps(e.arch_config, sort_keys=True)) for e in entries}) > 1:
        raise VAEError(f"zoo-stats: zoo {store.path} holds several architectures; choose one with arch=SPEC")
    states = [store.state_dict(e) for e in entries]
    out = []
    for i, (name, kind, shape, depth) in enumerate(_layer_map(store.build_model(entries[0]))):
        w = torch.cat([st[name + ".weight"].double().flatten() for st in states])
        out.append(LayerStats(name, kind, shape, _slice_shape(kind, shape), i, depth, float(w.mean()),
                              float(w.std()), len(states)))  # fmt: skip
    return out


@dataclass(frozen=True)
class ZooStatsConfig:
    """Config of the ``zoo-stats`` method: ``path`` of a model zoo (``initium zoo build``), ``arch``
    to choose one architecture of it, ``seed`` of the draws."""

    path: str = ""
    arch: str = ""
    seed: int = 0


@METHODS.register("zoo-stats", ZooStatsConfig)
class ZooStatsInit(Method):
    """The VAE's baseline (Harder et al.'s "zoo statistics"): each matched layer's weights drawn
    i.i.d. from ``N(mean, std^2)`` of the zoo layer it is matched to (the ``vae`` method's
    matching: same name, else the same kind and slice shape at the nearest relative depth), from
    a CPU generator seeded by the run's seed and the layer's name. Unmatched layers, biases and
    normalisation layers keep their init; ``info`` says which zoo layer filled which layer."""

    name = "zoo-stats"

    def __init__(self, config: ZooStatsConfig = ZooStatsConfig()) -> None:
        self.config = config
        if not isinstance(config.path, str) or not config.path.strip():
            raise VAEError(f"zoo-stats needs path=ZOO, a model zoo made by `initium zoo build`; got {config.path!r}")
        self.layers = zoo_stats(config.path, config.arch or None)  # a bad zoo fails here, before any work

    def validate(self, model: nn.Module, inputs: torch.Tensor | None = None) -> None:
        _check_match(self.layers, model, f"zoo-stats: no layer of {type(model).__name__} matches the zoo"
                     f" {self.config.path}: it has")  # fmt: skip

    @torch.no_grad()
    def __call__(self, model: nn.Module, inputs: torch.Tensor | None = None) -> nn.Module:
        matches = _check_match(self.layers, model, f"zoo-stats: no layer of {type(model).__name__} matches the zoo"
                               f" {self.config.path}: it has")  # fmt: skip
        modules = dict(model.named_modules())
        filled: dict[str, dict[str, Any]] = {}
        for m in matches:
            if m.layer is None:
                continue
            weight, layer = modules[m.target].weight, self.layers[m.layer]
            gen = torch.Generator().manual_seed(_derive(self.config.seed, m.target))
            drawn = torch.randn(weight.shape, generator=gen, dtype=torch.float64) * layer.std + layer.mean
            weight.copy_(drawn.to(weight))
            filled[m.target] = {"zoo_layer": layer.name, "match": str(m.by), "mean": layer.mean, "std": layer.std}
        self.info = {
            "zoo": self.config.path, "nets": self.layers[0].nets, "filled": filled,
            "kept": [m.target for m in matches if m.layer is None],
        }  # fmt: skip
        return model


# --- training ---------------------------------------------------------------------------------------


@dataclass
class _Plan:
    """What :func:`train` does, decided before any training: the zoo's nets split by net, the
    layer map and each layer's slice count, and which rank trains which layer."""

    zoo: Zoo
    cfg: TrainConfig
    train: list[ZooEntry]
    val: list[ZooEntry]
    layers: list[tuple[str, str, tuple[int, ...], float]]
    meta: dict[str, Any]

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed run must share with the interrupted one to reuse its work: the zoo's
        content (not its path: a moved zoo is the same zoo), the split, the config, the layers."""
        return _fingerprint(self.meta) | {"layers": [n for n, *_ in self.layers]}

    def cost(self, index: int) -> int:
        """Training slices of layer ``index`` (its share of the work), before the drop."""
        _, kind, shape, _ = self.layers[index]
        return len(self.train) * (math.prod(shape[:2]) if kind == "conv" else shape[0])

    def assignment(self, world: int) -> list[list[int]]:
        """Layers per rank: largest first, each to the rank with the least work so far (ties: the
        lower rank); deterministic, so every rank computes the same deal."""
        loads, deal = [0] * world, [[] for _ in range(world)]
        for i in sorted(range(len(self.layers)), key=lambda i: (-self.cost(i), i)):
            r = min(range(world), key=lambda r: (loads[r], r))
            loads[r] += self.cost(i)
            deal[r].append(i)
        return [sorted(d) for d in deal]


def _fingerprint(meta: Mapping[str, Any]) -> dict[str, Any]:
    zoo = {k: v for k, v in dict(meta.get("zoo") or {}).items() if k != "path"}
    return {"zoo": zoo, "training": meta.get("training")}


def _plan(zoo: str | os.PathLike[str] | Zoo, cfg: TrainConfig, arch: str | None, min_acc: float | None) -> _Plan:
    """Check the zoo and choose its nets (raises before any training)."""
    store = zoo if isinstance(zoo, Zoo) else Zoo(zoo)
    entries = store.entries(arch=arch, min_acc=min_acc, check=True)
    picked = "" if arch is None and min_acc is None else f" (arch={arch!r}, min_acc={min_acc!r})"
    if len(entries) < 2:
        raise VAEError(
            f"training a weight VAE needs at least 2 nets in the zoo (one to train on, one to validate on);"
            f" zoo {store.path} has {len(entries)} usable net(s){picked}; build more: initium zoo build --count N"
        )
    families = sorted({(e.arch_spec, json.dumps(e.arch_config, sort_keys=True)) for e in entries})
    if len(families) > 1:
        names = ", ".join(sorted({spec for spec, _ in families}))
        raise VAEError(f"zoo {store.path} holds nets of several architectures ({names}); choose one with --arch SPEC")
    entries = sorted(entries, key=lambda e: (e.family, e.seed))
    n_val = min(len(entries) - 1, max(1, round(cfg.val_fraction * len(entries))))
    order = torch.randperm(len(entries), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    val = sorted((entries[i] for i in order[:n_val]), key=lambda e: (e.family, e.seed))
    train_ = sorted((entries[i] for i in order[n_val:]), key=lambda e: (e.family, e.seed))
    layers = _layer_map(store.build_model(entries[0]))
    if not layers:
        raise VAEError(f"zoo {store.path}: {entries[0].arch_spec} has no Linear or ConvNd layer to model")
    first = entries[0]
    meta = {
        "format": FORMAT, "version": VERSION,
        "zoo": {
            "path": str(store.path.resolve()), "digest": store.digest(), "arch": first.arch,
            "arch_spec": first.arch_spec, "arch_config": first.arch_config, "dataset": first.dataset,
            "train_nets": [e.file for e in train_], "val_nets": [e.file for e in val],
            "filter": {"arch": arch, "min_acc": min_acc},
        },
        "training": dataclasses.asdict(cfg), "layers": [],
        "initium_version": __version__, "torch_version": torch.__version__,
    }  # fmt: skip
    return _Plan(store, cfg, train_, val, layers, json.loads(json.dumps(meta)))


def _groups(
    plan: _Plan, states: Mapping[str, Mapping[str, torch.Tensor]], index: int, nets: list[ZooEntry]
) -> torch.Tensor:
    name, kind, _, _ = plan.layers[index]
    parts = [_drop_lowest(slices(states[e.file][name + ".weight"].float(), kind), plan.cfg.drop) for e in nets]
    return torch.cat(parts)


@torch.no_grad()
def _mean_loss(vae: SliceVAE, x: torch.Tensor, seed: int) -> float:
    """The mean ``-ELBO`` per slice of ``x``, its posterior noise from a fixed seed: the same
    number for the same VAE, so the curve shows the VAE's change, not the noise's."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    total = sum(float(vae.loss(x[i : i + _VAL_CHUNK], gen).sum()) for i in range(0, len(x), _VAL_CHUNK))
    return total / len(x)


def _train_layer(
    plan: _Plan,
    index: int,
    train_x: torch.Tensor,
    val_x: torch.Tensor,
    device: torch.device,
    work: Path,
    ddp: distributed.Rank | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train the VAE of layer ``index`` through the engine (minibatch epochs, Adam, cosine decay,
    a checkpoint every epoch); return its tensors and its layer-map entry.

    ``ddp`` (this rank, under data parallelism): the engine trains the one VAE on every rank
    (``fit(data_parallel=True)``). The shared generator then draws only what every rank draws alike
    (the epoch's order, the whole-set measurement's noise), so it stays the same everywhere; the
    reparametrisation noise of a rank's share comes from a generator of its own, reseeded from
    (seed, layer, rank, epoch) at each epoch, so a resumed epoch draws the same noise again with
    nothing more in the checkpoint."""
    cfg = plan.cfg
    name, kind, shape, depth = plan.layers[index]
    slice_shape = _slice_shape(kind, shape)
    arch = slice_vae_for(slice_shape)
    seed = _derive(cfg.seed, name)
    # one RMS for the layer: the VAE sees unit-scale slices whatever the layer's init scale was
    scale = float(train_x.pow(2).mean().sqrt()) or 1.0
    shift = math.prod(slice_shape) * math.log(scale)  # nats per slice: L_weights = L_scaled + d log(scale)
    vae = _new_vae(arch, slice_shape, cfg.latent, cfg.hidden, seed).to(device)
    x, v = (train_x / scale).to(device), (val_x / scale).to(device)
    # one generator for the batches' order and the reparametrisation noise: the checkpoint keeps its state
    gen = torch.Generator(device=device).manual_seed(seed)
    noise = torch.Generator(device=device) if ddp is not None else None
    val_curve: list[float] = []

    def forward_loss(model: nn.Module, xb: torch.Tensor, _target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        training = noise is not None and torch.is_grad_enabled()  # a rank's share, not the whole-set measurement
        losses = model.loss(xb, noise if training else gen)
        return losses.mean(), losses

    def on_eval(epoch: int, _pred: torch.Tensor) -> None:
        val_curve.append(_mean_loss(vae, v, seed + 1) + shift)
        if noise is not None and ddp is not None:
            noise.manual_seed(_derive(seed, f"{name}/rank{ddp.rank}/epoch{epoch}"))

    def restore(extra: Any) -> None:
        val_curve[:] = [float(t) for t in extra["val"]]

    ckpt = Checkpoint(work / f"ckpt-{index:04d}", extra=lambda: {"val": list(val_curve)}, restore=restore)
    try:
        history = fit(
            vae, Epochs(x, x, cfg.batch_size, generator=gen), steps=cfg.epochs, lr=cfg.lr,
            forward_loss=forward_loss, schedule=cosine, evaluate_at=range(cfg.epochs + 1), on_eval=on_eval,
            phase="vae", checkpoint=ckpt, data_parallel=ddp is not None,
        )  # fmt: skip
    except TrainingDiverged as exc:
        raise VAEError(f"the VAE of layer {name} diverged at epoch {exc.step}; lower the learning rate (--lr)") from exc
    vae.eval()
    entry = {
        "name": name, "kind": kind, "shape": list(shape), "slice_shape": list(slice_shape), "position": index,
        "depth": _json_number(depth), "vae": arch, "latent": cfg.latent, "hidden": cfg.hidden,
        "scale": _json_number(scale), "train_slices": len(x), "val_slices": len(v),
        "train_loss": [_json_number(t + shift) for t in history.tolist()],
        "val_loss": [_json_number(t) for t in val_curve],
    }  # fmt: skip
    log.info("VAE of %s: validation loss %.3f -> %.3f nats/slice", name, val_curve[0], val_curve[-1])
    return {k: t.detach().cpu() for k, t in vae.state_dict().items()}, entry


def _layer_files(work: Path, index: int) -> tuple[Path, Path]:
    return work / f"layer-{index:04d}.safetensors", work / f"layer-{index:04d}.json"


def _finished(work: Path, index: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """A layer a previous (interrupted) run finished, if its files are whole."""
    tensors, meta = _layer_files(work, index)
    try:
        entry = json.loads(meta.read_text())
        data = tensors.read_bytes()
        if entry.get("sha256") != sha256(data):
            return None
        return load_tensors(data), entry["layer"]
    except (OSError, ValueError, KeyError, SafetensorError, AttributeError):
        return None


def _check_out(out: Path, fingerprint: Mapping[str, Any]) -> bool:
    """Whether ``out`` already holds this very VAE (finished); raise if it holds anything else."""
    if out.exists() and not out.is_dir():
        raise VAEError(f"--out {out} is a file, not a folder for a weight VAE")
    if (out / CONFIG_FILE).exists():
        if _fingerprint(load(out).meta) != {k: fingerprint[k] for k in ("zoo", "training")}:
            raise VAEError(
                f"--out {out} holds a weight VAE of another zoo or training config; give a new folder or remove it"
            )
        return True
    if out.is_dir() and any(p.name != WORK for p in out.iterdir()):
        raise VAEError(f"--out {out} is not a weight VAE (no {CONFIG_FILE}) and not empty; give a new or empty folder")
    return False


def _prepare_work(work: Path, fingerprint: Mapping[str, Any]) -> None:
    """Rank 0: keep ``.work`` if an interrupted run of the same training left it, else start afresh."""
    plan_file = work / _PLAN
    with contextlib.suppress(OSError, ValueError):
        if json.loads(plan_file.read_text()) == json.loads(json.dumps(fingerprint)):
            log.info("resuming the weight VAE training in %s", work.parent)
            return
    if work.exists():
        log.info("%s: its work folder is of another training; starting afresh", work.parent)
        shutil.rmtree(work)
    work.mkdir(parents=True)
    atomic_write_json(plan_file, fingerprint)


@contextlib.contextmanager
def _labelled(progress: ProgressFn | None, label: str) -> Iterator[None]:
    """The engine's events of one layer's training, labelled with the layer, to ``progress``."""
    if progress is None:
        yield
        return
    with progress_hook(lambda e: progress(dataclasses.replace(e, label=label))):
        yield


def _collectively(fn: Any, me: distributed.Rank) -> Any:
    """Run ``fn()`` on this rank and learn whether every rank succeeded: a failure anywhere
    stops all of them (instead of leaving the others waiting at a barrier)."""
    error: BaseException | None = None
    result = None
    try:
        result = fn()
    except Exception as exc:  # re-raised below, once every rank knows
        error = exc
    if not distributed.all_ok(error is None):
        if error is not None:
            raise error
        raise VAEError(f"rank {me.rank}: another rank failed in the weight VAE training (see its error)")
    return result


def train(
    zoo: str | os.PathLike[str] | Zoo,
    out: str | os.PathLike[str],
    *,
    epochs: int = TrainConfig.epochs,
    batch_size: int = TrainConfig.batch_size,
    lr: float = TrainConfig.lr,
    latent: int = TrainConfig.latent,
    hidden: int = TrainConfig.hidden,
    drop: float = TrainConfig.drop,
    val_fraction: float = TrainConfig.val_fraction,
    seed: int = TrainConfig.seed,
    arch: str | None = None,
    min_acc: float | None = None,
    device: str | None = None,
    progress: ProgressFn | None = None,
    ddp: bool = False,
) -> WeightVAE:
    """Train one VAE per layer position on the weights of the zoo's nets and save them in the
    folder ``out`` (``vae.safetensors`` + ``vae.json``); return them (:class:`WeightVAE`).

    ``arch`` / ``min_acc`` choose the zoo's nets (one architecture; at least 2 nets). The options
    are :class:`TrainConfig`'s. ``device``: where to train (default: CUDA when present; under
    torchrun each rank's own GPU). ``progress`` receives the engine's events (phase ``"vae"``,
    labelled with the layer). Everything is checked before any training; a finished ``out`` of the
    same zoo and config is returned as it is, and an interrupted one resumes (module docstring).
    Under torchrun the layers are shared out over the ranks (the default); with ``ddp`` every rank
    trains every layer's VAE together instead, under DistributedDataParallel (each rank a share of
    every minibatch; rank 0 writes the files). Every rank returns the result. Sharding stays the
    default because it is faster for these tiny VAEs (a few thousand parameters to 49 k, batches of
    128 slices): DDP exchanges every gradient after every minibatch, whereas whole layers per rank
    need no communication, and sharding gives the one-process VAEs bit for bit while DDP follows
    them only up to float rounding and its own reparametrisation noise. ``ddp`` is for layers too
    large for one rank, or more ranks than layers. Without torchrun ``ddp`` changes nothing.
    """
    cfg = TrainConfig(epochs, batch_size, lr, latent, hidden, drop, val_fraction, seed)
    cfg.check()
    out = Path(out)
    joined = not distributed.is_joined()
    me = distributed.init()
    try:
        plan = _collectively(lambda: _plan(zoo, cfg, arch, min_acc), me)
        parallel = me if ddp and me.is_distributed else None
        if parallel is not None:
            plan.meta["data_parallel"] = me.world_size  # recorded in vae.json: how these VAEs were trained
        fingerprint = plan.fingerprint() | ({"data_parallel": me.world_size} if parallel is not None else {})
        done = _collectively(lambda: _check_out(out, fingerprint), me)
        dev = _collectively(lambda: distributed.device_for(me, device), me)
        distributed.barrier()  # every rank has looked at out before rank 0 writes to it
        if done:
            return load(out)
        work = out / WORK
        _collectively(lambda: _prepare_work(work, fingerprint) if me.is_main else None, me)
        mine = list(range(len(plan.layers))) if parallel is not None else plan.assignment(me.world_size)[me.rank]
        _collectively(lambda: _train_mine(plan, mine, dev, work, progress, parallel), me)
        _collectively(lambda: _assemble(plan, out, work) if me.is_main else None, me)
        distributed.barrier()
        return load(out)
    finally:
        if joined:
            distributed.shutdown()


def _train_mine(
    plan: _Plan,
    mine: Sequence[int],
    device: torch.device,
    work: Path,
    progress: ProgressFn | None,
    ddp: distributed.Rank | None = None,
) -> None:
    """Train this rank's layers that no earlier run finished; each layer's VAE is written to
    ``work`` (tensors, then the JSON with their sha256) as soon as it is trained. Under ``ddp``
    (data parallelism) every rank trains every layer with the others and rank 0 alone writes."""
    todo = [i for i in mine if _finished(work, i) is None]
    if ddp is not None:
        distributed.barrier()  # every rank has chosen its layers before rank 0 writes the first
    if not todo:
        return
    states = {e.file: plan.zoo.state_dict(e) for e in [*plan.train, *plan.val]}  # sha256-checked, safetensors
    for i in todo:
        name = plan.layers[i][0]
        train_x, val_x = _groups(plan, states, i, plan.train), _groups(plan, states, i, plan.val)
        with _labelled(progress, name):
            tensors, entry = _train_layer(plan, i, train_x, val_x, device, work, ddp)
        if ddp is not None and not ddp.is_main:
            continue
        data = tensors_to_bytes(tensors)
        path, meta = _layer_files(work, i)
        atomic_write_bytes(path, data)
        atomic_write_json(meta, {"sha256": sha256(data), "layer": entry})
        shutil.rmtree(work / f"ckpt-{i:04d}", ignore_errors=True)
        if progress is not None:
            # a finished layer is a finished "run" of this job: the CLI's overall bar counts them
            progress(Progress("sweep", len(list(work.glob("layer-*.json"))), len(plan.layers), label=name))


def _assemble(plan: _Plan, out: Path, work: Path) -> None:
    """Rank 0, after every rank: the layers' VAEs into ``vae.safetensors`` + ``vae.json``; then
    the work folder goes."""
    vaes, entries = [], []
    for i in range(len(plan.layers)):
        finished = _finished(work, i)
        if finished is None:
            raise VAEError(f"the VAE of layer {plan.layers[i][0]} is missing from {work} (a rank did not finish it)")
        tensors, entry = finished
        vae = _new_vae(entry["vae"], tuple(entry["slice_shape"]), entry["latent"], entry["hidden"], seed=0)
        vae.load_state_dict(tensors)
        vaes.append(vae)
        entries.append(entry)
    bank = WeightVAE({**plan.meta, "layers": entries}, vaes)
    bank.save(out)
    shutil.rmtree(work, ignore_errors=True)
