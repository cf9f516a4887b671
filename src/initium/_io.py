"""Crash-safe file writes.

Whole files are written to a temporary file in the same folder, fsync'd, then renamed: a reader
never sees half a file, and a crash leaves at worst a stray ``.tmp`` file. Logs of records grow by
:func:`append_line`: a crash loses at most the line being written, and the next append starts on
a line of its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

__all__ = ["append_line", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "sha256", "tensors_to_bytes"]


@contextlib.contextmanager
def _temp_beside(path: Path) -> Iterator[tuple[int, Path]]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
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
