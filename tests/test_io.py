"""Crash-safe writes: what a killed writer leaves is cleaned up, and files get the umask's mode."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from initium._io import STALE_AFTER_S, append_line, atomic_write_bytes, atomic_write_text, temp_prefix


def _killed_mid_write(target: Path) -> Path:
    """Run a writer that is SIGKILLed after writing its temporary, before the rename; return the temporary."""
    code = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from initium._io import _temp_beside
        with _temp_beside(Path({str(target)!r})) as (fd, tmp):
            os.write(fd, b"half a file")
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, check=False)
    assert proc.returncode == -signal.SIGKILL
    (tmp,) = target.parent.glob(".*.tmp")
    return tmp


@pytest.mark.skipif(os.name == "nt", reason="SIGKILL")
@pytest.mark.parametrize("next_write", ["atomic", "append"])
def test_a_killed_writers_temporary_is_removed_by_the_next_write_into_the_folder(tmp_path, next_write):
    tmp = _killed_mid_write(tmp_path / "results.jsonl")
    assert tmp.name.startswith(".results.jsonl.") and f".{_pid_of(tmp)}-" in tmp.name
    if next_write == "atomic":
        atomic_write_text(tmp_path / "summary.md", "x")
    else:
        append_line(tmp_path / "results.jsonl", "{}")
    assert not tmp.exists()
    assert not list(tmp_path.glob(".*.tmp"))


def _pid_of(tmp: Path) -> int:
    return int(tmp.name.split(".")[-3].split("-")[0])


def test_a_live_writers_temporary_is_kept_and_old_or_foreign_ones_go_by_age(tmp_path):
    live = tmp_path / f"{temp_prefix('a.json')}abc123.tmp"  # this process: alive
    fresh_legacy = tmp_path / ".b.json.abc123.tmp"  # the old naming (no pid), just written
    old_legacy = tmp_path / ".c.json.abc123.tmp"
    foreign = tmp_path / ".d.json.1234-otherhost.abc123.tmp"  # another host's pid cannot be judged here
    old_foreign = tmp_path / ".e.json.1234-otherhost.abc123.tmp"
    for path in (live, fresh_legacy, old_legacy, foreign, old_foreign):
        path.write_bytes(b"x")
    past = time.time() - STALE_AFTER_S - 10
    for path in (old_legacy, old_foreign):
        os.utime(path, (past, past))
    atomic_write_text(tmp_path / "f.json", "{}")
    assert sorted(p.name for p in tmp_path.glob(".*.tmp")) == sorted(p.name for p in (live, fresh_legacy, foreign))


@pytest.mark.skipif(os.name == "nt", reason="POSIX modes")
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_honour_the_umask(tmp_path, umask, mode):
    """mkstemp creates 0600; the written file gets what the umask gives, as `touch` or `cp` would."""
    old = os.umask(umask)
    try:
        written = [
            atomic_write_bytes(tmp_path / "w.safetensors", b"x"),
            atomic_write_text(tmp_path / "s.md", "x"),
            append_line(tmp_path / "r.jsonl", "{}"),
        ]
    finally:
        os.umask(old)
    assert [oct(p.stat().st_mode & 0o777) for p in written] == [oct(mode)] * 3
