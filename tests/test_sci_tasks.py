"""The RWF paper's tasks: 1-D regression, CT, 3-D shape, advection PINN, DeepONet."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import initium
from initium.metrics import iou, ntk_eigenvalues, relative_l2
from initium.nn import MLP, DeepONet
from initium.report import summarize, write_report
from initium.runner import RunConfig, run, steps_to
from initium.tasks import TASKS
from initium.tasks.ct import CT, CTConfig, disk_mask, radon
from initium.tasks.deeponet import Antiderivative, AntiderivativeConfig
from initium.tasks.pinn import Advection, AdvectionConfig
from initium.tasks.regress_1d import Regress1D, Regress1DConfig
from initium.tasks.shape3d import Shape3D, Shape3DConfig, occupancy

CPU = torch.device("cpu")


class Lookup(nn.Module):
    """A 'model' that returns fixed values (and keeps a parameter so optimisers have one)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.fn(x) + 0 * self.dummy


def test_ntk_eigenvalues_match_the_autograd_kernel():
    torch.manual_seed(0)
    model = MLP(1, 1, hidden=16, layers=2)
    initium.rwf(model)
    x = torch.linspace(-1, 1, 12)[:, None]
    rows = []
    for xi in x:
        grads = torch.autograd.grad(model(xi[None]).squeeze(), list(model.parameters()))
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    jac = torch.stack(rows).double()
    expected = torch.linalg.eigvalsh(jac @ jac.T).flip(0).float()
    got = ntk_eigenvalues(model, x)
    assert got.shape == (12,) and torch.all(got[:-1] >= got[1:])
    torch.testing.assert_close(got, expected.clamp_min(0), rtol=1e-4, atol=1e-6)


def test_metrics():
    assert relative_l2(torch.tensor([3.0, 4.0]), torch.tensor([0.0, 4.0])) == pytest.approx(3 / 4)
    a = torch.tensor([True, True, False, False])
    assert iou(a, torch.tensor([True, False, True, False])) == pytest.approx(1 / 3)
    assert iou(torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)) == 1.0


def test_regress_1d_signal_and_errors():
    task = Regress1D(Regress1DConfig(frequencies=(1.0, 2.0), points=64))
    task.setup(CPU)
    x = task.inputs[:, 0]
    torch.testing.assert_close(task.target[:, 0], torch.sin(math.pi * x) + torch.sin(2 * math.pi * x))
    with pytest.raises(ValueError, match="raise points"):
        Regress1D(Regress1DConfig(frequencies=(40.0,), points=64))
    with pytest.raises(ValueError, match="frequencies must be positive"):
        Regress1D(Regress1DConfig(frequencies=(-1.0,)))


@pytest.mark.slow
def test_rwf_beats_plain_on_regress_1d(tmp_path):
    """The RWF paper's figure 2 claim on our 3-frequency signal (tanh MLP 3x128, Adam 1e-3, 3000
    steps): measured MSE 0.29-0.35 plain vs 0.04-0.10 RWF over seeds 0-2 (see BENCHMARKS.md)."""
    cfg = RunConfig(task="regress-1d", out=tmp_path, methods=("default", "rwf"), seeds=(0, 1), steps=3000,
                    eval_every=500)  # fmt: skip
    records = run(cfg)
    final = {(r["method"], r["seed"]): r["at_step"]["final"] for r in records}
    for seed in (0, 1):
        assert final[("rwf", seed)] < 0.5 * final[("default", seed)]
    # the factorised model's kernel has a heavier tail: its 32nd eigenvalue is far above plain's
    eig = {(r["method"], r["seed"]): r["analysis"]["ntk_eigenvalues"] for r in records}
    assert all(eig[("rwf", s)][31] > 10 * eig[("default", s)][31] for s in (0, 1))


@pytest.mark.parametrize("angles", [[0.0, 30.0, 90.0, 135.0], [17.0, 100.0]])
def test_radon_matches_scikit_image(angles):
    from skimage.transform import radon as sk_radon

    rng = np.random.default_rng(0)
    img = torch.from_numpy(rng.random((33, 33)).astype(np.float32)) * disk_mask(33)
    ours = radon(img, torch.tensor(angles)).numpy()
    ref = sk_radon(img.numpy(), theta=angles, circle=True).T
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def test_ct_loss_is_zero_for_the_phantom_and_positive_otherwise():
    task = CT(CTConfig(size=32, angles=6))
    task.setup(CPU)
    assert task.target.shape == (6, 32)
    exact = Lookup(lambda x: task.phantom.reshape(-1, 1))
    loss, pred = task.forward_loss(exact, task.inputs, task.target)
    assert loss.item() < 1e-10 and task.evaluate(pred.detach())["psnr"] > 60
    blank = Lookup(lambda x: torch.zeros(len(x), 1))
    assert task.forward_loss(blank, task.inputs, task.target)[0].item() > 1e-3
    with pytest.raises(ValueError, match="angles must be"):
        CT(CTConfig(angles=0))


def test_advection_residual_vanishes_on_the_exact_solution():
    task = Advection(AdvectionConfig(c=5.0, collocation=512, boundary=64, grid_x=64, grid_t=11))
    task.setup(CPU)

    def exact(z):  # network inputs in [-1, 1]^2 -> sin(x - c t)
        x, t = (z[:, 0] + 1) * math.pi, (z[:, 1] + 1) / 2
        return torch.sin(x - 5.0 * t)[:, None]

    loss, _ = task.forward_loss(Lookup(exact), task.inputs, task.target)
    assert loss.item() < 1e-8
    assert task.evaluate_model(Lookup(exact))["rel_l2"] < 1e-5
    assert task.evaluate_model(Lookup(lambda z: torch.zeros(len(z), 1)))["rel_l2"] == pytest.approx(1.0)
    # a solution travelling at the wrong speed leaves a residual
    wrong = Lookup(lambda z: torch.sin((z[:, 0] + 1) * math.pi - 4.0 * (z[:, 1] + 1) / 2)[:, None])
    assert task.forward_loss(wrong, task.inputs, task.target)[0].item() > 0.1
    with pytest.raises(ValueError, match="c must be finite"):
        Advection(AdvectionConfig(c=math.inf))


def test_antiderivative_data():
    task = Antiderivative(AntiderivativeConfig(sensors=51, functions=8, queries=5, test_functions=4))
    task.setup(CPU)
    assert task.inputs.shape == (40, 52) and task.target.shape == (40, 1)
    x = torch.linspace(0, 1, 51)
    u = task.test_inputs[::51, :51].double()
    s = task.test_target.double()
    assert torch.all(s[:, 0] == 0)
    # the target, read at the sensors, is the integral of u: its trapezoid rule agrees to O(h^2)
    trap = torch.cat([torch.zeros(4, 1), torch.cumulative_trapezoid(u, x.double(), dim=1)], dim=1)
    torch.testing.assert_close(s, trap, rtol=0, atol=2e-3)
    # every training row's last column is its query y, and its target is s(y) of its function
    y = task.inputs[:, -1]
    assert torch.all((y >= 0) & (y <= 1))
    model = DeepONet(52)
    assert model(task.inputs).shape == (40, 1)


def test_shape_occupancy_and_points():
    inside = torch.tensor([[-0.25, 0.0, 0.0], [0.45, 0.2, 0.0]])
    outside = torch.tensor([[0.95, -0.9, 0.9], [-0.9, 0.9, -0.9]])
    assert occupancy(inside).all() and not occupancy(outside).any()
    task = Shape3D(Shape3DConfig(points=2048, test_points=1024))
    task.setup(CPU)
    frac = task.target.mean().item()
    assert 0.1 < frac < 0.9  # half the points near the surface: both classes are well represented
    perfect = Lookup(lambda p: occupancy(p).float()[:, None] * 2 - 1)
    assert task.evaluate_model(perfect)["iou"] == 1.0


@pytest.mark.parametrize("name", ["regress-1d", "ct", "shape-3d", "pinn-advection", "deeponet-antiderivative"])
def test_every_task_builds_its_default_model(name):
    options = {"shape-3d": {"points": 64, "test_points": 64}, "ct": {"size": 16, "angles": 2},
               "deeponet-antiderivative": {"functions": 4, "test_functions": 2},
               "pinn-advection": {"collocation": 64, "boundary": 8}}.get(name, {})  # fmt: skip
    task = TASKS.build(name, options)
    task.setup(CPU)
    arch, kwargs = initium.nn.ARCHS.parse(task.default_arch)[0]
    model = task.build_model(arch, kwargs)
    task.check_model(model, task.default_arch)
    loss, _ = task.forward_loss(model, task.inputs, task.target)
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_pinn_run_records_error_curves_and_reports(tmp_path):
    cfg = RunConfig(task="pinn-advection", out=tmp_path, methods=("default", "rwf"), seeds=(0,), steps=20,
                    eval_every=5, task_options={"collocation": 128, "boundary": 16, "grid_x": 16, "grid_t": 5},
                    thresholds=(2.0, 1e-9))  # fmt: skip
    records = run(cfg)
    for r in records:
        assert r["arch"] == "mlp" and r["metric"] == "rel_l2" and r["higher_is_better"] is False
        assert r["metric_every_step"] is None and r["curve"]["step"] == [0, 5, 10, 15, 20]
        errs = r["curve"]["rel_l2"]
        assert r["at_step"]["final"] == errs[-1]
        assert r["steps_to"]["2"] == steps_to(errs, 2.0, steps=r["curve"]["step"], higher_is_better=False) == 0
        assert r["steps_to"]["1e-09"] is None
    table = summarize(records)
    assert table.columns[2] == "rel_l2@20" and table.columns[3] == "steps→2"  # easiest threshold first
    files = write_report(tmp_path)
    assert files["metric"].name == "rel_l2.png" and files["metric"].exists()
    assert json.loads((tmp_path / "results.jsonl").read_text().splitlines()[0])["task"] == "pinn-advection"


def test_regress_run_stores_ntk_and_plots_it(tmp_path):
    cfg = RunConfig(task="regress-1d", out=tmp_path, arch="mlp(hidden=16,layers=2)", methods=("default",),
                    seeds=(0,), steps=5, task_options={"points": 64, "ntk_points": 8})  # fmt: skip
    (rec,) = run(cfg)
    eig = rec["analysis"]["ntk_eigenvalues"]
    assert len(eig) == 8 and eig == sorted(eig, reverse=True)
    assert write_report(tmp_path)["ntk"].exists()
