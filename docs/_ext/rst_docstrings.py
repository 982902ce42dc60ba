"""Griffe extension: the package's reST docstrings, rendered as the Markdown mkdocstrings expects.

The docstrings follow the project style (Sphinx field lists, ``:class:`X``` roles, ``::`` literal
blocks). Griffe's Sphinx parser reads the field lists; this turns the rest into Markdown:

* ``:class:`~async_store.Store``` and the other Python roles become cross-references
  (``[Store][async_store.extension.Store]``), the name resolved in the docstring's own scope;
  a name that resolves to nothing stays a code span;
* a method that overrides one without saying more shows the base method's docstring;
* a paragraph ending in ``::`` followed by an indented block becomes a fenced block, Python when
  it parses as Python, plain text otherwise.
"""

from __future__ import annotations

import ast
import contextlib
import re
from typing import TYPE_CHECKING, Any

from griffe import Docstring, ExprCall, ExprKeyword, Extension, NameResolutionError

if TYPE_CHECKING:
    from griffe import GriffeLoader, Object

ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|exc|mod|data|obj|const):`(?P<target>[^`]+)`")


def _crossref(obj: Object, loader: GriffeLoader, target: str) -> str:
    short = target.startswith("~")
    name = target.lstrip("~").rstrip("()")
    shown = name.rsplit(".", 1)[-1] if short else name
    head, _, rest = name.partition(".")
    # The docstring's own scope first, then its module's, then the package's public names:
    # ``Provider.save`` in a method of Store means the class, not the property Store.Provider.
    bases = [name if name.startswith("async_store.") else ""]
    for scope in (obj, obj.module):
        with contextlib.suppress(NameResolutionError):
            bases.append(scope.resolve(head) + ("." + rest if rest else ""))
    bases.append(f"async_store.{name}")
    for path in filter(None, bases):
        if _exists(loader, path):
            return f"[`{shown}`][{path}]"
    return f"`{shown}`"


def _exists(loader: GriffeLoader, path: str) -> bool:
    try:
        loader.modules_collection[path]
    except (KeyError, ValueError, AttributeError):
        return False
    return True


def _literal_blocks(text: str) -> str:
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::") and i + 1 < len(lines) and not lines[i + 1].strip():
            lead = line.rstrip()[:-2].rstrip()
            if lead:
                out.append(lead + ":")
            indent = len(line) - len(line.lstrip())
            j = i + 1
            block: list[str] = []
            while j < len(lines) and (
                not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent
            ):
                block.append(lines[j])
                j += 1
            while block and not block[-1].strip():
                block.pop()
            code = [b for b in block if b.strip()]
            strip = min((len(b) - len(b.lstrip()) for b in code), default=0)
            pad = " " * indent
            code_lines = [b[strip:] for b in block[1:]]
            lang = "python" if _is_python("\n".join(code_lines)) else "text"
            out += ["", pad + "```" + lang, *(pad + b for b in code_lines), pad + "```", ""]
            i = j
        else:
            out.append(line)
            i += 1
    return "\n".join(out)


def _is_python(code: str) -> bool:
    """Highlight examples as Python, diagrams (the exception tree) as plain text."""
    try:
        compile(code, "<docstring>", "exec", ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    except SyntaxError:
        return False
    return True


def _delegated_property(obj: Object) -> None:
    """``x = property(lambda self: …, doc="See Provider.x.")`` (the sync shim's delegates):
    show a property with that docstring, linked, instead of an attribute holding a lambda."""
    value = getattr(obj, "value", None)
    if not (isinstance(value, ExprCall) and str(value.function) == "property"):
        return
    docs = [a.value for a in value.arguments if isinstance(a, ExprKeyword) and a.name == "doc"]
    if not docs:
        return
    text = ast.literal_eval(str(docs[0]))
    text = re.sub(r"^See (\w+\.\w+)\.$", r"Same as :attr:`\1`.", text)
    obj.docstring = Docstring(text, parent=obj)
    obj.labels = {"property"}
    obj.value = None


def _inherit(obj: Object) -> None:
    """An override without a docstring (S3Provider.check_config) shows its base's."""
    parent = obj.parent
    if obj.docstring is not None or parent is None or not parent.is_class:
        return
    for base in parent.mro():
        member = base.members.get(obj.name)
        if member is not None and member.docstring is not None:
            obj.docstring = Docstring(member.docstring.value, parent=obj)
            return


class RstDocstrings(Extension):
    def on_object(self, *, obj: Object, loader: GriffeLoader, **kwargs: Any) -> None:
        if obj.is_attribute:
            _delegated_property(obj)
        if obj.is_function:
            _inherit(obj)
        if obj.docstring is None:
            return
        text = _literal_blocks(obj.docstring.value)
        obj.docstring.value = ROLE.sub(lambda m: _crossref(obj, loader, m["target"]), text)
