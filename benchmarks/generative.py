"""Generative initialisation (Harder et al., "From Pointwise to Powerhouse"; Atanov et al.'s Deep
Weight Prior): the numbers. Parts, each printed as markdown tables (and kept in OUT/*.json):

- ``zoo``: model-zoo building speed, nets per hour, one process against two
  (``python -m torch.distributed.run --standalone --nproc_per_node 2 -m initium.cli zoo build``), the
  same settings, one after the other in one run; and whether both give the same catalog (seeds and
  sha256 of every net).
- ``init``: the weight-VAE init ``vae(path=VAE)`` against the architecture's default init (He for
  the ResNet; PyTorch's default for the classify CNN), explicit He (``kaiming``), Xavier
  (``xavier``) and the zoo-statistics baseline (``zoo-stats(path=ZOO)``: each layer Gaussian with
  its zoo layer's mean and std), on a ResNet and on ``classifier-cnn``, digits. Per family a zoo
  of ``--zoo-count`` nets (seeds 0..N-1) and a VAE trained on it; the evaluated runs use seeds
  100, 101, ... (none shared with the zoo). Test accuracy after 1, 2 and 5 epochs and at the end,
  read from the records' curves, mean ± 95% CI over seeds. Nothing is selected on the test split:
  every setting is fixed in advance (the architectures' own lr, classify's defaults, the VAE's
  defaults of ``initium train vae``).
- ``ensembles``: deep ensembles of ``--ens-size`` (5) seeds of each init method of the ``init``
  part, from its runs' stored test logits (``classify`` keeps them, clean and corrupted), scored by
  the report's code (``initium.report.ensemble_results``): accuracy, NLL, ECE, Brier and member
  disagreement on clean digits and, per severity, averaged over the corruptions
  (``initium.tasks.corruptions``); mean ± 95% CI over ``--ens-draws`` (10) seeded draws of members
  without replacement. Runs the ``init`` part first (resuming) where its folders lack the logits.

    OMP_NUM_THREADS=1 python benchmarks/generative.py --out runs/bench/gen --parts zoo,init,ensembles --seeds 10
    python benchmarks/generative.py --out runs/bench/gen-gpu --parts init --device cuda \\
        --resnet 'resnet(depth=20,width=16)' --zoo-count 50 --zoo-epochs 30 --seeds 10 --epochs 30
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from initium import vae
from initium.records import LOGITS, load_results
from initium.report import ensemble_results, ensemble_table, group, mean_ci
from initium.runner import RunConfig, run
from initium.zoo import Zoo, build

EVAL_SEED0 = 100  # evaluated runs: seeds 100, 101, ...; the zoos' nets have seeds 0 .. count-1
CHECKPOINTS = (1, 2, 5)


def fmt(values: list[float], digits: int = 3) -> str:
    if not values:
        return "—"
    mean, half = mean_ci(values)
    return f"{mean:.{digits}f}" + ("" if math.isnan(half) else f" ± {half:.{digits}f}")


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


# --- part: zoo building speed ----------------------------------------------------------------------


def part_zoo(out: Path, arch: str, count: int, epochs: int) -> dict[str, Any]:
    args = ["-m", "initium.cli", "zoo", "build", "--arch", arch, "--count", str(count), "--epochs", str(epochs),
            "--dataset", "digits", "--device", "cpu"]  # fmt: skip
    launchers = {
        1: [sys.executable],
        2: [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
    }
    results: dict[str, Any] = {"arch": arch, "count": count, "epochs": epochs, "runs": {}}
    catalogs = {}
    for procs, launcher in launchers.items():
        zoo = out / f"zoo-speed-{procs}p"
        shutil.rmtree(zoo, ignore_errors=True)
        t0 = time.perf_counter()
        done = subprocess.run([*launcher, *args, "--out", str(zoo)], env=_env(), capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if done.returncode != 0:
            raise SystemExit(f"zoo build with {procs} process(es) failed:\n{done.stderr[-3000:]}")
        entries = Zoo(zoo).entries()
        catalogs[procs] = {e.seed: e.sha256 for e in entries}
        results["runs"][procs] = {
            "seconds": seconds,
            "nets": len(entries),
            "nets_per_hour": len(entries) / seconds * 3600,
        }
    results["same_seeds"] = sorted(catalogs[1]) == sorted(catalogs[2]) == list(range(count))
    results["same_files"] = catalogs[1] == catalogs[2]
    (out / "zoo.json").write_text(json.dumps(results, indent=1))
    r1, r2 = results["runs"][1], results["runs"][2]
    print(f"\n### Zoo building speed: {count} × {arch}, {epochs} epochs on digits, CPU, 1 thread per process\n")
    print("| processes | wall s | nets | nets per hour |")
    print("|---|---|---|---|")
    for procs, r in results["runs"].items():
        print(f"| {procs} | {r['seconds']:.1f} | {r['nets']} | {r['nets_per_hour']:.0f} |")
    ratio = r2["nets_per_hour"] / r1["nets_per_hour"]
    print(f"\n2 processes / 1 process: **{ratio:.2f}x** nets per hour; same seeds 0..{count - 1}:"
          f" {results['same_seeds']}; bit-identical files (sha256): {results['same_files']}")  # fmt: skip
    return results


# --- part: the VAE init against the baselines --------------------------------------------------------


def _zoo_and_vae(out: Path, arch: str, count: int, epochs: int, vae_epochs: int, device: str) -> dict[str, Any]:
    """A zoo of ``count`` nets (seeds 0..count-1) and a VAE trained on it (both resume)."""
    name = arch.split("(")[0]
    zoo, folder = out / f"zoo-{name}", out / f"vae-{name}"
    t0 = time.perf_counter()
    built = build(zoo, arch, "digits", count=count, epochs=epochs, device=device)
    t1 = time.perf_counter()
    bank = vae.train(zoo, folder, epochs=vae_epochs, device=device)
    t2 = time.perf_counter()
    accs = [e.test_acc for e in built.entries]
    val = {layer.name: (layer.val_loss[0], layer.val_loss[-1]) for layer in bank.layers}
    return {"zoo": str(zoo), "vae": str(folder), "zoo_s": t1 - t0, "vae_s": t2 - t1, "zoo_test_acc": accs, "val": val,
            "layers": len(bank.layers)}  # fmt: skip


def _at(rec: dict[str, Any], epoch: int) -> float | None:
    steps = rec["curve"]["step"]
    return rec["curve"]["test_acc"][steps.index(epoch)] if epoch in steps else None


def part_init(out: Path, archs: list[str], args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    seeds = tuple(range(EVAL_SEED0, EVAL_SEED0 + args.seeds))
    for arch in archs:
        made = _zoo_and_vae(out, arch, args.zoo_count, args.zoo_epochs, args.vae_epochs, args.device)
        methods = ("default", "kaiming", "xavier", f"zoo-stats(path={made['zoo']})", f"vae(path={made['vae']})")
        cfg = RunConfig(
            task="classify", out=out / f"runs-{arch.split('(')[0]}", arch=arch, methods=methods, seeds=seeds,
            device=args.device, task_options={"dataset": "digits", "epochs": args.epochs, "ood": False, "track": False},
        )  # fmt: skip
        t0 = time.perf_counter()
        records = [r for r in run(cfg) if r["status"] == "ok"]
        seconds = time.perf_counter() - t0
        rows = []
        for spec in methods:
            runs = [r for r in records if r["method"] == spec]
            row = {"method": spec.split("(")[0], "seeds": len(runs)}
            for e in (*CHECKPOINTS, args.epochs):
                row[e] = [v for r in runs if (v := _at(r, e)) is not None]
            row["init"] = [_at(r, 0) for r in runs if _at(r, 0) is not None]
            row["fills"] = sorted({len((r.get("method_info") or {}).get("filled", {})) for r in runs})
            rows.append(row)
        results[arch] = {**made, "seconds": seconds, "rows": rows}
        accs = made["zoo_test_acc"]
        print(f"\n### {arch} on digits: test accuracy, mean ± 95% CI over {args.seeds} seeds ({seconds:.0f} s)\n")
        print(f"Zoo: {len(accs)} nets (seeds 0..{len(accs) - 1}), {args.zoo_epochs} epochs, test accuracy"
              f" {fmt(accs)} ({made['zoo_s']:.0f} s); VAE: {args.vae_epochs} epochs ({made['vae_s']:.0f} s)."
              f" Evaluated seeds {seeds[0]}..{seeds[-1]}, {args.epochs} epochs (SGD, momentum 0.9, batch 32, the"
              f" arch's lr). Layers filled (of {made['layers']}): " + ", ".join(
                  f"{row['method']} {'/'.join(map(str, row['fills']))}" for row in rows[-2:]) + ".\n")  # fmt: skip
        ends = sorted({*CHECKPOINTS, args.epochs})
        print("| init | acc@0 | " + " | ".join(f"acc@{e}" for e in ends) + " |")
        print("|---|---|" + "---|" * len(ends))
        for row in rows:
            print(f"| {row['method']} | {fmt(row['init'])} | " + " | ".join(fmt(row[e]) for e in ends) + " |")
    (out / "init.json").write_text(json.dumps(results, indent=1, default=str))
    return results


# --- part: ensembles ---------------------------------------------------------------------------------


def part_ensembles(out: Path, archs: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Ensembles of ``--ens-size`` seeds per init method from the ``init`` part's runs (their stored
    clean and corrupted test logits; the ``init`` part is run first, resuming, where its folders lack
    them), scored by the report's own code (:func:`initium.report.ensemble_results`: members drawn
    without replacement, ``--ens-draws`` seeded draws; a severity's value is the mean over the
    corruptions at it). Printed: clean and severities ``--ens-severities``; kept in full in
    OUT/ensembles.json."""
    folders = {arch: out / f"runs-{arch.split('(')[0]}" for arch in archs}
    have = {a: [r for r in load_results(f) if r.get("status") == "ok" and r.get(LOGITS)] if f.exists() else []
            for a, f in folders.items()}  # fmt: skip
    if any(len(runs) < args.ens_size for runs in have.values()):
        print("\n(ensembles: the init part's folders lack enough runs with stored logits: running it, resuming)")
        part_init(out, archs, args)
    shown = {0, *(int(s) for s in args.ens_severities.split(","))}
    results: dict[str, Any] = {}
    for arch, folder in folders.items():
        groups = {label.split("(")[0]: [r for r in runs if r.get("status") == "ok"]
                  for label, runs in group(load_results(folder)).items()}  # fmt: skip
        ens = ensemble_results(groups, folder, k=args.ens_size, draws=args.ens_draws, seed=0)
        results[arch] = ens
        table = ensemble_table(ens, severities=shown)
        print(f"\n### {arch} on digits: {table.title}\n")
        print(table.markdown())
    (out / "ensembles.json").write_text(json.dumps(results, indent=1, default=str))
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/bench/gen"))
    p.add_argument("--parts", default="zoo,init", help="comma-separated: zoo, init, ensembles")
    p.add_argument("--device", default="cpu")
    p.add_argument("--resnet", default="resnet(depth=8,width=8)", help="the ResNet of the init part")
    p.add_argument("--zoo-count", type=int, default=20, help="nets per zoo of the init part (seeds 0..N-1)")
    p.add_argument("--zoo-epochs", type=int, default=20)
    p.add_argument("--vae-epochs", type=int, default=30)
    p.add_argument("--seeds", type=int, default=5, help="evaluated seeds (100, 101, ...)")
    p.add_argument("--epochs", type=int, default=20, help="epochs of the evaluated runs")
    p.add_argument("--speed-count", type=int, default=16, help="nets of the zoo part's builds")
    p.add_argument("--speed-epochs", type=int, default=10)
    p.add_argument("--ens-size", type=int, default=5, help="members per ensemble (drawn from the evaluated seeds)")
    p.add_argument("--ens-draws", type=int, default=10, help="seeded draws of members per method")
    p.add_argument("--ens-severities", default="1,3,5", help="corruption severities printed (all kept in the json)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    print(f"device: {args.device}, {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads,"
          f" torch {torch.__version__}")  # fmt: skip
    t0 = time.perf_counter()
    if "zoo" in parts:
        part_zoo(args.out, args.resnet, args.speed_count, args.speed_epochs)
    if "init" in parts:
        part_init(args.out, [args.resnet, "classifier-cnn"], args)
    if "ensembles" in parts:
        part_ensembles(args.out, [args.resnet, "classifier-cnn"], args)
    print(f"\ntotal wall time: {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
