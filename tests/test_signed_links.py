"""Signed links to local files: ``await provider.url(expires=600)`` and the route that checks them.

Every test that serves runs for Quart and for Flask (``app_kind``), through their test clients
(:func:`tests.test_serve.fetch`) or, for raw paths no test client would send, real servers. A
link is made by the public API wherever it can be; an expired one by a :class:`LinkSigner` with
a clock in the past, signing with the app's own key, which is what the route checks.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import anyio.to_thread
import pytest
from werkzeug.datastructures import MultiDict

from async_store import NotConfiguredError, Store, StoreError, UnsafePathError
from async_store._signing import MAX_EXPIRES, LinkSigner

from .conftest import make_app
from .servers import real_server
from .test_cli import invoke
from .test_serve import SECRET, Reply, fetch, put, raw_request

KEY = "a secret key for the tests, long enough to be a real one"
DATA = b"0123456789"
Build = Callable[..., tuple[Any, Store]]


@pytest.fixture
def build() -> Iterator[Build]:
    """``build(kind, store_path, **config)``: an app with a ``SECRET_KEY`` (unless
    ``SECRET_KEY=None``) and its Store, closed at the end."""
    made: list[Store] = []

    def build(kind: str, store_path: Path | None, **config: Any) -> tuple[Any, Store]:
        config = {"SECRET_KEY": KEY, **config}
        if config["SECRET_KEY"] is None:
            del config["SECRET_KEY"]
        app = make_app(kind, store_path, **config)
        store = Store(app)
        made.append(store)
        return app, store

    yield build
    for store in made:
        store.close()


async def saved(
    store: Store, app: Any, name: str, data: bytes = DATA, storage: str = "default"
) -> Any:
    provider = store.state(app, storage).AsyncProvider(data, filename=name)
    await provider.save()
    return provider


def with_query(link: str, **changes: str | None) -> str:
    """``link`` with query parameters changed (None drops one)."""
    parts = urlsplit(link)
    query = dict(parse_qsl(parts.query))
    for name, value in changes.items():
        if value is None:
            query.pop(name, None)
        else:
            query[name] = value
    return f"{parts.path}?{urlencode(query)}"


def assert_refused(reply: Reply) -> None:
    assert reply.status == 403
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    assert DATA not in reply.body and SECRET not in reply.body


# --- a signed link is served ---------------------------------------------------------------------


async def test_a_signed_link_is_served(app_kind: str, store_path: Path, build: Build) -> None:
    app, store = build(app_kind, store_path)
    provider = await saved(store, app, "report.txt")
    link = await provider.url(expires=600)
    assert link.startswith("/uploads/report.txt?expires=")
    assert "signature=" in link
    reply = await fetch(app, link)
    assert (reply.status, reply.body) == (200, DATA)
    assert reply.headers["Content-Type"].startswith("text/plain")
    # A shared cache must not answer for it after it expires.
    assert "private" in reply.headers["Cache-Control"]
    # Ranges and HEAD work as for any file of the route.
    part = await fetch(app, link, headers={"Range": "bytes=2-5"})
    assert (part.status, part.body, part.headers["Content-Range"]) == (206, b"2345", "bytes 2-5/10")
    head = await fetch(app, link, method="HEAD")
    assert (head.status, head.body) == (200, b"")
    # A public storage (the default) still serves its permanent URL.
    plain = await fetch(app, provider.absolute_url)
    assert (plain.status, plain.body) == (200, DATA)
    assert "private" not in plain.headers.get("Cache-Control", "")


async def test_the_sync_shim_signs_the_same_links(
    app_kind: str, store_path: Path, build: Build
) -> None:
    app, store = build(app_kind, store_path, STORE_SERVE_SIGNED_ONLY=True)
    put(store_path, "docs/a.txt")
    shim = store.state(app).SyncProvider("docs/a.txt")
    link = await anyio.to_thread.run_sync(lambda: shim.url(expires=60))
    assert (await fetch(app, link)).body == DATA
    named = await anyio.to_thread.run_sync(lambda: shim.url(expires=60, download_name="b.txt"))
    reply = await fetch(app, named)
    assert reply.headers["Content-Disposition"] == "attachment; filename=b.txt"


async def test_a_signed_link_of_a_background_storage_is_served(
    app_kind: str, store_path: Path, tmp_path: Path, build: Build
) -> None:
    spool = str(tmp_path / "spool")
    app, store = build(
        app_kind,
        store_path,
        STORE_BACKGROUND=True,
        STORE_SPOOL_PATH=spool,
        STORE_SERVE_SIGNED_ONLY=True,
    )
    state = store.state(app)
    assert state.background is not None  # the backend is the background wrapper

    def save_and_sign() -> str:  # Flask: the sync shim's loop delivers
        shim = state.SyncProvider(b"late bytes", filename="late.txt")
        shim.save()
        shim.wait(timeout=30)
        return str(shim.url(expires=60))

    if app_kind == "quart":
        async with app.test_app():  # the serving loop delivers Quart's background uploads
            provider = state.AsyncProvider(b"late bytes", filename="late.txt")
            await provider.save()
            await provider.wait()
            reply = await fetch(app, await provider.url(expires=60))
    else:
        reply = await fetch(app, await anyio.to_thread.run_sync(save_and_sign))
    assert (reply.status, reply.body) == (200, b"late bytes")


# --- refused: expired, tampered, of another storage ---------------------------------------------


async def test_an_expired_link_is_refused(app_kind: str, store_path: Path, build: Build) -> None:
    app, store = build(app_kind, store_path)
    put(store_path, "a.txt")
    # Signed with the app's key ten minutes ago, for five minutes.
    past = LinkSigner(app.config, "default", clock=lambda: time.time() - 600)
    expired = f"/uploads/a.txt?{past.query('a.txt', 300)}"
    assert_refused(await fetch(app, expired))
    # The same signer, made now, gives a link that works: only the time differs.
    now = LinkSigner(app.config, "default")
    assert (await fetch(app, f"/uploads/a.txt?{now.query('a.txt', 300)}")).status == 200


def test_a_link_is_valid_for_exactly_its_seconds() -> None:
    """The expiry, seen through an explicit clock: valid up to ``expires`` seconds later."""
    clock = [1_000_000.0]
    signer = LinkSigner({"SECRET_KEY": KEY}, "default", clock=lambda: clock[0])
    args = MultiDict(parse_qsl(signer.query("a.txt", 600)))
    assert args["expires"] == "1000600"
    for now, granted in ((1_000_000.0, True), (1_000_600.0, True), (1_000_600.5, False)):
        clock[0] = now
        assert (signer.grant("a.txt", args, signed_only=True) is not None) is granted, now


def signature_of(link: str) -> str:
    return dict(parse_qsl(urlsplit(link).query))["signature"]


def flipped(signature: str) -> str:
    """The signature with its first character changed."""
    return ("B" if signature[0] == "A" else "A") + signature[1:]


TAMPERED: dict[str, Callable[[str], str]] = {
    "another file": lambda link: link.replace("/a.txt?", "/b.txt?"),
    "a later expiry": lambda link: with_query(link, expires=str(int(time.time()) + 86400)),
    "a changed signature": lambda link: with_query(link, signature=flipped(signature_of(link))),
    "no signature": lambda link: with_query(link, signature=None),
    "no expiry": lambda link: with_query(link, expires=None),
    "an added download_name": lambda link: with_query(link, download_name="x.html"),
    "an added content_type": lambda link: with_query(link, content_type="text/html"),
    "a parameter twice": lambda link: f"{link}&signature={signature_of(link)}",
    "a signature of garbage": lambda link: with_query(link, signature="%%%"),
}


@pytest.mark.parametrize("change", list(TAMPERED))
async def test_a_tampered_link_is_refused(
    app_kind: str, store_path: Path, build: Build, change: str
) -> None:
    app, store = build(app_kind, store_path)
    put(store_path, "b.txt", b"the other file")
    link = await (await saved(store, app, "a.txt")).url(expires=600)
    assert (await fetch(app, link)).status == 200
    reply = await fetch(app, TAMPERED[change](link))
    assert_refused(reply)
    assert b"the other file" not in reply.body


async def test_a_changed_override_is_refused(app_kind: str, store_path: Path, build: Build) -> None:
    app, store = build(app_kind, store_path)
    provider = await saved(store, app, "a.txt")
    link = await provider.url(expires=600, download_name="a.txt", content_type="text/plain")
    assert (await fetch(app, link)).status == 200
    assert_refused(await fetch(app, with_query(link, content_type="text/html")))
    assert_refused(await fetch(app, with_query(link, download_name="a.html")))
    assert_refused(await fetch(app, with_query(link, download_name=None)))


async def test_a_link_signed_with_another_secret_is_refused(
    app_kind: str, store_path: Path, build: Build
) -> None:
    app, _ = build(app_kind, store_path)
    put(store_path, "a.txt")
    other = LinkSigner({"SECRET_KEY": "another app's secret"}, "default")
    assert_refused(await fetch(app, f"/uploads/a.txt?{other.query('a.txt', 60)}"))


async def test_a_rotated_secret_keeps_its_links_while_it_is_a_fallback(
    app_kind: str, store_path: Path, build: Build
) -> None:
    app, store = build(app_kind, store_path)
    link = await (await saved(store, app, "a.txt")).url(expires=600)
    app.config["SECRET_KEY"] = "the new secret"
    assert_refused(await fetch(app, link))
    app.config["SECRET_KEY_FALLBACKS"] = [KEY]
    assert (await fetch(app, link)).status == 200


async def test_a_refusal_does_not_tell_whether_the_file_exists(
    app_kind: str, store_path: Path, build: Build
) -> None:
    app, store = build(app_kind, store_path, STORE_SERVE_SIGNED_ONLY=True)
    link = await (await saved(store, app, "a.txt")).url(expires=600)
    there = await fetch(app, with_query(link, expires=None))
    missing = await fetch(app, with_query(link.replace("/a.txt?", "/nothing.txt?"), expires=None))
    assert (there.status, there.body) == (missing.status, missing.body) == (403, b"Forbidden")
    # Only a link the app signed learns that a file is missing.
    gone = await (await saved(store, app, "gone.txt")).url(expires=600)
    (store_path / "gone.txt").unlink()
    assert (await fetch(app, gone)).status == 404


async def test_a_link_to_one_storage_does_not_open_another(
    app_kind: str, store_path: Path, tmp_path: Path, build: Build
) -> None:
    second = tmp_path / "second"
    app, store = build(
        app_kind,
        store_path,
        STORE_STORAGES={"second": {"PATH": str(second), "SERVE_SIGNED_ONLY": True}},
    )
    put(second, "a.txt", b"second's own")
    first_link = await (await saved(store, app, "a.txt")).url(expires=600)
    assert (await fetch(app, first_link)).body == DATA
    # The same key and query, sent to the other storage's route: refused.
    assert_refused(await fetch(app, first_link.replace("/uploads/", "/uploads-second/")))
    # The second storage's own link works, on its own prefix, and not on the first's.
    link = await store.state(app, "second").AsyncProvider("a.txt").url(expires=600)
    assert link.startswith("/uploads-second/a.txt?")
    assert (await fetch(app, link)).body == b"second's own"
    assert_refused(await fetch(app, link.replace("/uploads-second/", "/uploads/")))
    # The default storage is public, the second one is not.
    assert (await fetch(app, "/uploads/a.txt")).status == 200
    assert_refused(await fetch(app, "/uploads-second/a.txt"))


async def test_a_signed_traversal_stays_inside_the_store(
    app_kind: str, store_path: Path, build: Build, free_tcp_port: int
) -> None:
    put(store_path.parent, "secret.txt", SECRET)
    app, store = build(app_kind, store_path, STORE_SERVE_SIGNED_ONLY=True)
    # url() never signs a path out of the store...
    with pytest.raises(UnsafePathError):
        await store.state(app).AsyncProvider("../secret.txt").url(expires=60)
    # ...and a link signed with the app's own key for one (as a leaked key would allow) is
    # still only a path the route resolves inside the store.
    signer = LinkSigner(app.config, "default")
    put(store_path, "a.txt")
    async with real_server(app, free_tcp_port) as port:
        for raw, key in (
            ("/uploads/../secret.txt", "../secret.txt"),
            ("/uploads/..%2fsecret.txt", "../secret.txt"),
            ("/uploads/%2e%2e/secret.txt", "../secret.txt"),
            ("/uploads/a.txt/../../secret.txt", "a.txt/../../secret.txt"),
        ):
            line = f"GET {raw}?{signer.query(key, 60)} HTTP/1.1".encode()
            status, _, body = await raw_request(port, line)
            assert status in (403, 404), raw
            assert SECRET not in body, raw
        # A valid link for a.txt, its path swapped for the secret's: refused.
        line = f"GET /uploads/..%2fsecret.txt?{signer.query('a.txt', 60)} HTTP/1.1".encode()
        status, _, body = await raw_request(port, line)
        assert status == 403 and SECRET not in body
        status, _, body = await raw_request(
            port, f"GET /uploads/a.txt?{signer.query('a.txt', 60)} HTTP/1.1".encode()
        )
        assert (status, body) == (200, DATA)


# --- private storages ----------------------------------------------------------------------------


async def test_a_private_storage_serves_only_signed_links(
    app_kind: str, store_path: Path, build: Build
) -> None:
    app, store = build(app_kind, store_path, STORE_SERVE_SIGNED_ONLY=True)
    provider = await saved(store, app, "a.txt")
    assert_refused(await fetch(app, provider.absolute_url))
    assert_refused(await fetch(app, provider.absolute_url, method="HEAD"))
    assert_refused(await fetch(app, provider.absolute_url + "?unrelated=1"))
    assert (await fetch(app, await provider.url(expires=60))).body == DATA
    # Unrelated parameters (a cache buster) do not spoil a signed link.
    assert (await fetch(app, await provider.url(expires=60) + "&v=2")).body == DATA


def test_a_private_storage_without_a_secret_key_is_refused_at_init_app(
    app_kind: str, store_path: Path, tmp_path: Path
) -> None:
    app = make_app(app_kind, store_path, STORE_SERVE_SIGNED_ONLY=True)
    with pytest.raises(NotConfiguredError, match=r"STORE_SERVE_SIGNED_ONLY is on.*SECRET_KEY"):
        Store(app)
    named = {"docs": {"PATH": str(tmp_path / "docs"), "SERVE_SIGNED_ONLY": "true"}}
    app = make_app(app_kind, store_path, STORE_STORAGES=named)
    with pytest.raises(NotConfiguredError, match=r"STORE_STORAGES\['docs'\]: SERVE_SIGNED_ONLY"):
        Store(app)


def test_store_check_reports_a_private_storage_without_a_secret_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "private_app_for_check.py").write_text(
        textwrap.dedent(f"""
            from flask import Flask
            from async_store import Store

            app = Flask(__name__)
            app.config["STORE_PATH"] = {str(tmp_path / "store")!r}
            app.config["STORE_SERVE_SIGNED_ONLY"] = True
            Store(app)
            """)
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = invoke(["--app", "private_app_for_check:app", "check"])
    assert result.exit_code == 1
    assert result.output.startswith(
        "config   FAILED  the configuration is wrong: STORE_SERVE_SIGNED_ONLY is on, but the "
        "app has no SECRET_KEY"
    )


# --- overrides -----------------------------------------------------------------------------------


async def test_download_name_and_content_type_overrides(
    app_kind: str, store_path: Path, build: Build
) -> None:
    app, store = build(app_kind, store_path)
    provider = await saved(store, app, "data.txt")

    reply = await fetch(app, await provider.url(expires=60, download_name="report 2024.txt"))
    assert reply.body == DATA
    assert reply.headers["Content-Disposition"] == 'attachment; filename="report 2024.txt"'
    assert reply.headers["Content-Type"].startswith("text/plain")

    reply = await fetch(app, await provider.url(expires=60, download_name="résumé.txt"))
    assert reply.headers["Content-Disposition"] == (
        "attachment; filename=resume.txt; filename*=UTF-8''r%C3%A9sum%C3%A9.txt"
    )

    reply = await fetch(app, await provider.url(expires=60, content_type="text/csv"))
    assert reply.headers["Content-Type"].startswith("text/csv")
    assert reply.headers["Content-Disposition"].startswith("inline")
    # An active type is never shown on the app's origin, even when a link asks for it.
    reply = await fetch(app, await provider.url(expires=60, content_type="text/html"))
    assert reply.headers["Content-Type"].startswith("text/html")
    assert reply.headers["Content-Disposition"].startswith("attachment")
    assert reply.headers["Content-Security-Policy"] == "sandbox"


@pytest.mark.parametrize(
    "overrides",
    [
        {"download_name": "../x.txt"},
        {"download_name": "a/b.txt"},
        {"download_name": "a\r\nSet-Cookie: x=1"},
        {"download_name": ""},
        {"content_type": "text/html\r\nX-Evil: 1"},
        {"content_type": "not a type"},
    ],
)
async def test_bad_overrides_are_refused_when_signing(
    store_path: Path, build: Build, overrides: dict[str, str]
) -> None:
    app, store = build("quart", store_path)
    provider = await saved(store, app, "a.txt")
    with pytest.raises(ValueError, match=next(iter(overrides))):
        await provider.url(expires=60, **overrides)


# --- what url(expires=...) refuses ---------------------------------------------------------------


async def test_no_secret_key_is_a_clear_error(
    app_kind: str, store_path: Path, build: Build
) -> None:
    app, store = build(app_kind, store_path, SECRET_KEY=None)
    provider = await saved(store, app, "a.txt")
    with pytest.raises(NotConfiguredError, match=r"SECRET_KEY, which is not set"):
        await provider.url(expires=60)
    with pytest.raises(NotConfiguredError, match=r"SECRET_KEY"):
        await anyio.to_thread.run_sync(
            lambda: store.state(app).SyncProvider("a.txt").url(expires=60)
        )
    # The permanent URL needs no key.
    assert await provider.url() == "/uploads/a.txt"


@pytest.mark.parametrize("expires", [0, -1, MAX_EXPIRES + 1, True, 1.5])
async def test_expires_out_of_range(store_path: Path, build: Build, expires: Any) -> None:
    app, store = build("flask", store_path)
    provider = await saved(store, app, "a.txt")
    with pytest.raises(ValueError, match="expires"):
        await provider.url(expires=expires)


async def test_no_signed_links_without_the_route(store_path: Path, build: Build) -> None:
    app, store = build("quart", store_path, STORE_SERVE_FILES=False)
    provider = await saved(store, app, "a.txt")
    with pytest.raises(StoreError, match="STORE_SERVE_FILES"):
        await provider.url(expires=60)


async def test_a_backend_that_cannot_sign_refuses_rather_than_give_a_permanent_url(
    store_path: Path, build: Build
) -> None:
    app, store = build("quart", store_path, STORE_STORAGES={"scratch": {"PROVIDER": "memory"}})
    provider = await saved(store, app, "a.txt", storage="scratch")
    with pytest.raises(StoreError, match=r"MemoryBackend does not sign links.*'a.txt'"):
        await provider.url(expires=60)
    assert await provider.url() == provider.absolute_url
