"""Task ``classify``: small MLPs and CNNs on scikit-learn's handwritten digits or on MNIST-1D,
minibatch SGD for ``--epochs`` epochs, accuracy and loss every epoch.

Built for the feedback-alignment experiments of Cheon, Lee & Paik (NeurIPS 2024, arXiv
2405.16731): the learning rule comes from the run (``initium run classify --rule bp,fa,fa``) and measures
itself on the task's ``probe`` batch every epoch (the FA alignment angles), and the analysis of the trained
model holds its accuracy on out-of-distribution test sets (translated, scaled, rotated,
noise-corrupted inputs), its accuracy and calibration on CIFAR-10-C style corruptions at five
severities (:mod:`initium.tasks.corruptions`), and how fast it adapts to a new task (a label
permutation; digits 5-9 after training on 0-4). Each run's test logits, clean and corrupted, are
kept beside its record (``record["logits"]``), so that the report can form ensembles of seeds
without retraining.

``--dataset PATH`` trains on a user's data instead (:func:`initium.tasks.data.load_dataset`: a
folder of class subfolders of images, or an ``.npz`` with ``x`` and ``y``), split, standardised
and corrupted like the bundled sets.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import train
from ..ensembles import ece
from ..nn import ARCHS
from ..records import LOGITS, MetricSpec, PlotSpec
from ._base import TASKS, Task
from .corruptions import SEVERITIES, corrupted_sets
from .data import load_dataset, load_digits, make_mnist1d

__all__ = ["BUNDLED", "Classify", "ClassifyConfig", "ood_sets"]

NUM_CLASSES = 10
_LOADERS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {"digits": load_digits, "mnist1d": make_mnist1d}
BUNDLED: tuple[str, ...] = tuple(_LOADERS)
# Out-of-distribution shifts per dataset, in raw input units: shift in pixels (samples for 1-D),
# zoom factors, rotation in degrees (images only), noise standard deviation.
_OOD: dict[str, dict[str, Any]] = {
    "digits": {"shift": 1, "zoom": (0.8, 1.2), "rotate": 20.0, "noise": 0.25},  # pixel values in [0, 1]
    "mnist1d": {"shift": 4, "zoom": (0.8, 1.2), "rotate": None, "noise": 0.5},  # signals of std 1
}


@dataclass(frozen=True)
class ClassifyConfig:
    """``dataset``: ``digits`` (1797 8x8 scans), ``mnist1d`` (5000 generated 40-sample signals) or
    the path of a user's dataset (a folder of class subfolders of images, or an ``.npz`` with ``x``
    and ``y``; :func:`initium.tasks.data.load_dataset`; ``input_size > 0`` resizes its images),
    split into train and test (``test_fraction``, stratified, ``split_seed``); ``val_fraction`` of
    the training part is then held out as a validation split (stratified, ``split_seed``; never
    taken from the test split, which stays the same for any ``val_fraction``), on which settings are
    selected (the curve's ``val_acc`` and ``val_loss``); ``val_fraction=0`` trains on the whole
    training part and has no validation split. Inputs are standardised with the mean and std of the
    part trained on. ``classes="0-4"`` trains on digits 0-4 only (the output
    still has 10 units); ``adapt_epochs > 0`` then measures how fast the trained model learns 5-9,
    and in any case how fast it learns a permutation of the labels. ``track`` records the FA
    alignment measures every epoch. ``corrupt`` measures the trained model on the corrupted test
    sets and keeps its test logits (clean and corrupted) beside the record."""

    # a str, not a Literal: a path is a dataset too (the bundled names are checked in __init__)
    dataset: str = "digits"
    input_size: int = 0
    epochs: int = 20
    batch_size: int = 32
    momentum: float = 0.9
    test_fraction: float = 0.3
    val_fraction: float = 0.2
    split_seed: int = 0
    classes: Literal["all", "0-4"] = "all"
    adapt_epochs: int = 0
    ood: bool = True
    track: bool = True
    corrupt: bool = True


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample ``(N, C, H, W)`` images (or ``(N, C, L)`` signals, as height 1) through per-sample
    affine maps ``theta`` ``(N, 2, 3)`` in normalised coordinates, zero outside."""
    img = x if x.ndim == 4 else x[:, :, None]
    grid = F.affine_grid(theta, list(img.shape), align_corners=False)
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out if x.ndim == 4 else out[:, :, 0]


def _ood_params(x: np.ndarray) -> dict[str, Any]:
    """:func:`ood_sets`' shifts for a user's data ``x`` (the training inputs): digits' in proportion
    (an eighth of the size, a quarter of the value range), rotation for images only."""
    size = x.shape[-1]
    return {"shift": max(1, round(size / 8)), "zoom": (0.8, 1.2), "rotate": 20.0 if x.ndim == 4 else None,
            "noise": 0.25 * float(x.max() - x.min())}  # fmt: skip


def ood_sets(
    x: torch.Tensor, dataset: str, seed: int = 0, *, params: dict[str, Any] | None = None
) -> dict[str, torch.Tensor]:
    """Out-of-distribution versions of the raw test inputs ``x``: ``translated`` (by ``shift``
    pixels along one axis, random axis and sign), ``scaled`` (zoom in or out), ``rotated`` (images only)
    and ``noise`` (additive Gaussian); the shifts per dataset are in ``_OOD`` (``params`` overrides
    them, for a user's dataset). Deterministic in ``seed``."""
    p, n = params or _OOD[dataset], len(x)
    gen = torch.Generator().manual_seed(seed)
    sign = lambda: torch.randint(0, 2, (n,), generator=gen).float() * 2 - 1  # noqa: E731
    size = x.shape[2:]
    eye = torch.eye(2, 3).repeat(n, 1, 1)
    out = {}
    shift = eye.clone()
    # along one axis (random for images), random sign; one pixel is 2/size in normalised units
    axis = torch.randint(0, 2, (n,), generator=gen) if x.ndim == 4 else torch.zeros(n, dtype=torch.long)
    step = sign() * 2 * p["shift"] / torch.tensor([size[-1], size[0]], dtype=torch.float)[axis]
    shift[torch.arange(n), axis, 2] = step
    out["translated"] = _affine(x, shift)
    zoom = torch.where(sign() > 0, p["zoom"][1], p["zoom"][0])
    scale = eye.clone()
    scale[:, 0, 0] = 1 / zoom
    if x.ndim == 4:
        scale[:, 1, 1] = 1 / zoom
    out["scaled"] = _affine(x, scale)
    if x.ndim == 4 and p["rotate"]:
        a = sign() * math.radians(p["rotate"])
        rot = torch.zeros(n, 2, 3)
        rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1] = a.cos(), -a.sin(), a.sin(), a.cos()
        out["rotated"] = _affine(x, rot)
    out["noise"] = x + p["noise"] * torch.randn(x.shape, generator=gen)
    return out


def _split(index: np.ndarray, y: np.ndarray, fraction: float, seed: int, option: str) -> tuple[np.ndarray, np.ndarray]:
    """``index`` split into ``(kept, held out)``: ``fraction`` held out, stratified by ``y``,
    deterministic in ``seed``; a split too small to hold every class once names ``option``."""
    from sklearn.model_selection import train_test_split

    classes = len(np.unique(y))
    held = math.ceil(fraction * len(y))
    if held < classes or len(y) - held < classes:
        raise ValueError(
            f"classify option {option}={fraction!r} holds out {held} of {len(y)} samples; a stratified split"
            f" needs at least {classes} (one per class) on each side"
        )
    try:
        kept, out = train_test_split(index, test_size=fraction, random_state=seed, stratify=y)
    except ValueError as exc:  # what the check above does not foresee (a class of one sample)
        raise ValueError(f"classify option {option}={fraction!r} cannot split the data: {exc}") from exc
    return kept, out


_ARCH_ALIASES = {"mlp": "classifier-mlp", "cnn": "classifier-cnn"}  # --arch names of this task's own


@TASKS.register("classify", ClassifyConfig)
class Classify(Task):
    """Classify digits (8x8 images) or MNIST-1D signals: minibatch SGD with momentum, epochs."""

    batchable = False  # minibatch epochs, its own fit
    precisions = ("fp32",)  # its minibatch loop has no autocast
    name = "classify"
    metric = MetricSpec(
        "test_acc", format=".3f", thresholds=(0.9,), checkpoints=(1, 5), step_unit="epoch",
        # accuracy and calibration against corruption severity (analysis["corruptions"])
        plots=(PlotSpec("severity", "corruptions", title="{} vs severity", ylabel="{}",
                        caption="Test accuracy (top, higher is better) and expected calibration error (bottom,"
                        " lower is better) of the trained models on corrupted test sets, against the corruption's"
                        " severity (0: the clean set), one panel per corruption and their mean."),),
    )  # fmt: skip
    default_arch = "classifier-mlp"

    def __init__(self, config: ClassifyConfig = ClassifyConfig()) -> None:
        c = config
        # epochs: the loss history (4 bytes an epoch) must fit; split_seed: numpy's seeds are 32-bit
        for name, least, most in (("epochs", 1, 10**6), ("batch_size", 1, None), ("adapt_epochs", 0, 10**6),
                                  ("split_seed", 0, 2**32 - 1), ("input_size", 0, 4096)):  # fmt: skip
            value = getattr(c, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least or (most and value > most):
                bound = f"an int >= {least}" if most is None else f"an int from {least} to {most}"
                raise ValueError(f"classify option {name} must be {bound}, got {value!r}")
        for name, interval in (("test_fraction", "(0, 1)"), ("val_fraction", "[0, 1)")):
            value = getattr(c, name)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not number or not (0 < value < 1 or (value == 0 and interval[0] == "[")):
                raise ValueError(f"classify option {name} must be in {interval}, got {value!r}")
        if not isinstance(c.dataset, str) or not c.dataset:
            raise ValueError(f"classify option dataset must be {' or '.join(BUNDLED)} or a path, got {c.dataset!r}")
        if c.dataset not in BUNDLED:
            from pathlib import Path

            if not Path(c.dataset).expanduser().exists():
                raise ValueError(
                    f"--dataset {c.dataset!r} is neither a bundled dataset ({', '.join(BUNDLED)}) nor an existing"
                    " folder of class subfolders of images or .npz file"
                )
            if c.classes != "all":
                raise ValueError(f"--classes {c.classes} splits the bundled digits; --dataset {c.dataset!r} takes all")
        elif c.input_size:
            raise ValueError(f"--input-size resizes a user's images; the bundled {c.dataset!r} keeps its size")
        if not 0 <= c.momentum < 1:
            raise ValueError(f"classify option momentum must be in [0, 1), got {c.momentum!r}")
        self.config = config
        self._lr = 0.01

    # --- data -----------------------------------------------------------------------------------

    def setup(self, device: torch.device) -> None:
        c = self.config
        if c.dataset in BUNDLED:
            x, y = _LOADERS[c.dataset]()
            self.num_classes = NUM_CLASSES
        else:
            x, y, names = load_dataset(c.dataset, c.input_size)
            self.num_classes = len(names)
        # indices, not the arrays: the splits are the same as splitting x itself, and are kept
        # (``split_index``) to show that train, validation and test never share a sample
        itr, ite = _split(np.arange(len(y)), y, c.test_fraction, c.split_seed, "test_fraction")
        iva = np.empty(0, dtype=itr.dtype)
        if c.val_fraction:  # carved from the training part only: the test split does not move
            itr, iva = _split(itr, y[itr], c.val_fraction, c.split_seed, "val_fraction")
        self.split_index = {"train": itr, "val": iva, "test": ite}
        xtr, ytr, xva, yva, xte, yte = x[itr], y[itr], x[iva], y[iva], x[ite], y[ite]
        first = (ytr < 5) if c.classes == "0-4" else np.ones(len(ytr), bool)
        first_va = (yva < 5) if c.classes == "0-4" else np.ones(len(yva), bool)
        first_te = (yte < 5) if c.classes == "0-4" else np.ones(len(yte), bool)
        # one scalar mean and std (of the training inputs): keeps the images' spatial structure
        self.mean, self.std = float(xtr[first].mean()), float(xtr[first].std())
        to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
        self.inputs, self.target = to(self.normalise(xtr[first])), to(ytr[first])
        self.val_x, self.val_y = to(self.normalise(xva[first_va])), to(yva[first_va])
        self.test_x, self.test_y = to(self.normalise(xte[first_te])), to(yte[first_te])
        self.second: tuple[torch.Tensor, ...] | None = None
        if c.classes == "0-4":
            self.second = (to(self.normalise(xtr[~first])), to(ytr[~first]),
                           to(self.normalise(xte[~first_te])), to(yte[~first_te]))  # fmt: skip
        self.ood: dict[str, torch.Tensor] = {}
        raw = torch.from_numpy(np.ascontiguousarray(xte[first_te]))
        if c.ood:
            params = _OOD.get(c.dataset) or _ood_params(xtr[first])
            self.ood = {k: self.normalise(v).to(device) for k, v in ood_sets(raw, c.dataset, params=params).items()}
        # CIFAR-10-C style sets, in the training inputs' range; split_seed fixes their noise
        self.corrupted: dict[str, dict[int, torch.Tensor]] = {}
        if c.corrupt:
            lo, hi = float(xtr[first].min()), float(xtr[first].max())
            sets = corrupted_sets(raw, seed=c.split_seed, lo=lo, hi=hi)
            self.corrupted = {k: {s: self.normalise(v).to(device) for s, v in d.items()} for k, d in sets.items()}
        # a fixed batch on which the run's learning rule measures itself every epoch (FA: the
        # update-vs-backprop angle)
        self.probe = (self.inputs[:256], self.target[:256]) if c.track else None

    def normalise(self, x: Any) -> Any:
        return (x - self.mean) / self.std

    # --- model ----------------------------------------------------------------------------------

    def build_model(self, arch: str, arch_kwargs: dict[str, Any]) -> nn.Module:
        return ARCHS.build(
            arch, arch_kwargs, fixed={"in_shape": tuple(self.inputs.shape[1:]), "out_features": self.num_classes}
        )

    def parse_arch(self, spec: str) -> tuple[str, dict[str, Any]]:
        """The issue's names first: here ``mlp`` and ``cnn`` are the classifiers, not the coordinate MLP."""
        parts = ARCHS.parse(spec, aliases=_ARCH_ALIASES)
        if len(parts) != 1:
            raise ValueError(f"--arch takes one architecture, got {spec!r}")
        return parts[0]

    def check_model(self, model: nn.Module, arch: str) -> None:
        with torch.no_grad():
            shape = tuple(model(self.inputs[:4]).shape)
        if shape != (min(4, len(self.inputs)), self.num_classes):
            raise ValueError(
                f"--arch {arch!r} outputs shape {shape} for 4 inputs; classify needs (4, {self.num_classes})"
            )

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(pred, target)

    def resolve_steps(self, steps: int | None) -> int:
        if steps is not None and steps != self.config.epochs:
            raise ValueError(f"classify counts epochs: give --epochs {steps} instead of --steps {steps}")
        return self.config.epochs

    # --- training -------------------------------------------------------------------------------

    def fit(
        self,
        model: nn.Module,
        *,
        steps: int,
        lr: float,
        evaluate_at: Collection[int] = (),
        on_eval: Callable[[int, torch.Tensor], None] | None = None,
        compile: bool = False,
        precision: str = "fp32",
    ) -> torch.Tensor:
        """``steps`` epochs of minibatch SGD with momentum on the cross-entropy; ``history[k]`` is
        the training-set loss after ``k`` epochs."""
        if compile:
            raise ValueError("classify does not support --compile (its minibatch loop is not compiled)")
        if precision != "fp32":
            raise ValueError(f"classify trains in fp32 only; drop --precision {precision}")
        self._lr = lr  # the adaptation phase of analyse() trains at the run's rate
        return self._train(model, self.inputs, self.target, steps, lr, evaluate_at, on_eval, "train")

    def _train(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        epochs: int,
        lr: float,
        evaluate_at: Collection[int],
        on_eval: Callable[[int, torch.Tensor], None] | None,
        phase: str,
    ) -> torch.Tensor:
        # the global RNG (seeded by the runner) shuffles every epoch
        data = train.Epochs(x, y, self.config.batch_size)
        return train.fit(
            model, data, steps=epochs, lr=lr, loss_fn=F.cross_entropy, optimizer="sgd",
            momentum=self.config.momentum, evaluate_at=evaluate_at, on_eval=on_eval, phase=phase,
        )  # fmt: skip

    # --- metrics --------------------------------------------------------------------------------

    @staticmethod
    def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        # eval mode: BatchNorm (resnet) uses its running statistics, not the test batch's, and a
        # measurement leaves them alone
        training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return model(x)
        finally:
            model.train(training)

    @classmethod
    def _acc_loss(cls, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        out = cls._logits(model, x)
        return float((out.argmax(-1) == y).float().mean()), float(F.cross_entropy(out, y))

    def test_logits(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The trained model's test logits on the CPU: ``clean`` and ``<corruption>@<severity>``
        for every corrupted set (:data:`initium.records.LOGITS` describes the file they go to)."""
        out = {"clean": self._logits(model, self.test_x).float().cpu()}
        for name, sets in self.corrupted.items():
            out |= {f"{name}@{s}": self._logits(model, v).float().cpu() for s, v in sets.items()}
        return out

    def stored(self, model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
        """The test labels and logits (:meth:`test_logits`), kept as the record's ``logits`` file."""
        if not self.corrupted:
            return {}
        return {LOGITS: {"labels": self.test_y.cpu()} | self.test_logits(model)}

    def evaluate(self, pred: torch.Tensor) -> dict[str, float]:
        return {
            "train_acc": float((pred.argmax(-1) == self.target).float().mean()),
            "train_loss": float(F.cross_entropy(pred, self.target)),
        }

    def evaluate_model(self, model: nn.Module) -> dict[str, float]:
        """Test accuracy and loss, and the validation split's (``val_acc``, ``val_loss``) where there is one."""
        out: dict[str, float] = {}
        if len(self.val_y):
            out["val_acc"], out["val_loss"] = self._acc_loss(model, self.val_x, self.val_y)
        out["test_acc"], out["test_loss"] = self._acc_loss(model, self.test_x, self.test_y)
        return out

    def _adapt(self, model: nn.Module, data: tuple[torch.Tensor, ...]) -> list[float]:
        """Test accuracy of a copy of ``model`` before and after each of ``adapt_epochs`` epochs
        of training on ``data = (x, y, test_x, test_y)``."""
        x, y, tx, ty = data
        model = copy.deepcopy(model)  # FA layers, their B and DFA hooks come along
        accs: list[float] = []
        epochs = self.config.adapt_epochs
        self._train(model, x, y, epochs, self._lr, range(epochs + 1),
                    lambda _k, _pred: accs.append(self._acc_loss(model, tx, ty)[0]), "adapt")  # fmt: skip
        return accs

    def analyse(self, model: nn.Module) -> dict[str, Any]:
        """OOD test accuracies and adaptation curves (the learning rule adds its own measurements)."""
        out: dict[str, Any] = {}
        if self.ood:
            out["ood"] = {"clean": self._acc_loss(model, self.test_x, self.test_y)[0]}
            out["ood"] |= {k: self._acc_loss(model, v, self.test_y)[0] for k, v in self.ood.items()}
        if self.corrupted:
            # severity 0 is the clean set, so each list starts where the model stands undisturbed
            logits, y = self.test_logits(model), self.test_y.cpu()
            measures: dict[str, dict[str, list[float]]] = {"acc": {}, "ece": {}}
            for name in self.corrupted:
                z = [logits["clean"]] + [logits[f"{name}@{s}"] for s in range(1, SEVERITIES + 1)]
                measures["acc"][name] = [float((v.argmax(-1) == y).float().mean()) for v in z]
                measures["ece"][name] = [ece(v.double().softmax(-1), y) for v in z]
            out["corruptions"] = measures
        if self.config.adapt_epochs:
            # a derangement of the labels: a random cycle through all ten classes
            cycle = torch.randperm(self.num_classes, generator=torch.Generator().manual_seed(0))
            perm = torch.empty_like(cycle)
            perm[cycle] = cycle.roll(1)
            perm = perm.to(self.target.device)
            adapt = {"permuted": self._adapt(model, (self.inputs, perm[self.target], self.test_x, perm[self.test_y]))}
            if self.second is not None:
                adapt["5-9"] = self._adapt(model, self.second)
            out["adapt"] = adapt
        return out
