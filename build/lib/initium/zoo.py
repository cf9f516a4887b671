"""Model zoo: many trained nets of one family, stored for the generative inits to learn from.

The weight VAE (after Atanov et al.'s Deep Weight Prior, ICLR 2019) and the graph hypernetwork
of Harder et al. ("From Pointwise to Powerhouse", arXiv 2310.16695) learn from the weights of many
trained networks. A zoo is a folder::

    ZOO/catalog.sqlite             one row per net (table ``nets``, schema in ``_SCHEMA``)
    ZOO/nets/<arch>-<family>-seed<NNNN>.safetensors   the net's state_dict, one file per net
    ZOO/.work/                     the runner's folder while a build trains (removed at its end)
    ZOO/.build.lock                held by the build (and ``verify --fix``) that writes the zoo

Nothing in it is a pickle: weights are safetensors, configs JSON, the catalog SQLite (standard
library). A net of a *family* (one architecture config, one task config, one learning rate) is
identified by its seed; a zoo may hold several families.

Python API::

    from initium.zoo import Zoo, build
    build("runs/zoo", "resnet(depth=8,width=4)", dataset="digits", count=10, epochs=5)
    zoo = Zoo("runs/zoo")
    entries = zoo.entries(arch="resnet", dataset="digits", min_acc=0.9)   # list[ZooEntry]
    model = zoo.load(entries[0])          # a fresh ResNet with the stored weights, eval mode
    state = zoo.state_dict(entries[0])    # {name: tensor}, sha256-checked
    zoo.verify(fix=False)                 # VerifyReport: missing files, bad sha256, orphan files
    zoo.digest()                          # sha256 of the catalog's content (a VAE records it)

**Crash safety.** A net is stored by writing its file to a temporary name, fsync'ing and renaming
it (:func:`initium._io.atomic_write_bytes`), and only then inserting its row in one SQLite
transaction. So a kill at any point leaves at worst a temporary file, or a complete file without a
row; the next build removes both before it trains (and re-stores the net from its work folder
when the run had finished), so the zoo never holds a row whose file is absent or corrupt, nor a
file without a row.

**torchrun.** ``torchrun --nproc_per_node K -m initium.cli zoo build ...`` trains the missing
seeds through :func:`initium.runner.run`, which deals them out over the ranks
(:func:`initium.distributed.shard`: rank r trains the r-th, (r+K)-th ... missing seed). Each rank
stores its own nets as they finish: the catalog has several writers, and every write is one
SQLite transaction (``BEGIN IMMEDIATE``, so a writer waits up to ``BUSY_TIMEOUT_S`` for the write
lock instead of failing). Rank 0 alone cleans up, before any rank trains and after all have
finished. Trained on the CPU with the same number of threads, the catalog equals a one-process
build's, bit for bit, apart from the creation and training times. Across machines, the zoo must
be on a shared file system whose POSIX locks work (SQLite's locking and the build lock rely on
them; many NFS set-ups do not).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from torch import nn

from . import __version__, distributed
from ._io import atomic_write_bytes, sha256, tensors_to_bytes
from ._registry import parse_spec
from .nn import ARCHS
from .train import Progress, ProgressFn, check_lr

try:  # the build lock: POSIX advisory locks, released by the OS when the holder dies (kill -9)
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock (one build at a time is then up to the user)
    fcntl = None  # type: ignore[assignment]

__all__ = ["BUSY_TIMEOUT_S", "BuildResult", "VerifyReport", "Zoo", "ZooEntry", "ZooError", "accuracy", "build"]

log = logging.getLogger(__name__)

CATALOG = "catalog.sqlite"
NETS = "nets"
WORK = ".work"
LOCK = ".build.lock"
FORMAT = "initium-zoo"
VERSION = 1
BUSY_TIMEOUT_S = 120.0
"""How long a catalog writer waits for another's transaction (SQLite's busy timeout)."""
TASK = "classify"  # the zoo's nets are classifiers; the task that trains them
# what every zoo build turns off by default: per-epoch FA probes, the OOD analysis and the
# corrupted-set logits cost time and disk and say nothing about the weights (a user's
# task_options may turn them back on)
_BUILD_DEFAULTS: dict[str, Any] = {"ood": False, "track": False, "corrupt": False}
_FILE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=-]*\.safetensors")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nets (
    id INTEGER PRIMARY KEY,
    family TEXT NOT NULL,           -- sha256[:16] of arch, arch_config, task, task_config, lr
    arch TEXT NOT NULL,             -- registered architecture name (initium.nn.ARCHS)
    arch_spec TEXT NOT NULL,        -- canonical spec, e.g. resnet(depth=8,width=4)
    arch_config TEXT NOT NULL,      -- JSON: ARCHS.build(arch, arch_config) rebuilds the model
    task TEXT NOT NULL,             -- classify
    dataset TEXT NOT NULL,
    task_config TEXT NOT NULL,      -- JSON: the task's full config (epochs, batch size, split ...)
    seed INTEGER NOT NULL,
    epochs INTEGER NOT NULL,
    lr REAL NOT NULL,
    train_acc REAL NOT NULL,        -- accuracy of the stored weights, eval mode, on the training set
    test_acc REAL NOT NULL,         -- ... and on the test set
    device TEXT NOT NULL,           -- where they were measured (cpu, cuda)
    file TEXT NOT NULL UNIQUE,      -- relative to the zoo: nets/<name>.safetensors
    sha256 TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    train_s REAL NOT NULL,          -- wall time of the net's training
    created TEXT NOT NULL,          -- UTC, ISO 8601
    initium_version TEXT NOT NULL,
    torch_version TEXT NOT NULL,
    record TEXT NOT NULL,           -- JSON: the runner's record of the run (curves, timings, env)
    UNIQUE (family, seed)
);
"""
_COLUMNS = (
    "id", "family", "arch", "arch_spec", "arch_config", "task", "dataset", "task_config", "seed", "epochs", "lr",
    "train_acc", "test_acc", "device", "file", "sha256", "bytes", "train_s", "created", "initium_version",
    "torch_version",
)  # fmt: skip
_JSON_COLUMNS = ("arch_config", "task_config")


class ZooError(ValueError):
    """A folder that is not a zoo, a net whose file is missing or corrupt, a zoo a build cannot use."""


@dataclass(frozen=True)
class ZooEntry:
    """One catalog row (the run's full record: :meth:`Zoo.record`). ``file`` is relative to the
    zoo; ``train_acc`` / ``test_acc`` are those of the stored weights in eval mode (BatchNorm on
    its running statistics), measured on ``device``: :meth:`Zoo.load` and :func:`accuracy`
    reproduce them exactly on that kind of device."""

    id: int
    family: str
    arch: str
    arch_spec: str
    arch_config: dict[str, Any] = field(hash=False)
    task: str
    dataset: str
    task_config: dict[str, Any] = field(hash=False)
    seed: int
    epochs: int
    lr: float
    train_acc: float
    test_acc: float
    device: str
    file: str
    sha256: str
    bytes: int
    train_s: float
    created: str
    initium_version: str
    torch_version: str


@dataclass(frozen=True)
class VerifyReport:
    """What :meth:`Zoo.verify` found: rows whose file is ``missing``, rows whose file is ``corrupt``
    (sha256 or size differ from the row), ``orphans`` (files under ``nets/`` without a row, and
    leftovers of interrupted writes); ``fixed``: whether they were removed."""

    checked: int
    missing: tuple[ZooEntry, ...] = ()
    corrupt: tuple[ZooEntry, ...] = ()
    orphans: tuple[str, ...] = ()
    fixed: bool = False

    @property
    def ok(self) -> bool:
        """Nothing was wrong (a fixed zoo is sound again, but ``ok`` says what was found)."""
        return not (self.missing or self.corrupt or self.orphans)

    def lines(self) -> list[str]:
        """One line per problem, for people."""
        out = [f"missing file: {e.file} (seed {e.seed}, {e.arch_spec})" for e in self.missing]
        out += [f"sha256 mismatch: {e.file} (seed {e.seed}, {e.arch_spec})" for e in self.corrupt]
        out += [f"file without a row: {name}" for name in self.orphans]
        return out


@dataclass(frozen=True)
class BuildResult:
    """What :func:`build` did: the ``entries`` of the family now in the zoo (all of them, by seed),
    the seeds it ``trained`` now, those it ``kept`` (stored before training began, including nets
    that an interrupted build had finished training, stored from its work folder), and those that
    ``failed`` (their run diverged: not stored; a rerun tries them again)."""

    entries: tuple[ZooEntry, ...]
    trained: tuple[int, ...]
    kept: tuple[int, ...]
    failed: tuple[int, ...]


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y``, in eval mode (BatchNorm on its
    running statistics), in batches of ``batch_size``; the model's mode is restored after."""
    training = model.training
    model.eval()
    correct = 0
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                correct += int((model(x[i : i + batch_size]).argmax(-1) == y[i : i + batch_size]).sum())
    finally:
        model.train(training)
    return correct / len(x)


def _jsonable(obj: Any) -> Any:
    """What the object is after a JSON round trip (tuples become lists): how a record holds it."""
    return json.loads(json.dumps(obj, sort_keys=True))


def _family_key(arch: str, arch_config: Any, task: str, task_config: Any, lr: float) -> str:
    ident = {"arch": arch, "arch_config": arch_config, "task": task, "task_config": task_config, "lr": float(lr)}
    return hashlib.sha256(json.dumps(_jsonable(ident), sort_keys=True).encode()).hexdigest()[:16]


def _canonical_spec(name: str, kwargs: Mapping[str, Any]) -> str:
    """``resnet(width=4, depth=8)`` -> ``resnet(depth=8,width=4)``: one spelling per architecture."""
    if not kwargs:
        return name
    return f"{name}({','.join(f'{k}={v!r}' for k, v in sorted(kwargs.items()))})"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _fresh_model(arch: str, arch_config: Mapping[str, Any]) -> nn.Module:
    """The architecture built from its config; its random init is overwritten next, so it draws
    from a forked RNG (building a model to load leaves the caller's random stream alone)."""
    with torch.random.fork_rng(devices=[]):
        return ARCHS.build(arch, dict(arch_config))


class Zoo:
    """A model zoo folder (see the module docstring). ``Zoo(path)`` opens an existing one and
    raises :class:`ZooError` for anything else; :meth:`create` makes one."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        catalog = self.path / CATALOG
        if not self.path.is_dir():
            raise ZooError(
                f"{self.path} is not a model zoo: no such folder (build one: initium zoo build ... --out PATH)"
            )
        if not catalog.is_file():
            raise ZooError(f"{self.path} is not a model zoo: it has no {CATALOG}")
        try:
            with self._connect() as db:
                row = db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
                version = db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
                db.execute("SELECT id FROM nets LIMIT 1").fetchall()
        except sqlite3.DatabaseError as exc:
            raise ZooError(f"{self.path} is not a model zoo: {catalog} is not its catalog ({exc})") from None
        if row is None or row[0] != FORMAT or version is None:
            raise ZooError(f"{self.path} is not a model zoo: {catalog} is another program's database")
        if int(version[0]) > VERSION:
            raise ZooError(
                f"{self.path}: catalog format {version[0]} is newer than this initium's ({VERSION}); upgrade"
            )

    @classmethod
    def create(cls, path: str | os.PathLike[str]) -> Zoo:
        """Open the zoo at ``path``, or make one there: a new or empty folder. A folder that holds
        other things is refused (a zoo's cleanup removes files it does not know)."""
        path = Path(path)
        cls._check_creatable(path)
        if (path / CATALOG).exists():
            return cls(path)
        (path / NETS).mkdir(parents=True, exist_ok=True)
        # one transaction: a reader sees no catalog or a whole one (IF NOT EXISTS / OR IGNORE: a
        # second creator in between changes nothing)
        meta = f"INSERT OR IGNORE INTO meta VALUES ('format', '{FORMAT}'), ('version', '{VERSION}');"
        script = f"BEGIN IMMEDIATE;{_SCHEMA}{meta}COMMIT;"
        with contextlib.closing(sqlite3.connect(path / CATALOG, timeout=BUSY_TIMEOUT_S, isolation_level=None)) as db:
            db.executescript(script)
        return cls(path)

    @staticmethod
    def _check_creatable(path: Path) -> None:
        """Raise unless ``path`` is a zoo, an empty folder or nothing yet (before any work)."""
        if path.exists() and not path.is_dir():
            raise ZooError(f"--out {path} is a file, not a folder for a model zoo")
        if (path / CATALOG).exists():
            Zoo(path)  # raises unless it is one
            return
        if path.is_dir() and any(path.iterdir()):
            raise ZooError(f"--out {path} is not a model zoo (no {CATALOG}) and not empty; give a new or empty folder")

    # --- the catalog ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A short-lived connection (one per operation: processes share the file, not a handle);
        autocommit, so writes say ``BEGIN IMMEDIATE`` themselves."""
        db = sqlite3.connect(self.path / CATALOG, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: ``BEGIN IMMEDIATE`` takes the write lock at once (waiting for
        another writer up to the busy timeout), commit at the end, roll back on an error."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _rows(self, where: str = "", params: Sequence[Any] = ()) -> list[ZooEntry]:
        cols = ", ".join(_COLUMNS)
        with self._connect() as db:
            rows = db.execute(f"SELECT {cols} FROM nets {where} ORDER BY arch_spec, family, seed", params).fetchall()
        out = []
        for row in rows:
            values = dict(zip(_COLUMNS, row, strict=True))
            for key in _JSON_COLUMNS:
                values[key] = json.loads(values[key])
            out.append(ZooEntry(**values))
        return out

    def __len__(self) -> int:
        with self._connect() as db:
            return int(db.execute("SELECT COUNT(*) FROM nets").fetchone()[0])

    def __repr__(self) -> str:
        return f"Zoo({str(self.path)!r})"

    def entries(
        self,
        arch: str | None = None,
        dataset: str | None = None,
        min_acc: float | None = None,
        *,
        family: str | None = None,
        check: bool = False,
    ) -> list[ZooEntry]:
        """The catalog's nets, ordered by architecture, family and seed. ``arch``: a registered
        name (``resnet``) or a spec (``resnet(depth=8,width=4)``, either spelling); ``dataset``;
        ``min_acc``: the least test accuracy; ``family``: one family's key. ``check``: hash every
        file and leave out (with a warning) the rows whose file is missing or corrupt."""
        if min_acc is not None and not (isinstance(min_acc, int | float) and 0 <= min_acc <= 1):
            raise ValueError(f"min_acc must be a test accuracy in [0, 1], got {min_acc!r}")
        clauses, params = [], []
        if arch is not None:
            clauses.append("(arch = ? OR arch_spec = ?)")
            params += [arch, self._spec_of(arch)]
        if dataset is not None:
            clauses.append("dataset = ?")
            params.append(dataset)
        if min_acc is not None:
            clauses.append("test_acc >= ?")
            params.append(float(min_acc))
        if family is not None:
            clauses.append("family = ?")
            params.append(family)
        entries = self._rows(("WHERE " + " AND ".join(clauses)) if clauses else "", params)
        if check:
            good = []
            for e in entries:
                if (problem := self._problem(e)) is None:
                    good.append(e)
                else:
                    log.warning("zoo %s: skipping %s (seed %d): %s", self.path, e.file, e.seed, problem)
            entries = good
        return entries

    @staticmethod
    def _spec_of(arch: str) -> str:
        """The canonical spelling of an arch spec for matching (the text itself if it does not parse)."""
        try:
            (name, kwargs), *rest = parse_spec(arch)
            return arch if rest else _canonical_spec(name, kwargs)
        except ValueError:
            return arch

    def record(self, entry: ZooEntry) -> dict[str, Any]:
        """The runner's record of the net's run: its training curves, timings and environment."""
        with self._connect() as db:
            row = db.execute("SELECT record FROM nets WHERE id = ?", (entry.id,)).fetchone()
        if row is None:
            raise ZooError(f"{self.path} has no net {entry.file} (seed {entry.seed}) any more")
        return dict(json.loads(row[0]))

    # --- the nets --------------------------------------------------------------------------------

    def _file(self, entry: ZooEntry) -> Path:
        """The net's file; a catalog that names anything outside ``nets/`` is refused."""
        parts = Path(entry.file).parts
        if len(parts) != 2 or parts[0] != NETS or not _FILE_RE.fullmatch(parts[1]):
            raise ZooError(f"{self.path}: catalog row {entry.id} names {entry.file!r}, not a file under {NETS}/")
        return self.path / entry.file

    def _problem(self, entry: ZooEntry, data: bytes | None = None) -> str | None:
        """Why the entry's file cannot be used, or ``None``."""
        try:
            path = self._file(entry)
        except ZooError as exc:
            return str(exc)
        if data is None:
            if not path.is_file():
                return "its file is missing"
            data = path.read_bytes()
        if len(data) != entry.bytes or sha256(data) != entry.sha256:
            return "its sha256 does not match the catalog (the file is corrupt or was replaced)"
        return None

    def state_dict(self, entry: ZooEntry) -> dict[str, torch.Tensor]:
        """The net's tensors (CPU), after checking the file's sha256 against the catalog; a missing
        or corrupt file is a :class:`ZooError` and is never parsed. safetensors only: no code runs."""
        path = self._file(entry)
        if not path.is_file():
            raise ZooError(
                f"zoo {self.path}: the file of net seed {entry.seed} ({entry.file}) is missing;"
                f" run `initium zoo verify {self.path} --fix`"
            )
        data = path.read_bytes()
        if (problem := self._problem(entry, data)) is not None:
            raise ZooError(f"zoo {self.path}: net {entry.file}: {problem}; run `initium zoo verify {self.path} --fix`")
        return load_tensors(data)

    def build_model(self, entry: ZooEntry) -> nn.Module:
        """A fresh (randomly initialised) model of the entry's architecture."""
        return _fresh_model(entry.arch, entry.arch_config)

    def load(self, entry: ZooEntry, model: nn.Module | None = None) -> nn.Module:
        """The net: its stored weights in a fresh model of its architecture, returned in eval mode
        (BatchNorm on the stored running statistics, as the catalog's accuracies were measured),
        or loaded into ``model`` (same parameter names and shapes; its mode and device kept)."""
        state = self.state_dict(entry)
        target = model if model is not None else self.build_model(entry)
        own = target.state_dict()
        wrong = sorted(k for k in own.keys() & state.keys() if own[k].shape != state[k].shape)
        if own.keys() != state.keys() or wrong:
            missing, extra = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
            raise ZooError(
                f"net {entry.file} ({entry.arch_spec}) does not fit this model: missing {missing[:3]},"
                f" unexpected {extra[:3]}, other shapes {wrong[:3]}"
            )
        target.load_state_dict(state)
        return target.eval() if model is None else target

    def verify(self, fix: bool = False) -> VerifyReport:
        """Check every row's file (present, size and sha256) and look for files without a row.
        ``fix``: remove the bad rows (one transaction), then their files and the orphans: rows go
        first, so no moment has a row without its file. Refused while a build writes the zoo."""
        with self._lock(wait=False) if fix else contextlib.nullcontext():
            return self._verify(fix)

    def _verify(self, fix: bool) -> VerifyReport:
        """:meth:`verify`, for a caller that holds the lock (or needs none)."""
        entries = self._rows()
        missing, corrupt = [], []
        for e in entries:
            problem = self._problem(e)
            if problem is None:
                continue
            (missing if problem == "its file is missing" else corrupt).append(e)
        known = {Path(e.file).name for e in entries}
        nets = self.path / NETS
        orphans = sorted(f"{NETS}/{p.name}" for p in nets.iterdir() if p.name not in known) if nets.is_dir() else []
        if fix:
            bad = [*missing, *corrupt]
            if bad:
                with self._write() as db:
                    db.executemany("DELETE FROM nets WHERE id = ?", [(e.id,) for e in bad])
            for name in [e.file for e in corrupt if self._safe(e)] + orphans:
                path = self.path / name
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
        report = VerifyReport(len(entries), tuple(missing), tuple(corrupt), tuple(orphans), fixed=fix)
        for line in report.lines():
            log.warning("zoo %s: %s%s", self.path, line, " (removed)" if fix else "")
        return report

    def _safe(self, entry: ZooEntry) -> bool:
        try:
            self._file(entry)
        except ZooError:
            return False
        return True

    def digest(self) -> str:
        """sha256 of the catalog's content: every net's family, architecture, task config, seed,
        accuracies and file sha256, by family and seed (not the creation times or versions). Two
        zoos with the same nets have the same digest; a VAE records the digest of its zoo."""
        keep = ("family", "arch", "arch_config", "task", "task_config", "seed", "epochs", "lr", "train_acc",
                "test_acc", "file", "sha256", "bytes")  # fmt: skip
        rows = sorted(({k: getattr(e, k) for k in keep} for e in self._rows()), key=lambda r: (r["family"], r["seed"]))
        return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()

    # --- writing ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self, wait: bool = False) -> Iterator[None]:
        """The zoo's writer lock (one build, or one ``verify --fix``, at a time): an advisory
        ``flock`` on ``.build.lock``, which the OS releases when its holder dies."""
        if fcntl is None:  # pragma: no cover
            yield
            return
        with open(self.path / LOCK, "a+b") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                raise ZooError(f"zoo {self.path} is being written by another build (it holds {LOCK})") from None
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _seeds(self, family: str) -> set[int]:
        with self._connect() as db:
            return {int(s) for (s,) in db.execute("SELECT seed FROM nets WHERE family = ?", (family,))}

    def _insert(self, row: Mapping[str, Any]) -> bool:
        """Insert one net's row in one transaction; ``False`` if its (family, seed) is already there."""
        cols = list(row)
        try:
            with self._write() as db:
                db.execute(f"INSERT INTO nets ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                           [row[c] for c in cols])  # fmt: skip
        except sqlite3.IntegrityError:
            return False
        return True

    def _remove_leftovers(self) -> None:
        """Temporary files of interrupted writes (``atomic_write_bytes``'s ``.<name>.*.tmp``)."""
        nets = self.path / NETS
        nets.mkdir(exist_ok=True)
        for path in nets.glob(".*.tmp"):
            log.info("zoo %s: removing %s, left by an interrupted write", self.path, path.name)
            path.unlink(missing_ok=True)


# --- building --------------------------------------------------------------------------------------


@dataclass
class _Plan:
    """One family to build: the checked arch and task, and where its nets are measured."""

    arch: str
    spec: str
    arch_config: dict[str, Any]
    task: Any  # initium.tasks.Task, set up on ``device``
    task_options: dict[str, Any]
    task_config: dict[str, Any]
    lr: float
    family: str
    device: torch.device

    def family_of(self, rec: Mapping[str, Any]) -> str:
        return _family_key(rec["arch"], rec["arch_config"], rec["task"], rec["task_config"], rec["lr"])


def _check_int(name: str, value: Any, least: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
    return value


def _plan(
    arch: str, dataset: str, epochs: int, lr: float | None, device: str | None, task_options: Mapping[str, Any] | None
) -> _Plan:
    """Check every input and load the data: all before any training (raises ValueError)."""
    from .tasks import TASKS

    options = dict(task_options or {})
    for key in ("dataset", "epochs"):
        if key in options:
            raise ValueError(f"give {key} as build's own argument, not in task_options")
    options = _BUILD_DEFAULTS | options | {"dataset": dataset, "epochs": _check_int("epochs", epochs, 1)}
    if lr is not None:
        check_lr(lr)
    task = TASKS.build(TASK, options)
    name, kwargs = task.parse_arch(arch)
    dev = distributed.device_for(distributed.rank_info(), device)
    task.setup(dev)
    model = _fresh_model_for(task, name, kwargs)
    spec = _canonical_spec(name, kwargs)
    task.check_model(model, spec)
    config = getattr(model, "config", None)
    if not isinstance(config, dict):
        raise ValueError(f"--arch {spec!r}: the model has no config dict, so a zoo could not rebuild it")
    rebuilt = _fresh_model(name, _jsonable(config)).state_dict()
    own = model.state_dict()
    if rebuilt.keys() != own.keys() or any(rebuilt[k].shape != own[k].shape for k in own):
        raise ValueError(f"--arch {spec!r}: ARCHS.build({name!r}, model.config) does not rebuild the model")
    rate = float(lr) if lr is not None else float(getattr(model, "default_lr", 1e-4))
    task_config = _jsonable(task.describe())
    arch_config = _jsonable(config)
    family = _family_key(name, arch_config, TASK, task_config, rate)
    return _Plan(name, spec, arch_config, task, options, task_config, rate, family, dev)


def _fresh_model_for(task: Any, name: str, kwargs: Mapping[str, Any]) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        return task.build_model(name, dict(kwargs))


def _store(zoo: Zoo, plan: _Plan, rec: Mapping[str, Any], work: Path) -> bool:
    """Store one finished run's net: file (temp + rename), then its row (one transaction).
    ``False`` if the run's weights are unusable or the net is already stored."""
    seed = int(rec["seed"])
    try:
        tensors = load_tensors((work / rec["weights"]).read_bytes())
    except (OSError, SafetensorError, KeyError) as exc:
        log.warning("zoo %s: the weights of seed %d are unusable (%s); it is trained again", zoo.path, seed, exc)
        return False
    model = _fresh_model(plan.arch, plan.arch_config)
    model.load_state_dict(tensors)
    model.to(plan.device)
    train_acc = accuracy(model, plan.task.inputs, plan.task.target)
    test_acc = accuracy(model, plan.task.test_x, plan.task.test_y)
    name = f"{plan.arch}-{plan.family[:8]}-seed{seed:04d}.safetensors"
    meta = {
        "format": "initium-zoo-net", "arch": plan.arch, "arch_spec": plan.spec, "arch_config": plan.arch_config,
        "task": TASK, "task_config": plan.task_config, "seed": seed, "family": plan.family,
    }  # fmt: skip
    # one metadata key: safetensors writes several in a random order (a hash map), one sorted JSON
    # string gives the same bytes for the same weights, so builds compare by sha256
    data = tensors_to_bytes(tensors, {"initium_zoo": json.dumps(meta, sort_keys=True)})
    file = f"{NETS}/{name}"
    _write_file(zoo.path / file, data)
    row = {
        "family": plan.family, "arch": plan.arch, "arch_spec": plan.spec,
        "arch_config": json.dumps(plan.arch_config, sort_keys=True), "task": TASK,
        "dataset": str(plan.task_config["dataset"]), "task_config": json.dumps(plan.task_config, sort_keys=True),
        "seed": seed, "epochs": int(plan.task_config["epochs"]), "lr": plan.lr, "train_acc": train_acc,
        "test_acc": test_acc, "device": plan.device.type, "file": file, "sha256": sha256(data), "bytes": len(data),
        "train_s": float(rec.get("wall", {}).get("train_s", 0.0)), "created": _now(),
        "initium_version": __version__, "torch_version": torch.__version__,
        "record": json.dumps({**rec, "weights": file}, sort_keys=True),
    }  # fmt: skip
    if not _insert_row(zoo, row):
        log.info("zoo %s: seed %d of %s is already stored", zoo.path, seed, plan.spec)
        return False
    (work / rec["weights"]).unlink(missing_ok=True)  # stored: the work copy is not needed
    return True


# The two steps of storing a net, as module functions so that the crash tests can stop a build
# between them (or inside the first) as a kill would.
def _write_file(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data)


def _insert_row(zoo: Zoo, row: Mapping[str, Any]) -> bool:
    return zoo._insert(row)


def _recover(zoo: Zoo, plan: _Plan, work: Path) -> None:
    """Before training (rank 0, under the build lock): remove leftovers of interrupted writes,
    store the nets that a killed build had finished training (their runs are in ``.work``), drop
    rows whose file is missing or corrupt and files without a row, and start a fresh work folder."""
    from .records import load_results

    zoo._remove_leftovers()
    if work.is_dir():
        have = zoo._seeds(plan.family)
        for rec in load_results(work):
            if rec.get("status") != "ok" or "weights" not in rec:
                continue
            if plan.family_of(rec) != plan.family:
                log.warning("zoo %s: dropping a finished run of another build (%s, seed %s)", zoo.path,
                            rec.get("arch_spec"), rec.get("seed"))  # fmt: skip
                continue
            if int(rec["seed"]) not in have:
                log.info("zoo %s: storing seed %s, trained before the build was interrupted", zoo.path, rec["seed"])
                _store(zoo, plan, rec, work)
    zoo._verify(fix=True)  # the caller holds the lock
    shutil.rmtree(work, ignore_errors=True)


class _StoreAsTheyFinish:
    """The runner's progress hook during a build: passes every event on, and at each finished run
    (a ``sweep`` event, sent after the run's record is appended) stores the nets of the new records
    of this rank's results file. Reads the file incrementally (byte offset), so a build of N nets
    parses each record once."""

    def __init__(self, zoo: Zoo, plan: _Plan, work: Path, me: distributed.Rank, progress: ProgressFn | None) -> None:
        from .records import RESULTS, shard_path

        self.zoo, self.plan, self.work, self.progress = zoo, plan, work, progress
        self.file = shard_path(work, me.rank) if me.is_distributed else work / RESULTS
        self.offset = 0

    def __call__(self, event: Progress) -> None:
        if event.phase == "sweep":
            self.store_new()
        if self.progress is not None:
            self.progress(event)

    def store_new(self) -> None:
        if not self.file.exists():
            return
        with open(self.file, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1  # whole lines only: the runner may be mid-append on another file
        self.offset += end
        for line in chunk[:end].splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn line of a killed writer: the resume trains that run again
            if isinstance(rec, dict) and rec.get("status") == "ok" and "weights" in rec:
                _store(self.zoo, self.plan, rec, self.work)


def build(
    zoo: str | os.PathLike[str],
    arch: str,
    dataset: str = "digits",
    count: int = 10,
    epochs: int = 20,
    *,
    lr: float | None = None,
    device: str | None = None,
    task_options: Mapping[str, Any] | None = None,
    progress: ProgressFn | None = None,
) -> BuildResult:
    """Train ``count`` nets of ``arch`` on ``dataset`` (seeds ``0 .. count-1``, ``epochs`` epochs of
    the ``classify`` task, the architecture's own lr unless ``lr`` is given) and store them in the
    zoo at ``zoo`` (made if needed: a new or empty folder). ``task_options``: more of classify's
    options (``batch_size``, ``momentum``, ``split_seed`` ...; ``ood`` and ``track`` are off unless
    set). ``progress``: the runner's events (a progress bar).

    Every input is checked, and the data loaded, before any work. Training goes through
    :func:`initium.runner.run` (``save_weights=True``, into ``ZOO/.work``), one engine for every
    job; each net is stored as soon as its run finishes (file first, then its row). It resumes:
    seeds already in the zoo are kept, nets a killed build had finished are stored, only the rest
    are trained. Under torchrun the missing seeds are sharded over the ranks and each rank stores
    its own nets (concurrent SQLite transactions); the result is the one-process build's.
    """
    _check_int("count", count, 1)
    path = Path(zoo)
    Zoo._check_creatable(path)
    joined = not distributed.is_joined()
    me = distributed.init()
    try:
        plan = _plan(arch, dataset, epochs, lr, device, task_options)
        return _build(path, plan, count, me, progress)
    finally:
        if joined:
            distributed.shutdown()


def _build(path: Path, plan: _Plan, count: int, me: distributed.Rank, progress: ProgressFn | None) -> BuildResult:
    from .runner import RunConfig, run

    work = path / WORK
    with contextlib.ExitStack() as stack:
        error: BaseException | None = None
        if me.is_main:
            try:
                made = Zoo.create(path)
                stack.enter_context(made._lock(wait=False))
                _recover(made, plan, work)
            except (ZooError, OSError, sqlite3.Error) as exc:
                error = exc
        if not distributed.all_ok(error is None):
            if error is not None:
                raise error
            raise ZooError(f"rank 0 could not prepare the zoo {path} (see its error)")
        zoo = Zoo(path)
        kept = zoo._seeds(plan.family)
        missing = [s for s in range(count) if s not in kept]
        if kept:
            log.info("zoo %s holds %d net(s) of %s; training %d", path, len(kept), plan.spec, len(missing))
        if missing:
            cfg = RunConfig(
                task=TASK, out=work, arch=plan.spec, methods=("default",), seeds=tuple(missing), lr=plan.lr,
                device=str(plan.device), task_options=plan.task_options, batch=False, save_weights=True,
            )  # fmt: skip
            hook = _StoreAsTheyFinish(zoo, plan, work, me, progress)
            run(cfg, progress=hook)
            hook.store_new()
            distributed.barrier()  # every rank has stored its nets
            if me.is_main:  # a net whose storing was missed (a failed hook) is stored here, then .work goes
                _recover(zoo, plan, work)
            distributed.barrier()  # the catalog is final
    entries = tuple(zoo.entries(family=plan.family))
    have = {e.seed for e in entries}
    failed = tuple(s for s in missing if s not in have)
    if failed:
        log.warning("zoo %s: seeds %s of %s diverged and were not stored; lower --lr", path, list(failed), plan.spec)
    return BuildResult(entries, tuple(s for s in missing if s in have), tuple(sorted(kept)), failed)
