"""The ``initium`` command: parse, build configs, call the runner / report / cache. Thin."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import logging
import shlex
import sys
import typing
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table as RichTable

from . import distributed
from ._registry import UnknownNameError, closest, config_doc, field_help, matching, parse_literal, split_top
from .cache import CacheError, InitCache
from .methods import METHODS, RULES
from .nn import ARCHS
from .precision import PRECISIONS
from .tasks import IMAGE_DESCRIPTIONS, SAMPLE_IMAGES, TASKS
from .train import Progress as TrainProgress

log = logging.getLogger(__name__)
console = Console(stderr=True)
out_console = Console()
out_console.width = max(out_console.width, 110)  # the summary table stays on one line per method
# What bad input raises (UnknownNameError and SpecError are ValueErrors); anything else is a bug
# and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, CacheError)


MAX_SEEDS = 100_000  # a larger count is a typo, not a sweep (and its tuple alone would fill the memory)
SEED_LIMIT = 2**63  # torch.manual_seed and torch.Generator take seeds below 2**64; one bit of margin
MAX_STEPS = 10**8  # more is a typo: its loss history alone (4 bytes a step) would not fit, and the run never end


def _seeds(text: str) -> tuple[int, ...]:
    """``3`` -> seeds 0, 1, 2; ``0,5,9`` -> those seeds."""
    try:
        if "," in text:
            seeds = tuple(int(s) for s in text.split(",") if s.strip())
            if any(not 0 <= s < SEED_LIMIT for s in seeds):
                raise argparse.ArgumentTypeError(f"--seeds: every seed must be in [0, 2**63), got {text!r}")
            return seeds
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes a count (3) or a list (0,5,9), got {text!r}") from None
    if not 1 <= n <= MAX_SEEDS:
        raise argparse.ArgumentTypeError(f"--seeds takes a count from 1 to {MAX_SEEDS}, got {n}")
    return tuple(range(n))


def _floats(text: str) -> tuple[float, ...]:
    """``25,30,40`` -> numbers, at least one (the runner refuses non-finite ones, which would make a
    "steps to nan" column, with the same message for the API)."""
    try:
        values = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 25,30,40, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(
            f"--thresholds takes one or more finite numbers such as 25,30,40, got {text!r}"
        )
    return values


def _tuple_option(text: str) -> tuple[Any, ...]:
    """``1,4,16`` -> ``(1, 4, 16)`` (each item a Python literal or a bare word)."""
    return tuple(parse_literal(t.strip()) for t in text.split(",") if t.strip())


def _add_config_options(parser: argparse.ArgumentParser, config: type) -> None:
    """One ``--option`` per field of a task's config dataclass, with its default and the part of the
    config's docstring that explains it (the whole docstring heads the group)."""
    group = parser.add_argument_group(f"{config.__name__} options", config_doc(config))
    hints = typing.get_type_hints(config)
    for f in dataclasses.fields(config):
        hint, flag = hints[f.name], "--" + f.name.replace("_", "-")
        kw: dict[str, Any] = {
            "dest": f"task_{f.name}", "default": argparse.SUPPRESS, "help": field_help(config, f.name, f.default),
        }  # fmt: skip
        if hint is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif typing.get_origin(hint) is typing.Literal:
            group.add_argument(flag, choices=typing.get_args(hint), **kw)
        elif hint in (int, float, str):
            group.add_argument(flag, type=hint, metavar=f.name.upper(), **kw)
        elif typing.get_origin(hint) is tuple:  # --frequencies 1,4,16
            group.add_argument(flag, type=_tuple_option, metavar="A,B,...", **kw)
        else:
            group.add_argument(flag, metavar=f.name.upper(), **kw)


def build_parser(task: str | None = None, *, abbrev: bool = True, probing: bool = False) -> argparse.ArgumentParser:
    """The ``initium`` parser, with ``task``'s own options; ``abbrev``: ``run`` takes unique prefixes of its
    options; ``probing``: only to find the task (``--out`` not required, so ``run TASK --help`` finds it)."""
    parser = argparse.ArgumentParser(prog="initium", description="Start neural networks from structure, not chance.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train task x methods x seeds and print the summary table", allow_abbrev=abbrev)
    run.add_argument("task", help=f"one of: {', '.join(TASKS.names())}")
    run.add_argument(
        "--arch",
        default=None,
        help=f"architecture spec ({', '.join(ARCHS.names())}), e.g. 'siren(hidden=128)' (default: the task's)",
    )
    run.add_argument(
        "--methods", default="default,noise", help=f"comma-separated method specs ({', '.join(METHODS.names())})"
    )
    run.add_argument("--seeds", type=_seeds, default=(0, 1, 2), help="a count (3) or a list (0,5,9)")
    run.add_argument(
        "--steps", type=int, default=None, help="training steps per run (default: the task's; 2000 for image-fit)"
    )
    run.add_argument(
        "--rule",
        default=None,
        help=f"learning rule(s) ({', '.join(RULES.names(in_order=True))}): one for all methods or one per method,"
        " paired in order (default: bp)",
    )
    run.add_argument(
        "--lr", type=float, default=None, help="learning rate (default: the architecture's, from its paper)"
    )
    run.add_argument("--eval-every", type=int, default=None, help="metric evaluation interval (default steps/100)")
    run.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    run.add_argument("--compile", action="store_true", help="torch.compile the training step")
    run.add_argument(
        "--precision",
        choices=("auto", *PRECISIONS),
        default="auto",
        help="arithmetic of the step: fp32, tf32 (CUDA), bf16 autocast (default auto: fp32 on CPU, tf32 on CUDA)",
    )
    run.add_argument(
        "--batch",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train the runs of one architecture stacked (torch.func.vmap); default: only where measured to pay",
    )
    run.add_argument(
        "--thresholds", type=_floats, default=None, help="metric thresholds for 'steps to' (e.g. 25,30,40)"
    )
    run.add_argument(
        "--out", type=Path, required=not probing, help="output folder (results.jsonl; resumes if it exists)"
    )
    run.add_argument("--report", action="store_true", help="then write the report (as `initium report OUT`)")
    run.add_argument(
        "--tensorboard", type=Path, default=None, metavar="DIR",
        help="then write each run's curves, metrics and snapshots to DIR as TensorBoard runs (extra [tensorboard])",
    )  # fmt: skip
    run.add_argument(
        "--save-weights",
        action="store_true",
        help="write each finished run's trained weights to OUT/weights/*.safetensors (its record names the file)",
    )
    if task in TASKS and TASKS.entry(task).config is not None:
        _add_config_options(run, TASKS.entry(task).config)

    rep = sub.add_parser("report", help="summary.md, plots/*.png and report.html from a results folder")
    rep.add_argument("dir", type=Path)
    rep.add_argument(
        "--ensemble-size", type=int, default=5, help="members per ensemble from stored logits (default 5, or all seeds)"
    )
    rep.add_argument("--ensemble-draws", type=int, default=10, help="seeded draws of ensemble members (default 10)")

    cache = sub.add_parser("cache", help="the init cache ($INITIUM_CACHE, default ~/.cache/initium)")
    cache.add_argument("action", choices=("ls", "clear"))

    listing = sub.add_parser("list", help="registered methods, tasks, architectures and bundled images, described")
    listing.add_argument(
        "pattern",
        nargs="?",
        default=None,
        help="only names matching this shell-style pattern, e.g. 'noise*' (quote it)",
    )
    _add_zoo_parser(sub)
    _add_train_parser(sub)
    _add_graph_parser(sub)
    return parser


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--count takes a number of nets >= 1, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"--count must be >= 1 (the number of nets to train), got {n}")
    return n


def _add_zoo_parser(sub: Any) -> None:
    """``initium zoo build|ls|verify`` (:mod:`initium.zoo`)."""
    zoo = sub.add_parser("zoo", help="model zoo: train many nets of one family, list them, check their files")
    zsub = zoo.add_subparsers(dest="zoo_command", required=True)
    build = zsub.add_parser(
        "build", help="train nets with seeds 0..COUNT-1 (classify) into ZOO; resumes; shards under torchrun"
    )
    build.add_argument("--arch", required=True, help="architecture spec, e.g. 'resnet(depth=8,width=4)'")
    build.add_argument("--count", type=_count, required=True, help="how many nets (seeds 0..COUNT-1)")
    build.add_argument("--out", type=Path, required=True, help="the zoo folder (made if new or empty)")
    build.add_argument("--lr", type=float, default=None, help="learning rate (default: the architecture's)")
    build.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    _add_config_options(build, TASKS.entry("classify").config)  # --dataset, --epochs, --batch-size ...
    ls = zsub.add_parser("ls", help="the zoo's catalog as a table")
    ls.add_argument("zoo", type=Path)
    ls.add_argument("--arch", default=None, help="only this architecture (name or spec)")
    ls.add_argument("--dataset", default=None, help="only nets trained on this dataset")
    ls.add_argument("--min-acc", type=float, default=None, help="only nets with at least this test accuracy")
    verify = zsub.add_parser("verify", help="check every net's file against its sha256; exit 1 if any is bad")
    verify.add_argument("zoo", type=Path)
    verify.add_argument("--fix", action="store_true", help="remove bad rows, their files and files without a row")


def _shape(text: str) -> tuple[int, ...]:
    """``1,8,8`` -> ``(1, 8, 8)``: one sample's shape."""
    try:
        shape = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"--input-shape takes one sample's sizes such as 1,8,8, got {text!r}")
    return shape


def _add_graph_parser(sub: Any) -> None:
    """``initium graph show`` (:mod:`initium.graph`)."""
    graph = sub.add_parser("graph", help="the computational graph a graph hypernetwork reads")
    gsub = graph.add_subparsers(dest="graph_command", required=True)
    show = gsub.add_parser("show", help="print a model's graph (one line per node), optionally plot it")
    show.add_argument("--arch", required=True, help="architecture spec, e.g. 'resnet(depth=8,width=8)'")
    show.add_argument(
        "--input-shape", type=_shape, default=None,
        help="one input's shape, e.g. 1,8,8 (default: digits' 1,8,8 for classifiers, 2 for coordinate nets)",
    )  # fmt: skip
    show.add_argument("--cutoff", type=int, default=50, help="virtual-edge cutoff (shortest-path length, default 50)")
    show.add_argument("--method", choices=("auto", "fx", "autograd"), default="auto", help="how to read the graph")
    show.add_argument("--strict", action="store_true", help="fail on an op the vocabulary cannot represent")
    show.add_argument("--plot", type=Path, default=None, help="also draw the graph to this PNG file")


def cmd_graph(args: argparse.Namespace) -> int:
    from . import graph

    model, x = graph.arch_example(args.arch, args.input_shape)
    g = graph.build(model, x, strict=args.strict, method=args.method)
    out_console.print(g.describe(), markup=False, highlight=False, soft_wrap=True)
    virtual = g.virtual_edges(args.cutoff)
    out_console.print(
        f"{len(g.levels())} levels; {len(virtual)} virtual edges (2 <= distance <= {args.cutoff})", highlight=False
    )
    if args.plot is not None:
        console.print(f"plot: {graph.plot(g, args.plot)}")
    return 0


def _add_train_parser(sub: Any) -> None:
    """``initium train vae`` (:mod:`initium.vae`); the GHN joins it."""
    from .methods.vae import TrainConfig

    train = sub.add_parser("train", help="train a generative init on a model zoo (vae)")
    tsub = train.add_subparsers(dest="train_command", required=True)
    vae = tsub.add_parser(
        "vae", help="one VAE per layer over the zoo's weight slices; checkpoints, resumes, shards layers under torchrun"
    )
    vae.add_argument("--zoo", type=Path, required=True, help="the model zoo (initium zoo build ... --out ZOO)")
    vae.add_argument("--out", type=Path, required=True, help="the VAE folder: vae.safetensors + vae.json")
    vae.add_argument("--arch", default=None, help="only the zoo's nets of this architecture (name or spec)")
    vae.add_argument("--min-acc", type=float, default=None, help="only nets with at least this test accuracy")
    defaults = TrainConfig()
    for name, kind, text in (
        ("epochs", int, "epochs of minibatches per layer's VAE"), ("batch_size", int, "slices per minibatch"),
        ("lr", float, "Adam's learning rate, decaying to 0 (cosine)"), ("latent", int, "latent size"),
        ("hidden", int, "hidden channels / units"),
        ("drop", float, "fraction of each layer's lowest-norm slices left out"),
        ("val_fraction", float, "fraction of the nets held out for validation (by net)"),
        ("seed", int, "seed of the split, the VAEs' init and their training noise"),
    ):  # fmt: skip
        flag = "--" + name.replace("_", "-")
        vae.add_argument(
            flag, type=kind, default=getattr(defaults, name), help=f"{text} (default {getattr(defaults, name)})"
        )
    vae.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    vae.add_argument(
        "--ddp", action="store_true",
        help="under torchrun: every rank trains every layer's VAE together (DDP) instead of sharding the layers",
    )  # fmt: skip
    _add_train_ghn_parser(tsub)


def _add_train_ghn_parser(tsub: Any) -> None:
    """``initium train ghn`` (:func:`initium.ghn.train`)."""
    from .methods.ghn_train import GHNTrainConfig

    ghn = tsub.add_parser(
        "ghn", help="a graph hypernetwork on an architecture space and a classify dataset; checkpoints, resumes, DDP"
    )
    ghn.add_argument("--out", type=Path, required=True, help="the GHN folder: ghn.safetensors + ghn.json")
    defaults = GHNTrainConfig()
    for name, kind, text in (
        ("dataset", str, "classify dataset (digits, mnist1d or a path); trains on its training split only"),
        ("space", str, "architecture space (initium.nn.space: small, ood)"), ("steps", int, "meta-batches"),
        ("meta_batch", int, "architectures per step (split over the ranks under torchrun)"),
        ("batch_size", int, "images per step, shared by the meta-batch"),
        ("lr", float, "Adam's learning rate, decaying to 0 (cosine)"), ("clip", float, "gradient norm clip"),
        ("diversity", float, "noise GHN: weight of the two passes' logit cosine similarity"),
        ("seed", int, "seed of the GHN's init and of every step's draws"),
        ("train_specs", int, "training architectures of the space"),
        ("held_out", int, "held-out architectures of the space (never trained on)"),
        ("checkpoint_every", int, "steps between checkpoints"),
    ):  # fmt: skip
        flag = "--" + name.replace("_", "-")
        ghn.add_argument(
            flag, type=kind, default=getattr(defaults, name), help=f"{text} (default {getattr(defaults, name)})"
        )
    ghn.add_argument("--noise", action="store_true", help="a noise GHN: noise per node, two passes, diversity loss")
    ghn.add_argument("--hidden", type=int, default=None, help="the GHN's node state width (default: GHNConfig's)")
    ghn.add_argument("--block", type=int, default=None, help="channels of the decoded block (default: GHNConfig's)")
    ghn.add_argument(
        "--decoder",
        type=_tuple_option,
        default=None,
        help="the conv decoder's hidden widths D0,D1 (default: GHNConfig's)",
    )
    ghn.add_argument(
        "--init", type=Path, default=None, help="start from this saved GHN (e.g. a noise GHN from a plain one)"
    )
    ghn.add_argument(
        "--noise-start", type=float, default=None, help="with --init and --noise: scale of the new noise columns (0.1)"
    )
    ghn.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when present)")


def _split_methods(text: str) -> tuple[str, ...]:
    """Split ``--methods`` on commas outside brackets: ``default,noise(steps=3,noise=uniform)``."""
    return tuple(m for m in split_top(text, ",") if m)


def print_table(table: Any) -> None:
    """The table at its full width where the output is a file or a pipe (a log keeps every cell
    whole); in a terminal narrower than the table, cells fold onto a second line rather than being
    cut short."""
    rt = RichTable(title=table.title, title_style="bold")
    for i, col in enumerate(table.columns):
        rt.add_column(col, justify="left" if i == 0 else "right", overflow="fold")
    for row in table.rows:
        rt.add_row(*row)
    width = out_console.width
    if not out_console.is_terminal:
        out_console.width = max(
            width, Measurement.get(out_console, out_console.options.update(width=10_000), rt).maximum
        )
    try:
        out_console.print(rt)
    finally:
        out_console.width = width


def print_failures(records: list[dict[str, Any]]) -> None:
    """A warning line per run that diverged or failed, under the table: such a run is a result
    (the exit code stays 0), but one that must not pass unseen."""
    from .report import failures

    lines = failures(records)
    for line in lines:
        console.print(f"[bold yellow]warning:[/] {line}", soft_wrap=True)
    if lines:
        console.print(
            f"{len(lines)} of {len(records)} runs did not finish: they are recorded as failed in results.jsonl,"
            " and a rerun with the same --out tries them again",
            soft_wrap=True,
        )


def cmd_run(args: argparse.Namespace) -> int:
    from .report import summarize, write_report
    from .runner import RunConfig, run

    if args.tensorboard is not None:
        from rich.markup import escape

        from .tensorboard import require

        try:
            require()  # a missing package fails now, not after the sweep
        except ImportError as exc:
            console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)  # keeps [tensorboard]
            return 2
    task_options = {k[5:]: v for k, v in vars(args).items() if k.startswith("task_")}
    if args.steps is not None and args.steps > MAX_STEPS:
        raise ValueError(f"--steps must be from 1 to {MAX_STEPS:_}, got {args.steps}")
    cfg = RunConfig(
        task=args.task, out=args.out, arch=args.arch, methods=_split_methods(args.methods), seeds=args.seeds,
        steps=args.steps, lr=args.lr, eval_every=args.eval_every, device=args.device, compile=args.compile,
        precision=args.precision, batch=args.batch,
        thresholds=args.thresholds, task_options=task_options,
        rules=_split_methods(args.rule) if args.rule else None, save_weights=args.save_weights,
        command=shlex.join(["initium", *args.argv]),
    )  # fmt: skip
    me = distributed.init()  # under torchrun: one copy of this command per rank
    try:
        if not me.is_main:  # rank 0 shows the bar, prints the table and writes the report, once
            run(cfg, progress=_progress_log())
            return 0
        bar = _Bar(cfg)
        try:
            records = run(cfg, progress=bar)
        finally:
            bar.stop()
    finally:
        distributed.shutdown()
    print_table(summarize(records))
    print_failures(records)
    console.print(f"results: {cfg.out / 'results.jsonl'}")
    if args.tensorboard is not None:
        from .tensorboard import write_runs

        runs = write_runs(cfg.out, args.tensorboard, records)
        console.print(f"tensorboard: {len(runs)} runs in {args.tensorboard} (tensorboard --logdir {args.tensorboard})")
    if args.report:
        _print_files(write_report(cfg.out))
    else:
        console.print(f"plots: initium report {cfg.out}")
    return 0


@contextlib.contextmanager
def _rank_progress(me: distributed.Rank, job: str, what: str) -> Iterator[Callable[[TrainProgress], None]]:
    """The progress hook of one rank's share of a job: the live bar on rank 0, log lines elsewhere."""
    if not me.is_main:
        yield _progress_log()
        return
    bar = _Bar(argparse.Namespace(task=job, arch=what))
    try:
        yield bar
    finally:
        bar.stop()


def _progress_log() -> Callable[[TrainProgress], None]:
    """Progress of a rank other than 0: a log line per finished phase, not a second live bar."""

    def progress(event: TrainProgress) -> None:
        if event.phase != "sweep" and event.done == event.total:
            log.info("%s · %s done", event.label, event.phase)

    return progress


class _Bar:
    """The live progress bar: one line for all of this process's runs, one for the loop in
    progress (a run's noise pretraining, its training ...). It appears once the inputs are checked
    and training starts. It renders the engine's :class:`initium.train.Progress` events."""

    def __init__(self, cfg: Any) -> None:
        columns = (
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        )  # fmt: skip
        self.bar = Progress(*columns, console=console)
        self.title = f"{cfg.task} · {cfg.arch or 'default arch'}: runs"
        self.state: dict[str, Any] = {}

    def __call__(self, event: TrainProgress) -> None:
        bar, state = self.bar, self.state
        if not state:
            bar.start()
            state["overall"] = bar.add_task(self.title, total=None)
        if event.phase == "sweep":  # a run finished (or was found finished): the overall bar
            bar.update(state["overall"], completed=event.done, total=event.total)
            return
        key = (event.label, event.phase)
        if state.get("key") != key:  # one bar for the loop in progress
            if "current" in state:
                bar.remove_task(state["current"])
            state.update(key=key, current=bar.add_task(f"{event.label} · {event.phase}", total=event.total))
        bar.update(state["current"], completed=event.done)

    def stop(self) -> None:
        self.bar.stop()


def _print_files(files: dict[str, Path]) -> None:
    for name, path in files.items():
        console.print(f"{name}: {path}")


def cmd_report(args: argparse.Namespace) -> int:
    from .report import summarize, write_report
    from .runner import load_results

    files = write_report(args.dir, ensemble_size=args.ensemble_size, ensemble_draws=args.ensemble_draws)
    records = load_results(args.dir)
    print_table(summarize(records))
    print_failures(records)
    _print_files(files)
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    store = InitCache()
    if args.action == "clear":
        console.print(f"removed {store.clear()} entries from {store.root}")
        return 0
    entries = store.entries()
    rt = RichTable(title=f"init cache {store.root} ({len(entries)} entries)")
    for col in ("key", "method", "model", "steps", "noise", "size"):
        rt.add_column(col)
    for e in entries:
        cfg = e.meta.get("config")
        cfg = cfg if isinstance(cfg, dict) else {}  # a record from another version still lists
        rt.add_row(e.key[:12], str(cfg.get("method")), str(e.meta.get("model")), str(cfg.get("steps")),
                   str(cfg.get("noise")), f"{e.size / 1024:.0f} KiB")  # fmt: skip
    out_console.print(rt)
    return 0


def _listing(pattern: str | None) -> list[tuple[str, list[tuple[str, str]]]]:
    """What ``initium list`` shows: per kind, the (name, one-line description) pairs whose name
    matches ``pattern``; kinds with no match are left out."""
    kinds: list[tuple[str, list[tuple[str, str]]]] = [
        (title, [(n, reg.entry(n).doc) for n in reg.names(pattern)])
        for title, reg in (("methods", METHODS), ("learning rules", RULES), ("tasks", TASKS), ("architectures", ARCHS))
    ]
    kinds.append(("images", [(n, IMAGE_DESCRIPTIONS.get(n, "")) for n in matching(SAMPLE_IMAGES, pattern)]))
    return [(title, rows) for title, rows in kinds if rows]


def cmd_list(args: argparse.Namespace) -> int:
    kinds = _listing(args.pattern)
    if not kinds:
        console.print(f"nothing matches {args.pattern!r}; patterns are shell-style: 'noise*', '*fa*'", soft_wrap=True)
        return 1
    width = max(len(name) for _, rows in kinds for name, _ in rows)
    for title, rows in kinds:
        out_console.print(f"[bold]{title}[/]")
        for name, doc in rows:
            out_console.print(f"  {name:<{width}}  {doc}", soft_wrap=True, markup=False, highlight=False)
    return 0


def _zoo_table(entries: Sequence[Any], title: str) -> RichTable:
    rt = RichTable(title=title, title_style="bold")
    # accuracies of the stored weights (eval mode) on the training and the test set
    for col in ("seed", "arch", "dataset", "epochs", "lr", "train", "test", "sha256", "created (UTC)"):
        rt.add_column(col, justify="right" if col in ("seed", "epochs", "lr", "train", "test") else "left")
    for e in entries:
        created = e.created.replace("T", " ")[:16]  # to the minute
        rt.add_row(str(e.seed), e.arch_spec, e.dataset, str(e.epochs), f"{e.lr:g}", f"{e.train_acc:.4f}",
                   f"{e.test_acc:.4f}", e.sha256[:8], created)  # fmt: skip
    return rt


def cmd_zoo(args: argparse.Namespace) -> int:
    from . import zoo

    if args.zoo_command == "ls":
        store = zoo.Zoo(args.zoo)
        entries = store.entries(arch=args.arch, dataset=args.dataset, min_acc=args.min_acc)
        size = sum(e.bytes for e in entries) / 2**20
        out_console.print(
            _zoo_table(
                entries,
                f"zoo {store.path}: {len(entries)} of {len(store)} nets, {size:.1f} MiB (train, test: accuracy)",
            )
        )
        return 0
    if args.zoo_command == "verify":
        report = zoo.Zoo(args.zoo).verify(fix=args.fix)
        for line in report.lines():
            console.print(f"{'removed ' if args.fix else ''}{line}", soft_wrap=True)
        console.print(
            f"checked {report.checked} nets: " + ("all good" if report.ok else f"{len(report.lines())} problem(s)")
        )
        return 0 if report.ok or args.fix else 1
    options = {k[5:]: v for k, v in vars(args).items() if k.startswith("task_")}
    config = TASKS.entry("classify").config
    dataset, epochs = options.pop("dataset", config.dataset), options.pop("epochs", config.epochs)
    me = distributed.init()  # under torchrun: one copy of this command per rank, the seeds shared out
    try:
        with _rank_progress(me, "zoo build", args.arch) as progress:
            result = zoo.build(
                args.out, args.arch, dataset, args.count, epochs, lr=args.lr, device=args.device,
                task_options=options, progress=progress,
            )  # fmt: skip
    finally:
        distributed.shutdown()
    if not me.is_main:
        return 0 if not result.failed else 1
    out_console.print(_zoo_table(result.entries, f"zoo {args.out}: {args.arch}"))
    console.print(f"trained {len(result.trained)}, kept {len(result.kept)}: {len(result.entries)} nets in {args.out}")
    if result.failed:
        console.print(f"[bold red]seeds {list(result.failed)} diverged and were not stored[/]; try a lower --lr")
        return 1
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    if args.train_command == "ghn":
        return _train_ghn(args)
    from .methods import vae

    me = distributed.init()  # under torchrun: one copy of this command per rank, the layers shared out
    try:
        with _rank_progress(me, "train vae", str(args.zoo)) as progress:
            bank = vae.train(
                args.zoo, args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, latent=args.latent,
                hidden=args.hidden, drop=args.drop, val_fraction=args.val_fraction, seed=args.seed, arch=args.arch,
                min_acc=args.min_acc, device=args.device, progress=progress, ddp=args.ddp,
            )  # fmt: skip
    finally:
        distributed.shutdown()
    if not me.is_main:
        return 0
    zoo = bank.meta["zoo"]
    rt = RichTable(title=f"weight VAE {args.out}: {zoo['arch_spec']}, {len(zoo['train_nets'])} training and"
                   f" {len(zoo['val_nets'])} validation nets (-ELBO, nats per slice)", title_style="bold")  # fmt: skip
    for col in ("layer", "vae", "slice", "train slices", "val slices", "val before", "val after", "train after"):
        rt.add_column(col, justify="left" if col in ("layer", "vae") else "right")
    for layer in bank.layers:
        rt.add_row(layer.name, layer.vae, "x".join(map(str, layer.slice_shape)), str(layer.train_slices),
                   str(layer.val_slices), f"{layer.val_loss[0]:.3f}", f"{layer.val_loss[-1]:.3f}",
                   f"{layer.train_loss[-1]:.3f}")  # fmt: skip
    out_console.print(rt)
    console.print(
        f"saved {args.out / vae.WEIGHTS_FILE} and {vae.CONFIG_FILE}; use it: --methods 'vae(path={args.out})'"
    )
    return 0


def _train_ghn(args: argparse.Namespace) -> int:
    import shlex

    from .methods import ghn, ghn_train

    sizes = {k: getattr(args, k) for k in ("hidden", "block", "decoder") if getattr(args, k) is not None}
    config = dataclasses.replace(ghn.GHNConfig(), **sizes) if sizes else None
    command = shlex.join(["initium", *getattr(args, "argv", sys.argv[1:])])
    me = distributed.init()  # under torchrun: the ranks split every meta-batch
    try:
        with _rank_progress(me, "train ghn", f"{args.space} on {args.dataset}") as progress:
            ghn_train.train(
                args.out, dataset=args.dataset, space=args.space, steps=args.steps, meta_batch=args.meta_batch,
                batch_size=args.batch_size, lr=args.lr, clip=args.clip, noise=args.noise, diversity=args.diversity,
                seed=args.seed, train_specs=args.train_specs, held_out=args.held_out,
                checkpoint_every=args.checkpoint_every, ghn_config=config, device=args.device, progress=progress,
                command=command, init=args.init, noise_start=args.noise_start,
            )  # fmt: skip
    finally:
        distributed.shutdown()
    if me.is_main:
        saved = json.loads((args.out / "ghn.json").read_text())
        meta = saved.get("meta", saved)
        acc = {
            k: meta.get("accuracy", {}).get(k, float("nan")) for k in ("train_specs_val_acc", "held_out_specs_val_acc")
        }
        console.print(
            f"saved the GHN in {args.out}: validation accuracy with predicted parameters, no training: training"
            f" specs {acc['train_specs_val_acc']:.3f}, held-out specs {acc['held_out_specs_val_acc']:.3f};"
            f" use it: --methods 'ghn(path={args.out})'"
        )
    return 0


def _unknown_task(name: str) -> str:
    return f"unknown task {name!r}; closest: {', '.join(closest(name, TASKS.names()))}"


def _task_of(argv: list[str]) -> str | None:
    """The task named in ``argv``, before its own options are known. A task's option can be the
    abbreviation of a general one (pinn-advection's ``--c=5`` reads as ``--compile=5``), so a first
    pass that fails is tried again without abbreviations; ``None`` leaves the error to the full parse.
    ``--help`` is left to the full parse, so that it lists the task's options too."""
    probe = [a for a in argv if a not in ("-h", "--help")]
    for abbrev in (True, False):
        try:
            with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
                first, _ = build_parser(abbrev=abbrev, probing=True).parse_known_args(probe)
        except SystemExit:
            continue
        return getattr(first, "task", None)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The task's own options (--image, --size ...) depend on the task: find it first.
    task = _task_of(argv)
    if task is not None and task not in TASKS:
        console.print(f"[bold red]error:[/] {UnknownNameError(_unknown_task(task))}", soft_wrap=True)
        return 2
    args = build_parser(task).parse_args(argv)
    args.argv = argv  # the command line, as the records and the files it writes (train ghn) keep it
    try:
        me = distributed.rank_info()
    except ValueError as exc:
        console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
        return 2
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    where = f"rank {me.rank}: " if me.is_distributed else ""  # under torchrun, whose line is it
    handler = RichHandler(console=console, show_path=False)
    logging.basicConfig(level=level, format=f"{where}%(message)s", handlers=[handler])
    commands = {
        "run": cmd_run, "report": cmd_report, "cache": cmd_cache, "list": cmd_list, "zoo": cmd_zoo, "train": cmd_train,
        "graph": cmd_graph,
    }  # fmt: skip
    try:
        return commands[args.command](args)
    except USER_ERRORS as exc:
        console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("interrupted; finished runs are kept in results.jsonl and the next run resumes")
        return 130


if __name__ == "__main__":
    sys.exit(main())
