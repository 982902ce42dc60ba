"""Real servers on 127.0.0.1 for tests that need bytes on a socket: hypercorn for Quart,
werkzeug's threaded server for Flask."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import quart
from hypercorn.asyncio import serve
from hypercorn.config import Config
from werkzeug.serving import make_server


@contextmanager
def werkzeug_server(app: Any) -> Iterator[int]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()


@asynccontextmanager
async def hypercorn_server(app: Any, port: int) -> AsyncIterator[int]:
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = config.errorlog = None
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve(app, config, shutdown_trigger=stop.wait))
        with anyio.fail_after(10):
            while True:
                try:
                    await (await anyio.connect_tcp("127.0.0.1", port)).aclose()
                    break
                except OSError:
                    await anyio.sleep(0.02)
        try:
            yield port
        finally:
            stop.set()


@asynccontextmanager
async def real_server(app: Any, port: int) -> AsyncIterator[int]:
    if isinstance(app, quart.Quart):
        async with hypercorn_server(app, port) as bound:
            yield bound
    else:
        with werkzeug_server(app) as bound:
            yield bound


# --- servers in a process of their own: their temp dir, file descriptors and crashes are theirs --

_RUNNER = """
import importlib, sys
target, kind, port, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
module, _, attr = target.partition(":")
app = getattr(importlib.import_module(module), attr)
if not hasattr(app, "config"):
    app = app()  # a factory
if kind == "quart":
    import asyncio
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.read_timeout = int(timeout)
    asyncio.run(serve(app, config))  # SIGTERM: a graceful shutdown
else:
    from werkzeug.serving import WSGIRequestHandler, make_server

    class Handler(WSGIRequestHandler):
        timeout = timeout  # a socket that sends nothing for this long is dropped

    make_server("127.0.0.1", port, app, threaded=True, request_handler=Handler).serve_forever()
"""


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def fds(self, *, files_only: bool = False) -> int:
        """How many file descriptors the server holds now; ``files_only`` leaves out epoll
        instances (werkzeug's server leaves one to the garbage collector when a client goes
        away while it drains the rest of a refused body)."""
        fd_dir = f"/proc/{self.process.pid}/fd"
        targets = []
        for fd in os.listdir(fd_dir):
            with contextlib.suppress(OSError):  # closed since the listing
                targets.append(os.readlink(f"{fd_dir}/{fd}"))
        return sum(1 for t in targets if not (files_only and t == "anon_inode:[eventpoll]"))

    def settled_fds(self, baseline: int, wait: float = 5.0, *, files_only: bool = False) -> int:
        """The server's descriptor count once it is back to ``baseline`` (or ``wait`` is up):
        closing a connection can take the server a moment."""
        deadline = time.monotonic() + wait
        while (count := self.fds(files_only=files_only)) > baseline:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        return count

    def errors(self) -> str:
        """What the server wrote to stderr (tracebacks, werkzeug's request log)."""
        return self.log.read_text(errors="replace")


@contextmanager
def server_process(
    target: str,
    kind: str,
    port: int,
    env: dict[str, str],
    *,
    read_timeout: float = 5,
    log: Path | None = None,
) -> Iterator[ServerProcess]:
    """Run ``target`` (``"module:app"`` or ``"module:factory"``) under hypercorn (``kind``
    ``"quart"``) or werkzeug's threaded server (``"flask"``) in a subprocess, from the repo root,
    with ``env`` added to the environment (``TMPDIR``, ``STORE_PATH``, ...); its output goes to
    ``log`` (a file in the test process's temp folder by default)."""
    root = Path(__file__).resolve().parent.parent
    if log is None:
        log = Path(tempfile.gettempdir()) / f"async-store-server-{os.getpid()}-{port}.log"
    with open(log, "wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-c", _RUNNER, target, kind, str(port), str(read_timeout)],
            cwd=root,
            env={**os.environ, **env, "PYTHONPATH": str(root)},
            stdout=err,
            stderr=err,
        )
    server = ServerProcess(process, port, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited: {server.errors()[-3000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def raw_exchange(
    port: int,
    head: bytes,
    body: list[bytes] | None = None,
    *,
    pause: float = 0,
    timeout: float = 10,
) -> bytes:
    """Send ``head`` and the ``body`` pieces (``pause`` seconds between two) over a fresh socket and
    return everything the server sent back until it closed (or ``timeout``). Bytes go out as
    given: no client library tidies the request line on the way."""
    answer = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        done = threading.Event()

        def receive() -> None:
            # Read while sending: a server that answers early and closes resets the connection,
            # and a reset throws away what the client had not read yet.
            with contextlib.suppress(OSError):
                while data := sock.recv(65536):
                    answer.extend(data)
            done.set()

        reader = threading.Thread(target=receive, daemon=True)
        reader.start()
        with contextlib.suppress(OSError):
            sock.sendall(head)
            for i, piece in enumerate(body or []):
                if pause and i:
                    time.sleep(pause)
                sock.sendall(piece)
        done.wait(timeout)
    return bytes(answer)


def status_of(answer: bytes) -> int:
    """The status code of a raw HTTP answer; 0 when the server sent nothing."""
    parts = answer.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and answer.startswith(b"HTTP/") else 0
