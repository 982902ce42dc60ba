"""The route that serves local files, through Quart and through Flask.

Every test runs for both frameworks (the ``app`` fixture). :func:`fetch` hides the difference
between the two test clients; the raw-socket tests at the end go through real servers
(hypercorn, werkzeug's), where no test client can tidy a hostile path before the route sees it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiofiles
import anyio
import flask
import pytest
import quart
from werkzeug.datastructures import Headers

from async_store import Store

from .servers import real_server

DATA = b"0123456789"
SECRET = b"the secret outside the store"


@dataclass
class Reply:
    status: int
    headers: Headers
    body: bytes


async def fetch(
    app: Any, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> Reply:
    """One request through the app's test client, whichever framework it is."""
    if isinstance(app, quart.Quart):
        client: Any = app.test_client()  # its Protocol wants json= (Quart's typing slip)
        response = await client.open(path, method=method, headers=headers)
        return Reply(response.status_code, response.headers, await response.get_data(False))

    def wsgi() -> Reply:  # in a thread, as a WSGI server would: Flask's views block
        with app.test_client().open(path, method=method, headers=headers) as response:
            return Reply(response.status_code, response.headers, response.get_data())

    return await anyio.to_thread.run_sync(wsgi)


def put(root: Path, key: str, data: bytes = DATA) -> Path:
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def new_app(kind: str, store_path: Path, **config: Any) -> Any:
    app = quart.Quart(__name__) if kind == "quart" else flask.Flask(__name__)
    app.config.update(STORE_PATH=str(store_path), **config)
    return app


@pytest.fixture
def secret(store_path: Path) -> Path:
    """A file next to the store, which no request may ever read."""
    return put(store_path.parent, "secret.txt", SECRET)


def assert_not_found(reply: Reply) -> None:
    assert reply.status == 404
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    assert SECRET not in reply.body


# --- GET, HEAD, ranges, revalidation ---------------------------------------------------------


async def test_get_sends_the_file(app: Any, store: Store, store_path: Path) -> None:
    put(store_path, "docs/a.txt")
    reply = await fetch(app, "/uploads/docs/a.txt")
    assert reply.status == 200
    assert reply.body == DATA
    assert reply.headers["Content-Length"] == str(len(DATA))
    assert reply.headers["Content-Type"].startswith("text/plain")
    assert reply.headers["Accept-Ranges"] == "bytes"
    assert reply.headers["ETag"]
    assert reply.headers["Last-Modified"]
    assert reply.headers["X-Content-Type-Options"] == "nosniff"


async def test_head_has_the_headers_of_get_and_no_body(
    app: Any, store: Store, store_path: Path
) -> None:
    put(store_path, "a.txt")
    get = await fetch(app, "/uploads/a.txt")
    head = await fetch(app, "/uploads/a.txt", method="HEAD")
    assert head.status == 200
    assert head.body == b""
    # Date ticks; Quart's test client recomputes Content-Length from the body it received (a
    # real server keeps it: test_real_server_head).
    ignored = {"Date", "Content-Length"} if isinstance(app, quart.Quart) else {"Date"}
    assert {k: v for k, v in head.headers.items() if k not in ignored} == {
        k: v for k, v in get.headers.items() if k not in ignored
    }


async def test_quart_head_does_not_read_the_file(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A HEAD for a 1 GB video must not read 1 GB for the server to throw away."""
    opened: list[object] = []

    def counting_open(*args: Any, **kwargs: Any) -> Any:
        opened.append(args[0])
        return aiofiles.open(*args, **kwargs)

    # Quart's FileBody opens the file with this name, when the body is first read.
    monkeypatch.setattr("quart.wrappers.response.async_open", counting_open)
    app = new_app("quart", store_path)
    Store(app).close()
    put(store_path, "a.txt")
    assert (await fetch(app, "/uploads/a.txt", method="HEAD")).status == 200
    assert opened == []
    assert (await fetch(app, "/uploads/a.txt")).body == DATA
    assert len(opened) == 1


@pytest.mark.parametrize(
    ("range_", "content_range", "body"),
    [
        ("bytes=2-5", "bytes 2-5/10", b"2345"),
        ("bytes=0-0", "bytes 0-0/10", b"0"),
        ("bytes=7-", "bytes 7-9/10", b"789"),
        ("bytes=-5", "bytes 5-9/10", b"56789"),
        ("bytes=-1", "bytes 9-9/10", b"9"),
        ("bytes=8-100", "bytes 8-9/10", b"89"),
        # RFC 9110 14.1.3: a suffix longer than the representation selects all of it.
        ("bytes=-20", "bytes 0-9/10", DATA),
        ("bytes=-10", "bytes 0-9/10", DATA),
    ],
)
async def test_range_gives_206_with_those_bytes(
    app: Any, store: Store, store_path: Path, range_: str, content_range: str, body: bytes
) -> None:
    put(store_path, "a.bin")
    reply = await fetch(app, "/uploads/a.bin", headers={"Range": range_})
    assert reply.status == 206
    assert reply.headers["Content-Range"] == content_range
    assert reply.body == body
    assert reply.headers["Content-Length"] == str(len(body))
    assert reply.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("range_", ["bytes=10-", "bytes=50-60", "bytes=5-2"])
async def test_unsatisfiable_range_gives_416(
    app: Any, store: Store, store_path: Path, range_: str
) -> None:
    put(store_path, "a.bin")
    reply = await fetch(app, "/uploads/a.bin", headers={"Range": range_})
    assert reply.status == 416
    assert reply.headers["Content-Range"] == "bytes */10"
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    assert DATA not in reply.body


@pytest.mark.parametrize(
    "range_", ["bytes=0-1,3-4", "bytes=-5, -3", "bytes=0-0,0-0,0-0,0-0", "items=0-5", "pages=1-"]
)
async def test_several_ranges_or_other_units_give_the_whole_file(
    app: Any, store: Store, store_path: Path, range_: str
) -> None:
    """Neither framework sends multipart/byteranges: ignoring the header (RFC 9110 14.2) beats a
    416 for a request that overlaps the file; other units must be ignored."""
    put(store_path, "a.bin")
    reply = await fetch(app, "/uploads/a.bin", headers={"Range": range_})
    assert (reply.status, reply.body) == (200, DATA)
    assert "Content-Range" not in reply.headers


async def test_if_none_match_with_the_etag_gives_304(
    app: Any, store: Store, store_path: Path
) -> None:
    put(store_path, "a.txt")
    etag = (await fetch(app, "/uploads/a.txt")).headers["ETag"]
    reply = await fetch(app, "/uploads/a.txt", headers={"If-None-Match": etag})
    assert reply.status == 304
    assert reply.body == b""
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    other = await fetch(app, "/uploads/a.txt", headers={"If-None-Match": '"not-it"'})
    assert (other.status, other.body) == (200, DATA)


async def test_if_modified_since_gives_304_until_the_file_changes(
    app: Any, store: Store, store_path: Path
) -> None:
    path = put(store_path, "a.txt")
    last_modified = (await fetch(app, "/uploads/a.txt")).headers["Last-Modified"]
    reply = await fetch(app, "/uploads/a.txt", headers={"If-Modified-Since": last_modified})
    assert (reply.status, reply.body) == (304, b"")
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    later = path.stat().st_mtime + 60
    os.utime(path, (later, later))
    reply = await fetch(app, "/uploads/a.txt", headers={"If-Modified-Since": last_modified})
    assert (reply.status, reply.body) == (200, DATA)


async def test_missing_file_is_404_with_nosniff(app: Any, store: Store) -> None:
    reply = await fetch(app, "/uploads/nothing-here.txt")
    assert_not_found(reply)


@pytest.mark.parametrize("path", ["/uploads", "/uploads/", "/uploads//a.txt"])
async def test_paths_no_route_matches_below_the_prefix_get_nosniff(
    app: Any, store: Store, store_path: Path, path: str
) -> None:
    """The app's own 404 (no route matched) is a response of the store's URL space too."""
    put(store_path, "a.txt")
    assert_not_found(await fetch(app, path))
    post = await fetch(app, "/uploads/a.txt", method="POST")
    assert post.status == 405
    assert post.headers["X-Content-Type-Options"] == "nosniff"
    elsewhere = await fetch(app, "/elsewhere")
    assert elsewhere.status == 404
    assert "X-Content-Type-Options" not in elsewhere.headers


# --- what a browser may show inline ----------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["a.html", "a.htm", "b.HTML", "a.svg", "a.xml", "a.js", "a.mjs", "a.xhtml", "a.qqzz", "noext"],
)
async def test_active_content_is_an_attachment_in_a_sandbox(
    app: Any, store: Store, store_path: Path, name: str
) -> None:
    put(store_path, name, b"<script>alert(document.cookie)</script>")
    reply = await fetch(app, f"/uploads/{name}")
    assert reply.status == 200
    assert reply.headers["Content-Disposition"].startswith("attachment")
    assert f"filename={name}" in reply.headers["Content-Disposition"]
    assert reply.headers["Content-Security-Policy"] == "sandbox"
    assert reply.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    ("name", "mimetype"),
    [
        ("a.png", "image/png"),
        ("a.jpg", "image/jpeg"),
        ("a.txt", "text/plain"),
        ("a.pdf", "application/pdf"),
    ],
)
async def test_passive_content_is_shown_inline(
    app: Any, store: Store, store_path: Path, name: str, mimetype: str
) -> None:
    put(store_path, name)
    reply = await fetch(app, f"/uploads/{name}")
    assert reply.status == 200
    assert reply.headers["Content-Type"].split(";")[0] == mimetype
    assert "attachment" not in reply.headers.get("Content-Disposition", "")
    assert "Content-Security-Policy" not in reply.headers
    assert reply.headers["X-Content-Type-Options"] == "nosniff"


async def test_unicode_download_name_is_rfc_6266_encoded(
    app: Any, store: Store, store_path: Path
) -> None:
    """Raw UTF-8 in the header reaches the browser as Latin-1: the download gets a garbled name."""
    put(store_path, "отчёт.html")
    reply = await fetch(app, "/uploads/%D0%BE%D1%82%D1%87%D1%91%D1%82.html")
    assert reply.status == 200
    disposition = reply.headers["Content-Disposition"]
    assert disposition.isascii()
    assert disposition.startswith("attachment")
    assert "filename*=UTF-8''%D0%BE%D1%82%D1%87%D1%91%D1%82.html" in disposition


# --- what is never served ------------------------------------------------------------------


async def test_symlink_inside_the_store_is_served(app: Any, store: Store, store_path: Path) -> None:
    put(store_path, "real.txt")
    (store_path / "alias.txt").symlink_to(store_path / "real.txt")
    assert (await fetch(app, "/uploads/alias.txt")).body == DATA


async def test_symlink_to_a_file_outside_is_404(
    app: Any, store: Store, store_path: Path, secret: Path
) -> None:
    (store_path / "link.txt").symlink_to(secret)
    assert_not_found(await fetch(app, "/uploads/link.txt"))


async def test_symlinked_directory_outside_is_404(
    app: Any, store: Store, store_path: Path, secret: Path
) -> None:
    (store_path / "linkdir").symlink_to(secret.parent, target_is_directory=True)
    assert_not_found(await fetch(app, "/uploads/linkdir/secret.txt"))


async def test_sibling_directory_sharing_the_prefix_is_404(
    app: Any, store: Store, store_path: Path
) -> None:
    sibling = store_path.parent / f"{store_path.name}-secret"
    put(sibling, "file.txt", SECRET)
    (store_path / "link.txt").symlink_to(sibling / "file.txt")
    (store_path / "dirlink").symlink_to(sibling, target_is_directory=True)
    for path in [
        "/uploads/link.txt",
        "/uploads/dirlink/file.txt",
        f"/uploads/../{sibling.name}/file.txt",
        f"/uploads/..%2f{sibling.name}%2ffile.txt",
    ]:
        assert_not_found(await fetch(app, path))


@pytest.mark.parametrize("path", ["/uploads/somedir", "/uploads/somedir/", "/uploads/a/b/"])
async def test_directories_are_never_listed(
    app: Any, store: Store, store_path: Path, path: str
) -> None:
    put(store_path, "somedir/inside.txt")
    put(store_path, "a/b/inside.txt")
    reply = await fetch(app, path)
    assert_not_found(reply)
    assert b"inside.txt" not in reply.body


@pytest.mark.parametrize(
    "key", [".async_store-xyz.part", ".env", "docs/.htaccess", ".git/config", "docs/.x/a.txt"]
)
async def test_temp_and_dot_files_are_404(
    app: Any, store: Store, store_path: Path, key: str
) -> None:
    put(store_path, key, SECRET)
    assert_not_found(await fetch(app, f"/uploads/{key}"))


@pytest.mark.parametrize(
    "path",
    [
        "/uploads/../secret.txt",
        "/uploads/%2e%2e/secret.txt",
        "/uploads/..%2fsecret.txt",
        "/uploads/%2e%2e%2fsecret.txt",
        "/uploads/x/..%2f..%2fsecret.txt",
        "/uploads/a.txt%00.png",
        "/uploads/%00",
        "/uploads/..\\secret.txt",
        "/uploads/..%5csecret.txt",
        "/uploads/C:%5cWindows%5cwin.ini",
        "/uploads/%c0%ae%c0%ae/secret.txt",
        "/uploads/%ef%bc%8e%ef%bc%8e%ef%bc%8fsecret.txt",
        "/uploads/." + "%2e" * 10,
        "/uploads/" + "a" * 5000,
        "/uploads/" + "a/" * 2500 + "a.txt",
    ],
)
async def test_hostile_paths_are_404_never_500(
    app: Any, store: Store, store_path: Path, secret: Path, path: str
) -> None:
    put(store_path, "a.txt")
    assert_not_found(await fetch(app, path))


@pytest.mark.parametrize(
    "path",
    ["/uploads/%2fetc%2fpasswd", "/uploads/%2F..%2Fsecret.txt", "/uploads//../secret.txt"],
)
async def test_leading_slash_is_404_not_a_redirect(
    app: Any, store: Store, store_path: Path, secret: Path, path: str
) -> None:
    """Merged slashes would 308 to "/uploads/../secret.txt", which a browser follows to "/"."""
    put(store_path, "etc/passwd")
    put(store_path, "secret.txt")
    reply = await fetch(app, path)
    assert reply.status == 404
    assert "Location" not in reply.headers
    assert SECRET not in reply.body
    assert DATA not in reply.body


# --- configuration --------------------------------------------------------------------------


async def test_serve_files_false_registers_no_route(app_kind: str, store_path: Path) -> None:
    app = new_app(app_kind, store_path, STORE_SERVE_FILES=False)
    Store(app).close()
    put(store_path, "a.txt")
    reply = await fetch(app, "/uploads/a.txt")
    assert reply.status == 404
    assert DATA not in reply.body
    assert "store_file" not in app.view_functions


async def test_url_prefix_moves_the_route(app_kind: str, store_path: Path) -> None:
    app = new_app(app_kind, store_path, STORE_URL_PREFIX="/media")
    Store(app).close()
    put(store_path, "a.txt")
    assert (await fetch(app, "/media/a.txt")).body == DATA
    assert (await fetch(app, "/uploads/a.txt")).status == 404


async def test_url_for_store_file(app: Any, store: Store, store_path: Path) -> None:
    put(store_path, "docs/a b.txt")
    if isinstance(app, quart.Quart):
        async with app.test_request_context("/"):
            url = quart.url_for("store_file", filename="docs/a b.txt")
    else:
        with app.test_request_context("/"):
            url = flask.url_for("store_file", filename="docs/a b.txt")
    assert url == "/uploads/docs/a%20b.txt"
    assert (await fetch(app, url)).body == DATA


# --- real servers, raw bytes on the socket --------------------------------------------------


async def raw_request(port: int, request_line: bytes) -> tuple[int, bytes, bytes]:
    """Send ``request_line`` as is; return (status, head, body)."""
    data = b""
    with anyio.fail_after(10):
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(request_line + b"\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            while True:
                try:
                    data += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body


RAW_HOSTILE = [
    b"GET /uploads/../secret.txt HTTP/1.1",
    b"GET /uploads/..%2fsecret.txt HTTP/1.1",
    b"GET /uploads/..%2f..%2fetc%2fpasswd HTTP/1.1",
    b"GET /uploads/%2e%2e/secret.txt HTTP/1.1",
    b"GET /uploads/%2e%2e%2fsecret.txt HTTP/1.1",
    b"GET /uploads/..%5csecret.txt HTTP/1.1",
    b"GET /uploads/a.txt%00.png HTTP/1.1",
    b"GET /uploads/.async_store-x.part HTTP/1.1",
    b"GET /uploads/somedir/ HTTP/1.1",
    b"GET /uploads/%c0%ae%c0%ae/secret.txt HTTP/1.1",
    b"GET /uploads/" + b"a" * 5000 + b" HTTP/1.1",
]


async def test_real_server_raw_paths(
    app: Any, store: Store, store_path: Path, secret: Path, free_tcp_port: int
) -> None:
    put(store_path, "a.txt")
    put(store_path, ".async_store-x.part", SECRET)
    put(store_path, "somedir/inside.txt")
    async with real_server(app, free_tcp_port) as port:
        status, _, body = await raw_request(port, b"GET /uploads/a.txt HTTP/1.1")
        assert (status, body) == (200, DATA)
        for request_line in RAW_HOSTILE:
            status, head, body = await raw_request(port, request_line)
            assert status == 404, request_line
            assert b"nosniff" in head.lower(), request_line
            assert SECRET not in body
            assert b"inside.txt" not in body
        # No route matches an empty first segment: the app's own 404, not a redirect.
        status, head, _ = await raw_request(port, b"GET /uploads/%2f..%2fsecret.txt HTTP/1.1")
        assert status == 404
        assert b"location:" not in head.lower()


async def test_real_server_head(
    app: Any, store: Store, store_path: Path, free_tcp_port: int
) -> None:
    put(store_path, "a.txt")
    async with real_server(app, free_tcp_port) as port:
        status, head, body = await raw_request(port, b"HEAD /uploads/a.txt HTTP/1.1")
    assert (status, body) == (200, b"")
    assert b"content-length: 10" in head.lower()


def test_quart_route_does_no_blocking_io_on_the_loop(tmp_path: Path) -> None:
    """In a fresh interpreter: the first request must not read MIME tables on the loop."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import asyncio
        from blockbuster import blockbuster_ctx
        from quart import Quart
        from async_store import Store

        app = Quart(__name__)
        app.config["STORE_PATH"] = {str(tmp_path)!r}
        Store(app)
        open({str(tmp_path / "a.txt")!r}, "wb").write(b"x")

        async def main():
            client = app.test_client()
            with blockbuster_ctx():
                response = await client.get("/uploads/a.txt")
            print(response.status_code, await response.get_data())

        asyncio.run(main())
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "200 b'x'", result.stderr[-2000:]
