"""README.md cannot drift from the code or from BENCHMARKS.md.

1. Every ```python block of README.md runs as written: each in a fresh namespace, in its own
   temporary working directory, with the init cache in a temporary folder. A block must print
   something (the README's snippets show their result), and the comment of ``list_methods()``
   must list what it returns. (```bash blocks are not run.)
2. Figures: every measured figure the README quotes is copied verbatim from BENCHMARKS.md, where
   it stands with its command. The convention the check relies on: in README prose (outside code
   blocks and inline code), a *figure* is a number with the unit dB or ms, a ratio written ``1.7x``
   (a range ``1.4-1.5x`` is one figure), or an interval ``39 ± 1``; each must appear, character for
   character, in BENCHMARKS.md. Quote a figure as BENCHMARKS.md writes it, or not at all.
"""

from __future__ import annotations

import ast
import contextlib
import io
import re
from pathlib import Path

import pytest

import initium

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BENCHMARKS = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
NUMBER = r"\d+(?:\.\d+)?"
FIGURE = re.compile(rf"(?<![\w.-])-?{NUMBER}(?:-{NUMBER})?(?:\s?(?:dB|ms)\b|x\b)|{NUMBER} ± {NUMBER}")


def python_blocks() -> list[tuple[int, str]]:
    """``(line of the opening fence, code)`` for every ```python block."""
    return [(README[: m.start()].count("\n") + 1, m.group(2)) for m in FENCE.finditer(README) if m.group(1) == "python"]


def prose() -> str:
    """README.md without its code blocks and inline code spans."""
    return re.sub(r"`[^`\n]*`", " ", FENCE.sub(" ", README))


def test_the_readme_has_python_blocks():
    assert len(python_blocks()) >= 6


@pytest.mark.slow  # the blocks together train a few small models: ~30-60 s on 2 shared cores
@pytest.mark.parametrize(("line", "code"), python_blocks(), ids=[f"README.md:{n}" for n, _ in python_blocks()])
def test_readme_python_block_runs_as_written(line, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("INITIUM_CACHE", str(tmp_path / "cache"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__main__"})
    printed = out.getvalue()
    assert printed.strip(), f"the block at README.md:{line} prints nothing; show its result"
    # What the README says of a block's output must hold: the noise-pretraining snippet prints a
    # PSNR per init, and the text under it says noise pretraining is several dB ahead.
    psnr = dict(re.findall(r"^(\w+)\s+PSNR after 100 steps: ([\d.]+) dB", printed, re.M))
    if psnr:
        assert set(psnr) == {"default", "noise"} and float(psnr["noise"]) > float(psnr["default"]) + 2, psnr


def test_the_first_block_is_the_noise_pretraining_comparison():
    assert "PSNR after 100 steps" in python_blocks()[0][1] and "noise_pretrain" in python_blocks()[0][1]


def test_list_methods_comment_lists_what_it_returns():
    comments = re.findall(r"initium\.list_methods\(\)\)?\s*#\s*(\[.*?\])", README)
    assert comments, "README.md shows initium.list_methods() with its result in a comment"
    for comment in comments:
        assert ast.literal_eval(comment) == initium.list_methods()


def test_every_figure_the_readme_quotes_is_in_benchmarks():
    figures = FIGURE.findall(prose())
    assert len(figures) >= 10  # the convention is in use: the README quotes its measurements
    missing = sorted({f for f in figures if f not in BENCHMARKS})
    assert not missing, f"README.md quotes figures that BENCHMARKS.md does not have verbatim: {missing}"


def test_figure_pattern():
    found = FIGURE.findall("30 dB after 39 ± 1 steps, 8.7x, 1.4-1.5x, 2.2 M, 3x3, 5 x 128, -0.3 dB, 1e-5 dB, 949 ms")
    assert found == ["30 dB", "39 ± 1", "8.7x", "1.4-1.5x", "-0.3 dB", "949 ms"]


def test_readme_links_only_into_the_repository():
    targets = re.findall(r"\]\(([^)]+)\)", README)
    local = [t for t in targets if not re.match(r"https?://", t)]
    assert all(not t.startswith("..") and (ROOT / t.split("#")[0]).exists() for t in local), local
    assert "../shared" not in README
