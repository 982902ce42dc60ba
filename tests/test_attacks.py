"""Hostile requests to the serving route, as raw bytes on a socket, against the examples run by
real servers in their own processes: hypercorn serving ``examples/quart_app.py`` and werkzeug's
threaded server running ``examples/flask_app.py``.

Test clients normalise a URL before the app sees it; here every request line goes out byte for
byte. Whatever comes in: never a 200 for anything outside the store (or hidden in it), never a
5xx, never a traceback in the server's log, every answer within a second, and ``nosniff`` on
every 404 below the store's URL prefix.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .servers import ServerProcess, raw_exchange, server_process, status_of

DATA = b"0123456789"
SECRET = b"the secret outside the store"
HIDDEN = b"a temp file, never served"
#: Every answer within this many seconds (the brief's bound; a warm server needs milliseconds).
ANSWER_WITHIN = 1.0


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float


@dataclass
class Target:
    server: ServerProcess
    root: Path

    def request(self, line: bytes, *headers: bytes) -> Answer:
        head = b"\r\n".join([line, b"Host: localhost", *headers, b"Connection: close", b"", b""])
        start = time.monotonic()
        raw = raw_exchange(self.server.port, head, timeout=10)
        seconds = time.monotonic() - start
        top, _, body = raw.partition(b"\r\n\r\n")
        headers_ = {}
        for line_ in top.split(b"\r\n")[1:]:
            name, _, value = line_.decode("latin-1").partition(":")
            headers_[name.strip().lower()] = value.strip()
        return Answer(status_of(raw), headers_, body, seconds)

    def get(self, path: bytes, *headers: bytes, method: bytes = b"GET") -> Answer:
        return self.request(method + b" " + path + b" HTTP/1.1", *headers)


def build_tree(tmp: Path) -> Path:
    """``tmp/store`` (the store) with files, hidden files and symlinks; secrets beside it,
    in ``tmp/secret.txt`` and in ``tmp/store-evil``, a sibling sharing the store's prefix."""
    store = tmp / "store"
    (store / "docs").mkdir(parents=True)
    (store / "a.txt").write_bytes(DATA)
    (store / "docs" / "b.txt").write_bytes(DATA)
    (store / ".async_store-x.part").write_bytes(HIDDEN)
    (store / ".env").write_bytes(HIDDEN)
    (tmp / "secret.txt").write_bytes(SECRET)
    (tmp / "store-evil").mkdir()
    (tmp / "store-evil" / "file.txt").write_bytes(SECRET)
    (store / "link.txt").symlink_to(tmp / "secret.txt")
    (store / "linkdir").symlink_to(tmp, target_is_directory=True)
    (store / "evil-link.txt").symlink_to(tmp / "store-evil" / "file.txt")
    (store / "evil-dir").symlink_to(tmp / "store-evil", target_is_directory=True)
    (store / "inside-link.txt").symlink_to(store / "a.txt")
    return store


@pytest.fixture(scope="module", params=["quart", "flask"])
def target(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    free_tcp_port_factory: Callable[[], int],
) -> Iterator[Target]:
    tmp = tmp_path_factory.mktemp(f"attacks-{request.param}")
    store = build_tree(tmp)
    (tmp / "tmpdir").mkdir()
    env = {
        "STORE_PATH": str(store),
        "TMPDIR": str(tmp / "tmpdir"),
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp / 'demo.sqlite'}",
    }
    app = f"examples.{request.param}_app:app"
    port = free_tcp_port_factory()
    with server_process(app, request.param, port, env, log=tmp / "server.log") as server:
        yield Target(server, store)
    assert "Traceback" not in server.errors(), server.errors()[-3000:]


# Encoded, double-encoded, overlong, Windows, Tomcat and IIS spellings of "..", "/" and "\".
HOSTILE = [
    b"/uploads/../secret.txt",
    b"/uploads/../../../../etc/passwd",
    b"/uploads/..%2fsecret.txt",
    b"/uploads/..%2Fsecret.txt",
    b"/uploads/%2e%2e/secret.txt",
    b"/uploads/%2e%2e%2fsecret.txt",
    b"/uploads/.%2e/secret.txt",
    b"/uploads/%2e./secret.txt",
    b"/uploads/docs/..%2f..%2fsecret.txt",
    b"/uploads/a.txt%2f..%2f..%2fsecret.txt",
    b"/uploads/%252e%252e%252fsecret.txt",
    b"/uploads/..%252fsecret.txt",
    b"/uploads/%25252e%25252e/secret.txt",
    b"/uploads/..\\secret.txt",
    b"/uploads/..%5csecret.txt",
    b"/uploads/..%255csecret.txt",
    b"/uploads/docs\\..\\..\\secret.txt",
    b"/uploads/C:%5cWindows%5cwin.ini",
    b"/uploads/..;/secret.txt",
    b"/uploads/..;foo=bar/secret.txt",
    b"/uploads/a.txt;/../../secret.txt",
    b"/uploads/%c0%ae%c0%ae/secret.txt",
    b"/uploads/%c0%ae%c0%ae%c0%afsecret.txt",
    b"/uploads/%e0%80%ae%e0%80%ae/secret.txt",
    b"/uploads/%c1%9c..%c1%9csecret.txt",
    b"/uploads/\xc0\xae\xc0\xae/secret.txt",
    b"/uploads/%ef%bc%8e%ef%bc%8e%ef%bc%8fsecret.txt",
    b"/uploads/%u002e%u002e/secret.txt",
    b"/uploads/a.txt%00.png",
    b"/uploads/%00",
    b"/uploads/..%00/secret.txt",
    b"/uploads/" + b"a" * 5000,
    b"/uploads/" + b"../" * 1700 + b"secret.txt",
    b"/uploads/" + b"%2e%2e%2f" * 550 + b"secret.txt",
    b"/uploads/" + b"a/" * 2500 + b"a.txt",
    b"/uploads//../secret.txt",
    b"/uploads/%2f..%2fsecret.txt",
    b"/uploads/%2fetc%2fpasswd",
    b"/uploads-evil/file.txt",
    b"/uploads/../store-evil/file.txt",
    b"/uploads/..%2fstore-evil%2ffile.txt",
    b"/uploads/%2e%2e%2fstore-evil%2ffile.txt",
    b"/uploads/link.txt",
    b"/uploads/linkdir/secret.txt",
    b"/uploads/linkdir/store-evil/file.txt",
    b"/uploads/evil-link.txt",
    b"/uploads/evil-dir/file.txt",
    b"/uploads/.async_store-x.part",
    b"/uploads/%2easync_store-x.part",
    b"/uploads/.env",
    b"/uploads/docs/",
    b"/uploads/docs",
    b"/uploads/",
    b"/uploads",
    b"http://localhost/uploads/../secret.txt",
    b"http://localhost/uploads/%2e%2e/secret.txt",
    b"/uploads/a.txt/..",
    b"/uploads/a.txt/../../secret.txt",
]


@pytest.mark.parametrize("path", HOSTILE, ids=lambda p: p[:60].decode("latin-1"))
def test_hostile_paths_never_reach_outside_the_store(target: Target, path: bytes) -> None:
    for method in (b"GET", b"HEAD"):
        answer = target.get(path, method=method)
        assert answer.status in (400, 404, 414), (path, answer)
        assert SECRET not in answer.body and HIDDEN not in answer.body
        assert answer.seconds < ANSWER_WITHIN, (path, answer.seconds)
        below_prefix = path.startswith((b"/uploads/", b"http://localhost/uploads/"))
        if answer.status == 404 and (below_prefix or path == b"/uploads"):
            assert answer.headers.get("x-content-type-options") == "nosniff", (path, answer)


def test_a_raw_nul_or_control_byte_in_the_request_line_is_refused(target: Target) -> None:
    for path in (b"/uploads/a.txt\x00.png", b"/uploads/a\x01.txt", b"/uploads/a\x7f.txt"):
        answer = target.get(path)
        assert answer.status in (400, 404), (path, answer)
        assert DATA not in answer.body and answer.seconds < ANSWER_WITHIN


def test_files_inside_the_store_are_served(target: Target) -> None:
    """The same server does serve what is in the store: the 404s above are not a dead route."""
    for path in (b"/uploads/a.txt", b"/uploads/docs/b.txt", b"/uploads/inside-link.txt"):
        answer = target.get(path)
        assert (answer.status, answer.body) == (200, DATA), path
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.seconds < ANSWER_WITHIN


@pytest.mark.parametrize(
    ("range_", "status", "content_range", "body"),
    [
        (b"bytes=2-5", 206, "bytes 2-5/10", b"2345"),
        (b"bytes=-3", 206, "bytes 7-9/10", b"789"),
        # A suffix longer than the file is the whole file (RFC 9110 14.1.3), not a 416.
        (b"bytes=-100", 206, "bytes 0-9/10", DATA),
        (b"bytes=-99999999999999999999", 206, "bytes 0-9/10", DATA),
        (b"bytes=5-", 206, "bytes 5-9/10", b"56789"),
        (b"bytes=8-99999999999999999999", 206, "bytes 8-9/10", b"89"),
        # Several ranges: ignored, the whole file (neither framework sends multipart/byteranges).
        (b"bytes=0-1,3-4", 200, None, DATA),
        (b"bytes=" + b",".join(b"0-0" for _ in range(500)), 200, None, DATA),
        (b"bytes=-1,-2", 200, None, DATA),
        (b"items=0-3", 200, None, DATA),
        # Out of range, or nonsense: 416 with the length.
        (b"bytes=10-", 416, "bytes */10", b""),
        (b"bytes=99999999999999999999-", 416, "bytes */10", b""),
        (b"bytes=5-2", 416, "bytes */10", b""),
        (b"bytes=-0", 416, "bytes */10", b""),
        (b"bytes=abc", 416, "bytes */10", b""),
    ],
)
def test_ranges(
    target: Target, range_: bytes, status: int, content_range: str | None, body: bytes
) -> None:
    answer = target.get(b"/uploads/a.txt", b"Range: " + range_)
    assert answer.status == status, answer
    assert answer.headers.get("content-range") == content_range
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.seconds < ANSWER_WITHIN
    if status != 416:
        assert answer.body == body
        assert answer.headers["content-length"] == str(len(body))
    head = target.get(b"/uploads/a.txt", b"Range: " + range_, method=b"HEAD")
    assert (head.status, head.body) == (status, b"")
    assert head.headers.get("content-range") == content_range


def test_head_sends_the_headers_of_get_and_no_body(target: Target) -> None:
    get = target.get(b"/uploads/a.txt")
    head = target.get(b"/uploads/a.txt", method=b"HEAD")
    assert (head.status, head.body) == (200, b"")
    assert head.headers["content-length"] == "10"
    for name in ("content-type", "etag", "last-modified", "x-content-type-options"):
        assert head.headers[name] == get.headers[name]


def test_other_methods_are_refused_with_nosniff(target: Target) -> None:
    for method in (b"POST", b"PUT", b"DELETE", b"PATCH"):
        answer = target.request(method + b" /uploads/a.txt HTTP/1.1", b"Content-Length: 0")
        assert answer.status == 405, (method, answer)
        assert answer.headers["x-content-type-options"] == "nosniff"
    assert (target.root / "a.txt").read_bytes() == DATA


def test_the_server_holds_no_more_descriptors_after_the_attacks(target: Target) -> None:
    """Runs after the attacks of this module on the same server (module-scoped fixture)."""
    baseline = target.server.fds()
    for path in HOSTILE[:20]:
        target.get(path)
    assert target.server.settled_fds(baseline) <= baseline
