"""Graph hypernetwork (GHN-2 style, ``initium.ghn``; the noise GHN of paper 002): the numbers.
Parts, each printed as markdown tables (and kept in OUT/*.json):

- ``eval``: test accuracy on digits of nets whose every parameter the GHN predicts (``ghn``,
  BatchNorm statistics re-estimated on the training images) against the architecture's default
  init (``default``), with no training (epoch 0), after 1 epoch and after ``--epochs`` epochs of
  classify's training (SGD, momentum 0.9, batch 32, the arch's lr), over ``--seeds`` seeds: on
  ``--held`` held-out specs of the GHN's space (never trained on), ``--ood`` out-of-distribution
  specs (``ood``: wider, deeper, no normalisation) and the hand-written nets (``classifier-cnn``,
  ``classifier-mlp``, a ResNet). Per group: mean ± 95% CI over specs (of each spec's mean over
  seeds), median and minimum, and the fraction of specs where GHN + 1 epoch beats default + 1
  epoch; per hand-written net: mean ± 95% CI over seeds. Nothing is chosen on the test split.
- ``ensembles``: deep ensembles of ``--ens-size`` (5) seeds of ``default``, ``ghn`` and the noise
  GHN (``ghn(path=NOISE,noise=true)``) after ``--ens-epochs`` (1) epoch, on ``classifier-cnn`` and a
  held-out spec, through the runner (``initium run classify``: it stores the clean and corrupted test
  logits) and the report's ensemble code (``initium.report.ensemble_results``: accuracy, NLL, ECE,
  Brier, member disagreement; clean digits and corruption severities, ``initium.tasks.corruptions``).

    OMP_NUM_THREADS=1 python benchmarks/ghn.py --parts eval,report,ensembles --out runs/bench/ghn \\
        --noise-ghn runs/ghn-noise
    # the eval part in 4 parallel processes, then the merged tables:
    for k in 0 1 2 3; do OMP_NUM_THREADS=1 python benchmarks/ghn.py --parts eval --shard $k/4 & done; wait
    python benchmarks/ghn.py --parts report,ensembles --noise-ghn runs/ghn-noise
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Any

import torch

import initium
from initium.nn import sample_space, split_space
from initium.records import LOGITS, load_results
from initium.report import ensemble_results, ensemble_table, group, mean_ci
from initium.runner import RunConfig, run
from initium.tasks import TASKS
from initium.train import TrainingDiverged

HAND = ("classifier-cnn", "classifier-mlp", "resnet(depth=8,width=8)")


def fmt(values: list[float], digits: int = 3) -> str:
    if not values:
        return "—"
    mean, half = mean_ci(values)
    return f"{mean:.{digits}f}" + ("" if math.isnan(half) else f" ± {half:.{digits}f}")


def _ghn_meta(path: str | None) -> dict[str, Any]:
    folder = Path(path) if path else Path(initium.ghn.BUNDLED)
    saved = json.loads((folder / "ghn.json").read_text())
    return saved.get("meta", saved)


def held_out_specs(path: str | None, count: int) -> list[str]:
    """The first ``count`` held-out specs of the space the GHN at ``path`` was trained on (its JSON
    names the space and the split's sizes)."""
    space = _ghn_meta(path).get("space", {})
    held = split_space(space.get("name", "small"), space.get("train", 2000), space.get("held_out", 200))[1]
    if len(held) < count:
        raise ValueError(f"the GHN's space holds out {len(held)} specs; ask for at most that many (--held)")
    return held[:count]


def _curve(task: Any, spec: str, method: str, seed: int, epochs: int) -> list[float]:
    """Test accuracy at epochs 0, 1 and ``epochs`` of one run (the runner's order: seed, build, init, fit)."""
    torch.manual_seed(seed)
    model = task.build_model(*task.parse_arch(spec))
    initium.create(method, seed=seed)(model, task.inputs)
    accs: list[float] = []
    points = sorted({0, 1, epochs})
    try:
        task.fit(model, steps=epochs, lr=float(model.default_lr), evaluate_at=points,
                 on_eval=lambda _k, _pred: accs.append(task.evaluate_model(model)["test_acc"]))  # fmt: skip
    except TrainingDiverged:  # a deep unnormalised net at the arch's lr: kept as NaN, counted in the table
        accs += [math.nan] * (len(points) - len(accs))
    return accs


def _applies(task: Any, spec: str, method: str) -> bool:
    """Whether ``method`` can initialise ``spec``'s net (its ``validate`` raises nothing)."""
    model = task.build_model(*task.parse_arch(spec))
    try:
        initium.create(method).validate(model, task.inputs)
    except ValueError:
        return False
    return True


def part_eval(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    task = TASKS.build("classify", {"dataset": "digits", "ood": False, "corrupt": False, "track": False})
    task.setup(torch.device("cpu"))
    ghn = f"ghn(path={args.ghn})" if args.ghn else "ghn"
    methods = {"default": "default", "ghn": ghn}
    if args.vae:  # the local generative init, on the specs its layer map can fill
        methods["vae"] = f"vae(path={args.vae})"
    groups = {
        "held-out": (held_out_specs(args.ghn, args.held), args.epochs),
        "ood": (sample_space("ood", args.ood, seed=0), args.epochs),
        "hand-written": (list(HAND), args.hand_epochs),
    }
    seeds = list(range(args.seeds))
    results: dict[str, Any] = {"ghn": args.ghn or "bundled", "seeds": seeds, "groups": {}}
    k, n = (int(v) for v in args.shard.split("/"))
    for name in args.groups.split(","):
        specs, epochs = groups[name]
        specs = specs[k::n]  # this process's share (--shard K/N): parallel processes, merged by part "report"
        t0 = time.perf_counter()
        rows = []
        for spec in specs:
            row: dict[str, Any] = {"spec": spec}
            for label, method in methods.items():
                if label == "vae" and not _applies(task, spec, method):
                    row[label] = None  # a layer the VAE has no slices for (e.g. 5x5 kernels): not comparable
                    continue
                row[label] = [_curve(task, spec, method, s, epochs) for s in seeds]  # [seed][acc@0, acc@1, acc@E]
            rows.append(row)
        results["groups"][name] = {"rows": rows, "epochs": epochs, "seconds": time.perf_counter() - t0}
        _print_group(name, rows, epochs, len(seeds))
    (out / f"eval-{args.groups.replace(',', '-')}-{k}of{n}.json").write_text(json.dumps(results, indent=1))
    return results


def part_report(out: Path) -> dict[str, Any]:
    """The eval part's tables from every OUT/eval-*.json (the shards of parallel processes), merged."""
    merged: dict[str, Any] = {}
    for path in sorted(out.glob("eval-*.json")):
        data = json.loads(path.read_text())
        for name, g in data["groups"].items():
            slot = merged.setdefault(name, {"rows": [], "epochs": g["epochs"], "seconds": 0.0, "seeds": data["seeds"]})
            slot["rows"] += g["rows"]
            slot["seconds"] += g["seconds"]
    for name in ("held-out", "ood", "hand-written"):
        if name in merged:
            g = merged[name]
            _print_group(name, g["rows"], g["epochs"], len(g["seeds"]))
            print(f"\n({len(g['rows'])} specs, {g['seconds']:.0f} s of process time)")
    (out / "eval.json").write_text(json.dumps(merged, indent=1))
    return merged


def _print_group(name: str, rows: list[dict[str, Any]], epochs: int, seeds: int) -> None:
    cols = ["acc@0", "acc@1"] + ([f"acc@{epochs}"] if epochs > 1 else [])
    if name == "hand-written":
        print(f"\n### {name}: test accuracy on digits, mean ± 95% CI over {seeds} seeds\n")
        print("| arch | init | " + " | ".join(cols) + " |\n|---|---|" + "---|" * len(cols))
        for row in rows:
            for label in [lb for lb in ("default", "ghn", "vae") if row.get(lb)]:
                cells = [fmt([c[i] for c in row[label]]) for i in range(len(cols))]
                print(f"| {row['spec']} | {label} | " + " | ".join(cells) + " |")
        return
    n = len(rows)

    def mean(values: list[float]) -> float:  # over the seeds that did not diverge
        finite = [v for v in values if math.isfinite(v)]
        return statistics.fmean(finite) if finite else math.nan

    per_spec = {label: [[mean([c[i] for c in row[label]]) for row in rows] for i in range(len(cols))]
                for label in ("default", "ghn")}  # fmt: skip
    # a spec whose every seed diverged counts as beaten by one that trained
    beats = sum(math.isfinite(g) and (not math.isfinite(d) or g > d)
                for g, d in zip(per_spec["ghn"][1], per_spec["default"][1], strict=True))  # fmt: skip
    for label in ("default", "ghn"):
        runs = [c for row in rows for c in row[label]]
        bad = sum(not math.isfinite(c[-1]) for c in runs)
        if bad:
            print(f"\n{label}: {bad} of {len(runs)} runs diverged in training (NaN loss); their acc@1 is left out")
            per_spec[label] = [[v for v in col if math.isfinite(v)] for col in per_spec[label]]
    print(f"\n### {name} specs ({n}): test accuracy on digits, mean ± 95% CI over specs (each the mean of"
          f" {seeds} seeds); median, min\n")  # fmt: skip
    print("| init | " + " | ".join(cols) + " | median@0 | min@0 |\n|---|" + "---|" * (len(cols) + 2))
    for label in ("default", "ghn"):
        v = per_spec[label]
        print(f"| {label} | " + " | ".join(fmt(x) for x in v) + f" | {statistics.median(v[0]):.3f} | {min(v[0]):.3f} |")
    print(f"\nGHN + 1 epoch beats default + 1 epoch on {beats} of {n} specs ({beats / n:.0%}).")
    _print_vae(rows, cols)


def _finite_mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan


def _print_vae(rows: list[dict[str, Any]], cols: list[str]) -> None:
    """default, VAE and GHN on the specs the VAE could fill (the VAE's layer map needs its slice shapes)."""
    both = [row for row in rows if row.get("vae")]
    if not both:
        return
    print(f"\n{len(both)} of {len(rows)} specs have layers the VAE can fill; on those, mean ± 95% CI over specs:\n")
    print("| init | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for label in ("default", "vae", "ghn"):
        v = [[_finite_mean([c[i] for c in row[label]]) for row in both] for i in range(len(cols))]
        print(f"| {label} | " + " | ".join(fmt([x for x in col if math.isfinite(x)]) for col in v) + " |")


def _short(label: str) -> str:
    """A method's row label: ``ghn``, ``default``, or ``ghn-noise[FOLDER]`` for a noise GHN."""
    name = label.split("(")[0]
    if "noise=true" in label:
        path = re.search(r"path=([^,)]+)", label)
        return f"{name}-noise[{Path(path.group(1)).name if path else 'bundled'}]"
    return name


def part_ensembles(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    ghn = f"ghn(path={args.ghn})" if args.ghn else "ghn"
    methods = ["default", ghn]
    methods += [f"ghn(path={path},noise=true)" for path in (args.noise_ghn.split(",") if args.noise_ghn else [])]
    if not args.noise_ghn:
        print("\n(ensembles: no --noise-ghn given; the noise GHN is left out)")
    archs = ["classifier-cnn", held_out_specs(args.ghn, 1)[0]]
    results: dict[str, Any] = {}
    for i, arch in enumerate(archs):
        folder = out / f"ens-{i}"
        cfg = RunConfig(task="classify", out=folder, arch=arch, methods=tuple(methods),
                        seeds=tuple(range(args.ens_size)), device="cpu",
                        task_options={"dataset": "digits", "epochs": args.ens_epochs, "ood": False,
                                      "track": False})  # fmt: skip
        t0 = time.perf_counter()
        run(cfg)
        groups = {_short(label): [r for r in runs if r.get("status") == "ok" and r.get(LOGITS)]
                  for label, runs in group(load_results(folder)).items()}  # fmt: skip
        ens = ensemble_results(groups, folder, k=args.ens_size, draws=1, seed=0)
        results[arch] = {"seconds": time.perf_counter() - t0, "ensembles": ens}
        table = ensemble_table(ens, severities={0, 1, 3, 5})
        print(f"\n### {arch}, {args.ens_epochs} epoch(s), ensembles of {args.ens_size}: {table.title}\n")
        print(table.markdown())
    (out / "ensembles.json").write_text(json.dumps(results, indent=1, default=str))
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/bench/ghn"))
    p.add_argument("--parts", default="eval,report,ensembles", help="comma-separated: eval, report, ensembles")
    p.add_argument("--ghn", default=None, help="the GHN folder (default: the bundled GHN)")
    p.add_argument(
        "--noise-ghn",
        default=None,
        help="noise GHN folders (initium train ghn --noise), comma-separated, for ensembles",
    )
    p.add_argument("--vae", default=None, help="eval part: a weight VAE folder (initium train vae) to compare too")
    p.add_argument("--held", type=int, default=50, help="held-out specs of the GHN's space")
    p.add_argument("--ood", type=int, default=10, help="out-of-distribution specs (space 'ood')")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=1, help="epochs of training of the held-out and ood specs")
    p.add_argument("--hand-epochs", type=int, default=5, help="epochs of training of the hand-written nets")
    p.add_argument("--groups", default="held-out,ood,hand-written", help="eval part: comma-separated groups")
    p.add_argument("--shard", default="0/1", help="eval part: K/N, this process takes every N-th spec from the K-th")
    p.add_argument("--ens-size", type=int, default=5)
    p.add_argument("--ens-epochs", type=int, default=1)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    print(f"device: cpu, {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads,"
          f" torch {torch.__version__}")  # fmt: skip
    t0 = time.perf_counter()
    if "eval" in parts:
        part_eval(args.out, args)
    if "report" in parts:
        part_report(args.out)
    if "ensembles" in parts:
        part_ensembles(args.out, args)
    print(f"\ntotal wall time: {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
