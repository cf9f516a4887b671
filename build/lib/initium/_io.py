"""Crash-safe file writes.

Whole files are written to a temporary file in the same folder, fsync'd, then renamed: a reader
never sees half a file. A writer killed mid-write (``kill -9``, a lost node) leaves its temporary
behind; every write into a folder first removes the temporaries there whose writer is gone
(:func:`remove_stale_temps`): the temporary's name carries its writer's pid and host,
``.{name}.{pid}-{host}.{random}.tmp``. Files are created with the permissions the umask gives
(``0644`` under the usual ``022``), as any other tool creates them, not ``mkstemp``'s ``0600``.

Logs of records grow by :func:`append_line`: a crash loses at most the line being written, and the
next append starts on a line of its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

__all__ = [
    "STALE_AFTER_S", "append_line", "atomic_write_bytes", "atomic_write_json", "atomic_write_text",
    "remove_stale_temps", "sha256", "temp_prefix", "tensors_to_bytes",
]  # fmt: skip

log = logging.getLogger(__name__)

STALE_AFTER_S = 3600.0
"""A temporary untouched this long is stale whoever wrote it: a write is done in seconds, and a
temporary from another host, or whose pid now belongs to another process, is judged by this alone."""

_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40]
_TEMP = re.compile(r"\.(?P<pid>\d+)-(?P<host>[A-Za-z0-9-]*)\.[^.]+\.tmp$")
_UMASK_LOCK = threading.Lock()


def temp_prefix(name: str) -> str:
    """The start of a temporary's name for ``name`` written by this process (see the module doc)."""
    return f".{name}.{os.getpid()}-{_HOST}."


def _pid_gone(pid: int) -> bool:
    """Whether no process of this host has ``pid`` (on Windows, never judged: ``os.kill`` kills)."""
    if os.name == "nt" or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: alive, another user's
        return False
    return False


def _stale(path: Path, now: float) -> bool:
    match = _TEMP.search(path.name)
    if match and match["host"] == _HOST and _pid_gone(int(match["pid"])):
        return True
    try:
        return now - path.stat().st_mtime > STALE_AFTER_S
    except OSError:  # gone meanwhile (its writer renamed it)
        return False


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries in ``folder`` that a killed writer left: those whose pid (on this
    host) is no longer alive, and any untouched for :data:`STALE_AFTER_S`. A live writer's
    temporary is kept. Returns what was removed; a folder that cannot be listed or written is
    left as it is (the write that follows reports that)."""
    now, removed = time.time(), []
    try:
        candidates = [p for p in Path(folder).glob(".*.tmp") if p.is_file()]
    except OSError:
        return []
    for tmp in candidates:
        if _stale(tmp, now):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    if removed:
        log.info("removed %d temporary file(s) that killed writers left in %s", len(removed), folder)
    return removed


def _umask() -> int:
    """The process's umask: from /proc where it is (Linux >= 4.7), else by setting and restoring it
    (under a lock; another thread creating a file in that instant would get mode 0777 & ~022)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


@contextlib.contextmanager
def _temp_beside(path: Path) -> Iterator[tuple[int, Path]]:
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name), suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):  # mkstemp's 0600 would make the renamed file private
            os.fchmod(fd, 0o666 & ~_umask())
        yield fd, Path(tmp)
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + ``os.replace``)."""
    path = Path(path)
    with _temp_beside(path) as (fd, tmp):
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def append_line(path: str | os.PathLike[str], text: str) -> Path:
    """Append ``text`` as one line to ``path`` (created if missing) and fsync it, so a finished
    record survives a crash right after. Several writers must not share one file (each rank of a
    sweep has its own). If the file does not end with a newline (a writer killed mid-line), one is
    written first: the torn line stays unreadable on its own instead of swallowing this one."""
    if "\n" in text:
        raise ValueError("append_line writes one line; text must not contain a newline")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)  # a log's folder also holds the atomic writes of a killed run
    with open(path, "ab+") as f:
        f.seek(0, os.SEEK_END)
        lead = b""
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            lead = b"" if f.read(1) == b"\n" else b"\n"
        f.write(lead + text.encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())
    return path


def tensors_to_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """A safetensors file's bytes (contiguous CPU copies; no pickle anywhere)."""
    return save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=dict(metadata or {}))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def checked_record(
    text: str,
    data: bytes,
    *,
    error: type[Exception],
    where: str,
    config: Path,
    weights: Path,
    fmt: str,
    version: int,
    what: str,
    fix: str = "",
) -> dict[str, Any]:
    """The JSON record of a saved model (a weight VAE, a GHN: ``config`` beside its safetensors
    ``weights``), checked before the weights are parsed: valid JSON, ``format == fmt``, a
    ``version`` this code reads, and the sha256 of ``data`` (the weights' bytes) equal to the
    record's. Anything else raises ``error`` naming ``where`` and the file, with ``fix`` appended."""
    tail = f"; {fix}" if fix else ""
    try:
        record = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise error(f"{where}: {config} is not valid JSON ({exc}){tail}") from None
    if not isinstance(record, dict) or record.get("format") != fmt:
        raise error(f"{where}: {config} is not {what}'s config (format {fmt!r} expected)")
    found = record.get("version")
    if type(found) is not int or found > version:
        raise error(f"{where}: {config.name} has format version {found!r}; this initium reads up to {version}")
    recorded = record.get("weights")
    if not isinstance(recorded, dict) or recorded.get("sha256") != sha256(data):
        raise error(
            f"{where}: {weights} does not match the sha256 in {config.name} (corrupt or replaced); it was not "
            f"loaded{tail}"
        )
    return record
