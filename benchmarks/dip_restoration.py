"""Deep-image-prior restoration: default init vs target-noise pretraining (gaussian, uniform,
spectral 1/f^2) on dip-denoise, dip-sr and dip-inpaint; both sides of the trade-off.

For each task x image, all methods x seeds run through ``initium.runner.run`` (one results
folder each, so an interrupted sweep resumes where it stopped), then one markdown table per
task x image: peak PSNR against the clean image, the step of the peak, its ratio to the
default's, the drop from the peak to the last step, the PSNR at an early step, and the fitting
side (``fit_psnr``: PSNR of the operator applied to the EMA output against the degraded input)
at that step. Mean +- 95% t-interval over seeds.

    python benchmarks/dip_restoration.py                                  # CPU: 64 px, mid-size net
    python benchmarks/dip_restoration.py --size 256 --arch dip --steps 3000 --device cuda

The init cache is pointed at a fresh folder so that every pretraining is computed for real.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from initium._registry import split_top
from initium.report import Table, mean_ci
from initium.runner import RunConfig, load_results, run, value_at

METHODS = ("default", "noise(noise=gaussian)", "noise(noise=uniform)", "noise(noise=spectral)")


def _fmt(values: list[float], digits: int = 1) -> str:
    if not values:
        return "—"
    mean, half = mean_ci(values)
    return f"{mean:.{digits}f}" + ("" if half != half else f" ± {half:.{digits}f}")  # half != half: nan


def _table(records: list[dict[str, Any]], methods: tuple[str, ...], early: int) -> tuple[str, dict[str, Any]]:
    """The markdown table of one task x image, and per method the mean peak step and peak PSNR."""
    by: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for r in records:
        if r.get("status") == "ok" and r["method"] in by:
            by[r["method"]].append(r)
    base_steps = [r["peak_step"] for r in by.get(methods[0], [])]
    base = statistics.mean(base_steps) if base_steps else float("nan")
    rows, means = [], {}
    for m, runs in by.items():
        if not runs:
            continue
        steps = [r["peak_step"] for r in runs]
        ratio = [s / base for s in steps] if base == base and base > 0 else []
        at_early = [value_at(r["curve"]["step"], r["curve"]["psnr"], early) for r in runs]
        fit_early = [value_at(r["curve"]["step"], r["curve"]["fit_psnr"], early) for r in runs]
        rows.append([
            m, str(len(runs)), _fmt([r["peak_psnr"] for r in runs], 2), _fmt(steps, 0), _fmt(ratio, 2),
            _fmt([r["psnr_drop"] for r in runs], 2), _fmt([v for v in at_early if v is not None], 2),
            _fmt([v for v in fit_early if v is not None], 2),
            f"{statistics.mean(r['wall']['init_s'] for r in runs):.0f}"
            f"+{statistics.mean(r['wall']['train_s'] for r in runs):.0f}",
        ])  # fmt: skip
        means[m] = (statistics.mean(steps), statistics.mean(r["peak_psnr"] for r in runs))
    cols = ["method", "seeds", "peak PSNR (dB)", "peak step", "steps to peak / default's", "drop to end (dB)",
            f"PSNR@{early}", f"fit PSNR@{early}", "init+train s"]  # fmt: skip
    return Table("", cols, rows).markdown(), means


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="dip-denoise,dip-sr,dip-inpaint")
    ap.add_argument("--images", default="astronaut,coffee")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--arch", default="dip(channels=32,levels=4)", help="'dip' is the paper's 5x128 net")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--pretrain", type=int, default=300, help="noise-pretraining steps")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--early", type=int, default=250, help="the early step of the PSNR columns")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated method specs; first = baseline")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", type=Path, default=Path("runs/bench/dip_restoration"))
    ap.add_argument("--report-only", action="store_true", help="summarise the finished runs, train nothing")
    args = ap.parse_args()
    os.environ["INITIUM_CACHE"] = tempfile.mkdtemp(prefix="initium-bench-cache-")
    methods = tuple(
        m if not m.startswith("noise") else m.replace("noise(", f"noise(steps={args.pretrain},", 1)
        for m in split_top(args.methods, ",")
    )
    start, sections, headline, env = time.perf_counter(), [], [], {}
    # Task-major then image-major: a sweep stopped early has every task on the first image.
    for image in args.images.split(","):
        for task in args.tasks.split(","):
            out = args.out / f"{task}_{image}_{args.size}"
            cfg = RunConfig(
                task=task, out=out, arch=args.arch, methods=methods, seeds=tuple(range(args.seeds)), steps=args.steps,
                eval_every=args.eval_every, device=args.device, task_options={"image": image, "size": args.size},
            )  # fmt: skip
            records = load_results(out) if args.report_only else run(cfg)
            if not records:
                continue
            env = records[-1]["env"]
            table, means = _table(records, methods, args.early)
            inp = records[0]["input_psnr"]
            sections.append(f"**{task} · {image} · {args.size} px** (input PSNR {inp:.2f} dB)\n\n{table}\n")
            base = means.get(methods[0])
            cells = []
            for m in methods[1:]:
                got = means.get(m)
                if not base or not got:
                    cells.append("—")
                elif max(got[0], base[0]) >= args.steps:  # a peak at the last step is no peak: still rising
                    cells.append(f"no peak by step {args.steps} / {got[1] - base[1]:+.2f} dB at it")
                else:
                    cells.append(f"{got[0] / base[0]:.2f}x / {got[1] - base[1]:+.2f} dB")
            headline.append([f"{task} · {image}", *cells])
            _write(args, env, methods, headline, sections, time.perf_counter() - start)
    print((args.out / "summary.md").read_text() if sections else "no results yet")


def _write(
    args: argparse.Namespace, env: dict, methods: tuple[str, ...], headline: list, sections: list, seconds: float
) -> None:
    """Rewrite the summary after every task x image, so a stopped sweep still reports what finished."""
    header = (
        f"Command: `python benchmarks/dip_restoration.py --size {args.size} --arch '{args.arch}' --steps {args.steps}"
        f" --pretrain {args.pretrain} --seeds {args.seeds} --eval-every {args.eval_every} --early {args.early}"
        f" --tasks {args.tasks} --images {args.images} --methods '{args.methods}' --out {args.out}`  \n"
        f"Device: {env['device']} ({env['device_name']}, {env['threads']} threads), torch {env['torch']}"
        + ("" if args.report_only else f"; {seconds:.0f} s for this invocation")
        + ".\n"
    )
    lead = "Steps to peak (ratio to `default`'s mean) / peak PSNR gain over `default` (means over seeds):\n\n"
    table = Table("", ["task · image", *methods[1:]], headline).markdown()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.md").write_text(header + "\n" + lead + table + "\n\n" + "\n".join(sections))


if __name__ == "__main__":
    main()
