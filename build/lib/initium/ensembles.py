"""Deep ensembles from stored test logits: no retraining (Lakshminarayanan et al., NeurIPS 2017).

Pure functions on tensors. An ensemble of ``M`` members predicts the mean of the members' softmax,
``p(x) = (1/M) sum_m softmax(z_m(x))``; :func:`metrics` scores that prediction, and
:func:`draw_members` picks which seeds form an ensemble of size ``k`` (without replacement,
several seeded draws, so a report can give intervals over draws).

Calibration error is computed here rather than with ``torchmetrics``: that package is not in the
project's environment, the formula is a few lines (below), and adding a dependency (and
``lightning-utilities`` with it) for one function does not earn its place; the tests check it
against values worked out by hand.
"""

from __future__ import annotations

import itertools
import math

import torch

__all__ = ["N_BINS", "brier", "disagreement", "draw_members", "ece", "ensemble_probs", "metrics", "nll"]

N_BINS = 15
"""Equal-width confidence bins of the expected calibration error (Guo et al., ICML 2017)."""


def _check(member_logits: torch.Tensor, y: torch.Tensor) -> None:
    if member_logits.ndim != 3:
        raise ValueError(f"member_logits must be (members, samples, classes), got shape {tuple(member_logits.shape)}")
    if y.ndim != 1 or len(y) != member_logits.shape[1]:
        raise ValueError(f"y must be ({member_logits.shape[1]},) labels, got shape {tuple(y.shape)}")
    if len(y) == 0 or member_logits.shape[0] == 0:
        raise ValueError("an ensemble needs at least one member and one sample")


def ensemble_probs(member_logits: torch.Tensor) -> torch.Tensor:
    """``(M, N, K)`` logits -> ``(N, K)`` mean of the members' softmax, ``(1/M) sum_m softmax(z_m)``."""
    return member_logits.double().softmax(-1).mean(0)


def nll(probs: torch.Tensor, y: torch.Tensor) -> float:
    """Negative log-likelihood ``-(1/N) sum_i log p_i[y_i]`` (probabilities clamped at 1e-12)."""
    return float(-probs.gather(1, y[:, None]).clamp_min(1e-12).log().mean())


def brier(probs: torch.Tensor, y: torch.Tensor) -> float:
    """Brier score ``(1/N) sum_i sum_k (p_ik - [y_i = k])^2``: squared error of the probability
    vector against the one-hot label, summed over classes, averaged over samples (0 is perfect, 2
    the worst)."""
    onehot = torch.nn.functional.one_hot(y, probs.shape[1]).to(probs.dtype)
    return float(((probs - onehot) ** 2).sum(1).mean())


def ece(probs: torch.Tensor, y: torch.Tensor, n_bins: int = N_BINS) -> float:
    """Expected calibration error (Naeini et al. 2015; Guo et al. 2017) with ``n_bins`` equal-width
    bins of the confidence ``c_i = max_k p_ik``: ``ECE = sum_b (|B_b| / N) |acc(B_b) - conf(B_b)|``,
    where bin ``b`` holds the samples with ``c_i`` in ``((b-1)/n_bins, b/n_bins]`` (the first bin
    also takes 0), ``acc`` is the fraction whose argmax is right and ``conf`` the mean confidence.
    The binning is torchmetrics' ``multiclass_calibration_error(norm="l1")``."""
    conf, pred = probs.max(1)
    right = (pred == y).to(probs.dtype)
    # bucketize with right=False puts c in (edge[b-1], edge[b]]: bin index b-1 (0 stays in bin 0)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=probs.dtype)[1:-1]
    bins = torch.bucketize(conf, edges, right=False)
    total = 0.0
    for b in range(n_bins):
        inside = bins == b
        if inside.any():
            total += float(inside.sum()) / len(y) * abs(float(right[inside].mean() - conf[inside].mean()))
    return total


def disagreement(member_logits: torch.Tensor) -> float:
    """Mean over member pairs ``m < m'`` of the fraction of samples whose argmax differs,
    ``(2 / (M (M-1))) sum_{m<m'} (1/N) sum_i [argmax z_m(x_i) != argmax z_m'(x_i)]``; 0 for one member."""
    pred = member_logits.argmax(-1)
    pairs = list(itertools.combinations(range(len(pred)), 2))
    if not pairs:
        return 0.0
    return float(sum(float((pred[a] != pred[b]).double().mean()) for a, b in pairs) / len(pairs))


def metrics(member_logits: torch.Tensor, y: torch.Tensor, n_bins: int = N_BINS) -> dict[str, float]:
    """Score the ensemble of ``member_logits`` ``(M, N, K)`` on labels ``y`` ``(N,)``: ``acc``
    (argmax of the mean softmax), ``nll``, ``ece`` (``n_bins`` bins), ``brier`` and the members'
    mean pairwise ``disagreement`` (see each function for its formula)."""
    _check(member_logits, y)
    y = y.long()
    probs = ensemble_probs(member_logits)
    return {
        "acc": float((probs.argmax(1) == y).double().mean()),
        "nll": nll(probs, y),
        "ece": ece(probs, y, n_bins),
        "brier": brier(probs, y),
        "disagreement": disagreement(member_logits),
    }


def draw_members(n: int, k: int, draws: int, seed: int = 0) -> list[tuple[int, ...]]:
    """Which of ``n`` members form each ensemble of size ``min(k, n)``: ``draws`` subsets drawn
    without replacement (each sorted), deterministic in ``seed``. Where there are no more distinct
    subsets than ``draws`` (``C(n, k) <= draws``), every subset once instead: repeating one would
    only narrow the interval over draws without adding information."""
    if n < 1 or k < 1 or draws < 1:
        raise ValueError(f"draw_members needs n, k, draws >= 1; got n={n}, k={k}, draws={draws}")
    k = min(k, n)
    if math.comb(n, k) <= draws:
        return list(itertools.combinations(range(n), k))
    gen = torch.Generator().manual_seed(seed)
    return [tuple(sorted(torch.randperm(n, generator=gen)[:k].tolist())) for _ in range(draws)]
