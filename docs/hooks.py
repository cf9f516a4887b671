"""MkDocs hooks of the initium site (``hooks:`` in mkdocs.yml).

- The docstrings cross-reference in Sphinx's roles (``:func:`~initium.train.fit```), which
  Markdown renders as ``:func:`` followed by code. Each role becomes the code alone, wrapped in an
  *optional* autorefs link: it links to the object's API entry where the site documents it, and
  stays plain code (no warning) where it does not, e.g. a torch function.
- ``design.md`` (the design document) joins the nav when the file is there.
- The figures that BENCHMARKS.md (included by ``benchmarks.md``) shows from ``benchmarks/figures/``
  join the site at the same relative path, so its image links resolve there as on GitHub.
- ``<!-- initium-help: run image-fit -->`` in a page becomes ``initium run image-fit --help``'s
  text, from the parser of this checkout: the CLI page cannot drift from the CLI.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj|const):<code>(~?)([^<]+)</code>")


def _ref(match: re.Match[str]) -> str:
    short, target = match[1] == "~", match[2].strip()
    title = target.rsplit(".", 1)[-1] if short else target
    return f'<autoref identifier="{target}" optional><code>{title}</code></autoref>'


def on_config(config: Any, **_: Any) -> Any:
    # the CLI page's help comes from this checkout's initium, installed or not
    src = str(Path(config["config_file_path"]).parent / "src")
    if src not in sys.path:
        sys.path.insert(0, src)
    if (Path(config["docs_dir"]) / "design.md").exists() and config["nav"] is not None:
        where = next((i for i, item in enumerate(config["nav"]) if "Benchmarks" in item), len(config["nav"]) - 1)
        config["nav"].insert(where + 1, {"Design": "design.md"})
    return config


def on_files(files: Any, config: Any, **_: Any) -> Any:
    from mkdocs.structure.files import File

    root = Path(config["config_file_path"]).parent
    for figure in sorted((root / "benchmarks" / "figures").glob("*.png")):
        uri = figure.relative_to(root).as_posix()
        if files.get_file_from_path(uri) is None:
            files.append(File.generated(config, uri, abs_src_path=str(figure)))
    return files


def on_page_content(html: str, **_: Any) -> str:
    # reST's "text::" before a literal block reads "text:", and "text. ::" reads "text." (the block
    # itself is Markdown's indented code)
    html = ROLE.sub(_ref, html)
    return html.replace("<p>::</p>", "").replace(" ::</p>", "</p>").replace("::</p>", ":</p>")


HELP = re.compile(r"<!-- initium-help: ([a-z0-9 -]+) -->")


def _help(words: str) -> str:
    """``initium WORDS --help``, as a code block: the installed parser's own text."""
    import argparse
    import os

    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal; the page has a fixed width
    from initium.cli import build_parser
    from initium.tasks import TASKS

    path = words.split()
    task = path[1] if path[0] == "run" and len(path) > 1 else None
    parser = build_parser(task)
    parser.prog = "initium"
    for word in path:
        if word in TASKS and task == word:
            break
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    return "```text\n" + parser.format_help().rstrip() + "\n```"


def on_page_markdown(markdown: str, **_: Any) -> str:
    return HELP.sub(lambda m: _help(m[1]), markdown)
