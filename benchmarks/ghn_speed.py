"""Graph hypernetwork speed (``initium.ghn``); ratios measured side by side in one run. (The
accuracy parts are ``benchmarks/ghn.py``.)

    OMP_NUM_THREADS=1 python benchmarks/ghn_speed.py [--repeats 3] [--steps 20]
    python benchmarks/ghn_speed.py --device cuda

Two parts:

(a) **ResNet-50 in one call.** ``resnet-bottleneck`` with blocks (3, 4, 6, 3) (ResNet-50, 23.5 M
    parameters with 10 classes) on one 3x224x224 image, an untrained GHN of the default
    :class:`~initium.ghn.GHNConfig` (the time does not depend on training). Each repeat runs in a
    fresh process (so that nothing the graph or the GHN cache per graph, such as the virtual-edge
    distances, carries over), timing: ``build`` (``initium.graph.build``), ``predict`` (cold: the
    graph's levels and virtual edges, message passing, decoding all parameters), ``predict (warm)``
    (a second call on the same graph), and ``fill`` (``ghn.fill``: build + predict + copying into
    the model + BatchNorm re-estimation on the same image). Median over repeats. Context: GHN-2
    reports predicting a ResNet-50's parameters in "under 1 second" on a GPU (Knyazev et al. 2021);
    GHN-3-XL's was measured at 3.4 s.
(b) **Training speed: levels vs nodes.** Meta-batches per second of ``predict`` + ``backward`` (the
    sum of squares of all predictions as the loss: the GHN's share of a training step; the nets'
    forward on images is the same for both) on a meta-batch of 8 small nets, for
    ``mode="levels"`` (one batched update per topological level across the 8 graphs) and
    ``mode="nodes"`` (GHN-2's per-node loop), interleaved step by step; median step time each and
    the ratio; and the same for the message passing alone (``GHN.encode``: the node states'
    sum of squares as the loss, no decoder), the part the two modes do differently.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

from initium import ghn, graph
from initium.nn import ARCHS
from initium.runner import environment, sync

RESNET50 = ("resnet-bottleneck", {"blocks": (3, 4, 6, 3), "width": 64}, (3, 224, 224))
META_BATCH = [  # 8 small nets on digits-sized images (1x8x8), 10 classes
    ("classifier-cnn", {}),
    ("classifier-mlp", {}),
    ("resnet", {"depth": 8, "width": 4}),
    ("resnet", {"depth": 8, "width": 8}),
    ("resnet", {"depth": 14, "width": 8}),
    ("resnet", {"depth": 20, "width": 8}),
    ("resnet-bottleneck", {"blocks": (1, 1), "width": 8}),
    ("resnet-bottleneck", {"blocks": (2, 2), "width": 8}),
]


def _timed(device: torch.device, fn: Any) -> tuple[float, Any]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def resnet50_once(device: torch.device) -> dict[str, float]:
    """One cold measurement of part (a), in this process."""
    arch, kwargs, shape = RESNET50
    torch.manual_seed(0)
    model = ARCHS.build(arch, kwargs, fixed={"in_shape": shape, "out_features": 10}).to(device)
    net = ghn.GHN().to(device).eval()
    x = torch.randn(1, *shape, device=device)
    t_build, g = _timed(device, lambda: graph.build(model, x))
    with torch.no_grad():
        t_predict, pred = _timed(device, lambda: net.predict([g])[0])
        t_warm, _ = _timed(device, lambda: net.predict([g])[0])
    # fill on a fresh copy of the model (a new graph object, equal to g: the GHN's per-graph cache hits)
    model2 = ARCHS.build(arch, kwargs, fixed={"in_shape": shape, "out_features": 10}).to(device)
    t_fill, report = _timed(device, lambda: ghn.fill(model2, x, net))
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "predicted_params": sum(t.numel() for t in pred.values()),
        "nodes": len(g.nodes),
        "edges": len(g.edges),
        "virtual_edges": len(g.virtual_edges(net.config.cutoff)),
        "unpredicted": len(report.unpredicted),
        "build_s": t_build,
        "predict_s": t_predict,
        "predict_warm_s": t_warm,
        "fill_s": t_fill,
    }


def _meta_batch(device: torch.device) -> list[graph.Graph]:
    out = []
    for arch, kwargs in META_BATCH:
        model = ARCHS.build(arch, kwargs, fixed={"in_shape": (1, 8, 8), "out_features": 10})
        out.append(graph.build(model, torch.randn(2, 1, 8, 8)))
    return out


def training_speed(device: torch.device, steps: int) -> dict[str, Any]:
    """Part (b): interleaved predict + backward steps, per mode."""
    torch.manual_seed(0)
    net = ghn.GHN().to(device).train()
    graphs = _meta_batch(device)
    times: dict[str, list[float]] = {"levels": [], "nodes": [], "levels (GNN)": [], "nodes (GNN)": []}

    def step(mode: str) -> None:
        net.zero_grad(set_to_none=True)
        if mode.endswith("(GNN)"):  # the message passing alone: node states, no decoder
            loss = sum(h.square().mean() for h in net.encode(graphs, mode=mode.split()[0]))
        else:
            loss = sum((t**2).mean() for p in net.predict(graphs, mode=mode) for t in p.values())
        loss.backward()

    for mode in times:  # warm-up (allocator, caches of the graphs' levels and virtual edges)
        step(mode)
    for _ in range(steps):
        for mode in times:
            times[mode].append(_timed(device, lambda mode=mode: step(mode))[0])
    med = {m: statistics.median(t) for m, t in times.items()}
    return {
        "speedup_gnn": med["nodes (GNN)"] / med["levels (GNN)"],
        "nets": [f"{a}({','.join(f'{k}={v}' for k, v in kw.items())})" for a, kw in META_BATCH],
        "nodes_per_batch": sum(len(g.nodes) for g in graphs),
        "levels_per_batch": max(len(g.levels()) for g in graphs),
        "steps": steps,
        "median_s": med,
        "per_s": {m: 1.0 / s for m, s in med.items()},
        "speedup": med["nodes"] / med["levels"],
    }


def speed(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    runs = []
    for _ in range(args.repeats):
        cmd = [sys.executable, __file__, "--resnet50-once", "--device", args.device]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ.copy())
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    keys = ("build_s", "predict_s", "predict_warm_s", "fill_s")
    med = {k: statistics.median(r[k] for r in runs) for k in keys}
    first = runs[0]
    print(f"env: {json.dumps(environment(device))} ({platform.machine()}, load {os.getloadavg()[0]:.1f})")
    print(
        f"(a) ResNet-50: {first['params']:,} parameters ({first['predicted_params']:,} predicted, "
        f"{first['unpredicted']} tensors not), graph {first['nodes']} nodes, {first['edges']} edges, "
        f"{first['virtual_edges']} virtual edges; median of {len(runs)} fresh processes:"
    )
    print("| step | median s | runs (s) |\n|---|---|---|")
    for k in keys:
        print(f"| {k[:-2]} | {med[k]:.3f} | {', '.join(f'{r[k]:.3f}' for r in runs)} |")
    b = training_speed(device, args.steps)
    print(
        f"(b) meta-batch of {len(b['nets'])} nets ({b['nodes_per_batch']} nodes, deepest graph {b['levels_per_batch']} "
        f"levels): {', '.join(b['nets'])}; {b['steps']} interleaved steps per mode"
    )
    print("| mode | median s / meta-batch | meta-batches / s |\n|---|---|---|")
    for m in b["median_s"]:
        print(f"| {m} | {b['median_s'][m]:.4f} | {b['per_s'][m]:.2f} |")
    print(f"levels / nodes speed-up: {b['speedup']:.2f}x (predict + backward), {b['speedup_gnn']:.2f}x (GNN alone)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes timing the ResNet-50 (median)")
    parser.add_argument("--steps", type=int, default=20, help="interleaved training steps per mode")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resnet50-once", action="store_true", help="(internal) one cold ResNet-50 timing, as JSON")
    args = parser.parse_args()
    if args.resnet50_once:
        print(json.dumps(resnet50_once(torch.device(args.device))))
    else:
        speed(args)


if __name__ == "__main__":
    main()
