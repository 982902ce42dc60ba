"""The documentation site builds with no warnings and says everything the README and the package do.

One strict ``mkdocs build`` per run (a few seconds), into a temp folder; the tests read its HTML.
"""

from __future__ import annotations

import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import async_store

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    log = run.stdout + run.stderr
    assert run.returncode == 0, f"mkdocs build --strict failed:\n{log}"
    assert "WARNING" not in log, log
    return out


def page(site: Path, name: str) -> str:
    return (site / name / "index.html").read_text(encoding="utf-8")


def text_of(markup: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


def headings(markup: str) -> set[str]:
    found = re.findall(r"<h[1-6][^>]*>(.*?)</h[1-6]>", markup, flags=re.S)
    # Drop the permalink's "¶" and normalise spaces.
    return {" ".join(text_of(h).replace("¶", "").split()) for h in found}


def load_readme_hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_readme", ROOT / "docs/_ext/readme.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def plain(markdown: str) -> str:
    """A Markdown line as its text shows on a page: no link targets, backticks or bold."""
    markdown = re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", markdown)
    markdown = re.sub(r"^\s*(?:[-*]|\d+\.)\s+", "", markdown)
    # Emphasis may span lines: drop every star here and on the page (see below).
    return " ".join(markdown.replace("`", "").replace("*", "").split())


def test_every_readme_line_is_on_the_site(site: Path) -> None:
    """Each prose line of the README's sections (the intro's make commands aside) is shown."""
    hook = load_readme_hook()
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    first = min(s.start for s in hook.parse(lines) if s.level == 2)
    shown = " ".join(text_of(p.read_text(encoding="utf-8")) for p in site.rglob("index.html"))
    shown = " ".join(shown.replace("*", "").split())
    fenced = False
    missing = []
    for line in lines[first:]:
        if hook.FENCE.match(line):
            fenced = not fenced
        elif not (fenced or line.startswith(("#", "|")) or not line.strip()):
            if plain(line) not in shown:
                missing.append(line)
    assert missing == []


def test_readme_prose_is_included_not_copied(site: Path) -> None:
    """The S3 guide carries the README's words, links moved to the pages that hold them."""
    s3 = page(site, "s3")
    assert "The bucket must exist: async_store never creates one." in text_of(s3)
    # README's "[Providers](#providers)" points at the Storing files page on the site.
    assert re.search(r'<a href="\.\./providers/">Providers</a>', s3), "README link not rewritten"


def test_every_config_key_is_in_the_configuration_reference(site: Path) -> None:
    source = "\n".join(p.read_text() for p in (ROOT / "async_store").rglob("*.py"))
    keys = set(re.findall(r"\"(STORE_[A-Z0-9_]+[A-Z0-9])\"", source))
    assert len(keys) > 25  # the reading above still finds the keys
    reference = text_of(page(site, "configuration"))
    assert {k for k in keys if k not in reference} == set()
    # The seed's provider paths still work, so the reference names them.
    assert "flask_store.providers.s3.S3GeventProvider" in reference


def test_every_public_name_is_in_the_api_reference(site: Path) -> None:
    reference = "".join(p.read_text() for p in (site / "reference").rglob("index.html"))
    anchors = set(re.findall(r'id="(async_store\.[\w.]+)"', reference))
    # Shown under its public name (async_store.Store) or where it is defined (…exceptions.X).
    shown = {anchor.rsplit(".", 1)[-1] for anchor in anchors}
    missing = set(async_store.__all__) - shown
    assert missing == set()
    assert "async_store.sqla.StoreType" in anchors


def test_docstrings_render_as_markdown(site: Path) -> None:
    """reST roles and literal blocks in docstrings do not leak into the reference."""
    for html_file in (site / "reference").rglob("index.html"):
        body = text_of(html_file.read_text(encoding="utf-8"))
        assert not re.search(r":(class|meth|attr|func|exc|param|raises):", body), html_file
        assert not re.search(r"::\s*$", body, flags=re.M), html_file
    store = page(site, "reference/store")
    # :meth:`Provider.save_request` in Store.save_request links to the provider's method.
    assert 'href="../providers/#async_store.Provider.save_request"' in store


def test_cli_page_shows_every_command_help(site: Path) -> None:
    from async_store.cli import main

    cli = text_of(page(site, "cli"))
    assert main.commands, "no commands to document"
    for name, command in main.commands.items():
        assert f"$ python -m async_store {name} --help" in cli
        # The help text is the command's own, printed at build time.
        first_line = (command.help or "").strip().splitlines()[0]
        assert " ".join(first_line.split()[:6]) in " ".join(cli.split())


def test_index_shows_the_demo_screenshot(site: Path) -> None:
    assert 'src="img/demo.png"' in page(site, "")
    assert (site / "img" / "demo.png").stat().st_size > 0


def test_readme_hook_reports_what_it_cannot_place() -> None:
    from mkdocs.exceptions import PluginError

    hook = load_readme_hook()
    readme = hook.Readme(ROOT / "README.md")
    with pytest.raises(PluginError, match="no such heading|0 sections headed 'Nope'"):
        readme.register("x.md", "<!-- readme: Nope -->")
    # A README link to a section no page includes names the fix.
    readme.register("s3.md", "<!-- readme: S3 and S3-compatible storage -->")
    with pytest.raises(PluginError, match="#providers, which no docs page includes"):
        readme.render("s3.md", "# S3\n<!-- readme: S3 and S3-compatible storage -->")
