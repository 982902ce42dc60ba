"""Small direct saves to local disk against a sync loop with the same guarantees (issue 17).

``python -m bench.local_small [--count N] [--concurrency C] [--repeats R]`` saves ``count`` ×
4 KiB files through the async API (``await store.Provider(data, filename=...).save()`` in a
Quart app context, ``concurrency`` tasks at once) and through a plain blocking loop that keeps
the same promises: each file is written to a temp file in the target folder and published with
a hard link that never replaces (the next name on a clash), the temp name removed. Both write on
the same file system (``/dev/shm`` when there is one: creating a file is cheap there, and the
libraries' own cost shows; ``--dir`` for another). Reported: files/s, process CPU per file and
their ratios, alternating, the median of the repeats.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import quart

from async_store import Store

from .report import Row

#: Where the comparison runs unless told: tmpfs, where creating a file is cheap.
DEFAULT_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else None


async def save_many(
    store: Store[Any], payload: bytes, location: str, count: int, concurrency: int
) -> None:
    """``count`` saves of ``payload`` into ``location`` by ``concurrency`` tasks, each saving
    the next file until all are stored: as many saves in flight as a server with that many
    requests uploading at once. Call it in an app context."""
    names = iter(range(count))

    async def worker() -> None:
        for i in names:
            await store.Provider(payload, location, filename=f"f{i}.bin").save()

    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)


def sync_loop(folder: Path, count: int, payload: bytes) -> None:
    """The baseline: temp file, write, close, link without replace, unlink the temp name."""
    for i in range(count):
        temp = os.path.join(folder, f".tmp-{i}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, payload)
        finally:
            os.close(fd)
        for n in itertools.count():
            name = f"f{i}.bin" if n == 0 else f"f{i}_{n}.bin"
            try:
                os.link(temp, os.path.join(folder, name))
                break
            except FileExistsError:
                continue
        os.unlink(temp)


def measure(
    count: int, concurrency: int, repeats: int, directory: str | None
) -> dict[str, list[tuple[float, float]]]:
    """(files/s, µs of CPU a file) of every run, for ``ours`` and ``loop``."""
    root = Path(tempfile.mkdtemp(prefix="bench-local-small-", dir=directory))
    payload = os.urandom(4096)
    app = quart.Quart("bench_local_small")
    app.config["STORE_PATH"] = str(root / "store")
    store = Store(app)
    runs = itertools.count()

    def timed(run: Callable[[], object]) -> tuple[float, float]:
        cpu, wall = time.process_time(), time.perf_counter()
        run()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return count / wall, cpu * 1e6 / count

    def ours() -> tuple[float, float]:
        location = f"ours{next(runs)}"

        async def go() -> None:
            async with app.app_context():
                await save_many(store, payload, location, count, concurrency)

        os.makedirs(root / "store" / location)
        return timed(lambda: anyio.run(go))

    def baseline() -> tuple[float, float]:
        folder = root / f"plain{next(runs)}"
        folder.mkdir()
        return timed(lambda: sync_loop(folder, count, payload))

    try:
        ours()  # untimed: imports, the worker threads
        results: dict[str, list[tuple[float, float]]] = {"ours": [], "loop": []}
        for repeat in range(repeats):
            order = ("ours", "loop") if repeat % 2 else ("loop", "ours")
            for side in order:
                results[side].append(ours() if side == "ours" else baseline())
    finally:
        store.close()
        shutil.rmtree(root, ignore_errors=True)
    return results


def row(count: int, concurrency: int, directory: str | None, repeats: int) -> Row:
    """``make bench``'s row: files/s against the loop's, target 0.5× (issue 17)."""
    results = measure(count, concurrency, repeats, directory)
    where = directory or tempfile.gettempdir()
    return Row(
        f"{count:,} × 4 KiB local saves at concurrency {concurrency} vs a sync loop with the "
        f"same guarantees ({where})",
        "files/s",
        [rate for rate, _ in results["ours"]],
        "temp file + link without replace, in a loop",
        [rate for rate, _ in results["loop"]],
        0.5,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=DEFAULT_DIR)
    args = parser.parse_args()
    results = measure(args.count, args.concurrency, args.repeats, args.dir)
    rate = {s: statistics.median(r for r, _ in runs_) for s, runs_ in results.items()}
    cpu = {s: statistics.median(c for _, c in runs_) for s, runs_ in results.items()}
    print(
        f"{args.count:,} × 4 KiB saves, async API at concurrency {args.concurrency} vs the "
        f"sync loop, on {args.dir or tempfile.gettempdir()}, {args.repeats} repeats, "
        f"load {os.getloadavg()[0]:.2f}"
    )
    for side in ("ours", "loop"):
        print(f"  {side:>4}: {rate[side]:7.0f} files/s, {cpu[side]:6.1f} µs CPU a file")
    print(
        f"  ours/loop: {rate['ours'] / rate['loop']:.2f}x the files/s, "
        f"{cpu['loop'] / cpu['ours']:.2f}x the CPU efficiency"
    )


if __name__ == "__main__":
    main()
