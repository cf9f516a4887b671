"""Ensemble metrics against values worked out by hand; corruptions deterministic and monotone."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from initium import ensembles
from initium.tasks.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from initium.tasks.data import load_digits, make_mnist1d

# two members, four samples, three classes, as probabilities (their logs are the logits)
A = [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.6, 0.2, 0.2], [0.2, 0.2, 0.6]]
B = [[0.6, 0.2, 0.2], [0.1, 0.6, 0.3], [0.3, 0.5, 0.2], [0.2, 0.1, 0.7]]
Y = torch.tensor([0, 1, 0, 1])


def test_metrics_match_hand_computed_values():
    logits = torch.tensor([A, B], dtype=torch.float64).log()
    m = ensembles.metrics(logits, Y)
    # mean softmax: [.7 .15 .15], [.1 .7 .2], [.45 .35 .2], [.2 .15 .65]; argmax 0, 1, 0, 2
    assert m["acc"] == pytest.approx(0.75)
    assert m["nll"] == pytest.approx(-(2 * math.log(0.7) + math.log(0.45) + math.log(0.15)) / 4)
    # (.09+.0225+.0225) + (.01+.09+.04) + (.3025+.1225+.04) + (.04+.7225+.4225), over 4
    assert m["brier"] == pytest.approx(1.925 / 4)
    # bins: {.7, .7} both right: 2/4 * .3; {.45} right: 1/4 * .55; {.65} wrong: 1/4 * .65
    assert m["ece"] == pytest.approx(0.15 + 0.1375 + 0.1625)
    # member argmax 0,1,0,2 vs 0,1,1,2: one sample of four
    assert m["disagreement"] == pytest.approx(0.25)


def test_disagreement_averages_over_pairs_and_one_member_is_its_own_ensemble():
    c = [[0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.1, 0.8, 0.1]]  # argmax 1,1,1,1
    logits = torch.tensor([A, B, c]).log()
    # argmax A 0,1,0,2; B 0,1,1,2; C 1,1,1,1: pairs (A,B) 1/4, (A,C) 3/4, (B,C) 2/4
    assert ensembles.disagreement(logits) == pytest.approx((0.25 + 0.75 + 0.5) / 3)
    one = ensembles.metrics(torch.tensor([A]).log(), Y)
    assert one["disagreement"] == 0 and one["acc"] == pytest.approx(0.75)


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="members, samples, classes"):
        ensembles.metrics(torch.zeros(4, 3), Y)
    with pytest.raises(ValueError, match="labels"):
        ensembles.metrics(torch.zeros(2, 4, 3), Y[:3])


def test_draw_members_is_seeded_and_without_replacement():
    draws = ensembles.draw_members(10, 5, 8, seed=1)
    assert draws == ensembles.draw_members(10, 5, 8, seed=1) and len(draws) == 8
    assert all(len(set(d)) == 5 and max(d) < 10 for d in draws)
    assert ensembles.draw_members(3, 5, 10) == [(0, 1, 2)]  # fewer seeds than k: all of them, once
    assert len(ensembles.draw_members(4, 2, 10)) == 6  # every pair once


@pytest.fixture(scope="module", params=["digits", "mnist1d"])
def raw(request):
    x = load_digits()[0] if request.param == "digits" else make_mnist1d(num_samples=400)[0]
    return torch.from_numpy(x[:400])


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruptions_are_deterministic_and_monotone(raw, name):
    assert torch.equal(corrupt(raw, name, 0), raw)
    assert torch.equal(corrupt(raw, name, 3, seed=7), corrupt(raw, name, 3, seed=7))
    dist = [float((corrupt(raw, name, s, seed=7) - raw).flatten(1).norm(dim=1).mean()) for s in range(SEVERITIES + 1)]
    assert all(b > a for a, b in itertools.pairwise(dist)), dist


def test_corrupt_refuses_bad_arguments(raw):
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        corrupt(raw, "fog", 1)
    with pytest.raises(ValueError, match="from 0 to 5"):
        corrupt(raw, "contrast", 6)
