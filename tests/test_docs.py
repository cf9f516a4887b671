"""Every Python block of the documentation site runs as written, so the pages cannot drift from the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
BLOCKS = [
    pytest.param(code, id=f"{page.relative_to(DOCS)}#{i}")
    for page in sorted(DOCS.rglob("*.md"))
    for i, code in enumerate(BLOCK.findall(page.read_text()))
]


def test_the_pages_have_examples():
    pages = {b.id.split("#")[0] for b in BLOCKS}
    assert {"methods/noise.md", "methods/rwf.md", "methods/generative.md", "methods/fa.md"} <= pages


@pytest.mark.slow  # the generative page builds a zoo and trains a VAE: about 5 s
@pytest.mark.parametrize("code", BLOCKS)
def test_docs_block_runs(code, tmp_path, monkeypatch):
    if "lightning" in code:
        pytest.importorskip("lightning")
    monkeypatch.chdir(tmp_path)  # whatever a block writes stays in the test's folder
    exec(compile(code, "docs", "exec"), {"__name__": "__main__"})
