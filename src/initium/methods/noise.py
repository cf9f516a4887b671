"""Target-noise pretraining (Wang & Alkhalifah 2026, arXiv 2602.06585).

Before training on the real signal, fit the model for ``steps`` Adam steps to one fixed noise
target at the very inputs it will be trained on:

    theta_0 = argmin_theta || f_theta(x) - eps ||^2,   eps ~ noise source (fixed),

and hand ``theta_0`` over as the initialisation. A white-noise target has energy at every
frequency, so the fitted network has already learnt to represent high frequencies at ``x``; the
low-frequency bias of SIREN, Fourier-feature and positional-encoding MLPs and of deep-image-prior
nets is much weaker from there on. ``resample=True`` draws fresh noise every step instead (Vyas
et al. 2026 report, and our benchmark confirms, that a fixed target is what works).

``fraction`` pretrains on a share of the inputs only (:func:`pretrain_inputs`): a coarser grid of
the same extent for coordinates on a regular grid, a seeded random subset of other coordinate
sets, a seeded crop of a convolutional net's latent. A step costs about ``fraction`` of a full
one, and the weights carry over because what is learnt is a function of the coordinates (or, for
a convolutional net, a set of translation-equivariant filters), not of the sample points.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from ..cache import InitCache, probe_forward
from ..nn import PEMLP, DIPNet, FourierMLP, Siren
from ..noise import NOISES, NoiseSource, grid_shape, sample_noise
from ..train import fit
from ._base import METHODS, Method

__all__ = ["BUDGETS", "Budget", "NoiseConfig", "NoisePretrain", "default_budget", "noise_pretrain", "pretrain_inputs"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Budget:
    """How much pretraining: ``steps`` Adam steps on ``fraction`` of the inputs."""

    fraction: float
    steps: int


# The default budget per model class, chosen by ``benchmarks/noise_budget.py`` on camera and
# astronaut, 3 seeds (BENCHMARKS.md, "Noise pretraining budget"): of fraction {1, 1/4, 1/9, 1/16}
# x steps {100, 250, 500}, the setting that reached 35 dB soonest, pretraining included (counted
# in the run's own training steps, which the machine's changing load does not move), on the CPU
# at 96 px; the DIP net: the denoising peak. The ratios below are to the default init's cost.
BUDGETS: dict[type[nn.Module], Budget] = {
    Siren: Budget(0.25, 250),  # 35 dB at 0.47x / 0.39x on camera / astronaut (wall clock 0.42x / 0.34x)
    FourierMLP: Budget(1 / 16, 100),  # 0.62x / 0.72x (wall clock 0.69x / 0.77x)
    # PEMLP: 0.67x / 0.97x (wall clock 0.67x / 1.05x), mean 0.82x, a hair ahead of the whole grid x 100 (0.84x);
    # neither pays on the images not used to choose (mean 1.01x / 0.98x); kept, costing ~6 training steps.
    PEMLP: Budget(1 / 16, 100),
    # The DIP net (paper's net, 128 px, one seed): the whole latent x 500 brings the peak to 0.65x of
    # the default's steps but costs as much (1.02x uncached); a quarter crop x 250 gave 0.70x (0.80x),
    # one run, too few to change the default on (at 64 px with a small net no crop paid). Kept.
    DIPNet: Budget(1.0, 500),
}
FALLBACK = Budget(1.0, 500)  # a model not measured: the whole inputs, the paper's few hundred steps


def default_budget(model: nn.Module) -> Budget:
    """The :data:`BUDGETS` entry of ``model``'s class (or the nearest base class in it), else
    :data:`FALLBACK`."""
    for cls in type(model).__mro__:
        if cls in BUDGETS:
            return BUDGETS[cls]
    return FALLBACK


@dataclass(frozen=True)
class NoiseConfig:
    """Config of :func:`noise_pretrain`; ``noise`` is a spec of ``initium.noise.NOISES``
    (``"gaussian"``, ``"uniform"``, ``"spectral(alpha=1)"``); ``fraction``: the share of the inputs
    pretrained on (:func:`pretrain_inputs`). ``steps`` or ``fraction`` left ``None`` take the
    model's :func:`default_budget`."""

    steps: int | None = None
    lr: float | None = None
    noise: str = "gaussian"
    resample: bool = False
    seed: int = 0
    cache: bool = True
    target_range: tuple[float, float] = (0.0, 1.0)
    fraction: float | None = None


def _noise_source(spec: str) -> NoiseSource:
    parts = NOISES.parse(spec)
    if len(parts) != 1:
        raise ValueError(f"noise takes one noise kind, got {spec!r}")
    name, kwargs = parts[0]
    return NOISES.build(name, kwargs)


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"noise_pretrain: model must be a torch.nn.Module instance, got {type(model).__name__} {model!r:.60};"
            " build the network first (e.g. initium.nn.Siren(2, 3)) and pass it"
        )
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(
            f"noise_pretrain: {type(model).__name__} has no trainable parameters (none with requires_grad);"
            " there is nothing to pretrain: pass the network whose weights should learn the noise"
        )


def _probe(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Run the model once on ``inputs`` (:func:`probe_forward`: no gradient, no trace) and check
    that it gives what pretraining fits: any model, not only those with an ``in_features``."""
    shape = tuple(inputs.shape)
    try:
        out = probe_forward(model, inputs)
    except torch.OutOfMemoryError:
        raise  # not a wrong input: the caller must see it as it is
    except Exception as exc:  # whatever the model raises on inputs it cannot take
        raise ValueError(
            f"noise_pretrain: {type(model).__name__} cannot run on inputs of shape {shape}"
            f" ({type(exc).__name__}: {exc}); pass the inputs the model will be trained on: coordinates"
            " (N, in_features) for a coordinate network (initium.tasks.grid(H, W)), the fixed latent z for a"
            " deep-image-prior net"
        ) from exc
    if not isinstance(out, torch.Tensor) or not out.is_floating_point():
        raise TypeError(
            f"noise_pretrain: {type(model).__name__}(inputs) must return one floating-point tensor to fit the"
            f" noise to, got {type(out).__name__}; wrap the model so that its forward returns the prediction"
        )
    if out.numel() == 0:
        raise ValueError(f"noise_pretrain: {type(model).__name__}(inputs) is empty (shape {tuple(out.shape)})")
    if not torch.isfinite(out).all():
        raise ValueError(
            f"noise_pretrain: {type(model).__name__}(inputs) is not finite before any pretraining step;"
            " its initial weights or the inputs' scale overflow (the learning rate plays no part yet)"
        )
    return out


def _check_inputs(model: nn.Module, inputs: torch.Tensor) -> None:
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
        raise TypeError(f"inputs must be a floating-point torch.Tensor, got {type(inputs).__name__}")
    expected = getattr(model, "in_features", None)
    if isinstance(expected, int) and (inputs.ndim != 2 or inputs.shape[1] != expected):
        raise ValueError(
            f"inputs must have shape (N, {expected}) for {type(model).__name__}(in_features={expected}),"
            f" got {tuple(inputs.shape)}; build coordinates with initium.tasks.grid(H, W)"
        )
    channels = getattr(model, "in_channels", None)  # an image net (DIPNet): a (B, C, H, W) latent
    if isinstance(channels, int) and (inputs.ndim != 4 or inputs.shape[1] != channels):
        raise ValueError(
            f"inputs must have shape (B, {channels}, H, W) for {type(model).__name__}(in_channels={channels}),"
            f" got {tuple(inputs.shape)}; pass the fixed latent z the net will be trained on"
        )
    if inputs.numel() == 0:
        raise ValueError("inputs is empty")
    if not torch.isfinite(inputs).all():
        raise ValueError("inputs contain NaN or infinite values")
    param = next(model.parameters(), None)
    if param is not None and param.device != inputs.device:
        raise ValueError(f"inputs are on {inputs.device} but the model is on {param.device}; move one of them")


def _check_config(cfg: NoiseConfig) -> NoiseSource:
    if cfg.steps is not None and (not isinstance(cfg.steps, int) or isinstance(cfg.steps, bool) or cfg.steps < 0):
        raise ValueError(f"steps must be an int >= 0 (or None for the model's default budget), got {cfg.steps!r}")
    if cfg.lr is not None and not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise ValueError(f"lr must be a finite number > 0 (or None for the model's default), got {cfg.lr!r}")
    _check_range(cfg.target_range)
    if cfg.fraction is not None:
        _check_fraction(cfg.fraction)
    return _noise_source(cfg.noise)


def _check_fraction(fraction: object) -> None:
    ok = isinstance(fraction, numbers.Real) and not isinstance(fraction, bool)
    if not ok or not (math.isfinite(fraction) and 0 < fraction <= 1):  # type: ignore[arg-type]
        raise ValueError(
            "fraction must be a number in (0, 1]: the share of the inputs to pretrain on (1: all of them,"
            f" 0.25: half the points per axis of a 2-D grid, or a quarter of a latent's area); got {fraction!r}"
        )


def pretrain_inputs(model: nn.Module, inputs: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """The share ``fraction`` of ``inputs`` that noise pretraining runs on (``inputs`` itself at 1).

    - **Coordinates on a regular grid** ``(N, d)`` (:func:`initium.noise.grid_shape`, e.g.
      :func:`initium.tasks.grid`): the regular grid of the same extent with
      ``m_i = round(n_i * fraction**(1/d))`` points on axis ``i`` (the square root per axis in 2-D,
      the cube root in 3-D), ``linspace(min_i, max_i, m_i)``, rows in 'ij' order. A coordinate net
      is a function of continuous coordinates, so weights fitted on the coarse grid apply unchanged
      to the fine one; the grid must span the same domain (a corner of it would leave the rest
      unpretrained). Where ``n_i - 1`` is a multiple of ``m_i - 1`` it is a strided subset of the
      inputs (97 -> 49 points: every other one). Fewer than 2 points on an axis are refused.
    - **Any other coordinate set** ``(N, d)``: a random subset of ``round(fraction * N)`` rows, drawn
      with ``seed`` (a CPU generator: the same rows on every device), in their original order.
    - **An image net's latent** ``(B, C, *spatial)`` (DIP): a crop of ``fraction`` of the area, the
      side ``round(n * fraction**(1/k))`` over ``k`` spatial axes, rounded to the nearest multiple of
      ``model.side_multiple`` where the net has one (:class:`~initium.nn.DIPNet`: ``2**levels``), at a
      position drawn with ``seed``. The net's convolutions are translation-equivariant and the latent
      is i.i.d. noise, so a crop is a smaller sample of the same input; a crop below
      ``model.min_side`` is refused.
    """
    _check_fraction(fraction)
    if fraction == 1:
        return inputs
    if inputs.ndim == 2:
        shape = grid_shape(inputs)
        if shape is not None:
            return _subgrid(inputs, shape, fraction)
        count = round(fraction * inputs.shape[0])
        if count < 1:
            raise ValueError(
                f"fraction={fraction} of {inputs.shape[0]} inputs leaves none to pretrain on;"
                f" use fraction >= {1 / inputs.shape[0]:.3g}"
            )
        gen = torch.Generator().manual_seed(seed)
        rows = torch.randperm(inputs.shape[0], generator=gen)[:count].sort().values
        return inputs[rows.to(inputs.device)]
    if inputs.ndim >= 3:
        return _crop(model, inputs, fraction, seed)
    raise ValueError(
        f"fraction={fraction} needs coordinates (N, d) or a latent (B, C, H, W), got inputs of shape"
        f" {tuple(inputs.shape)}; pass fraction=1"
    )


def _subgrid(inputs: torch.Tensor, shape: tuple[int, ...], fraction: float) -> torch.Tensor:
    d = len(shape)
    sizes = tuple(round(n * fraction ** (1 / d)) for n in shape)
    if min(sizes) < 2:
        least = max((2 / n) ** d for n in shape)  # n * f**(1/d) >= 2 on every axis
        raise ValueError(
            f"fraction={fraction} leaves a {'x'.join(map(str, sizes))} grid of the {'x'.join(map(str, shape))}"
            f" input grid; a pretraining grid needs at least 2 points per axis to span the same extent:"
            f" use fraction >= {least:.3g}"
        )
    if sizes == shape:
        return inputs
    axes = [
        torch.linspace(float(inputs[:, i].min()), float(inputs[:, i].max()), m, dtype=inputs.dtype)
        for i, m in enumerate(sizes)
    ]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, d).to(inputs.device)


def _crop(model: nn.Module, inputs: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    spatial = tuple(inputs.shape[2:])
    k = len(spatial)
    multiple = getattr(model, "side_multiple", 1)
    multiple = multiple if isinstance(multiple, int) and multiple >= 1 else 1
    smallest = getattr(model, "min_side", 1)
    smallest = smallest if isinstance(smallest, int) and smallest >= 1 else 1
    sizes = tuple(min(n, round(n * fraction ** (1 / k) / multiple) * multiple) for n in spatial)
    if min(sizes) < max(smallest, 1):
        least = max(max(smallest, 1) / n for n in spatial) ** k
        raise ValueError(
            f"fraction={fraction} crops the {'x'.join(map(str, spatial))} latent to {'x'.join(map(str, sizes))},"
            f" smaller than the smallest input {type(model).__name__} takes ({smallest} per side"
            + (f", a multiple of {multiple}" if multiple > 1 else "")
            + f"); use fraction >= {min(1.0, least):.3g}, or fraction=1"
        )
    if sizes == spatial:
        return inputs
    gen = torch.Generator().manual_seed(seed)
    starts = [int(torch.randint(0, n - m + 1, (1,), generator=gen)) for n, m in zip(spatial, sizes, strict=True)]
    index = (slice(None), slice(None), *(slice(s, s + m) for s, m in zip(starts, sizes, strict=True)))
    return inputs[index].contiguous()


def _check_range(target_range: object) -> None:
    """The range is the signal's: the noise is drawn in it, so it must be two finite numbers."""
    ok = isinstance(target_range, (tuple, list)) and len(target_range) == 2
    ok = ok and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in target_range)
    if not ok or not all(math.isfinite(v) for v in target_range) or not target_range[1] > target_range[0]:
        raise ValueError(
            "target_range must be two finite numbers (low, high) with high > low: the range of the signal the"
            f" model will be trained on, e.g. (0, 1) for an image or (-1, 1); got {target_range!r}"
        )


def _spatial(source: NoiseSource, inputs: torch.Tensor, out_shape: torch.Size) -> tuple[int, ...] | None:
    """The output's spatial grid: trailing dims of an image output, the coordinate grid otherwise."""
    if len(out_shape) >= 3:
        return tuple(out_shape[2:])
    return grid_shape(inputs) if source.needs_grid else None


def noise_pretrain(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    steps: int | None = None,
    lr: float | None = None,
    noise: str = "gaussian",
    resample: bool = False,
    seed: int = 0,
    cache: bool | InitCache = True,
    target_range: tuple[float, float] = (0.0, 1.0),
    fraction: float | None = None,
) -> nn.Module:
    """Fit ``model`` to a fixed noise target at ``inputs`` for ``steps`` Adam steps, in place.

    ``fraction < 1`` fits the noise at a share of the inputs only (:func:`pretrain_inputs`): on a
    regular grid of ``n_1 x ... x n_d`` points, the grid of the same extent with
    ``round(n_i * fraction**(1/d))`` points per axis (``fraction=0.25`` on 96 x 96: 48 x 48); on
    scattered coordinates a seeded random subset of ``round(fraction * N)``; on a DIP latent a
    seeded crop of ``fraction`` of the area. A pretraining step then costs about ``fraction`` of a
    full one. Why it still works: white noise on the coarser grid already holds every frequency up
    to that grid's Nyquist limit, and a coordinate net is a function of continuous coordinates, so
    what it learns there (high-frequency features spread over the whole domain) is what speeds up
    training on the fine grid; a convolutional net learns translation-equivariant filters, the same
    on a crop as on the whole latent. The gain per step is smaller than on the full inputs, the
    cost per step much smaller (``benchmarks/noise_budget.py``, BENCHMARKS.md).

    Args:
        model: any module; its current weights are the starting point.
        inputs: what the model will be trained on: coordinates ``(N, in_features)`` for an INR,
            the fixed latent for a deep-image-prior net.
        steps: pretraining steps (paper: a few hundred); ``None``: the model's
            :func:`default_budget` (measured per architecture, :data:`BUDGETS`; 500 for others).
        lr: Adam learning rate; ``None`` uses ``model.default_lr`` (SIREN 1e-4, Fourier/PE MLPs
            1e-3) or 1e-4.
        noise: a noise spec: ``"gaussian"`` (white, matched to ``target_range``), ``"uniform"``,
            ``"spectral(alpha=2)"`` (power ~ 1/f^alpha over the coordinate grid).
        resample: draw fresh noise every step instead of one fixed target.
        seed: seeds the noise (a CPU generator: same target on every device).
        cache: look the result up in / store it to the init cache (``True``: ``$INITIUM_CACHE``;
            or an :class:`~initium.cache.InitCache`). A hit loads bit-identical weights and
            runs no training step (one forward without gradient checks and fingerprints the
            model). A cache folder that cannot be written still serves hits; a miss is then
            computed and not stored, with a warning.
        target_range: the range of the signal the model will be trained on.
        fraction: the share of ``inputs`` to pretrain on, in (0, 1]; see above. ``None``: the
            model's :func:`default_budget` (1 for a model not in :data:`BUDGETS`).

    Returns:
        ``model``, pretrained.
    """
    _check_range(target_range)  # before the tuple() below can fail on it with a message of its own
    cfg = NoiseConfig(steps, lr, noise, resample, seed, bool(cache), tuple(float(v) for v in target_range), fraction)
    NoisePretrain(cfg, store=cache if isinstance(cache, InitCache) else None)(model, inputs)
    return model


@METHODS.register("noise", NoiseConfig)
class NoisePretrain(Method):
    """Target-noise pretraining: fit a fixed noise target at the training inputs first."""

    name = "noise"

    def __init__(self, config: NoiseConfig = NoiseConfig(), store: InitCache | None = None) -> None:
        self.config = config
        self.source = _check_config(config)
        self.store = store or (InitCache() if config.cache else None)

    def validate(self, model: nn.Module, inputs: torch.Tensor | None = None) -> None:
        self._check(model, inputs)

    def resolve(self, model: nn.Module, inputs: torch.Tensor | None = None) -> NoiseConfig:
        """The config with ``steps`` and ``fraction`` filled from ``model``'s :func:`default_budget`
        where they are ``None``: what runs, and what the cache key holds. A default fraction that
        ``inputs`` are too small for (fewer than 2 grid points per axis, a crop below the net's
        smallest input) falls back to 1, the whole inputs; only a fraction asked for is refused."""
        budget = default_budget(model)
        cfg = self.config
        fraction = budget.fraction if cfg.fraction is None else cfg.fraction
        if cfg.fraction is None and fraction < 1 and inputs is not None:
            try:
                pretrain_inputs(model, inputs, fraction, cfg.seed)
            except ValueError:
                fraction = 1.0
        return dataclasses.replace(cfg, steps=budget.steps if cfg.steps is None else cfg.steps, fraction=fraction)

    def _check(self, model: nn.Module, inputs: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Everything :meth:`validate` promises; returns the inputs pretraining runs on (the
        ``fraction`` of them) and the model's output there (the probe)."""
        _check_model(model)
        if inputs is None:
            raise ValueError("noise pretraining needs the inputs the model will be trained on")
        _check_inputs(model, inputs)
        out = _probe(model, inputs)
        fraction = self.resolve(model, inputs).fraction
        assert fraction is not None
        used = pretrain_inputs(model, inputs, fraction, self.config.seed)
        if used is not inputs:
            out = _probe(model, used)
            inputs = used
        if self.source.needs_grid and _spatial(self.source, inputs, out.shape) is None:
            raise ValueError(
                f"noise {self.config.noise!r} needs inputs on a regular grid (initium.tasks.grid);"
                " use noise=gaussian or noise=uniform for scattered inputs"
            )
        return inputs, out

    def __call__(self, model: nn.Module, inputs: torch.Tensor | None = None) -> nn.Module:
        # From here on ``inputs`` are those pretraining runs on: the cache key holds them, not the
        # whole set (two sets with the same fraction of them share the pretrained init)
        given = inputs
        inputs, out = self._check(model, given)
        cfg = self.resolve(model, given)
        lr = cfg.lr if cfg.lr is not None else float(getattr(model, "default_lr", 1e-4))
        record = {"method": self.name, **dataclasses.asdict(cfg), "lr": lr, "cache": None}
        store = self.store
        key = InitCache.key(model, inputs, record, outputs=out) if store is not None else None
        self.info = {"cache": "off" if key is None else "miss", "steps": cfg.steps, "fraction": cfg.fraction}
        if store is not None and key is not None:
            if (state := store.load(key, like=model.state_dict())) is not None:
                model.load_state_dict(state)
                log.info("noise pretraining: cache hit %s", key[:12])
                self.info["cache"] = "hit"
                return model
            if (why := store.unwritable()) is not None:  # a read-only cache still served its hits above
                warnings.warn(
                    f"initium cache folder {str(store.root)!r} is not writable ({why}): pretraining without"
                    " storing the result; set INITIUM_CACHE to a writable folder, or pass cache=False",
                    RuntimeWarning,
                    stacklevel=2,
                )
                store = None

        out_shape = out.shape
        spatial = _spatial(self.source, inputs, out_shape)
        gen = torch.Generator().manual_seed(cfg.seed)

        def draw() -> torch.Tensor:
            return sample_noise(
                self.source, tuple(out_shape), target_range=cfg.target_range, generator=gen, spatial=spatial
            ).to(inputs.device)

        target = (lambda _step: draw()) if cfg.resample else draw()
        fit(model, inputs, target, steps=cfg.steps, lr=lr, phase="noise")
        if store is not None and key is not None:
            try:
                store.save(key, model.state_dict(), {"config": record, "model": type(model).__name__})
            except OSError as exc:  # the model is pretrained: only the entry is lost, not the work
                warnings.warn(
                    f"initium cache: could not store the pretrained init in {str(store.root)!r}"
                    f" ({exc.strerror or exc}); the model is pretrained, the next identical call computes it again",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return model
