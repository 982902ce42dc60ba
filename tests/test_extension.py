"""The Store extension: setup, config checks, per-app providers, framework detection."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, ClassVar

import flask
import pytest
import quart

from async_store import (
    AsyncStore,
    LocalProvider,
    NotConfiguredError,
    Provider,
    Store,
    StoreError,
    StoreState,
    SyncProvider,
    store_provider,
)
from tests.conftest import make_app


class BucketProvider(LocalProvider):
    """A custom provider, named by dotted path in STORE_PROVIDER."""

    REQUIRED_CONFIGURATION: ClassVar[tuple[str, ...]] = ("STORE_FOO_BUCKET",)


class NotAProvider:
    pass


def test_quart_gets_async_and_flask_gets_the_shim(store_path: Path) -> None:
    qapp, fapp = make_app("quart", store_path), make_app("flask", store_path)
    qstore, fstore = Store(qapp), Store(fapp)
    assert issubclass(qstore.Provider, Provider)
    assert issubclass(fstore.Provider, SyncProvider)
    assert issubclass(fstore.AsyncProvider, LocalProvider)
    assert issubclass(qstore.SyncProvider, SyncProvider)
    assert isinstance(qapp.extensions["store"], StoreState)
    fstore.close()


def test_defaults_are_written_to_app_config(tmp_path: Path) -> None:
    app = flask.Flask(__name__, instance_path=str(tmp_path / "instance"))
    store = Store(app)
    assert app.config["STORE_PROVIDER"] == "local"
    assert app.config["STORE_URL_PREFIX"] == "/uploads"
    assert app.config["STORE_DOMAIN"] is None
    assert app.config["STORE_SERVE_FILES"] is True
    # Never the current directory (the seed's default): the route would serve the app's code.
    assert store.state(app).config.path == str(tmp_path / "instance" / "uploads")
    assert app.config["STORE_PATH"] == str(tmp_path / "instance" / "uploads")


def test_relative_store_path_is_relative_to_the_app_root(tmp_path: Path) -> None:
    app = flask.Flask(__name__, root_path=str(tmp_path))
    app.config["STORE_PATH"] = "media"
    store = Store(app)
    assert store.state(app).config.path == str(tmp_path / "media")


def test_factory_with_two_apps_keeps_their_own_paths(tmp_path: Path) -> None:
    store = Store()
    apps = []
    for name in ("one", "two"):
        app = make_app("flask", tmp_path / name, STORE_DOMAIN=f"https://{name}.test")
        store.init_app(app)
        apps.append(app)
    urls = []
    for app in apps:
        with app.app_context():
            provider = store.Provider(b"x", filename="a.txt")
            urls.append(provider.save())
    assert urls == ["https://one.test/uploads/a.txt", "https://two.test/uploads/a.txt"]
    assert (tmp_path / "one" / "a.txt").exists() and (tmp_path / "two" / "a.txt").exists()
    with apps[0].app_context():
        first = store.Provider
    with apps[1].app_context():
        assert store.Provider is not first
    store.close()


async def test_factory_with_quart_apps(tmp_path: Path) -> None:
    store: AsyncStore = Store()
    one, two = make_app("quart", tmp_path / "one"), make_app("quart", tmp_path / "two")
    store.init_app(one)
    store.init_app(two)
    for app in (one, two):
        async with app.app_context():
            await store.Provider(b"x", filename=f"{app is one}.txt").save()
    assert os.listdir(tmp_path / "one") == ["True.txt"]
    assert os.listdir(tmp_path / "two") == ["False.txt"]


def test_no_app_context_is_a_clear_error(store_path: Path) -> None:
    store = Store()
    store.init_app(make_app("flask", store_path))
    with pytest.raises(StoreError, match="app context"):
        store.Provider  # noqa: B018
    with pytest.raises(StoreError, match="app context"):
        store_provider()


def test_store_app_works_outside_a_context(store_path: Path) -> None:
    store = Store(make_app("flask", store_path))
    assert store.Provider(b"x", filename="a.txt").save() == "/uploads/a.txt"
    store.close()


def test_init_app_twice_is_refused(store_path: Path) -> None:
    app = make_app("quart", store_path)
    Store(app)
    with pytest.raises(StoreError, match="already registered"):
        Store().init_app(app)


def test_other_apps_store_is_refused(store_path: Path) -> None:
    app = make_app("flask", store_path)
    Store(app)
    with pytest.raises(StoreError, match="not registered"):
        Store().state(app)


def test_store_provider_follows_the_current_app(store_path: Path) -> None:
    app = make_app("flask", store_path)
    store = Store(app)
    with app.app_context():
        assert store_provider() is store.Provider


@pytest.mark.parametrize(
    "name",
    [
        "local",
        "LOCAL",
        "flask_store.providers.local.LocalProvider",
        "async_store.providers.local.LocalProvider",
        LocalProvider,
        "tests.test_extension.BucketProvider",
    ],
)
def test_provider_names(store_path: Path, name: Any) -> None:
    own = {"STORE_FOO_BUCKET": "b"} if "BucketProvider" in str(name) else {}
    app = make_app("quart", store_path, STORE_PROVIDER=name, **own)
    store = Store(app)
    assert issubclass(store.Provider, LocalProvider)


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"STORE_PROVIDER": "ftp"}, "STORE_PROVIDER"),
        ({"STORE_PROVIDER": "myapp.nowhere.Provider"}, "STORE_PROVIDER"),
        ({"STORE_PROVIDER": "tests.test_extension.NotAProvider"}, "STORE_PROVIDER"),
        ({"STORE_PROVIDER": 42}, "STORE_PROVIDER"),
        ({"STORE_PROVIDER": "tests.test_extension.BucketProvider"}, "STORE_FOO_BUCKET"),
        (
            {"STORE_PROVIDER": "tests.test_extension.BucketProvider", "STORE_FOO_BUCKET": ""},
            "STORE_FOO_BUCKET",
        ),
        ({"STORE_URL_PREFIX": "uploads"}, "STORE_URL_PREFIX"),
        ({"STORE_URL_PREFIX": "http://cdn.test/uploads"}, "STORE_URL_PREFIX"),
        ({"STORE_URL_PREFIX": "/a/../b"}, "STORE_URL_PREFIX"),
        ({"STORE_DOMAIN": "cdn.example.org"}, "STORE_DOMAIN"),
        ({"STORE_DOMAIN": "ftp://cdn.example.org"}, "STORE_DOMAIN"),
        ({"STORE_CHUNK_SIZE": 10}, "STORE_CHUNK_SIZE"),
        ({"STORE_PATH": None}, "STORE_PATH"),
    ],
)
@pytest.mark.parametrize("kind", ["quart", "flask"])
def test_wrong_config_names_the_key(
    store_path: Path, kind: str, config: dict[str, Any], key: str
) -> None:
    app = make_app(kind, store_path)
    app.config.update(config)
    with pytest.raises(NotConfiguredError, match=key):
        Store(app)
    assert "store" not in app.extensions


def test_s3_without_its_config_is_refused_at_init(store_path: Path) -> None:
    # The S3 provider itself lands later; naming it must already fail clearly at init_app.
    app = make_app("quart", store_path, STORE_PROVIDER="s3")
    with pytest.raises(NotConfiguredError, match="STORE_"):
        Store(app)
    app = make_app("quart", store_path, STORE_PROVIDER="flask_store.providers.s3.S3GeventProvider")
    with pytest.raises(NotConfiguredError, match="STORE_"):
        Store(app)


def test_unbound_provider_is_a_clear_error() -> None:
    with pytest.raises(StoreError, match="store.Provider"):
        LocalProvider(b"x")


def test_route_can_be_turned_off(store_path: Path) -> None:
    app = make_app("flask", store_path, STORE_SERVE_FILES=False)
    store = Store(app)
    store.Provider(b"x", filename="a.txt").save()
    assert app.test_client().get("/uploads/a.txt").status_code == 404
    store.close()


async def test_quart_view_upload(store_path: Path) -> None:
    app = quart.Quart(__name__)
    app.config.update(STORE_DOMAIN="http://127.0.0.1:5000", STORE_PATH=str(store_path))
    store = Store(app)

    @app.route("/upload", methods=["POST"])
    async def upload() -> str:
        provider = store.Provider((await quart.request.files).get("afile"))
        await provider.save()
        return str(provider.absolute_url)

    client = app.test_client()
    upload_file = quart.datastructures.FileStorage(io.BytesIO(b"jpeg"), filename="localfile.jpg")
    response = await client.post("/upload", files={"afile": upload_file})
    assert await response.get_data(as_text=True) == "http://127.0.0.1:5000/uploads/localfile.jpg"
    assert (store_path / "localfile.jpg").read_bytes() == b"jpeg"


def test_flask_async_view_uses_the_async_provider(store_path: Path) -> None:
    app = make_app("flask", store_path)
    store = Store(app)

    @app.post("/async-upload")
    async def async_upload() -> str:
        provider = store.AsyncProvider(flask.request.files["afile"])
        return str(await provider.save())

    @app.post("/wrong")
    async def wrong() -> str:
        return str(store.Provider(flask.request.files["afile"]).save())

    client = app.test_client()
    response = client.post("/async-upload", data={"afile": (io.BytesIO(b"a"), "a.txt")})
    assert response.text == "/uploads/a.txt"
    assert (store_path / "a.txt").read_bytes() == b"a"
    # The shim inside a running loop would block it: a clear error instead.
    app.testing = True
    with pytest.raises(StoreError, match="AsyncProvider"):
        client.post("/wrong", data={"afile": (io.BytesIO(b"b"), "b.txt")})
    store.close()
