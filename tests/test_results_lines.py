"""Lines of results.jsonl that parse but are not run records are skipped with a warning: none stops
`initium report` or `initium run`, and none makes a run look finished (issue 14, item 12)."""

from __future__ import annotations

import json

import pytest

from initium.cli import main
from initium.records import read_records

NOT_RECORDS = [
    "[1, 2]",
    "{}",
    "null",
    '"text"',
    "3",
    '{"task": "image-fit", "method": "default", "seed": 0}',  # KeyError 'arch' in run and report before
    '{"task": "image-fit", "arch": "siren", "method": "default", "seed": 0, "status": "ok"}',  # finished? no
    '{"task": "image-fit", "arch": "siren", "method": "default", "seed": "0", "status": "failed"}',
]


@pytest.mark.parametrize("line", NOT_RECORDS)
def test_lines_that_parse_but_are_not_records_are_skipped_with_a_warning(tmp_path, caplog, line):
    path = tmp_path / "results.jsonl"
    path.write_text(line + "\n{torn\n")
    assert read_records(path) == []
    assert f"not a run record ({path}:1" in caplog.text and f"unreadable line ({path}:2)" in caplog.text


def _ok_records(out):
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in lines if isinstance(r, dict) and r.get("status") == "ok" and "curve" in r]


def test_run_and_report_skip_them_and_a_run_is_finished_only_by_its_record(tmp_path, caplog, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "results.jsonl").write_text("\n".join(NOT_RECORDS) + "\n")
    argv = ["run", "image-fit", "--image", "camera", "--size", "16", "--methods", "default", "--seeds", "1",
            "--steps", "5", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert len(_ok_records(out)) == 1  # none of the lines made the run look finished: it ran
    assert "skipping a line that is not a run record" in caplog.text
    assert main(["report", str(out)]) == 0
    assert "default" in capsys.readouterr().out  # the summary table has the run
    with (out / "results.jsonl").open("a") as f:  # a later line must not undo it either
        f.write("\n".join(NOT_RECORDS) + "\n")
    assert main(argv) == 0
    assert len(_ok_records(out)) == 1  # resumed: found finished, not run again
    assert main(["report", str(out)]) == 0
    assert (out / "summary.md").exists()
