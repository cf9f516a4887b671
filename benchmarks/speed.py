"""Speed of the training step, side by side in one run (ratios are what to compare).

    python benchmarks/speed.py step    [--sizes 256,512] [--repeats 5] [--arch siren|fourier|dip]  # ms per step
    python benchmarks/speed.py batch   [--sizes 64,256] [--ks 1,4,16]    # K runs stacked vs one by one
    python benchmarks/speed.py curves  [--size 128] [--steps 1000] [--image camera]  # fp32 vs fast PSNR
    python benchmarks/speed.py profile [--size 256] [--arch siren|fourier|dip]  # where the fast step's time goes

Model: SIREN 3x256 fitting the bundled ``camera`` image (resized), full batch, Adam 1e-4; ``step
--arch fourier`` times Tancik et al.'s FourierMLP 4x256 (Adam 1e-3) on the same problem, ``--arch
dip`` the paper's 5x128 DIP net mapping its latent to the noisy image (Adam 1e-2).

- ``step``: the naive step (a tutorial loop: default Adam, ``loss.item()`` every step), initium's
  default (``train.fit`` at ``--precision auto``), each precision with and without
  ``torch.compile``, and (for SIREN) ``siren-pytorch``'s ``SirenNet`` of the same size in the naive loop. The
  floor is the step's FLOPs (counted by ``torch.utils.flop_counter``) at the device's measured
  matmul rate (a large GEMM in the step's dtype).
- ``batch``: K runs (seeds) of one architecture, ``initium.batched.fit_batched`` against K calls
  of ``train.fit``; also a 1-D regression MLP (the ``regress-1d`` task's size), where one run is
  small.
- ``curves``: the PSNR curve of each precision against fp32 from the same init: the largest gap
  while fp32 is below 35 dB, and the PSNR where the gap first passes 0.3 dB.

Needs the ``bench`` extra (``pip install -e .[bench]``: siren-pytorch).
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from initium import batched, precision, train
from initium.metrics import psnr_from_mse
from initium.nn import MLP, DIPNet, FourierMLP, Siren
from initium.runner import environment, sync
from initium.tasks import TASKS

log = logging.getLogger("speed")


def _image(size: int, device: torch.device, image: str = "camera") -> tuple[torch.Tensor, torch.Tensor]:
    task = TASKS.build("image-fit", {"image": image, "size": size})
    task.setup(device)
    return task.inputs, task.target.mean(dim=1, keepdim=True)  # gray, as the probe


# The models ``step`` and ``profile`` time: (constructor, lr). SIREN 3x256 is the probe model;
# FourierMLP is Tancik et al.'s 4x256 with 256 features; DIP is the paper's 5x128 skip net.
STEP_ARCHS: dict[str, tuple[Callable[[], nn.Module], float]] = {
    "siren": (lambda: Siren(2, 1, hidden=256, layers=3), 1e-4),
    "fourier": (lambda: FourierMLP(2, 1, hidden=256, layers=4), 1e-3),
    "dip": (lambda: DIPNet(), 1e-2),
}


def _model(arch: str, seed: int, device: torch.device) -> nn.Module:
    torch.manual_seed(seed)
    return STEP_ARCHS[arch][0]().to(device)


def _problem(arch: str, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The inputs, the target and the lr of one ``step`` problem. The coordinate nets fit the gray
    image at every pixel; the DIP net maps its fixed latent to the noisy RGB image (the
    ``dip-denoise`` task's plain MSE step: its input jitter and output EMA, two elementwise passes,
    are left out)."""
    lr = STEP_ARCHS[arch][1]
    if arch == "dip":
        task = TASKS.build("dip-denoise", {"image": "astronaut", "size": size})
        task.setup(device)
        return task.inputs, task.target, lr
    return *_image(size, device), lr


def _timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _naive(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float) -> Callable[[int], object]:
    """The loop most users write: default Adam, and the loss read back every step."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def run(steps: int) -> list[float]:
        losses = []
        for _ in range(steps):
            loss = torch.mean((model(x) - y) ** 2)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    return run


def _initium(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, prec: str, comp: bool
) -> Callable[[int], object]:
    """initium's loop (``train.fit``) at one precision, compiled or not."""
    return lambda n: train.fit(model, x, y, steps=n, lr=lr, precision=prec, compile=comp)


def _per_step(fn: Callable[[int], object], steps: int, device: torch.device, repeats: int) -> float:
    """Seconds per step as ``(T(2 n) - T(n)) / n``: what a call costs once (an optimiser, the last
    forward pass ``train.fit`` makes without an update) cancels out."""
    return (_timed(lambda: fn(2 * steps), device, repeats) - _timed(lambda: fn(steps), device, repeats)) / steps


def _flops(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """FLOPs of one forward + backward (the optimiser's elementwise work is not counted)."""
    with FlopCounterMode(display=False) as counter:
        torch.mean((model(x) - y) ** 2).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def _peak(device: torch.device, dtype: torch.dtype) -> float:
    """Measured FLOP/s of a large square GEMM: the rate the floor assumes."""
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sec = _timed(lambda: a @ b, device, 10)
    return 2 * n**3 / sec


def _device_name(device: torch.device) -> str:
    env = environment(device)
    return f"{env['device']} ({env['device_name']}, {env['threads']} threads)"


def step(device: torch.device, sizes: list[int], repeats: int, steps: int, arch: str = "siren") -> str:
    precisions = ["fp32", "bf16"] + (["tf32"] if device.type == "cuda" else [])
    default = precision.resolve_precision(None, device)
    lines = [
        f"Device: {_device_name(device)}; torch {torch.__version__}; {arch}. ms per step"
        f" ((T(2n) - T(n)) / n, n = {steps}, medians of {repeats}).",
        "",
        "| setting | " + " | ".join(f"{s} px" for s in sizes) + " | "
        + " | ".join(f"x naive, {s} px" for s in sizes) + " |",
        "|---|" + "---|" * (2 * len(sizes)),
    ]  # fmt: skip
    rows: dict[str, list[float]] = {}
    floors: dict[torch.dtype, list[float]] = {torch.float32: [], torch.bfloat16: []}
    for size in sizes:
        x, y, lr = _problem(arch, size, device)
        cases: dict[str, Callable[[int], object]] = {
            "naive fp32 loop (item() every step)": _naive(_model(arch, 0, device), x, y, lr)
        }
        if arch == "siren":  # the peer a user would install instead
            import siren_pytorch  # the bench extra

            sirenpt = siren_pytorch.SirenNet(dim_in=2, dim_hidden=256, dim_out=1, num_layers=3, w0_initial=30.0)
            cases["siren-pytorch SirenNet, naive loop"] = _naive(sirenpt.to(device), x, y, lr)
        settings = [(f"initium default (--precision auto = {default})", default, False)] + [
            (f"initium --precision {prec}" + (" --compile" if comp else ""), prec, comp)
            for prec in precisions
            for comp in (False, True)
        ]
        for name, prec, comp in settings:
            cases[name] = _initium(_model(arch, 0, device), x, y, lr, prec, comp)
        for name, fn in cases.items():
            sec = _per_step(fn, steps, device, repeats)
            rows.setdefault(name, []).append(sec * 1e3)
            log.info("%d px  %-45s %.2f ms", size, name, sec * 1e3)
        flops = _flops(_model(arch, 0, device), x, y)
        for dtype, floor in floors.items():
            rate = _peak(device, dtype)
            floor.append(flops / rate * 1e3)
            log.info("%d px  %s floor %.3g FLOP / %.3g FLOP/s = %.2f ms", size, dtype, flops, rate, floor[-1])
    base = rows["naive fp32 loop (item() every step)"]
    for name, ms in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in ms) + " | "
                     + " | ".join(f"{b / v:.2f}" for b, v in zip(base, ms, strict=True)) + " |")  # fmt: skip
    for dtype, floor in floors.items():
        name = str(dtype).removeprefix("torch.")
        lines.append(f"| floor: forward + backward FLOPs at the measured {name} GEMM rate | "
                     + " | ".join(f"{v:.2f}" for v in floor) + " | "
                     + " | ".join(f"{b / v:.1f}" for b, v in zip(base, floor, strict=True)) + " |")  # fmt: skip
    return "\n".join(lines)


def batch(device: torch.device, sizes: list[int], ks: list[int], steps: int, repeats: int) -> str:
    lines = [
        f"Device: {_device_name(device)}; torch {torch.__version__}. Seconds for {steps} steps of K runs"
        " (median of {repeats}); ratio = one by one / stacked.".replace("{repeats}", str(repeats)),
        "",
        "| problem | K | one by one (s) | stacked (s) | stacked / one run | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    problems: list[tuple[str, Callable[[int], nn.Module], torch.Tensor, torch.Tensor]] = []
    for size in sizes:
        x, y = _image(size, device)
        problems.append((f"SIREN 3x256, {size} px", lambda s: _model("siren", s, device), x, y))
    task = TASKS.build("regress-1d", {})
    task.setup(device)

    def mlp(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return MLP(1, 1, hidden=128, layers=3).to(device)

    problems.append(("regress-1d MLP 3x128, 256 points", mlp, task.inputs, task.target))
    for name, make, x, y in problems:
        one = None
        for k in ks:
            models = [make(s) for s in range(k)]
            seq = _timed(lambda ms=models, x=x, y=y: [train.fit(m, x, y, steps=steps, lr=1e-4) for m in ms],
                         device, repeats)  # fmt: skip
            stk = _timed(lambda ms=models, x=x, y=y: batched.fit_batched(ms, x, y, steps=steps, lr=1e-4),
                         device, repeats)  # fmt: skip
            one = stk if k == 1 else one
            rel = f"{stk / one:.2f}" if one else "-"
            lines.append(f"| {name} | {k} | {seq:.3f} | {stk:.3f} | {rel} | {seq / stk:.2f} |")
            log.info(lines[-1])
    return "\n".join(lines)


def curves(device: torch.device, size: int, steps: int, image: str) -> str:
    x, y = _image(size, device, image)
    every = max(1, steps // 200)
    out = {}
    precisions = ["fp32", "bf16"] + (["tf32"] if device.type == "cuda" else [])
    for prec in precisions:
        psnrs: list[float] = []

        def record(_step: int, pred: torch.Tensor, psnrs: list[float] = psnrs) -> None:
            psnrs.append(float(psnr_from_mse(torch.mean((pred.float() - y) ** 2))))

        train.fit(_model("siren", 0, device), x, y, steps=steps, lr=1e-4, precision=prec,
                  evaluate_at=range(0, steps + 1, every), on_eval=record)  # fmt: skip
        out[prec] = psnrs
        log.info("%s: final %.2f dB", prec, psnrs[-1])
    ref = out["fp32"]
    lines = [
        f"Device: {_device_name(device)}. SIREN 3x256, {image} {size} px (gray), {steps} steps,"
        f" PSNR every {every} steps.",
        "",
        "| precision | final PSNR (dB) | max gap to fp32 while fp32 <= 35 dB | first gap > 0.3 dB at fp32 PSNR |",
        "|---|---|---|---|",
    ]
    for prec, psnrs in out.items():
        gaps = [abs(a - b) for a, b in zip(ref, psnrs, strict=True)]
        below = [g for g, r in zip(gaps, ref, strict=True) if r <= 35.0]
        first = next((r for g, r in zip(gaps, ref, strict=True) if g > 0.3), None)
        at = f"{first:.1f} dB" if first is not None else "never"
        lines.append(f"| {prec} | {psnrs[-1]:.2f} | {max(below, default=0.0):.2f} dB | {at} |")
    return "\n".join(lines)


def profile(device: torch.device, size: int, arch: str = "siren") -> str:
    x, y, lr = _problem(arch, size, device)
    prec = "bf16"  # the fast path: what stands between it and the floor
    model = _model(arch, 0, device)
    train.fit(model, x, y, steps=3, lr=lr, precision=prec)  # warm-up
    acts = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else []
    )
    with torch.profiler.profile(activities=acts) as prof:
        train.fit(model, x, y, steps=10, lr=lr, precision=prec)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=15)
    return f"Profile, {arch}, {prec}, {size} px, 10 steps:\n\n```\n{table}\n```"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("step", "batch", "curves", "profile"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default=None, help="image sides, comma-separated")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--image", default="camera", help="curves: the bundled image to fit")
    parser.add_argument("--arch", default="siren", choices=sorted(STEP_ARCHS), help="step, profile: the model")
    parser.add_argument("--ks", default="1,4,16")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(args.device)

    def ints(s: str) -> list[int]:
        return [int(v) for v in s.split(",")]

    if args.what == "step":
        text = step(device, ints(args.sizes or "256,512"), args.repeats, args.steps or 10, args.arch)
    elif args.what == "batch":
        text = batch(device, ints(args.sizes or "64,256"), ints(args.ks), args.steps or 20, args.repeats)
    elif args.what == "curves":
        text = curves(device, args.size, args.steps or 1000, args.image)
    else:
        text = profile(device, args.size, args.arch)
    print(text)


if __name__ == "__main__":
    main()
