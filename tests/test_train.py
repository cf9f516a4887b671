from __future__ import annotations

import pytest
import torch

from initium.nn import Siren
from initium.tasks import grid
from initium.train import TrainingDiverged, fit, progress_hook


def test_history_is_the_loss_after_k_updates_and_eval_sees_that_model():
    coords, target = grid(8, 8), torch.rand(64, 1, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = Siren(2, 1, hidden=16)
    with torch.no_grad():
        initial = model(coords)
    seen = {}
    history = fit(
        model, coords, target, steps=5, lr=1e-3, evaluate_at=[0, 3], on_eval=lambda k, p: seen.setdefault(k, p)
    )
    assert history.shape == (6,)
    assert history[0] == pytest.approx(torch.mean((initial - target) ** 2).item())
    torch.testing.assert_close(seen[0], initial)
    with torch.no_grad():
        assert history[5] == pytest.approx(torch.mean((model(coords) - target) ** 2).item())
    assert history[5] < history[0]


def test_nan_guard_stops_at_an_evaluation_step():
    class Bad(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            return self.w * x.sum(-1, keepdim=True) / 0.0

    with pytest.raises(TrainingDiverged) as info:
        fit(Bad(), grid(2, 2), torch.zeros(4, 1), steps=50, lr=1e-3, evaluate_at=[10])
    assert info.value.step == 0  # step 0 is a guard point too
    assert len(info.value.history) == 1


def test_progress_hook_sees_every_step():
    calls = []
    with progress_hook(lambda phase, k, n: calls.append((phase, k, n))):
        fit(Siren(2, 1, hidden=4), grid(2, 2), torch.zeros(4, 1), steps=3, lr=1e-3, phase="x")
    assert calls == [("x", 1, 3), ("x", 2, 3), ("x", 3, 3)]


@pytest.mark.parametrize(("kw", "match"), [({"steps": -1}, "steps"), ({"lr": 0}, "lr")])
def test_bad_fit_arguments(kw, match):
    args = {"steps": 2, "lr": 1e-3} | kw
    with pytest.raises(ValueError, match=match):
        fit(Siren(2, 1, hidden=4), grid(2, 2), torch.zeros(4, 1), **args)


@pytest.mark.slow
def test_compiled_step_matches_eager():
    coords, target = grid(8, 8), torch.rand(64, 1, generator=torch.Generator().manual_seed(0))

    def run(compile):
        torch.manual_seed(0)
        return fit(Siren(2, 1, hidden=16), coords, target, steps=5, lr=1e-4, compile=compile)

    torch.testing.assert_close(run(True), run(False), rtol=1e-4, atol=1e-6)
