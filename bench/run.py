"""async_store benchmarks: every figure a ratio against a baseline measured in the same run.

``make bench`` runs it; ``python -m bench.run --quick`` is a small smoke run. It writes
``bench/results/latest.md`` (figure, baseline, ratio, target, met?) and ``latest.png``.
Each measurement is repeated (median, with the range), because 2-core machines are noisy.

Measured: large multipart uploads through hypercorn (``bench/http.py``) and 4 KiB ones
(``bench/http_small.py``), direct saves against ``shutil.copyfileobj``, many small files
against plain blocking writes and against a loop with the same guarantees
(``bench/local_small.py``), the sync shim against the async API, S3 on a SeaweedFS the run
starts on 127.0.0.1 against raw aioboto3, background latency (``bench/s3.py``), the two S3
backends' client CPU and small saves (``bench/s3_backends.py``), and the peers on the same work
(``bench/peers.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import quart

from async_store import Store

from . import local_small, s3_backends
from .http import bench_http
from .http_small import bench_small_http
from .load import bench_load
from .peers import bench_peers
from .report import Row, fmt, make_source, write_report
from .s3 import bench_s3

HERE = Path(__file__).parent
MIB = 1024 * 1024


def timed(repeats: int, run: Callable[[], float]) -> list[float]:
    """Run ``run`` (which returns a rate) ``repeats`` times."""
    return [run() for _ in range(repeats)]


def drop_caches_best_effort() -> None:
    # Page cache state is the same for both sides of each pair: they alternate in one run.
    os.sync()


# --- local provider -------------------------------------------------------------------------


def local_store(root: Path) -> tuple[quart.Quart, Store]:
    app = quart.Quart(__name__)
    app.config["STORE_PATH"] = str(root)
    return app, Store(app)


def bench_large_local(work: Path, size: int, repeats: int) -> Row:
    source = make_source(work / "source.bin", size)
    app, store = local_store(work / "store")

    def ours() -> float:
        async def go() -> float:
            async with app.app_context():
                start = time.perf_counter()
                provider = store.Provider(source)
                await provider.save()
                elapsed = time.perf_counter() - start
                os.unlink(provider.absolute_path)
                return size / MIB / elapsed

        return anyio.run(go)

    def baseline() -> float:
        target = work / "copy.bin"
        start = time.perf_counter()
        with open(source, "rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
        elapsed = time.perf_counter() - start
        os.unlink(target)
        return size / MIB / elapsed

    ours_rates, base_rates = [], []
    for _ in range(repeats):  # alternate, so drift hits both sides alike
        drop_caches_best_effort()
        base_rates.append(baseline())
        drop_caches_best_effort()
        ours_rates.append(ours())
    os.unlink(source)
    store.close()
    return Row(
        f"Provider.save() of a {size // MIB} MiB file (local)",
        "MiB/s",
        ours_rates,
        "shutil.copyfileobj",
        base_rates,
        0.9,
    )


def small_root(base: str) -> Path:
    """A fresh folder for the small-file benches on the file system of ``base``."""
    return Path(tempfile.mkdtemp(prefix="async_store-small-", dir=base))


def bench_small_local(
    root: Path, count: int, concurrency: int, repeats: int, fs: str, target: float | None
) -> Row:
    """``count`` 4 KiB saves at ``concurrency`` against the same files written by a plain loop.

    Every run writes into a folder of its own and nothing is deleted until the caller removes
    ``root`` after all the small-file runs: on an ext4 without a journal, creating files right
    after deleting thousands walks the freed inodes (``recently_deleted``) and the cost of one
    create swings tenfold. Baseline and ours alternate, in turn going first.
    """
    payload = os.urandom(4096)
    app, store = local_store(root)
    runs = iter(range(10**6))

    def ours() -> float:
        location = f"ours-c{concurrency}-{next(runs)}"
        os.makedirs(root / location)  # as the baseline's folder: made before the clock starts

        async def go() -> float:
            async with app.app_context():
                start = time.perf_counter()
                await local_small.save_many(store, payload, location, count, concurrency)
                return count / (time.perf_counter() - start)

        return anyio.run(go)

    def baseline() -> float:
        folder = root / f"plain-c{concurrency}-{next(runs)}"
        folder.mkdir()
        start = time.perf_counter()
        for i in range(count):
            with open(folder / f"f{i}.bin", "wb") as f:
                f.write(payload)
        return count / (time.perf_counter() - start)

    ours_rates, base_rates = [], []
    for repeat in range(repeats):
        if repeat % 2:
            ours_rates.append(ours())
            base_rates.append(baseline())
        else:
            base_rates.append(baseline())
            ours_rates.append(ours())
    store.close()
    return Row(
        f"{count:,} × 4 KiB saves at concurrency {concurrency} (local, {fs})",
        "files/s",
        ours_rates,
        "plain sync open/write/close",
        base_rates,
        target,
    )


def fs_type(path: str) -> str:
    """The file system type of ``path`` (``ext4``, ``tmpfs``…), from ``/proc/mounts``."""
    real, best, kind = os.path.realpath(path), "", "unknown fs"
    with contextlib.suppress(OSError), open("/proc/mounts") as mounts:
        for line in mounts:
            _, point, fstype, *_ = line.split()
            inside = real == point or real.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, kind = point, fstype
    return kind


def bench_small(count: int, repeats: int) -> list[Row]:
    """The small-file rows on the disk (``/tmp``, the target) and on tmpfs (``/dev/shm``, where
    creating a file is cheap and the library's own cost shows)."""
    rows = []
    for base, with_target in (("/tmp", True), ("/dev/shm", False)):
        if not os.path.isdir(base):
            continue
        fs = f"{fs_type(base)} {base}"
        root = small_root(base)
        try:
            for concurrency in (1, 64):
                target = 0.7 if with_target and concurrency > 1 else None
                rows.append(bench_small_local(root, count, concurrency, repeats, fs, target))
        finally:
            shutil.rmtree(root)  # once, after every timed run
    return rows


def bench_shim(work: Path, count: int, repeats: int) -> Row:
    import flask

    payload = os.urandom(4096)
    root = small_root(str(work))
    fapp = flask.Flask(__name__)
    fapp.config["STORE_PATH"] = str(root)
    fstore = Store(fapp)
    qapp, qstore = local_store(root)
    runs = iter(range(10**6))

    def ours() -> float:
        location = f"shim-{next(runs)}"  # a fresh folder per run, nothing deleted in between
        with fapp.app_context():
            fstore.Provider(b"", location, filename="warm.bin").save()  # the portal starts
            start = time.perf_counter()
            for i in range(count):
                fstore.Provider(payload, location, filename=f"f{i}.bin").save()
            return count / (time.perf_counter() - start)

    def baseline() -> float:
        location = f"direct-{next(runs)}"

        async def go() -> float:
            async with qapp.app_context():
                await qstore.Provider(b"", location, filename="warm.bin").save()
                start = time.perf_counter()
                for i in range(count):
                    await qstore.Provider(payload, location, filename=f"f{i}.bin").save()
                return count / (time.perf_counter() - start)

        return anyio.run(go)

    ours_rates, base_rates = [], []
    for _ in range(repeats):
        base_rates.append(baseline())
        ours_rates.append(ours())
    fstore.close()
    qstore.close()
    shutil.rmtree(root)
    return Row(
        f"sync shim: {count:,} × 4 KiB saves, one after another",
        "files/s",
        ours_rates,
        "the same through the async API",
        base_rates,
        None,
    )


PARTS = (
    "http",
    "small_http",
    "large",
    "small",
    "guarantees",
    "shim",
    "s3",
    "s3_backends",
    "peers",
    "load",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--out", type=Path, help="default: bench/results/latest.md")
    parser.add_argument(
        "--only",
        type=lambda text: text.split(","),
        default=list(PARTS),
        help=f"comma-separated parts to run, of {','.join(PARTS)} (default: all); a partial run "
        "writes its report only with an explicit --out",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (default 3)")
    parser.add_argument("--count", type=int, help="small files per run (default 10,000)")
    args = parser.parse_args()
    unknown = set(args.only) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}: choose from {','.join(PARTS)}")
    partial = set(args.only) != set(PARTS)
    write = not partial or args.out is not None
    args.out = args.out or HERE / "results" / "latest.md"
    quick = args.quick
    repeats = args.repeats
    large = 16 * MIB if quick else 256 * MIB
    count = args.count or (200 if quick else 10_000)
    s3_large = 16 * MIB if quick else 512 * MIB
    s3_small = 50 if quick else 1_000
    http_sizes = [16 * MIB, 64 * MIB] if quick else [256 * MIB, 1024 * MIB]
    small_http = 200 if quick else 2_000  # 4 KiB uploads through hypercorn per run
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    sections: list[str] = []

    def add(*new: Row) -> None:
        for row in new:
            rows.append(row)
            print(
                f"{row.figure}: {fmt(row.ours)} vs {row.baseline_name}: {fmt(row.baseline)} "
                f"{row.unit}, {row.ratio:.2f}×",
                flush=True,
            )

    with tempfile.TemporaryDirectory(prefix="async_store-bench-", dir="/tmp") as tmp:
        work = Path(tmp)
        if "http" in args.only:
            http_rows, http_table = bench_http(work, http_sizes, repeats)
            add(*http_rows)
            sections += [*http_table, ""]
        if "small_http" in args.only:
            small_http_rows, small_http_table = bench_small_http(work, small_http, repeats)
            add(*small_http_rows)
            sections += small_http_table
        if "large" in args.only:
            add(bench_large_local(work, large, repeats))
        if "small" in args.only:
            add(*bench_small(count, repeats))
        if "guarantees" in args.only:
            add(local_small.row(count, 64, local_small.DEFAULT_DIR, repeats))
        if "shim" in args.only:
            add(bench_shim(work, max(count // 10, 1), repeats))
        if "s3" in args.only:
            add(*bench_s3(work, s3_large, s3_small, repeats, quick))
        if "s3_backends" in args.only:
            backends_large = 16 if quick else 256
            results = s3_backends.measure(backends_large, s3_small, repeats)
            add(*s3_backends.rows(results, backends_large, s3_small))
        if "peers" in args.only:
            peer_rows, peer_notes = bench_peers(work, repeats, quick)
            add(*peer_rows)
            sections += ["### Peers that cannot run here", "", *(f"- {n}" for n in peer_notes)]
            sections.append("")
        if "load" in args.only:
            load_rows, load_table = bench_load(work, quick)
            add(*load_rows)
            sections += load_table
    if write:
        write_report(rows, repeats, args.out, sections)
        print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
