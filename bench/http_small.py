"""Many small uploads through the whole stack: httpx posting 4 KiB multipart bodies to hypercorn.

The servers are ``bench/http_server.py``'s Quart variants (``naive``, ``files``, ``ours``), one
fresh process and one fresh folder per run, so no run creates files where another just deleted
thousands (see NOTES.md: on this journal-less ext4 that walks the freed inodes). The client is
one ``httpx.AsyncClient`` with a pool of ``CONCURRENCY`` connections and as many tasks, each
posting the next of ``count`` bodies encoded once up front, so the clock covers HTTP, parsing and
saving, not building bodies. The server's CPU seconds (``/proc/PID/stat``, all its threads) are
read before and after the timed requests. The variants alternate within each repeat, in turn
going first.

``python -m bench.http_small [repeats] [count] [--work DIR]``: this part alone (``--work`` keeps
the stored files there, so back-to-back runs do not delete thousands of files between them);
``python -m bench.run --only small_http`` runs it into a report.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from .http import HERE, _free_port, _wait_for
from .report import Row, fmt

CONCURRENCY = 32
SIZE = 4096
WARM = CONCURRENCY  # untimed requests first: Quart's first request, and the pool's connections
NAIVE = 'naive Quart: (await request.files)["f"].save()'
_TICK = os.sysconf("SC_CLK_TCK")

Body = tuple[bytes, str]  # encoded multipart body, its Content-Type


def encode(count: int, prefix: str) -> list[Body]:
    """``count`` bodies of one random 4 KiB file each, field ``f``, distinct filenames."""
    bodies = []
    for i in range(count):
        request = httpx.Request(
            "POST",
            "http://bench/up",
            files={"f": (f"{prefix}{i:05d}.bin", os.urandom(SIZE), "application/octet-stream")},
        )
        bodies.append((request.read(), request.headers["content-type"]))
    return bodies


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid``, every thread (``/proc/PID/stat`` fields 14, 15)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / _TICK


@contextmanager
def server(variant: str, folder: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A fresh ``bench.http_server`` of ``variant`` storing into ``folder``: (URL, process)."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.http_server", variant, str(port), str(folder)],
        cwd=HERE.parent,
    )
    try:
        _wait_for(port, proc)
        yield f"http://127.0.0.1:{port}/up", proc
    finally:
        proc.terminate()
        proc.wait(30)


async def post_all(client: httpx.AsyncClient, url: str, bodies: list[Body]) -> list[int]:
    """POST every body, ``CONCURRENCY`` at a time, each task taking the next: the statuses."""
    statuses: list[int] = []
    pending = iter(bodies)

    async def worker() -> None:
        for content, content_type in pending:
            response = await client.post(
                url, content=content, headers={"content-type": content_type}
            )
            statuses.append(response.status_code)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return statuses


def upload_all(
    variant: str, folder: Path, bodies: list[Body], warm: list[Body]
) -> tuple[float, float, float]:
    """Post ``bodies`` to a fresh server: (requests/s, server and client CPU ms per request)."""
    folder.mkdir()
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)

    async def go(url: str, pid: int) -> tuple[float, float, float, list[int]]:
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            statuses = await post_all(client, url, warm)
            cpu, client_cpu = cpu_seconds(pid), time.process_time()
            start = time.perf_counter()
            statuses += await post_all(client, url, bodies)
            elapsed = time.perf_counter() - start
            client_cpu = time.process_time() - client_cpu
            return elapsed, cpu_seconds(pid) - cpu, client_cpu, statuses

    with server(variant, folder) as (url, proc):
        try:
            elapsed, cpu, client_cpu, statuses = asyncio.run(go(url, proc.pid))
        except httpx.TransportError as exc:
            state = "running" if proc.poll() is None else f"exited with {proc.returncode}"
            raise RuntimeError(f"{variant} into {folder}: {exc!r}, the server {state}") from exc
    sizes = [p.stat().st_size for p in folder.rglob("*") if p.is_file()]
    bad = [s for s in statuses if s != 200]
    if bad or len(sizes) != len(bodies) + len(warm) or set(sizes) != {SIZE}:
        raise RuntimeError(
            f"{variant}: {len(bad)} answers not 200 ({sorted(set(bad))}), "
            f"{len(sizes)} files stored of {len(bodies) + len(warm)}, sizes {sorted(set(sizes))}"
        )
    count = len(bodies)
    return count / elapsed, cpu / count * 1000, client_cpu / count * 1000


def bench_small_http(work: Path, count: int, repeats: int) -> tuple[list[Row], list[str]]:
    """Rows of ratios against naive Quart, and a Markdown table of every variant's figures.

    Nothing is deleted here: every run stores into a folder of its own under ``work``, which the
    caller removes after all runs.
    """
    bodies, warm = encode(count, "f"), encode(WARM, "warm-")
    variants = ("naive", "ours", "files")
    rates: dict[str, list[float]] = {v: [] for v in variants}
    cpus: dict[str, list[float]] = {v: [] for v in variants}
    client_cpus: dict[str, list[float]] = {v: [] for v in variants}
    load = [Path("/proc/loadavg").read_text().split()[0]]
    for repeat in range(repeats):
        for variant in variants[::-1] if repeat % 2 else variants:
            folder = work / f"small-http-{variant}-{repeat}"
            rate, cpu, client_cpu = upload_all(variant, folder, bodies, warm)
            rates[variant].append(rate)
            cpus[variant].append(cpu)
            client_cpus[variant].append(client_cpu)
    load.append(Path("/proc/loadavg").read_text().split()[0])
    what = f"{count:,} × 4 KiB multipart uploads through hypercorn + Quart at concurrency 32"
    rows = [
        Row(f"{what}, save_request", "req/s", rates["ours"], NAIVE, rates["naive"], 1.0),
        Row(f"{what}, Provider(request.files[...]).save()", "req/s", rates["files"],
            NAIVE, rates["naive"], None),
        Row(f"server CPU per request, {what}, save_request", "ms", cpus["ours"],
            NAIVE, cpus["naive"], None, lower_is_better=True),
        Row(f"server CPU per request, {what}, Provider(request.files[...]).save()", "ms",
            cpus["files"], NAIVE, cpus["naive"], None, lower_is_better=True),
    ]  # fmt: skip
    table = [
        f"### Small uploads through hypercorn: every variant (load average {' → '.join(load)})",
        "",
        "| variant | req/s (median, range) | server CPU ms/request | client CPU ms/request |",
        "|---|---|---|---|",
        *(f"| {v} | {fmt(rates[v])} | {fmt(cpus[v])} | {fmt(client_cpus[v])} |" for v in variants),
        "",
    ]
    return rows, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("repeats", type=int, nargs="?", default=3)
    parser.add_argument("count", type=int, nargs="?", default=2_000)
    parser.add_argument("--work", type=Path, help="store here and keep (default: a temp dir)")
    args = parser.parse_args()
    print(f"load average {Path('/proc/loadavg').read_text().strip()}", flush=True)
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="run-", dir=args.work))
    else:
        work = Path(tempfile.mkdtemp(prefix="async_store-bench-", dir="/tmp"))
    try:
        rows, table = bench_small_http(work, args.count, args.repeats)
    finally:
        if not args.work:
            shutil.rmtree(work)
    for row in rows:
        print(
            f"{row.figure}: {fmt(row.ours)} vs {row.baseline_name}: {fmt(row.baseline)} "
            f"{row.unit}, {row.ratio:.2f}×"
        )
    print("\n".join(["", *table]))


if __name__ == "__main__":
    main()
