"""Random weight factorization: step-time overhead, and error at a fixed step budget.

    python benchmarks/rwf.py overhead [--repeats 30] [--device cuda]
    python benchmarks/rwf.py errors --out runs/bench-rwf [--seeds 3] [--quick]
    python benchmarks/rwf.py errors --out runs/bench-rwf --report-only

``overhead`` times one training step (forward, backward, Adam) of a 4x256 tanh MLP at batch 4096
and 65,536, and the advection PINN step (input derivatives with ``create_graph``), for the plain
model, ``initium.rwf`` (a ``torch.nn.utils.parametrize`` parametrization) and a hand-written
factorised layer that recomputes ``exp(s) * V`` in its forward (what PhysicsNeMo's
``WeightFactLinear`` and jaxpi do; PhysicsNeMo itself does not install beside torch 2.13 here).
The variants run interleaved, round after round, and the table gives medians and ratios to plain.

``errors`` runs every task of the RWF paper with ``default, rwf, wn, aa`` through the runner
(resumable: a killed run loses at most the run in progress) and writes ``summary.md`` with one
table per task.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import initium
from initium.nn import MLP
from initium.report import summarize
from initium.runner import RunConfig, environment, load_results, run, sync
from initium.tasks.pinn import Advection, AdvectionConfig

log = logging.getLogger("bench-rwf")


class NaiveFactorisedLinear(nn.Module):
    """The layer-class way: parameters ``s`` and ``V``, ``W = exp(s) * V`` rebuilt every forward."""

    def __init__(self, linear: nn.Linear, mean: float = 1.0, std: float = 0.1) -> None:
        super().__init__()
        s = torch.randn(linear.out_features, device=linear.weight.device) * std + mean
        self.s = nn.Parameter(s)
        self.v = nn.Parameter(linear.weight.detach() / torch.exp(s)[:, None])
        self.bias = nn.Parameter(linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, torch.exp(self.s)[:, None] * self.v, self.bias)


def _naive(model: nn.Module) -> nn.Module:
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                setattr(parent, name, NaiveFactorisedLinear(child))
    return model


def _regression_step(model: nn.Module, batch: int, device: torch.device) -> Callable[[], None]:
    x, y = torch.rand(batch, 2, device=device) * 2 - 1, torch.rand(batch, 1, device=device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.mean((model(x) - y) ** 2).backward()
        opt.step()

    return step


def _pinn_step(model: nn.Module, points: int, device: torch.device) -> Callable[[], None]:
    task = Advection(AdvectionConfig(collocation=points, boundary=256))
    task.setup(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        task.forward_loss(model, task.inputs, task.target)[0].backward()
        opt.step()

    return step


def overhead(repeats: int, device: torch.device) -> str:
    cases: list[tuple[str, Callable[[nn.Module], Callable[[], None]]]] = [
        ("MLP 4x256, batch 4096", lambda m: _regression_step(m, 4096, device)),
        ("MLP 4x256, batch 65536", lambda m: _regression_step(m, 65536, device)),
        ("PINN step (advection, 4096 + 768 points)", lambda m: _pinn_step(m, 4096, device)),
    ]
    variants: dict[str, Callable[[nn.Module], nn.Module]] = {
        "plain": lambda m: m,
        "initium.rwf (parametrize)": lambda m: initium.rwf(m),
        "naive factorised layer": _naive,
    }
    env = environment(device)
    where = f"{env['device']} ({env['device_name']}, {env['threads']} threads)"
    lines = [
        f"{where}, torch {env['torch']}, median of {repeats} interleaved rounds",
        "",
        "| step | " + " | ".join(f"{v} ms" for v in variants) + " | rwf / plain | naive / plain |",
        "|---|" + "---|" * (len(variants) + 2),
    ]
    for title, make in cases:
        steps = {}
        for name, wrap in variants.items():
            torch.manual_seed(0)
            steps[name] = make(wrap(MLP(2, 1, hidden=256, layers=4).to(device)))
            for _ in range(3):  # warm-up: allocator, first-call costs
                steps[name]()
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(repeats):
            for name, step in steps.items():
                sync(device)
                t0 = time.perf_counter()
                step()
                sync(device)
                times[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        base = med["plain"]
        row = [title] + [f"{v:.2f}" for v in med.values()]
        row += [f"{med['initium.rwf (parametrize)'] / base:.3f}", f"{med['naive factorised layer'] / base:.3f}"]
        lines.append("| " + " | ".join(row) + " |")
        log.info(lines[-1])
    return "\n".join(lines)


def _error_runs(out: Path, seeds: tuple[int, ...], quick: bool) -> list[tuple[str, RunConfig]]:
    methods = ("default", "rwf", "wn", "aa")
    s = 0.5 if quick else 1.0

    def steps(n: int) -> int:
        return max(10, int(n * s))

    runs = [
        ("regress-1d", RunConfig(task="regress-1d", out=out / "regress-1d", methods=methods, seeds=seeds,
                                 steps=steps(3000), eval_every=100)),
        ("image-fit (camera 64 px crop, SIREN 3x256)", RunConfig(
            task="image-fit", out=out / "image-fit", methods=methods, seeds=seeds, steps=steps(500),
            thresholds=(25.0, 30.0, 40.0), task_options={"image": "camera", "size": 64, "scale": "crop"})),
        ("ct (Shepp-Logan 64 px, 16 angles, Fourier MLP)", RunConfig(
            task="ct", out=out / "ct", methods=methods, seeds=seeds, steps=steps(1000), eval_every=50)),
        ("shape-3d (Fourier MLP 3x128, 8192 points)", RunConfig(
            task="shape-3d", out=out / "shape-3d", arch="fourier(sigma=3.0,hidden=128,layers=3,features=128)",
            methods=methods, seeds=seeds, steps=steps(500), eval_every=50,
            task_options={"points": 8192, "test_points": 32768})),
        ("deeponet-antiderivative (500 functions x 10 queries)", RunConfig(
            task="deeponet-antiderivative", out=out / "deeponet", methods=methods, seeds=seeds, steps=steps(2000),
            eval_every=100, task_options={"functions": 500})),
    ]  # fmt: skip
    for c in (5.0, 10.0, 20.0, 50.0):
        runs.append((f"pinn-advection c={c:g} (tanh MLP 4x128, 1024 + 768 points)", RunConfig(
            task="pinn-advection", out=out / f"pinn-c{c:g}", arch="mlp(hidden=128,layers=4)",
            methods=methods if c == 10.0 else ("default", "rwf"), seeds=seeds, steps=steps(3000), eval_every=100,
            task_options={"c": c, "collocation": 1024})))  # fmt: skip
    return runs


def errors(out: Path, seeds: tuple[int, ...], quick: bool, report_only: bool) -> str:
    parts = []
    for title, cfg in _error_runs(out, seeds, quick):
        if not report_only:
            log.info("running %s", title)
            run(cfg)
        records = load_results(cfg.out)
        if records:
            parts.append(f"### {title}, {cfg.steps} steps\n\n{summarize(records).markdown()}\n")
    text = "\n".join(parts)
    (out / "summary.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("overhead", "errors"))
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="cpu", help="overhead: cpu or cuda")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-rwf"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="half the steps")
    parser.add_argument("--report-only", action="store_true", help="tables from finished runs only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this torch sees no CUDA device; use --device cpu")
    if args.what == "overhead":
        text = overhead(args.repeats, torch.device(args.device))
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "overhead.md").write_text(text + "\n")
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        text = errors(args.out, tuple(range(args.seeds)), args.quick, args.report_only)
    print(text)


if __name__ == "__main__":
    main()
