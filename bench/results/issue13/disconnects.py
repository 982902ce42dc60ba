"""Count transport errors (server disconnects) over many small uploads to one server.

``python bench/results/issue13/disconnects.py VARIANT COUNT``, run from the folder that holds
``bench/`` with ``PYTHONPATH`` at the async_store tree to test: one ``bench.http_server`` of
``VARIANT`` (naive, files, ours), ``COUNT`` 4 KiB multipart uploads, 32 at a time over one
httpx pool of 32. Prints the number of failed requests and the first few errors.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time

import httpx

BOUNDARY = "b0undary"


def body(i: int) -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="f"; filename="f{i}.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    return head.encode() + os.urandom(4096) + f"\r\n--{BOUNDARY}--\r\n".encode()


def main() -> None:
    variant, count = sys.argv[1], int(sys.argv[2])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    folder = tempfile.mkdtemp(prefix="disconnects-")
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.http_server", variant, str(port), folder]
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            break
        except OSError:
            time.sleep(0.1)
    bodies = [body(i) for i in range(count)]
    errors: list[str] = []
    headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}

    async def run() -> None:
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            pending = iter(bodies)

            async def worker() -> None:
                for content in pending:
                    try:
                        url = f"http://127.0.0.1:{port}/up"
                        response = await client.post(url, content=content, headers=headers)
                        if response.status_code != 200:
                            errors.append(str(response.status_code))
                    except httpx.TransportError as exc:
                        errors.append(repr(exc))

            await asyncio.gather(*(worker() for _ in range(32)))

    start = time.monotonic()
    try:
        asyncio.run(run())
    finally:
        server.terminate()
        server.wait()
    took = time.monotonic() - start
    print(f"{variant} {count}: {len(errors)} failed {errors[:3]} in {took:.1f} s")


if __name__ == "__main__":
    main()
