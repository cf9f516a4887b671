"""Does target-noise pretraining pay for itself end to end? Fraction of the inputs x pretraining steps.

For each architecture, image and seed, every configuration runs one after another in this one
process (interleaved, so that a slow spell of a shared machine hits them alike): the default init,
then ``noise(fraction=f, steps=s)`` for every ``f`` in ``--fractions`` and ``s`` in
``--pretrain-steps``, uncached (``cache=False``: every pretraining is computed and timed). Each run
records the measured pretraining time, the time of every training step, and the PSNR after every
step (image fitting, from the loss of the next step's forward pass, as ``initium.train`` records it)
or every ``--eval-every`` steps (DIP denoising, the EMA output against the clean image).

End-to-end time to a threshold is reported as

    pretraining time (measured) + steps to the threshold x the run's median training-step time,

not as the raw wall clock of the training: on a shared CPU the median step time is stable where
the sum of step times is not. Image fitting stops once the last threshold is reached (or at
``--max-steps``); DIP stops ``--patience`` steps after its PSNR peak (or at ``--dip-steps``), and its
threshold is the peak.

    OMP_NUM_THREADS=1 python benchmarks/noise_budget.py --archs siren --images camera,astronaut --prune
    python benchmarks/noise_budget.py --archs dip --device cuda --prune    # on a GPU (timed with synchronisation)
    python benchmarks/noise_budget.py --report-only       # tables + figure from results.jsonl

The training step is the one :func:`initium.train.fit` runs (Adam, full batch, mean squared error;
DIP: the task's own ``forward_loss``: latent jitter, EMA of the outputs), written out here so that
each step can be timed and the run stopped early. Results append to ``OUT/results.jsonl`` one line
per run; rerunning skips the runs already there.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

import initium
from initium.metrics import psnr, psnr_from_mse
from initium.nn import ARCHS
from initium.tasks.dip import DIPDenoise, DIPDenoiseConfig
from initium.tasks.image_fit import ImageFit, ImageFitConfig

THRESHOLDS = (30.0, 35.0, 40.0)


def _frac(text: str) -> float:
    return float(Fraction(text))


def _config_name(fraction: float | None, steps: int | None) -> str:
    if fraction is None:
        return "default"
    return f"noise(fraction={Fraction(fraction).limit_denominator(100)},steps={steps})"


def run_image_fit(arch: str, arch_kwargs: dict[str, Any], image: str, size: int, seed: int,
                  fraction: float | None, pre_steps: int | None, max_steps: int,
                  stop_at: float = THRESHOLDS[-1], device: str = "cpu") -> dict[str, Any]:  # fmt: skip
    task = ImageFit(ImageFitConfig(image=image, size=size))
    task.setup(torch.device(device))
    torch.manual_seed(seed)
    model = task.build_model(arch, arch_kwargs)
    lr = float(getattr(model, "default_lr", 1e-4))
    pre = 0.0
    if fraction is not None:
        t0 = time.perf_counter()
        initium.noise_pretrain(model, task.inputs, steps=pre_steps, fraction=fraction, seed=seed, cache=False)
        _sync(device)
        pre = time.perf_counter() - t0
    opt = initium.train.adam(list(model.parameters()), lr)
    curve: list[float] = []  # curve[k]: PSNR of the model after k updates
    times: list[float] = []
    for _ in range(max_steps + 1):
        t0 = time.perf_counter()
        loss = torch.mean((model(task.inputs) - task.target) ** 2)
        curve.append(float(psnr_from_mse(loss.detach())))
        if curve[-1] >= stop_at or len(curve) > max_steps:
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return {"pretrain_s": pre, "step_s": statistics.median(times) if times else math.nan, "steps": len(times),
            "eval_step": list(range(len(curve))), "psnr": curve}  # fmt: skip


def run_dip(arch: str, arch_kwargs: dict[str, Any], image: str, size: int, seed: int, fraction: float | None,
            pre_steps: int | None, max_steps: int, eval_every: int, patience: int,
            device: str = "cpu") -> dict[str, Any]:  # fmt: skip
    task = DIPDenoise(DIPDenoiseConfig(image=image, size=size))
    task.setup(torch.device(device))
    torch.manual_seed(seed)
    model = task.build_model(arch, arch_kwargs)
    pre = 0.0
    if fraction is not None:
        t0 = time.perf_counter()
        initium.noise_pretrain(model, task.inputs, steps=pre_steps, fraction=fraction, seed=seed, cache=False)
        _sync(device)
        pre = time.perf_counter() - t0
    torch.manual_seed(seed)  # the latent jitter
    opt = initium.train.adam(list(model.parameters()), float(model.default_lr))
    steps, values, times = [], [], []
    assert task.clean is not None
    for k in range(max_steps + 1):
        if k % eval_every == 0:
            avg = task._avg.get(model)  # the EMA prediction, as the task evaluates it
            with torch.no_grad():
                pred = avg if avg is not None else model(task.inputs)
            steps.append(k)
            values.append(psnr(pred[0].permute(1, 2, 0), task.clean[0].permute(1, 2, 0)))
            best = steps[values.index(max(values))]
            if k - best >= patience or k == max_steps:
                break
        t0 = time.perf_counter()
        loss, _ = task.forward_loss(model, task.inputs, task.target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return {"pretrain_s": pre, "step_s": statistics.median(times), "steps": len(times), "eval_step": steps,
            "psnr": values}  # fmt: skip


def _sync(device: str) -> None:
    """Wait for queued GPU work, so that the clock reads what ran (a no-op on the CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def prunable(default: dict[str, Any] | None, fraction: float, steps: int) -> bool:
    """True when ``noise(fraction, steps)`` cannot beat the default init on this image and seed.

    A pretraining step on a fraction ``f`` of the points costs about ``f`` of a training step (on
    the CPU, measured over this study's runs: 0.78-1.45x that, 0.94-1.25x on the whole grid, where
    smaller batches carry fixed costs), so the pretraining alone costs about ``f x steps`` training
    steps; when that already reaches the default's whole run to the stopping PSNR (DIP: its peak),
    the tens of training steps still to come after it put the end-to-end ratio at or above 1. On a
    GPU, where a small batch costs nearly as much as a full one, the rule only gets safer."""
    if default is None:
        return False
    reached = (
        peak(default)[0]
        if str(default["arch"]).startswith("dip")
        else steps_to(default, default.get("stop_at", THRESHOLDS[-1]))
    )
    return reached is not None and fraction * steps >= reached


def steps_to(rec: dict[str, Any], threshold: float) -> int | None:
    for step, value in zip(rec["eval_step"], rec["psnr"], strict=True):
        if value >= threshold:
            return step
    return None


def peak(rec: dict[str, Any]) -> tuple[int, float]:
    best = max(range(len(rec["psnr"])), key=lambda i: (rec["psnr"][i], -i))
    return rec["eval_step"][best], rec["psnr"][best]


def end_to_end(rec: dict[str, Any], steps: int | None) -> float | None:
    return None if steps is None else rec["pretrain_s"] + steps * rec["step_s"]


def step_equivalent(rec: dict[str, Any], steps: int | None) -> float | None:
    """The end-to-end cost in training steps of the run itself: ``pretrain_s / step_s + steps``.
    Its ratio to the default's steps does not move when the machine's load changes between runs."""
    return None if steps is None else rec["pretrain_s"] / rec["step_s"] + steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="siren;fourier;pe;dip", help="';'-separated; 'dip(...)' runs DIP denoising")
    ap.add_argument("--images", default="camera,astronaut")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--dip-size", type=int, default=128)
    ap.add_argument("--fractions", default="1,1/4,1/9,1/16")
    ap.add_argument("--pretrain-steps", default="100,250,500")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--max-steps", type=int, default=600, help="image fitting: training steps at most")
    ap.add_argument("--default-max-steps", type=int, default=None, help="the default init's cap (else --max-steps)")
    ap.add_argument("--stop-at", type=float, default=THRESHOLDS[-1], help="image fitting: stop at this PSNR")
    ap.add_argument("--configs", default=None, help="';'-separated 'default' / 'FRACTION:STEPS' (instead of the grid)")
    ap.add_argument("--dip-steps", type=int, default=1500)
    ap.add_argument("--eval-every", type=int, default=25, help="DIP: PSNR every this many steps")
    ap.add_argument("--patience", type=int, default=250, help="DIP: stop this many steps after the peak")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/noise_budget"))
    ap.add_argument("--figure", type=Path, default=None, help="PNG of end-to-end time against fraction and steps")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (times synchronise the GPU)")
    ap.add_argument("--prune", action="store_true",
                    help="skip a budget whose pretraining alone (fraction x steps, in training steps) is at least"
                         " the default's whole run on the same image and seed: it cannot pay")  # fmt: skip
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    fractions = [_frac(f) for f in args.fractions.split(",")]
    pre_steps = [int(s) for s in args.pretrain_steps.split(",")]
    configs: list[tuple[float | None, int | None]] = [(None, None)] + [(f, s) for f in fractions for s in pre_steps]
    if args.configs:
        configs = [(None, None) if c == "default" else (_frac(c.split(":")[0]), int(c.split(":")[1]))
                   for c in args.configs.split(";")]  # fmt: skip
    done = {_key(r): r for r in _load(results)}
    if not args.report_only:
        for arch_spec in args.archs.split(";"):
            arch, kwargs = ARCHS.parse(arch_spec)[0]
            for seed in (int(s) for s in args.seeds.split(",")):  # seed-major: a cut run has every image
                for image in args.images.split(","):
                    for fraction, steps in configs:
                        name = _config_name(fraction, steps)
                        meta = {"arch": arch_spec, "image": image, "seed": seed, "config": name,
                                "fraction": fraction, "pretrain_steps": steps}  # fmt: skip
                        if _key(meta) in done:
                            continue
                        default = done.get(_key({**meta, "config": "default"}))
                        if args.prune and fraction is not None and prunable(default, fraction, steps or 0):
                            rec = {**meta, "pruned": True}  # recorded, so that the tables can say why it is missing
                            with results.open("a") as fh:
                                fh.write(json.dumps(rec) + "\n")
                            done[_key(rec)] = rec
                            print(f"{arch_spec} {image} s{seed} {name}: pruned (pretraining alone"
                                  " >= the default's whole run)", flush=True)  # fmt: skip
                            continue
                        t0 = time.perf_counter()
                        if arch == "dip":
                            meta["size"] = args.dip_size
                            rec = run_dip(arch, kwargs, image, args.dip_size, seed, fraction, steps, args.dip_steps,
                                          args.eval_every, args.patience, args.device)  # fmt: skip
                        else:
                            meta["size"] = args.size
                            cap = args.default_max_steps if fraction is None and args.default_max_steps else None
                            rec = run_image_fit(arch, kwargs, image, args.size, seed, fraction, steps,
                                                cap or args.max_steps, args.stop_at, args.device)  # fmt: skip
                            rec["stop_at"] = args.stop_at
                        rec = {**meta, **rec, "wall_s": time.perf_counter() - t0, "torch": torch.__version__,
                               "threads": torch.get_num_threads(),
                               "device": args.device}  # fmt: skip
                        with results.open("a") as fh:
                            fh.write(json.dumps(rec) + "\n")
                        done[_key(rec)] = rec
                        ms = 1e3 * rec["step_s"]
                        print(f"{arch_spec} {image} s{seed} {name}: pre {rec['pretrain_s']:.1f}s,"
                              f" {rec['steps']} steps x {ms:.1f} ms, {_brief(rec)}", flush=True)  # fmt: skip
    records = _load(results)
    report = _report(records)
    (args.out / "summary.md").write_text(report)
    print(report)
    if args.figure is not None:
        _plot(records, args.figure)


def _key(r: dict[str, Any]) -> tuple:
    return (r["arch"], r["image"], r["seed"], r["config"])


def _load(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _brief(rec: dict[str, Any]) -> str:
    if str(rec["arch"]).startswith("dip"):
        step, value = peak(rec)
        return f"peak {value:.2f} dB at step {step}"
    return "steps to " + "/".join(str(steps_to(rec, t) or "-") for t in THRESHOLDS) + " dB"


def _mean(values: list[float | None]) -> tuple[float | None, int]:
    """Mean over the runs that got there, and how many did not (None)."""
    got = [v for v in values if v is not None]
    return (statistics.fmean(got) if got else None), len(values) - len(got)


def _fmt(value: float | None, missed: int, digits: int = 1) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}f}" + (f" ({missed} missed)" if missed else "")


def groups(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, list[dict[str, Any]]]]:
    out: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {}
    for r in sorted(records, key=lambda r: (r["arch"], r["image"])):  # stable tables, whatever order the files came in
        out.setdefault((r["arch"], r["image"]), {}).setdefault(r["config"], []).append(r)
    return out


def _overview(
    records: list[dict[str, Any]], pruned: set[tuple[str, str, str]], tuning: tuple[str, ...] = ("camera", "astronaut")
) -> list[str]:
    """Per architecture, tuning images and the others apart: every config's end-to-end time to
    35 dB (DIP: to the peak) as a ratio to the default init's on the same image, one column per
    image, and the mean ratio. ``pruned``: the ``(arch, image, config)`` that ``--prune`` skipped
    on at least one seed (their ratio is >= 1 there)."""
    lines: list[str] = []
    by_arch: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {}
    for (arch, image), by_config in groups(records).items():
        by_arch.setdefault(arch, {})[image] = by_config
    split = [
        (arch, f"{arch} ({'tuning' if part else 'reporting'} images)", images)
        for arch, all_images in by_arch.items()
        for part in (True, False)
        if (images := {k: v for k, v in all_images.items() if (k in tuning) == part})
    ]
    for arch, label, images in split:
        dip = arch.startswith("dip")
        what = "peak" if dip else "35 dB"
        names = list(dict.fromkeys(c for by_config in images.values() for c in by_config))
        names += sorted({c for a, i, c in pruned if a == arch and i in images} - set(names))
        lines.append(
            f"\n**{label}**: time to {what}, pretraining included, / the default init's on the same image"
            " (in brackets: the same in training-step equivalents, pretrain s / step s + steps)\n"
        )
        head = "| init | " + " | ".join(images) + " | mean |"
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for name in names:
            cells, ratios = [], []
            for image, by_config in images.items():
                runs, base = by_config.get(name, []), by_config.get("default", [])
                if (arch, image, name) in pruned:
                    cells.append("pruned (>= 1x)")
                    continue

                def e2e(r: dict[str, Any], dip: bool = dip) -> float | None:
                    return end_to_end(r, peak(r)[0] if dip else steps_to(r, 35.0))

                def eq(r: dict[str, Any], dip: bool = dip) -> float | None:
                    return step_equivalent(r, peak(r)[0] if dip else steps_to(r, 35.0))

                mine, missed = _mean([e2e(r) for r in runs])
                ref, ref_missed = _mean([e2e(r) for r in base])
                if not runs or mine is None or missed or ref is None or ref_missed:
                    cells.append("—" if not runs else ("missed" if mine is None or missed else "default missed"))
                    continue
                mine_eq, ref_eq = _mean([eq(r) for r in runs])[0], _mean([eq(r) for r in base])[0]
                ratios.append(mine / ref)
                cells.append(f"{mine / ref:.2f}x ({mine_eq / ref_eq:.2f}x)")  # type: ignore[operator]
            mean = f"{statistics.fmean(ratios):.2f}x" if len(ratios) == len(images) else "—"
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean} |")
    return lines


def _report(records: list[dict[str, Any]]) -> str:
    pruned = {(r["arch"], r["image"], r["config"]) for r in records if r.get("pruned")}
    records = [r for r in records if not r.get("pruned")]
    lines: list[str] = _overview(records, pruned)
    for (arch, image), by_config in groups(records).items():
        dip = arch.startswith("dip")
        size = next(iter(by_config.values()))[0]["size"]
        seeds = sorted({r["seed"] for rs in by_config.values() for r in rs})
        lines.append(f"\n**{arch} · {image} · {size} px** (seeds {','.join(map(str, seeds))})\n")
        if dip:
            head = "| init | pretrain s | step ms | peak dB | steps to peak | s to peak (pretrain incl.) | / default |"
        else:
            head = ("| init | pretrain s | step ms | steps to 30 / 35 / 40 dB | s to 30 / 35 / 40 dB (pretrain incl.)"
                    " | / default at 35 dB |")  # fmt: skip
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        base = by_config.get("default", [])
        for config, runs in by_config.items():
            pre, _ = _mean([r["pretrain_s"] for r in runs])
            step_ms, _ = _mean([1e3 * r["step_s"] for r in runs])
            cells = [config, _fmt(pre, 0), _fmt(step_ms, 0)]
            if dip:
                peaks = [peak(r) for r in runs]
                e2e = [end_to_end(r, s) for r, (s, _) in zip(runs, peaks, strict=True)]
                ratio = _ratio(e2e, [end_to_end(r, peak(r)[0]) for r in base])
                cells += [_fmt(*_mean([v for _, v in peaks]), 2), _fmt(*_mean([s for s, _ in peaks]), 0),
                          _fmt(*_mean(e2e)), ratio]  # fmt: skip
            else:
                st = [_fmt(*_mean([steps_to(r, t) for r in runs]), 0) for t in THRESHOLDS]
                e2e = [_fmt(*_mean([end_to_end(r, steps_to(r, t)) for r in runs])) for t in THRESHOLDS]
                ratio = _ratio([end_to_end(r, steps_to(r, 35.0)) for r in runs],
                               [end_to_end(r, steps_to(r, 35.0)) for r in base])  # fmt: skip
                cells += [" / ".join(st), " / ".join(e2e), ratio]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _ratio(values: list[float | None], base: list[float | None]) -> str:
    mine, missed = _mean(values)
    ref, ref_missed = _mean(base)
    if mine is None or missed:
        return "—"
    if ref is None or ref_missed:
        return "< " + (f"{mine / ref:.2f}x" if ref is not None else "?") + " (default missed)"
    return f"{mine / ref:.2f}x"


def _plot(records: list[dict[str, Any]], path: Path, tuning: tuple[str, ...] = ("camera", "astronaut")) -> None:
    """Per architecture, on the tuning images: end-to-end time to 35 dB (DIP: to the peak),
    pretraining included, over the default init's on the same image (mean over images and seeds),
    against the fraction, one line per pretraining budget; dashed: the same in training-step
    equivalents (immune to the shared machine's load changing between runs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in records if r["image"] in tuning and not r.get("pruned")]
    archs = list(dict.fromkeys(r["arch"] for r in records))
    fig, axes = plt.subplots(1, len(archs), figsize=(4.2 * len(archs), 3.6), squeeze=False)
    for ax, arch in zip(axes[0], archs, strict=True):
        runs = [r for r in records if r["arch"] == arch]
        dip = arch.startswith("dip")
        images = sorted({r["image"] for r in runs})

        def ratio(
            f: float, steps: int, measure: Any, dip: bool = dip, runs: list = runs, images: list = images
        ) -> float | None:
            out = []
            for image in images:
                mine = [r for r in runs if r["image"] == image and r["fraction"] == f and r["pretrain_steps"] == steps]
                base = [r for r in runs if r["image"] == image and r["fraction"] is None]
                at = (lambda r: peak(r)[0]) if dip else (lambda r: steps_to(r, 35.0))
                a, missed = _mean([measure(r, at(r)) for r in mine])
                b, base_missed = _mean([measure(r, at(r)) for r in base])
                if not mine or a is None or b is None or missed or base_missed:
                    return None
                out.append(a / b)
            return statistics.fmean(out)

        for i, steps in enumerate(sorted({r["pretrain_steps"] for r in runs if r["pretrain_steps"] is not None})):
            fs = sorted({r["fraction"] for r in runs if r["pretrain_steps"] == steps})
            for measure, style in ((end_to_end, "o-"), (step_equivalent, "x--")):
                pts = [(f, v) for f in fs if (v := ratio(f, steps, measure)) is not None]
                if pts:
                    label = f"{steps} steps" + ("" if measure is end_to_end else " (step equiv.)")
                    ax.plot(
                        *zip(*pts, strict=True), style, color=f"C{i}", label=label, alpha=1 if style == "o-" else 0.5
                    )
        ax.axhline(1.0, color="k", ls=":", label="default init")
        ax.set_xscale("log")
        ax.set_xticks([1 / 16, 1 / 9, 1 / 4, 1])
        ax.set_xticklabels(["1/16", "1/9", "1/4", "1"])
        ax.set_xlabel("fraction of the inputs pretrained on")
        ax.set_ylabel(f"time to {'peak' if dip else '35 dB'} / default init's")
        ax.set_title(f"{arch} ({', '.join(images)})", fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
