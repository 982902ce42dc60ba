"""The Quart the suite runs on: the venv's own (the highest pyproject.toml allows) in the main
run, the lowest in ``make test-quart-lowest`` (``QUART_EXPECTED``), so the flow-control layer
over Quart's private request Body is tested at both ends of the range."""

from __future__ import annotations

import os
import re
from importlib import metadata
from pathlib import Path

import quart
import quart.asgi
import quart.wrappers.request


def _allowed() -> tuple[tuple[int, ...], tuple[int, ...]]:
    text = (Path(__file__).parent.parent / "pyproject.toml").read_text()
    found = re.search(r'quart = \["quart>=([\d.]+),<([\d.]+)"\]', text)
    assert found, "pyproject.toml's quart extra names a lowest and an excluded upper version"
    low, high = (tuple(int(n) for n in v.split(".")) for v in found.groups())
    return low, high


def test_the_quart_under_test_is_in_the_allowed_range() -> None:
    version = metadata.version("quart")
    low, high = _allowed()
    assert low <= tuple(int(n) for n in version.split(".")[:3]) < high, version
    expected = os.environ.get("QUART_EXPECTED")
    if expected is not None:  # make test-quart-lowest: the lowest, imported from its own folder
        assert version == expected
        assert f"quart-{expected}" in str(Path(quart.__file__))
    # What the flow-control layer subclasses, reads and calls (async_store/_quart.py).
    body = quart.wrappers.request.Body(None, None)
    for name in ("_data", "_complete", "_must_raise", "_max_content_length"):
        assert hasattr(body, name), f"Quart {version}'s request Body has no {name}"
    assert callable(body.append) and callable(body.set_complete)
    assert callable(quart.asgi.ASGIHTTPConnection.handle_messages)
    assert quart.wrappers.request.Request.body_class is quart.wrappers.request.Body
    assert quart.Quart.asgi_http_class is quart.asgi.ASGIHTTPConnection
