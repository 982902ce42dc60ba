"""MkDocs hook: pages take their prose from README.md, so the two never drift apart.

A line ``<!-- readme: Heading -->`` in a page is replaced by the body of the README section with
that heading (its subsections included, the heading line itself left out). Variants:

* ``<!-- readme: Heading | intro -->``: only the text before the section's first subheading;
* ``<!-- readme: Heading | tables -->``: only the tables of that intro.

Subheadings move to the level below the page heading the directive stands under. README links
to its own sections (``[Providers](#providers)``) are pointed at the page that includes that
section; links to repository files become plain text. The lines tests/test_readme.py reads
before a code block (``<!-- run: app -->``, ``<!-- not run: why -->``) are dropped: they are for
the harness, not the reader. An unknown or ambiguous heading, a README
link to a section no page includes, and a README section (``##``) that no page includes are
reported: errors stop the build, warnings fail ``mkdocs build --strict``.
"""

from __future__ import annotations

import logging
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from markdown.extensions.toc import slugify
from mkdocs.exceptions import PluginError

if TYPE_CHECKING:
    from mkdocs.config.defaults import MkDocsConfig
    from mkdocs.structure.files import Files
    from mkdocs.structure.pages import Page

log = logging.getLogger("mkdocs.hooks.readme")

DIRECTIVE = re.compile(r"^<!--\s*readme:\s*(?P<heading>.+?)\s*(?:\|\s*(?P<mode>\w+)\s*)?-->\s*$")
HEADING = re.compile(r"^(?P<hashes>#{1,6})\s+(?P<text>.+?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"(?<!!)\[(?P<text>[^\]]+)\]\((?P<target>[^)\s]+)\)")
MODES = ("all", "intro", "tables")
#: tests/test_readme.py's marker before a code block: whether and how the block is run.
RUN_MARKER = re.compile(r"^\s*<!--\s*(?:run|not run):.*-->\s*$")


@dataclass
class Section:
    level: int
    text: str
    start: int  # index of the heading line
    end: int  # index after the last line of the section (subsections included)
    intro_end: int  # index of the first subheading, or end


def slug(text: str) -> str:
    """The anchor MkDocs (and GitHub, for these headings) gives a heading."""
    return str(slugify(text.replace("`", ""), "-"))


def parse(lines: list[str]) -> list[Section]:
    """The README's headings, code blocks skipped (a ``# comment`` there is no heading)."""
    found: list[tuple[int, int, str]] = []
    fenced = False
    for i, line in enumerate(lines):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and (m := HEADING.match(line)):
            found.append((i, len(m["hashes"]), m["text"]))
    sections = []
    for n, (i, level, text) in enumerate(found):
        later = found[n + 1 :]
        end = next((j for j, lv, _ in later if lv <= level), len(lines))
        intro_end = later[0][0] if later and later[0][0] < end else end
        sections.append(Section(level, text, i, end, intro_end))
    return sections


class Readme:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines = path.read_text(encoding="utf-8").splitlines()
        self.sections = parse(self.lines)
        # slug -> (page src_uri, anchor on it) for every README heading a page includes; the
        # anchor is empty for an included section's own heading, which the page replaces.
        self.anchors: dict[str, tuple[str, str]] = {}
        self.whole: set[str] = set()
        self.included: set[str] = set()

    def find(self, heading: str, where: str) -> Section:
        matches = [s for s in self.sections if s.text == heading]
        if len(matches) != 1:
            known = ", ".join(repr(s.text) for s in self.sections)
            raise PluginError(
                f"{where}: README.md has {len(matches)} sections headed {heading!r} (need "
                f"exactly one); its headings are: {known}"
            )
        return matches[0]

    def covered(self, section: Section) -> bool:
        """Included, or a section with no text of its own whose subsections are all covered."""
        if section.text in self.included:
            return True
        intro = self.lines[section.start + 1 : section.intro_end]
        children = [
            s
            for s in self.sections
            if section.start < s.start < section.end and s.level == section.level + 1
        ]
        return not any(line.strip() for line in intro) and all(map(self.covered, children))

    def register(self, page_uri: str, text: str) -> None:
        """Note which README sections ``page_uri`` includes, for links and the coverage check."""
        for line in text.splitlines():
            if m := DIRECTIVE.match(line):
                section = self.find(m["heading"], page_uri)
                self.included.add(section.text)
                stop = section.intro_end if m["mode"] in ("intro", "tables") else section.end
                whole = m["mode"] in (None, "all")
                for s in self.sections:
                    if section.start <= s.start < stop:
                        anchor = "" if s is section else slug(s.text)
                        # A page with the whole section wins over one with its tables only.
                        if whole and slug(s.text) not in self.whole:
                            self.anchors[slug(s.text)] = (page_uri, anchor)
                            self.whole.add(slug(s.text))
                        else:
                            self.anchors.setdefault(slug(s.text), (page_uri, anchor))

    def render(self, page_uri: str, text: str) -> str:
        out: list[str] = []
        context = 1
        fenced = False
        for line in text.splitlines():
            if FENCE.match(line):
                fenced = not fenced
            if not fenced and (h := HEADING.match(line)):
                context = len(h["hashes"])
            m = DIRECTIVE.match(line) if not fenced else None
            if m is None:
                out.append(line)
                continue
            mode = m["mode"] or "all"
            if mode not in MODES:
                raise PluginError(f"{page_uri}: readme directive mode must be one of {MODES}")
            out.extend(self._body(self.find(m["heading"], page_uri), mode, context, page_uri))
        return "\n".join(without_run_markers(out)) + "\n"

    def _body(self, section: Section, mode: str, context: int, page_uri: str) -> list[str]:
        stop = section.end if mode == "all" else section.intro_end
        body = self.lines[section.start + 1 : stop]
        if mode == "tables":
            body = [line for line in body if line.startswith("|")]
        shift = context - section.level
        out = []
        fenced = False
        for line in body:
            if FENCE.match(line):
                fenced = not fenced
            elif not fenced:
                if h := HEADING.match(line):
                    line = "#" * (len(h["hashes"]) + shift) + " " + h["text"]
                line = LINK.sub(lambda lk: self._link(lk, page_uri), line)
            out.append(line)
        return out

    def _link(self, match: re.Match[str], page_uri: str) -> str:
        text, target = match["text"], match["target"]
        if re.match(r"^[a-z]+:", target):
            return match[0]
        if not target.startswith("#"):
            return text  # a file of the repository: the site does not have it
        found = self.anchors.get(target[1:])
        if found is None:
            raise PluginError(
                f"{page_uri}: README.md links to its section {target}, which no docs page "
                f"includes: add a <!-- readme: ... --> line for it to a page."
            )
        page, anchor = found
        rel = (
            "" if page == page_uri else posixpath.relpath(page, posixpath.dirname(page_uri) or ".")
        )
        return f"[{text}]({rel}#{anchor})" if anchor else f"[{text}]({rel or '#'})"


def without_run_markers(lines: list[str]) -> list[str]:
    kept = []
    fenced = False
    for line in lines:
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and RUN_MARKER.match(line):
            continue
        kept.append(line)
    return kept


_readme: Readme | None = None


def on_files(files: Files, config: MkDocsConfig, **kwargs: Any) -> Files:
    global _readme
    readme = Readme(Path(config.config_file_path).parent / "README.md")
    for file in files.documentation_pages():
        readme.register(file.src_uri, Path(file.abs_src_path or "").read_text(encoding="utf-8"))
    for section in readme.sections:
        if section.level == 2 and not readme.covered(section):
            log.warning(
                "README section %r is in no docs page: add '<!-- readme: %s -->' to one.",
                section.text,
                section.text,
            )
    _readme = readme
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, **kwargs: Any) -> str:
    assert _readme is not None
    return _readme.render(page.file.src_uri, markdown)
