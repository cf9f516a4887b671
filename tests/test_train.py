from __future__ import annotations

import os
import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode

from initium.nn import Siren
from initium.tasks import grid
from initium.train import MAX_LR, TrainingDiverged, fit, progress_hook


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
    assert info.value.step == 0  # the first non-finite loss ...
    assert len(info.value.history) == 11  # ... found at the first evaluation: nothing is read back before it


def test_progress_hook_sees_every_step():
    calls = []
    with progress_hook(lambda e: calls.append((e.phase, e.done, e.total))):
        fit(Siren(2, 1, hidden=4), grid(2, 2), torch.zeros(4, 1), steps=3, lr=1e-3, phase="x")
    assert calls == [("x", 1, 3), ("x", 2, 3), ("x", 3, 3)]


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"steps": -1}, "steps"), ({"lr": 0}, "lr"), ({"lr": 1e38}, r"lr 1e\+38 overflows the optimiser's float32")],
)
def test_bad_fit_arguments(kw, match):
    args = {"steps": 2, "lr": 1e-3} | kw
    with pytest.raises(ValueError, match=match):
        fit(Siren(2, 1, hidden=4), grid(2, 2), torch.zeros(4, 1), **args)


@pytest.mark.slow
def test_compiled_step_matches_eager(monkeypatch):
    coords, target = grid(8, 8), torch.rand(64, 1, generator=torch.Generator().manual_seed(0))
    compiled_calls = []
    real_compile = torch.compile

    def spy(fn, *args, **kwargs):  # the step that compile=True trains with must be the compiled one
        compiled = real_compile(fn, *args, **kwargs)
        return lambda *a, **k: compiled_calls.append(1) or compiled(*a, **k)

    monkeypatch.setattr(torch, "compile", spy)

    def run(compile):
        torch.manual_seed(0)
        return fit(Siren(2, 1, hidden=16), coords, target, steps=5, lr=1e-4, compile=compile)

    eager = run(False)
    assert compiled_calls == []
    torch._dynamo.reset()
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    torch.testing.assert_close(run(True), eager, rtol=1e-4, atol=1e-6)
    assert len(compiled_calls) == 5  # every update's forward ran compiled (the last, no-grad one runs eager)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > frames  # and dynamo captured a graph


class _HostReads(TorchFunctionMode):
    """Counts the calls by which code outside PyTorch reads tensor values back to Python or the
    host (``.item()``, ``bool()``, ``.tolist()``, ``.cpu()`` ...): on a GPU each is a device sync.
    PyTorch's own reads are left out: the non-fused Adam reads its step counter, which it keeps
    on the host for exactly that reason."""

    READS = frozenset({"item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__"})

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.READS:
            caller = sys._getframe(1).f_code.co_filename
            self.count += not caller.startswith(os.path.dirname(torch.__file__))
        return func(*args, **(kwargs or {}))


def _reads(fn):
    with _HostReads() as mode:
        fn()
    return mode.count


def test_the_loop_reads_values_back_only_at_evaluation_steps():
    x, y = grid(4, 4), torch.zeros(16, 1)

    def train(steps, evals):
        return lambda: fit(Siren(2, 1, hidden=8), x, y, steps=steps, lr=1e-3, evaluate_at=evals)

    # two evaluations (one guard read each) and the history's copy at the end, however long the run
    assert _reads(train(10, [0, 10])) == _reads(train(300, [0, 300])) == 3
    assert _reads(train(300, [0, 100, 200, 300])) == 5


def test_a_sweep_reads_back_per_evaluation_not_per_step(tmp_path):
    from initium.runner import RunConfig, run

    def sweep(steps, every):
        cfg = RunConfig(task="regress-1d", out=tmp_path / str(steps), arch="mlp(hidden=16,layers=2)",
                        methods=("default",), seeds=(0,), steps=steps, eval_every=every)  # fmt: skip
        return lambda: run(cfg)

    # the same 3 evaluations (0, every, 2 * every) over 4x the steps: the same reads
    assert _reads(sweep(40, 20)) == _reads(sweep(160, 80))


def test_the_largest_lr_does_not_crash_inside_adam():
    """Past MAX_LR Adam's first step fails converting lr / (1 - beta1) to float32; at it, it trains
    (and diverges, as it should): the bound is the optimiser's, not an arbitrary one."""
    model, x = Siren(2, 1, hidden=4), grid(2, 2)
    with pytest.raises(TrainingDiverged):
        fit(model, x, torch.ones(4, 1), steps=3, lr=MAX_LR, evaluate_at=[3])
    params = list(Siren(2, 1, hidden=4).parameters())
    opt = torch.optim.Adam(params, lr=MAX_LR * 1.01)
    for p in params:
        p.grad = torch.ones_like(p)
    with pytest.raises(RuntimeError, match="overflow"):
        opt.step()  # what check_lr spares a sweep
