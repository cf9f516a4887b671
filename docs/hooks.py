"""MkDocs hooks of the initium site (``hooks:`` in mkdocs.yml).

- The docstrings cross-reference in Sphinx's roles (``:func:`~initium.train.fit```), which
  Markdown renders as ``:func:`` followed by code. Each role becomes the code alone, wrapped in an
  *optional* autorefs link: it links to the object's API entry where the site documents it, and
  stays plain code (no warning) where it does not, e.g. a torch function.
- ``design.md`` (the design document) joins the nav when the file is there.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj|const):<code>(~?)([^<]+)</code>")


def _ref(match: re.Match[str]) -> str:
    short, target = match[1] == "~", match[2].strip()
    title = target.rsplit(".", 1)[-1] if short else target
    return f'<autoref identifier="{target}" optional><code>{title}</code></autoref>'


def on_config(config: Any, **_: Any) -> Any:
    if (Path(config["docs_dir"]) / "design.md").exists() and config["nav"] is not None:
        where = next((i for i, item in enumerate(config["nav"]) if "Benchmarks" in item), len(config["nav"]) - 1)
        config["nav"].insert(where + 1, {"Design": "design.md"})
    return config


def on_page_content(html: str, **_: Any) -> str:
    return ROLE.sub(_ref, html)
