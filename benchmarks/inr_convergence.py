"""Steps to 25/30 dB and PSNR at 100/300/1000 steps: default init vs target-noise pretraining.

Runs ``initium.runner.run`` for every architecture x image, all methods x seeds side by side in
one process, then writes a markdown table (mean +- 95% CI over seeds) for BENCHMARKS.md.

    python benchmarks/inr_convergence.py                       # CPU defaults: 64 px, 3 seeds
    python benchmarks/inr_convergence.py --size 256 --device cuda --images camera,astronaut

Results folders resume: rerunning after an interruption continues where it stopped. The init
cache is pointed at a fresh folder so that every pretraining is computed (and timed) for real.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from initium._registry import split_top
from initium.report import Table, summarize
from initium.runner import RunConfig, load_results, run, steps_to

METHODS = ("default", "noise", "noise(resample=True)", "noise(noise=uniform)", "noise(noise=spectral)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="siren,fourier,pe")
    ap.add_argument("--images", default="camera,astronaut")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated method specs")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", type=Path, default=Path("runs/bench/inr_convergence"))
    ap.add_argument("--report-only", action="store_true", help="summarise the finished runs, train nothing")
    args = ap.parse_args()
    os.environ["INITIUM_CACHE"] = tempfile.mkdtemp(prefix="initium-bench-cache-")
    methods = tuple(split_top(args.methods, ","))
    sections: list[str] = []
    headline: list[list[str]] = []
    start = time.perf_counter()
    env: dict = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
        # Image-major: if the sweep is stopped early, every architecture has the first image.
        for image in args.images.split(","):
            for arch in args.archs.split(","):
                out = args.out / f"{arch}_{image}_{args.size}"
                cfg = RunConfig(
                    task="image-fit", out=out, arch=arch, methods=methods, seeds=tuple(range(args.seeds)),
                    steps=args.steps, device=args.device, task_options={"image": image, "size": args.size},
                )  # fmt: skip
                if args.report_only:
                    records = load_results(out)
                else:
                    bar_id = bar.add_task(f"{arch} {image}", total=None)

                    def progress(label: str, k: int, n: int, bar_id=bar_id, name=f"{arch} {image}") -> None:
                        bar.update(bar_id, description=f"{name}: {label}", completed=k, total=n)

                    records = run(cfg, progress=progress)
                    bar.remove_task(bar_id)
                if not records:
                    continue
                env = records[-1]["env"]
                runs = sum(r.get("status") == "ok" for r in records)
                title = f"**{arch} · {image} · {args.size} px** ({runs} runs)"
                sections.append(f"{title}\n\n{summarize(records).markdown()}\n")
                headline.append([f"{arch} · {image}", *_speedups(records, methods)])
                _write(args, env, methods, headline, sections, time.perf_counter() - start)
    print((args.out / "summary.md").read_text() if sections else "no results yet")


def _speedups(records: list[dict], methods: tuple[str, ...]) -> list[str]:
    """Per method: mean steps to 30 dB of ``default`` over the method's, and its PSNR gain at
    step 100 (both means over seeds, read off the per-step curves)."""
    by: dict[str, list[list[float]]] = {}
    for r in records:
        if r.get("status") == "ok":
            by.setdefault(r["method"], []).append([-1e9 if v is None else v for v in r["metric_every_step"]])

    def mean_steps(curves: list[list[float]]) -> float:
        hits = [steps_to(c, 30.0) for c in curves]
        return statistics.mean(h for h in hits if h is not None) if all(h is not None for h in hits) else math.nan

    base = by.get("default")
    out = []
    for m in methods[1:]:
        if not base or m not in by:
            out.append("—")
            continue
        ratio = mean_steps(base) / mean_steps(by[m])
        gain = statistics.mean(c[100] for c in by[m]) - statistics.mean(c[100] for c in base)
        out.append(f"{ratio:.2f}x / {gain:+.1f} dB")
    return out


def _write(
    args: argparse.Namespace,
    env: dict,
    methods: tuple[str, ...],
    headline: list[list[str]],
    sections: list[str],
    seconds: float,
) -> None:
    """Rewrite the summary after every section, so a stopped sweep still reports what finished."""
    header = (
        f"Command: `python benchmarks/inr_convergence.py --size {args.size} --steps {args.steps} --seeds {args.seeds}"
        f" --archs {args.archs} --images {args.images}`  \n"
        f"Device: {env['device']} ({env['device_name']}, {env['threads']} threads), torch {env['torch']}"
        + ("" if args.report_only else f"; {seconds:.0f} s for this invocation")
        + ".\n"
    )
    table = Table("", ["arch · image", *methods[1:]], headline).markdown()
    lead = "Speed-up in steps to 30 dB against `default` (mean over seeds), and PSNR gain at step 100:\n\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.md").write_text(header + "\n" + lead + table + "\n\n" + "\n".join(sections))


if __name__ == "__main__":
    main()
