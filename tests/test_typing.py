"""What a type checker sees: ``store.Provider`` is a provider class, never ``Any``."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from mypy import api

SNIPPET = """
from flask import Flask
from quart import Quart
from async_store import AsyncStore, Store, SyncStore

quart_store = Store(Quart(__name__))
flask_store = Store(Flask(__name__))
later: AsyncStore = Store()
later_sync: SyncStore = Store()
unknown = Store()
reveal_type(quart_store.Provider)
reveal_type(flask_store.Provider)
reveal_type(later.Provider)
reveal_type(later_sync.Provider)
reveal_type(unknown.Provider)
reveal_type(quart_store["documents"].Provider)
reveal_type(flask_store.state().Provider)
reveal_type(quart_store.Provider(b"x").save)
reveal_type(flask_store.Provider(b"x").save)
"""

ASYNC = "type[async_store.providers.base.Provider]"
SYNC = "type[async_store.sync.SyncProvider]"


@pytest.mark.slow
def test_store_provider_is_typed(tmp_path: Path) -> None:
    module = tmp_path / "app.py"
    module.write_text(textwrap.dedent(SNIPPET))
    out, err, status = api.run(
        ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(module)]
    )
    assert status == 0, out + err
    revealed = [
        line.split('Revealed type is "', 1)[1].rstrip('"')
        for line in out.splitlines()
        if "Revealed type is" in line
    ]
    assert revealed == [
        ASYNC,
        SYNC,
        ASYNC,
        SYNC,
        f"{ASYNC} | {SYNC}",  # a Store() not yet told which: either, until annotated
        ASYNC,
        SYNC,
        "def () -> typing.Coroutine[Any, Any, str]",
        "def () -> str",
    ]
