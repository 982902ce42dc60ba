"""MkDocs hook: the command line page shows each command's ``--help``, as the code has it now.

A line ``<!-- cli-help: ARGS -->`` becomes a text block with the output of
``python -m async_store ARGS --help`` (run in-process through click's test runner), so the page
cannot drift from the commands. A command that fails to print its help stops the build.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from mkdocs.exceptions import PluginError

if TYPE_CHECKING:
    from mkdocs.config.defaults import MkDocsConfig
    from mkdocs.structure.pages import Page

DIRECTIVE = re.compile(r"^<!--\s*cli-help:(?P<args>[^>]*?)\s*-->\s*$", flags=re.M)
PROG = "python -m async_store"


def _help(args: list[str], where: str) -> str:
    from click.testing import CliRunner

    from async_store.cli import main

    result = CliRunner().invoke(main, [*args, "--help"], prog_name=PROG, terminal_width=80)
    if result.exit_code != 0:
        raise PluginError(f"{where}: `{PROG} {' '.join(args)} --help` failed:\n{result.output}")
    return (
        "```text\n$ " + " ".join([PROG, *args, "--help"]) + "\n" + result.output.rstrip() + "\n```"
    )


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, **kwargs: Any) -> str:
    return DIRECTIVE.sub(lambda m: _help(m["args"].split(), page.file.src_uri), markdown)
