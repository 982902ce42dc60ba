"""Load: many concurrent clients uploading mixed sizes through hypercorn + Quart + async_store.

The server (``bench/load_server.py``) and the clients run in processes of their own; the
clients (aiohttp, ``python -m bench.load client …``) upload files of log-uniform sizes for a
bounded time, each with distinct content, and record status, latency and the sha256 of what they
sent. Then every upload that got a 2xx is looked up in the store or bucket and hashed: nothing
may be lost, changed, added or left half-written, and the server's peak RSS (``VmHWM``) is read
before it stops. ``make bench`` runs the full size (:func:`bench_load`); ``tests/test_load.py``
runs a small one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .report import Row

HERE = Path(__file__).parent
KIB, MIB = 1024, 1024 * 1024


# --- the clients, in their own process --------------------------------------------------------


async def _clients(url: str, clients: int, seconds: float, low: int, high: int) -> list[Any]:
    import aiohttp

    pool = os.urandom(2 * high)
    rng = random.Random()
    results: list[Any] = []
    counter = iter(range(10**9))
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    timeout = aiohttp.ClientTimeout(total=300)

    async def client(session: aiohttp.ClientSession) -> None:
        uploaded = False  # each client uploads at least once, however late it started
        while not uploaded or time.monotonic() < deadline:
            uploaded = True
            n = next(counter)
            size = int(math.exp(rng.uniform(math.log(low), math.log(high))))
            start = rng.randrange(high)
            data = f"{os.getpid()}-{n}-".encode().ljust(32, b".") + pool[start : start + size - 32]
            form = aiohttp.FormData()
            form.add_field("f", data, filename=f"u{n}.bin", content_type="application/octet-stream")
            began = time.perf_counter()
            status, path, error = 0, None, None
            try:
                async with session.post(url, data=form) as response:
                    status = response.status
                    body = await response.read()
                    if status < 300:
                        path = json.loads(body)["path"]
                    else:
                        error = f"{status} {body[:300].decode(errors='replace')}"
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            results.append(
                {
                    "status": status,
                    "seconds": time.perf_counter() - began,
                    "size": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "path": path,
                    "error": error,
                }
            )

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    return results


def client_main(argv: list[str]) -> None:
    url, clients, seconds, low, high, out = argv
    results = asyncio.run(_clients(url, int(clients), float(seconds), int(low), int(high)))
    Path(out).write_text(json.dumps(results))


# --- the harness ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(port: int, config: dict[str, Any], log: Path) -> subprocess.Popen[bytes]:
    """Start ``bench/load_server.py`` and wait until it accepts connections."""
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.load_server", str(port), json.dumps(config)],
            cwd=HERE.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"load server exited with {process.returncode}: {log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"load server did not listen within 30 s: {log.read_text()}")


def stop_server(process: subprocess.Popen[bytes], timeout: float = 60) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


def peak_rss(pid: int) -> int:
    """The process's peak resident set size (``VmHWM``), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc")  # pragma: no cover


class Target:
    """Where the uploads end up, read behind the library's back: a folder or an S3 bucket."""

    def __init__(self, config: dict[str, Any], client: Any = None) -> None:
        self.config = config
        self.client = client

    def hashes(self) -> dict[str, str]:
        """{relative path: sha256} of every stored file (hidden temp files excluded)."""
        found: dict[str, str] = {}
        if self.client is None:
            root = Path(self.config["STORE_PATH"])
            for path in root.rglob("*"):
                if path.is_file() and not path.name.startswith("."):
                    with open(path, "rb") as f:
                        found[path.relative_to(root).as_posix()] = hashlib.file_digest(
                            f, "sha256"
                        ).hexdigest()
            return found
        bucket, prefix = self.config["STORE_S3_BUCKET"], self.config["STORE_PATH"] + "/"
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                digest = hashlib.sha256()
                body = self.client.get_object(Bucket=bucket, Key=obj["Key"])["Body"]
                for chunk in body.iter_chunks(MIB):
                    digest.update(chunk)
                found[obj["Key"].removeprefix(prefix)] = digest.hexdigest()
        return found

    def leftovers(self) -> list[str]:
        """Half-written things: temp files in the store, unfinished multipart uploads."""
        if self.client is None:
            root = Path(self.config["STORE_PATH"])
            return [str(p) for p in root.rglob(".*")]
        uploads = self.client.list_multipart_uploads(Bucket=self.config["STORE_S3_BUCKET"])
        return [u["Key"] for u in uploads.get("Uploads", [])]


def spooled_jobs(config: dict[str, Any]) -> list[str]:
    """Published jobs still waiting in the spool (reservations and hidden folders aside)."""
    spool = config.get("STORE_SPOOL_PATH")
    if not config.get("STORE_BACKGROUND") or not spool or not os.path.isdir(spool):
        return []
    return [n for n in os.listdir(spool) if n != "names" and not n.startswith(".")]


@dataclass
class LoadResult:
    label: str
    ok: int
    failed: int
    seconds: float
    megabytes: float
    latencies: list[float]
    peak_rss: int
    lost: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.ok / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else math.nan

    def summary(self) -> str:
        return (
            f"{self.label}: {self.ok} uploads ({self.failed} failed) in {self.seconds:.1f} s, "
            f"{self.per_second:.1f}/s, {self.megabytes / self.seconds:.1f} MiB/s, "
            f"p50 {self.percentile(0.5) * 1000:.0f} ms, p99 {self.percentile(0.99) * 1000:.0f} ms, "
            f"peak RSS {self.peak_rss / MIB:.0f} MiB, lost {len(self.lost)}, "
            f"extra {len(self.extra)}, leftovers {len(self.leftovers)}"
        )


def run_load(
    work: Path,
    label: str,
    config: dict[str, Any],
    clients: int,
    seconds: float,
    sizes: tuple[int, int],
    s3: Any = None,
) -> LoadResult:
    """Run one load: server up, clients for ``seconds``, deliveries done, server down, checks."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = start_server(port, config, work / "server.log")
    out = work / "clients.json"
    try:
        began = time.monotonic()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.load",
                "client",
                f"http://127.0.0.1:{port}/up",
                str(clients),
                str(seconds),
                str(sizes[0]),
                str(sizes[1]),
                str(out),
            ],
            cwd=HERE.parent,
            check=True,
            timeout=seconds + 600,
        )
        elapsed = time.monotonic() - began
        # Background uploads: wait for the deliveries (a bounded wait: what is left counts).
        deadline = time.monotonic() + 300
        while spooled_jobs(config) and time.monotonic() < deadline:
            time.sleep(0.1)
        rss = peak_rss(server.pid)
    finally:
        code = stop_server(server)
    uploads = json.loads(out.read_text())
    good = [u for u in uploads if 200 <= u["status"] < 300]
    target = Target(config, s3)
    stored = target.hashes()
    result = LoadResult(
        label,
        ok=len(good),
        failed=len(uploads) - len(good),
        seconds=elapsed,
        megabytes=sum(u["size"] for u in good) / MIB,
        latencies=[u["seconds"] for u in good],
        peak_rss=rss,
        lost=[u["path"] for u in good if stored.get(u["path"]) != u["sha256"]],
        extra=sorted(set(stored) - {u["path"] for u in good}),
        leftovers=target.leftovers() + spooled_jobs(config),
        errors=sorted({u["error"] or str(u["status"]) for u in uploads if u not in good}),
    )
    if code != 0:
        result.errors.append(f"server exited with {code}")
    return result


# --- make bench -------------------------------------------------------------------------------


def bench_load(work: Path, quick: bool = False) -> tuple[list[Row], list[str]]:
    """200 clients, 4 KiB to 20 MiB, local and S3, direct and background: rows and a table."""
    sys.path.insert(0, str(HERE.parent))
    from tests.conftest import s3_client, s3_config
    from tests.seaweed import SeaweedFS, find_weed

    clients, seconds = (50, 5.0) if quick else (200, 30.0)
    sizes = (4 * KIB, 2 * MIB if quick else 20 * MIB)
    results: list[LoadResult] = []
    weed = find_weed()
    server = SeaweedFS(work / "load-seaweed", weed) if weed else None
    if server is not None:
        server.start()
    try:
        for backend in ("local", "s3"):
            if backend == "s3" and server is None:
                continue
            for mode in ("direct", "background"):
                here = work / f"load-{backend}-{mode}"
                here.mkdir(parents=True)
                client = None
                if server is None or backend == "local":
                    config: dict[str, Any] = {"STORE_PATH": str(here / "store")}
                else:
                    client = s3_client(server)
                    bucket = f"load-{mode}"
                    client.create_bucket(Bucket=bucket)
                    config = s3_config(server, bucket, STORE_PATH="media")
                if mode == "background":
                    config.update(STORE_BACKGROUND=True, STORE_SPOOL_PATH=str(here / "spool"))
                label = f"{backend}, {mode}"
                result = run_load(here, label, config, clients, seconds, sizes, client)
                print(result.summary(), flush=True)
                results.append(result)
    finally:
        if server is not None:
            server.stop()

    # Memory is bounded per connection, not by file size: ~100 MiB of Python, Quart and
    # botocore, ~2 MiB of transport buffers per streaming request (hypercorn's app queue and
    # the flow-control queue), and for S3 the parts under STORE_S3_MAX_MEMORY (128 MiB).
    def budget(r: LoadResult) -> float:
        return 100 + 2 * clients + (128 if r.label.startswith("s3") else 0)

    first = results[0] if results else None
    rows: list[Row] = []
    for r in results:
        rows += [
            Row(
                f"load {r.label}: server peak RSS, {clients} clients",
                "MiB",
                [r.peak_rss / MIB],
                "100 MiB + 2 MiB per client (+ 128 MiB S3 parts)",
                [budget(r)],
                1.0,
                lower_is_better=True,
            ),
            Row(
                f"load {r.label}: uploads/s",
                "uploads/s",
                [r.per_second],
                f"load {first.label if first else ''}",
                [first.per_second if first else 1.0],
                None,
            ),
            Row(
                f"load {r.label}: p99 latency",
                "ms",
                [r.percentile(0.99) * 1000],
                "its p50",
                [r.percentile(0.5) * 1000],
                None,
                lower_is_better=True,
            ),
        ]
    table = [
        f"### Load: {clients} concurrent clients, {sizes[0] // KIB} KiB to {sizes[1] // MIB} MiB "
        f"(log-uniform), {seconds:.0f} s each",
        "",
        "One hypercorn worker serving Quart + `save_request`; clients in another process "
        "(aiohttp). Every 2xx upload was read back and its sha256 checked.",
        "",
        "| run | uploads | failed | uploads/s | MiB/s | p50 ms | p99 ms | peak RSS MiB | lost "
        "| extra | left over |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    table += [
        f"| {r.label} | {r.ok} | {r.failed} | {r.per_second:.1f} | "
        f"{r.megabytes / r.seconds:.1f} | {r.percentile(0.5) * 1000:.0f} | "
        f"{r.percentile(0.99) * 1000:.0f} | {r.peak_rss / MIB:.0f} | {len(r.lost)} | "
        f"{len(r.extra)} | {len(r.leftovers)} |"
        for r in results
    ]
    return rows, [*table, ""]


def main() -> None:
    if sys.argv[1:2] == ["client"]:
        client_main(sys.argv[2:])
        return
    import tempfile

    quick = "--quick" in sys.argv
    with tempfile.TemporaryDirectory(prefix="async_store-load-", dir="/tmp") as tmp:
        _, table = bench_load(Path(tmp), quick)
    print("\n".join(table))


if __name__ == "__main__":
    main()
