"""Abusive multipart uploads, as raw bytes on a socket, to real servers in their own processes:
hypercorn running a Quart app and werkzeug's threaded server running a Flask app, each with a
``save_request`` view (``/stream``) and a classic ``store.Provider(request.files['f']).save()``
view (``/classic``), on local disk.

Whatever the client does (bodies over ``MAX_CONTENT_LENGTH`` with, without or with a lying
``Content-Length``, too many parts, a huge text field, a truncated body, a hang-up halfway, a
slow drip): never a 5xx or a traceback, nothing left in the store or in the server's ``TMPDIR``,
and the server holds no more file descriptors afterwards than before.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flask
import pytest
import quart

from async_store import NotConfiguredError, Store
from async_store.config import DEFAULTS

from .helpers import BOUNDARY, multipart
from .servers import ServerProcess, raw_exchange, server_process, status_of

DEFAULT_MAX_CONTENT_LENGTH = DEFAULTS["STORE_MAX_CONTENT_LENGTH"]

LIMIT = 1024 * 1024  # MAX_CONTENT_LENGTH of the apps under attack
#: How long the servers wait for the next bytes of a request before dropping it (read_timeout).
SERVER_TIMEOUT = 1


def abuse_app() -> quart.Quart | flask.Flask:
    """The app the server subprocess runs: ``ABUSE_KIND``, ``STORE_PATH`` and ``ABUSE_CONFIG``
    (JSON) come from the environment."""
    kind = os.environ["ABUSE_KIND"]
    app = quart.Quart(__name__) if kind == "quart" else flask.Flask(__name__)
    app.config["STORE_PATH"] = os.environ["STORE_PATH"]
    app.config.update(json.loads(os.environ.get("ABUSE_CONFIG", "{}")))

    @app.post("/gc")
    def collect() -> str:
        # The test asks for a collection before counting descriptors: what garbage holds is
        # freed by the next collection anyway; what is still open after it leaked.
        import gc

        return str(gc.collect())

    if isinstance(app, quart.Quart):
        store = Store(app)

        @app.post("/stream")
        async def stream_quart() -> Any:
            stored = await store.save_request()
            return {"files": [p.relative_path for p in stored.files.values()]}

        @app.post("/classic")
        async def classic_quart() -> Any:
            provider = store.Provider((await quart.request.files)["f"])
            await provider.save()
            return {"files": [provider.relative_path]}

    else:
        sync_store = Store(app)

        @app.post("/stream")
        def stream_flask() -> Any:
            stored = sync_store.save_request()
            return {"files": [p.relative_path for p in stored.files.values()]}

        @app.post("/classic")
        def classic_flask() -> Any:
            provider = sync_store.Provider(flask.request.files["f"])
            provider.save()
            return {"files": [provider.relative_path]}

    return app


def head(path: str, length: int | None, *, chunked: bool = False) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: localhost",
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}",
        "Connection: close",
    ]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    elif length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def pieces(data: bytes, size: int = 65536) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def chunked(data: bytes, size: int = 65536) -> list[bytes]:
    framed = [f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces(data, size)]
    return [*framed, b"0\r\n\r\n"]


@dataclass
class Victim:
    kind: str
    server: ServerProcess
    store: Path
    tmpdir: Path

    def leftovers(self) -> list[str]:
        return [str(p) for p in (*self.store.rglob("*"), *self.tmpdir.rglob("*")) if p.is_file()]

    def clean(self, wait: float = 5.0) -> list[str]:
        """Whatever is still left once the server had ``wait`` seconds to clean up."""
        deadline = time.monotonic() + wait
        while (left := self.leftovers()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return left


@pytest.fixture(scope="module", params=["quart", "flask"])
def victim(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    free_tcp_port_factory: Callable[[], int],
) -> Iterator[Victim]:
    kind = str(request.param)
    tmp = tmp_path_factory.mktemp(f"abuse-{kind}")
    store, tmpdir = tmp / "store", tmp / "tmpdir"
    store.mkdir()
    tmpdir.mkdir()
    env = {
        "ABUSE_KIND": kind,
        "STORE_PATH": str(store),
        "TMPDIR": str(tmpdir),
        "ABUSE_CONFIG": json.dumps({"MAX_CONTENT_LENGTH": LIMIT}),
    }
    target = f"{__name__}:abuse_app"
    port = free_tcp_port_factory()
    log = tmp / "server.log"
    with server_process(target, kind, port, env, read_timeout=SERVER_TIMEOUT, log=log) as server:
        yield Victim(kind, server, store, tmpdir)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]
    assert '" 500' not in text, text[-3000:]


@pytest.fixture
def attack(victim: Victim, request: pytest.FixtureRequest) -> Iterator[Victim]:
    """The victim, checked after the attack: nothing left behind, no descriptor leaked."""
    # Uploads to both views warm the server up (imports, worker threads and their lanes,
    # lazily opened files) before the baseline.
    for view in ENDPOINTS:
        answer = raw_exchange(victim.server.port, *_request(view, multipart(("f", "w.txt", b"w"))))
        assert status_of(answer) == 200, answer
    for path in victim.store.rglob("*"):
        path.unlink()
    collect(victim)
    files, everything = victim.server.fds(files_only=True), victim.server.fds()
    yield victim
    assert victim.clean() == []
    if (
        getattr(request.node, "callspec", None)
        and request.node.callspec.params.get("path") != "/classic"
    ):
        # save_request closes its files and sockets when the request ends, not when a garbage
        # collection comes by. (request.files does not: werkzeug's form parser leaves the temp
        # file of a refused body, and werkzeug's server an epoll instance, to the collector.)
        assert victim.server.settled_fds(files, files_only=True) <= files
    collect(victim)
    assert victim.server.settled_fds(everything) <= everything


def collect(victim: Victim) -> None:
    answer = raw_exchange(victim.server.port, *_request("/gc", b""))
    assert status_of(answer) == 200, answer


def _request(path: str, body: bytes) -> tuple[bytes, list[bytes]]:
    return head(path, len(body)), pieces(body)


def send(port: int, head_: bytes, body: list[bytes], **kw: Any) -> int:
    return status_of(raw_exchange(port, head_, body, **kw))


ENDPOINTS = ["/stream", "/classic"]
BIG = multipart(("f", "big.bin", os.urandom(3 * LIMIT)))
SMALL_THEN_BIG = multipart(("g", "first.bin", b"1" * 1000), ("f", "big.bin", os.urandom(3 * LIMIT)))


def test_a_well_formed_upload_is_stored(attack: Victim) -> None:
    """The baseline the attacks are measured against: the same server stores a good upload."""
    for path in ENDPOINTS:
        body = multipart(("f", "ok.txt", b"fine"))
        assert send(attack.server.port, head(path, len(body)), pieces(body)) == 200
    assert sorted(p.read_bytes() for p in attack.store.rglob("*") if p.is_file()) == [b"fine"] * 2
    for p in attack.store.rglob("*"):
        p.unlink()


@pytest.mark.parametrize("path", ENDPOINTS)
def test_over_the_limit_with_content_length_is_413(attack: Victim, path: str) -> None:
    body = SMALL_THEN_BIG if path == "/stream" else BIG
    assert send(attack.server.port, head(path, len(body)), pieces(body)) == 413


@pytest.mark.parametrize("path", ENDPOINTS)
def test_over_the_limit_without_content_length_is_413(attack: Victim, path: str) -> None:
    body = SMALL_THEN_BIG if path == "/stream" else BIG
    assert send(attack.server.port, head(path, None, chunked=True), chunked(body)) == 413


@pytest.mark.parametrize("path", ENDPOINTS)
def test_a_content_length_over_the_limit_is_413_before_the_body(attack: Victim, path: str) -> None:
    # It claims 100 MiB and sends a few bytes: refused on the header alone, without waiting for
    # the body (werkzeug's server then drains the socket until its own timeout).
    body = multipart(("f", "tiny.txt", b"tiny"))
    start = time.monotonic()
    assert send(attack.server.port, head(path, 100 * LIMIT), [body]) == 413
    assert time.monotonic() - start < SERVER_TIMEOUT + 1


@pytest.mark.parametrize("path", ENDPOINTS)
def test_a_content_length_shorter_than_the_body_is_refused(attack: Victim, path: str) -> None:
    """A lying Content-Length under the limit for a body far over it: the server reads what was
    announced, a truncated form (400); what follows is no request of its own."""
    status = send(attack.server.port, head(path, LIMIT // 2), pieces(BIG))
    assert status in (400, 413), status


@pytest.mark.parametrize("path", ENDPOINTS)
def test_too_many_parts_is_413(attack: Victim, path: str) -> None:
    parts = [("f", "a.txt", b"a"), *[(f"t{i}", None, b"x") for i in range(1500)]]
    body = multipart(*parts)
    assert len(body) < LIMIT
    assert send(attack.server.port, head(path, len(body)), pieces(body)) == 413


@pytest.mark.parametrize("path", ENDPOINTS)
def test_a_huge_text_field_is_413(attack: Victim, path: str) -> None:
    # Under the body limit, over the 500,000 bytes a text field may hold in memory.
    body = multipart(("f", "a.txt", b"a"), ("comment", None, b"c" * 900_000))
    assert len(body) < LIMIT
    assert send(attack.server.port, head(path, len(body)), pieces(body)) == 413


@pytest.mark.parametrize("path", ENDPOINTS)
def test_a_truncated_body_is_400(attack: Victim, path: str) -> None:
    body = multipart(("g", "first.bin", b"1" * 1000), ("f", "cut.bin", os.urandom(LIMIT // 2)))
    cut = body[: len(body) - 5000]
    assert send(attack.server.port, head(path, len(cut)), pieces(cut)) == 400


@pytest.mark.parametrize("path", ENDPOINTS)
def test_a_client_gone_halfway_leaves_nothing(attack: Victim, path: str) -> None:
    body = multipart(("g", "first.bin", b"1" * 1000), ("f", "half.bin", os.urandom(LIMIT // 2)))
    # The connection closes after half the body: the answer, if any, is no 2xx and no 5xx.
    status = send(attack.server.port, head(path, len(body)), pieces(body[: len(body) // 2]))
    assert status in (0, 400, 408), status


@pytest.mark.slow
@pytest.mark.parametrize("path", ENDPOINTS)
def test_a_slow_drip_is_dropped_at_the_server_timeout(attack: Victim, path: str) -> None:
    body = multipart(("g", "first.bin", b"1" * 1000), ("f", "drip.bin", os.urandom(200_000)))
    # A third of the body, then nothing for longer than the server waits, then the rest.
    third = len(body) // 3
    start = time.monotonic()
    status = send(
        attack.server.port,
        head(path, len(body)),
        [body[:third], body[third:]],
        pause=SERVER_TIMEOUT + 1,
        timeout=SERVER_TIMEOUT + 8,
    )
    assert status in (0, 400, 408), status
    assert time.monotonic() - start < SERVER_TIMEOUT + 8


# --- Flask's unlimited MAX_CONTENT_LENGTH ---------------------------------------------------


def _flask_upload_status(app: flask.Flask, size: int) -> int:
    store = Store(app)

    @app.post("/classic")
    def classic() -> str:
        return str(store.Provider(flask.request.files["f"]).save())

    body = multipart(("f", "big.bin", b"x" * size))
    content_type = f"multipart/form-data; boundary={BOUNDARY}"
    try:
        response = app.test_client().post("/classic", data=body, content_type=content_type)
        return response.status_code
    finally:
        store.close()


def test_a_flask_app_without_a_limit_gets_quarts_16_mib(tmp_path: Path) -> None:
    app = flask.Flask(__name__)
    app.config["STORE_PATH"] = str(tmp_path)
    assert _flask_upload_status(app, DEFAULT_MAX_CONTENT_LENGTH + 1) == 413
    assert app.config["MAX_CONTENT_LENGTH"] == 16 * 1024 * 1024
    assert list(tmp_path.iterdir()) == []
    assert _flask_upload_status(flask.Flask(__name__, instance_path=str(tmp_path)), 1000) == 200


def test_the_app_s_own_limit_or_none_wins(tmp_path: Path) -> None:
    app = flask.Flask(__name__)
    app.config.update(STORE_PATH=str(tmp_path), MAX_CONTENT_LENGTH=1000)
    assert _flask_upload_status(app, 2000) == 413
    assert app.config["MAX_CONTENT_LENGTH"] == 1000

    unlimited = flask.Flask(__name__)
    unlimited.config.update(STORE_PATH=str(tmp_path), STORE_MAX_CONTENT_LENGTH=None)
    assert _flask_upload_status(unlimited, DEFAULT_MAX_CONTENT_LENGTH + 1) == 200
    assert unlimited.config["MAX_CONTENT_LENGTH"] is None

    # Quart has its own 16 MiB default: None there is the app's choice, and stays.
    quart_app = quart.Quart(__name__)
    quart_app.config.update(STORE_PATH=str(tmp_path), MAX_CONTENT_LENGTH=None)
    Store(quart_app).close()
    assert quart_app.config["MAX_CONTENT_LENGTH"] is None


@pytest.mark.parametrize("value", [0, -1, "16M", 1.5, True])
def test_a_bad_store_max_content_length_names_the_key(tmp_path: Path, value: Any) -> None:
    app = flask.Flask(__name__)
    app.config.update(STORE_PATH=str(tmp_path), STORE_MAX_CONTENT_LENGTH=value)
    with pytest.raises(NotConfiguredError, match="STORE_MAX_CONTENT_LENGTH"):
        Store(app)


# --- a request cancelled more than once ---------------------------------------------------


async def test_a_save_cancelled_again_during_its_cleanup_leaves_nothing(tmp_path: Path) -> None:
    """When a client goes away, Quart cancels the request's task and hypercorn cancels it again:
    a second native cancel used to drop the shielded cleanup before its thread started, and
    the temp file stayed (found by the lying Content-Length attack above)."""
    import asyncio

    app = quart.Quart(__name__)
    app.config["STORE_PATH"] = str(tmp_path)
    store = Store(app)
    leftovers = 0
    for step in range(20):

        async def upload(delay: float = step / 1000) -> Any:
            yield b"x" * 100_000
            await asyncio.sleep(delay)
            yield b"y" * 2_000_000
            await asyncio.sleep(30)  # the client stops sending
            yield b"z"

        async with app.app_context():
            task = asyncio.ensure_future(store.Provider(upload(), filename="a.bin").save())
            await asyncio.sleep(0.02)
            for _ in range(4):
                task.cancel()
                await asyncio.sleep(0)
            await asyncio.gather(task, return_exceptions=True)
        deadline = time.monotonic() + 2
        while os.listdir(tmp_path) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        leftovers += bool(os.listdir(tmp_path))
    store.close()
    assert leftovers == 0
