"""tus through the app against ``save_request`` (issue 15): the throughput of a large upload
sent in chunks, and what a dropped connection costs.

``python -m bench.tus [--size-mib N] [--chunk-mib C] [--repeats R]`` starts
``bench/tus_server.py`` (Quart under hypercorn, local disk) and, with one client (httpx) for
both, in turn:

* **throughput**: the file through tus (``POST /files/`` then one ``PATCH`` per chunk, as
  tus-js-client and tuspy send it) against the same file posted to ``save_request`` in one
  multipart request (streamed, ``Content-Length`` known); the ratio of their MiB/s;
* **a drop at half way**: a tus upload whose server is killed (``SIGKILL``) half way through a
  ``PATCH`` that passes the middle of the file, restarted, asked where the upload stopped
  (``HEAD``), and finished from there. It reports the bytes the client sent in all against the
  file's size: what was sent twice is the part of the killed ``PATCH`` that never reached the
  disk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from .http import _free_port, _wait_for
from .report import make_source

HERE = Path(__file__).parent
MIB = 1024 * 1024
BOUNDARY = "benchboundary7e3"


class Server:
    """The bench app in its own process, which may be killed and started again."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.tus_server", str(self.port), str(self.folder)],
            cwd=HERE.parent,
        )
        _wait_for(self.port, self.proc)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def file_chunks(path: Path, start: int, length: int, step: int = MIB) -> Iterator[bytes]:
    with open(path, "rb") as f:
        f.seek(start)
        while length > 0:
            chunk = f.read(min(step, length))
            if not chunk:
                return
            length -= len(chunk)
            yield chunk


def tus_create(client: httpx.Client, size: int, name: str) -> str:
    created = client.post(
        "/files/",
        headers={"Tus-Resumable": "1.0.0", "Upload-Length": str(size), "Upload-Metadata": name},
    )
    assert created.status_code == 201, created.text
    return created.headers["location"]


def tus_patch(
    client: httpx.Client, url: str, offset: int, body: Iterator[bytes], length: int
) -> int:
    reply = client.patch(
        url,
        content=body,
        headers={
            "Tus-Resumable": "1.0.0",
            "Upload-Offset": str(offset),
            "Content-Type": "application/offset+octet-stream",
            "Content-Length": str(length),
        },
    )
    assert reply.status_code == 204, reply.text
    return int(reply.headers["upload-offset"])


def tus_upload(base: str, source: Path, chunk: int) -> None:
    size = source.stat().st_size
    with httpx.Client(base_url=base, timeout=300) as client:
        url = tus_create(client, size, "filename ZGF0YXNldC5iaW4=")
        offset = 0
        while offset < size:
            length = min(chunk, size - offset)
            offset = tus_patch(client, url, offset, file_chunks(source, offset, length), length)


def save_request_upload(base: str, source: Path, chunk: int = 0) -> None:
    size = source.stat().st_size
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="f"; filename="dataset.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()

    def body() -> Iterator[bytes]:
        yield head
        yield from file_chunks(source, 0, size)
        yield tail

    with httpx.Client(base_url=base, timeout=300) as client:
        reply = client.post(
            "/up",
            content=body(),
            headers={
                "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
                "Content-Length": str(len(head) + size + len(tail)),
            },
        )
        assert reply.status_code == 200, reply.text


def dropped_half_way(server: Server, source: Path, chunk: int) -> tuple[int, int]:
    """(bytes the client sent in all, the upload's size) for an upload whose server is killed
    in the middle of the ``PATCH`` that crosses half the file."""
    size = source.stat().st_size
    sent = 0
    with httpx.Client(base_url=server.base, timeout=300) as client:
        url = tus_create(client, size, "filename ZHJvcHBlZC5iaW4=")
        offset = 0
        killed = False
        while offset < size:
            length = min(chunk, size - offset)

            def counted(start: int = offset, length: int = length) -> Iterator[bytes]:
                nonlocal sent, killed
                for part in file_chunks(source, start, length):
                    if not killed and start + length > size // 2 and sent >= size // 2:
                        killed = True
                        time.sleep(0.2)  # what was sent reaches the server's disk
                        server.kill()
                    sent += len(part)
                    yield part

            try:
                offset = tus_patch(client, url, offset, counted(), length)
            except (httpx.TransportError, AssertionError):
                server.start()
                where = client.head(url, headers={"Tus-Resumable": "1.0.0"})
                offset = int(where.headers["upload-offset"])
    return sent, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--chunk-mib", type=int, default=5, help="tus-js-client in the demo: 5")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-tus-"))
    source = make_source(work / "dataset.bin", args.size_mib * MIB)
    size, chunk = source.stat().st_size, args.chunk_mib * MIB
    server = Server(work / "server")
    server.start()
    try:
        speeds: dict[str, list[float]] = {"tus": [], "save_request": []}
        for _ in range(args.repeats):  # alternating: drift hits both alike
            for name, way in (("tus", tus_upload), ("save_request", save_request_upload)):
                start = time.perf_counter()
                way(server.base, source, chunk)
                speeds[name].append(size / MIB / (time.perf_counter() - start))
                shutil.rmtree(work / "server" / "store", ignore_errors=True)  # room on disk
        sent, total = dropped_half_way(server, source, chunk)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"{args.size_mib} MiB, tus chunks of {args.chunk_mib} MiB, {args.repeats} repeats, "
        f"load {os.getloadavg()[0]:.2f}"
    )
    for name, values in speeds.items():
        every = [round(v) for v in values]
        print(f"  {name:>12}: {statistics.median(values):7.1f} MiB/s (all {every})")
    ratio = statistics.median(speeds["tus"]) / statistics.median(speeds["save_request"])
    print(f"  tus / save_request throughput: {ratio:.2f}x (target: at least 0.8x)")
    again = sent - total
    print(
        f"  killed half way: sent {sent:,} bytes for {total:,} ({sent / total:.4f}x): "
        f"{again:,} sent twice, {again / chunk:.2f} of a chunk (target: at most one chunk)"
    )


if __name__ == "__main__":
    main()
