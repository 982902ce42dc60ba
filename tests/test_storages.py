"""Several storages in one app (STORE_STORAGES): each its own backend, folder, route, URLs and
spool; checked like the STORE_* keys, with messages that name the storage."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import anyio
import flask
import pytest
import quart

from async_store import NotConfiguredError, Store, StoreError
from async_store.backends.memory import MemoryBackend
from async_store.config import StoreConfigWarning
from async_store.serve import endpoint


def app_with(kind: str, tmp_path: Path, storages: Any, **config: Any) -> Any:
    factory = quart.Quart if kind == "quart" else flask.Flask
    app = factory("storages", root_path=str(tmp_path), instance_path=str(tmp_path / "instance"))
    app.config.update(STORE_PATH=str(tmp_path / "media"), STORE_STORAGES=storages, **config)
    return app


async def save(store: Store, app: Any, storage: str, data: bytes, name: str) -> Any:
    state = store.state(app, storage)
    provider = state.AsyncProvider(data, filename=name)
    await provider.save()
    return provider


@pytest.mark.parametrize("kind", ["quart", "flask"])
async def test_each_storage_keeps_its_own_files_urls_and_route(tmp_path: Path, kind: str) -> None:
    storages = {
        "avatars": {"PROVIDER": "local", "DOMAIN": "https://img.example.org"},
        "exports": {"PROVIDER": "local", "PATH": str(tmp_path / "exports"), "SERVE": False},
        "scratch": {"PROVIDER": "memory"},
    }
    app = app_with(kind, tmp_path, storages, STORE_DOMAIN="https://files.example.org")
    store = Store(app)
    try:
        found = {}
        for storage in ("default", "avatars", "exports", "scratch"):  # Store(app)'s app
            found[storage] = await save(store, app, storage, storage.encode(), "a.txt")
        assert (tmp_path / "media" / "a.txt").read_bytes() == b"default"
        assert (tmp_path / "instance" / "uploads-avatars" / "a.txt").read_bytes() == b"avatars"
        assert (tmp_path / "exports" / "a.txt").read_bytes() == b"exports"
        scratch = store.state(app, "scratch").provider_class.backend
        assert isinstance(scratch, MemoryBackend)
        assert scratch.files["a.txt"].data == b"scratch"
        # Every storage has the name: none was renamed for another's file.
        assert {p.filename for p in found.values()} == {"a.txt"}
        assert found["default"].absolute_url == "https://files.example.org/uploads/a.txt"
        # Nothing is taken from the default storage but what keeps them apart.
        assert found["avatars"].absolute_url == "https://img.example.org/uploads-avatars/a.txt"
        assert found["exports"].absolute_url == "/uploads-exports/a.txt"
        rules = {rule.endpoint: rule.rule for rule in app.url_map.iter_rules()}
        assert rules[endpoint("default")] == "/uploads/<path:filename>"
        assert rules[endpoint("avatars")] == "/uploads-avatars/<path:filename>"
        assert endpoint("exports") not in rules and endpoint("scratch") not in rules
        client = app.test_client()
        for url, status, body in (
            ("/uploads/a.txt", 200, b"default"),
            ("/uploads-avatars/a.txt", 200, b"avatars"),
            ("/uploads-exports/a.txt", 404, None),
            ("/uploads/uploads-avatars/a.txt", 404, None),
        ):
            if kind == "quart":
                response = await client.get(url)
                data = await response.get_data()
            else:  # in a thread, as a WSGI server would: Flask's views block
                response = await anyio.to_thread.run_sync(client.get, url)
                data = response.get_data()
                response.close()  # send_file's file
            assert response.status_code == status, url
            if body is not None:
                assert data == body
    finally:
        store.close()


def test_store_index_gives_a_storage_and_names_the_others(tmp_path: Path) -> None:
    app = app_with("flask", tmp_path, {"docs": {"PROVIDER": "memory"}})
    store = Store(app)
    with app.app_context():
        docs = store["docs"]
        assert docs.name == "docs" and store.state().storages["docs"] is docs
        provider = docs.Provider(b"x", filename="a.txt")  # the sync shim in Flask
        assert provider.save() == "/uploads-docs/a.txt"
        assert store["default"] is store.state()
        with pytest.raises(
            StoreError, match=r"no storage named 'doc': this app has 'default', 'docs'"
        ):
            store["doc"]
    store.close()


@pytest.mark.parametrize(
    ("storages", "message"),
    [
        ("docs", r"STORE_STORAGES must be a dict"),
        ({"Docs": {}}, r"'Docs' is not a storage name"),
        ({"default": {}}, r"'default' is not a storage name"),
        ({"docs": ["s3"]}, r"STORE_STORAGES\['docs'\] must be a dict"),
        ({"docs": {"PATH": "/a", "STORE_PATH": "/b"}}, r"sets PATH twice"),
        ({"docs": {"PROVIDER": "s3"}}, r"STORE_STORAGES\['docs'\]: S3_BUCKET is required"),
        ({"docs": {"CHUNK_SIZE": 10}}, r"STORE_STORAGES\['docs'\]: CHUNK_SIZE must be"),
        ({"docs": {"PROVIDER": "ftp"}}, r"STORE_STORAGES\['docs'\]: PROVIDER 'ftp'"),
        ({"docs": {"URL_PREFIX": "/uploads"}}, r"'default' and 'docs' are served under"),
        ({"docs": {"URL_PREFIX": "/uploads/docs"}}, r"one would hide the other's files"),
        ({"docs": {"PATH": "{media}/docs"}}, r"'default' and 'docs' keep their files in"),
        (
            {"a": {"PATH": "{tmp}/shared"}, "b": {"PATH": "{tmp}/shared", "URL_PREFIX": "/b"}},
            r"'a' and 'b' keep their files",
        ),
    ],
)
@pytest.mark.parametrize("kind", ["quart", "flask"])
def test_a_wrong_storage_is_refused_naming_it(
    tmp_path: Path, kind: str, storages: Any, message: str
) -> None:
    storages = copy.deepcopy(storages)  # the parameters are shared by both kinds
    if isinstance(storages, dict):
        for keys in storages.values():
            if isinstance(keys, dict) and "PATH" in keys:
                keys["PATH"] = keys["PATH"].format(media=tmp_path / "media", tmp=tmp_path)
    app = app_with(kind, tmp_path, storages)
    with pytest.raises(NotConfiguredError, match=message):
        Store().check_config(app)
    with pytest.raises(NotConfiguredError, match=message):
        Store(app)
    assert "store" not in app.extensions
    assert not (tmp_path / "instance").exists()  # nothing made for a storage refused


def test_an_unknown_key_of_a_storage_is_warned_about_by_its_name(tmp_path: Path) -> None:
    app = app_with("quart", tmp_path, {"exports": {"PTH": "/tmp/x"}})
    with pytest.warns(
        StoreConfigWarning,
        match=r"STORE_STORAGES\['exports'\]: unknown key PTH: "
        r"did you mean PATH\?",
    ):
        Store(app)


async def test_each_storage_has_its_own_background_spool(tmp_path: Path) -> None:
    storages = {"docs": {"PROVIDER": "local", "BACKGROUND": True}}
    app = app_with("quart", tmp_path, storages, STORE_BACKGROUND=True)
    store = Store(app)
    async with app.test_app(), app.app_context():
        uploads = [await save(store, app, s, s.encode(), "a.txt") for s in ("default", "docs")]
        with anyio.fail_after(20):
            for upload in uploads:
                await upload.wait()
    spools = {s: store.state(app, s).config["STORE_SPOOL_PATH"] for s in ("default", "docs")}
    assert spools == {
        "default": str(tmp_path / "instance" / "store-spool"),
        "docs": str(tmp_path / "instance" / "store-spool" / "docs"),
    }
    assert (tmp_path / "media" / "a.txt").read_bytes() == b"default"
    assert (tmp_path / "instance" / "uploads-docs" / "a.txt").read_bytes() == b"docs"
    assert os.path.isdir(spools["docs"])
