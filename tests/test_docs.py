"""The documentation site builds with no warnings and says everything the README and the package do.

One strict ``mkdocs build`` per run (a few seconds), into a temp folder; the tests read its HTML,
and open it from ``file://`` in headless Chromium with the network off.
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
    """The HTML of a page: ``page(site, "s3")`` is ``s3.html``, ``""`` the home page."""
    return (site / f"{name or 'index'}.html").read_text(encoding="utf-8")


def pages(site: Path) -> list[Path]:
    return sorted(site.rglob("*.html"))


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
    shown = " ".join(text_of(p.read_text(encoding="utf-8")) for p in pages(site))
    shown = " ".join(shown.replace("*", "").split())
    fenced = False
    missing = []
    for line in lines[first:]:
        if hook.FENCE.match(line):
            fenced = not fenced
        elif hook.RUN_MARKER.match(line):
            continue  # tests/test_readme.py's, not the reader's: see the test below
        elif not (fenced or line.startswith(("#", "|")) or not line.strip()):
            if plain(line) not in shown:
                missing.append(line)
    assert missing == []


def test_run_markers_stay_off_the_site(site: Path) -> None:
    """The ``<!-- run: ... -->`` lines before code blocks are for tests/test_readme.py: the
    hook drops them (a comment left in the HTML would still show in the page source)."""
    sources = [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    markdown = "\n".join(p.read_text(encoding="utf-8") for p in sources)
    assert re.search(r"^<!-- run: ", markdown, flags=re.M), "no markers to check"
    for html_file in pages(site):
        markup = html_file.read_text(encoding="utf-8")
        assert not re.search(r"<!--\s*(run|not run):", markup), html_file.relative_to(site)


def test_readme_prose_is_included_not_copied(site: Path) -> None:
    """The S3 guide carries the README's words, links moved to the pages that hold them."""
    s3 = page(site, "s3")
    assert "The bucket must exist: async_store never creates one." in text_of(s3)
    # README's "[Providers](#providers)" points at the Storing files page on the site.
    assert re.search(r'<a href="providers\.html">Providers</a>', s3), "README link not rewritten"


def test_every_config_key_is_in_the_configuration_reference(site: Path) -> None:
    source = "\n".join(p.read_text() for p in (ROOT / "async_store").rglob("*.py"))
    keys = set(re.findall(r"\"(STORE_[A-Z0-9_]+[A-Z0-9])\"", source))
    assert len(keys) > 25  # the reading above still finds the keys
    reference = text_of(page(site, "configuration"))
    assert {k for k in keys if k not in reference} == set()
    # The seed's provider paths still work, so the reference names them.
    assert "flask_store.providers.s3.S3GeventProvider" in reference


def test_every_public_name_is_in_the_api_reference(site: Path) -> None:
    reference = "".join(p.read_text() for p in pages(site / "reference"))
    anchors = set(re.findall(r'id="(async_store\.[\w.]+)"', reference))
    # Shown under its public name (async_store.Store) or where it is defined (…exceptions.X).
    shown = {anchor.rsplit(".", 1)[-1] for anchor in anchors}
    missing = set(async_store.__all__) - shown
    assert missing == set()
    assert "async_store.sqla.StoreType" in anchors


def test_docstrings_render_as_markdown(site: Path) -> None:
    """reST roles and literal blocks in docstrings do not leak into the reference."""
    for html_file in pages(site / "reference"):
        body = text_of(html_file.read_text(encoding="utf-8"))
        assert not re.search(r":(class|meth|attr|func|exc|param|raises):", body), html_file
        assert not re.search(r"::\s*$", body, flags=re.M), html_file
    store = page(site, "reference/store")
    # :meth:`Provider.save_request` in Store.save_request links to the provider's method.
    assert 'href="providers.html#async_store.Provider.save_request"' in store


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


def test_site_links_files_and_loads_nothing_from_other_hosts(site: Path) -> None:
    """Opened as site/index.html, a link to a folder shows its listing, and an asset from
    another host (Google Fonts, unpkg.com) fails offline: pages link .html files, assets are
    the site's own."""
    for html_file in pages(site):
        markup = html_file.read_text(encoding="utf-8")
        where = html_file.relative_to(site)
        assert "fonts.googleapis.com" not in markup and "fonts.gstatic.com" not in markup, where
        links = re.findall(r'<a\b[^>]*\bhref="([^"]*)"', markup)
        assert links, where
        local = [link for link in links if not re.match(r"[a-z]+:", link)]
        folders = [link for link in local if link.split("#")[0].endswith("/")]
        assert folders == [], where
        # Scripts, stylesheets, icons and images come from the site itself.
        assets = re.findall(r'<(?:script|img|link)\b[^>]*\b(?:src|href)="([^"]*)"', markup)
        assert [a for a in assets if re.match(r"(https?:)?//", a)] == [], where
    for css in site.rglob("*.css"):
        imports = re.findall(r"@import[^;]*|url\((?!\"?'?data:)[^)]*\)", css.read_text())
        assert [i for i in imports if "//" in i] == [], css


def test_site_works_from_file_urls_offline(site: Path, tmp_path: Path) -> None:
    """In a browser with the network off: a page from file://, a click to another page, a
    search (the offline plugin's index, run by the site's own worker shim)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.test_demo_browser import chromium

    with chromium(tmp_path / "chromium") as browser:
        browser.execute_cdp_cmd("Network.enable", {})
        browser.execute_cdp_cmd(
            "Network.emulateNetworkConditions",
            {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
        )
        wait = WebDriverWait(browser, 15, 0.05)
        browser.get((site / "index.html").as_uri())
        assert browser.title == "async_store"
        browser.find_element(By.TAG_NAME, "article").find_element(By.LINK_TEXT, "Quart").click()
        wait.until(lambda _: browser.title.startswith("Quart"), message="the Quart page")
        assert browser.current_url == (site / "quart.html").as_uri()
        assert "store.Provider" in browser.find_element(By.TAG_NAME, "article").text

        search = browser.find_element(By.CSS_SELECTOR, "input.md-search__input")
        search.click()
        search.send_keys("save_request")
        results = "ol.md-search-result__list > li"
        wait.until(lambda _: browser.find_elements(By.CSS_SELECTOR, results), message="results")
        first = browser.find_element(By.CSS_SELECTOR, f"{results} a")
        assert first.get_attribute("href").startswith((site / "").as_uri())
