"""async_store benchmarks: every figure a ratio against a baseline measured in the same run.

``make bench`` runs it; ``python -m bench.run --quick`` is a small smoke run. It writes
``bench/results/latest.md`` (figure, baseline, ratio, target, met?) and ``latest.png``.
Each measurement is repeated (median, with the range), because 2-core machines are noisy.

Measured: large multipart uploads through hypercorn (``bench/http.py``), direct saves against
``shutil.copyfileobj``, many small files against plain blocking writes, the sync shim against
the async API, S3 on a SeaweedFS the run starts on 127.0.0.1 against raw aioboto3, background
latency (``bench/s3.py``), and the peers on the same work (``bench/peers.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import quart

from async_store import Store

from .http import bench_http
from .peers import bench_peers
from .report import Row, write_report
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
    source = work / "source.bin"
    with open(source, "wb") as f:
        for _ in range(size // MIB):
            f.write(os.urandom(MIB))
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


def bench_small_local(work: Path, count: int, concurrency: int, repeats: int) -> Row:
    payload = os.urandom(4096)
    app, store = local_store(work / f"small-{concurrency}")

    def ours() -> float:
        async def go() -> float:
            limiter = anyio.Semaphore(concurrency)

            async def one(i: int) -> None:
                async with limiter:
                    await store.Provider(payload, filename=f"f{i}.bin").save()

            async with app.app_context():
                start = time.perf_counter()
                async with anyio.create_task_group() as tg:
                    for i in range(count):
                        tg.start_soon(one, i)
                return count / (time.perf_counter() - start)

        rate = anyio.run(go)
        shutil.rmtree(work / f"small-{concurrency}")
        os.makedirs(work / f"small-{concurrency}")
        return rate

    def baseline() -> float:
        folder = work / "plain"
        folder.mkdir(exist_ok=True)
        start = time.perf_counter()
        for i in range(count):
            with open(folder / f"f{i}.bin", "wb") as f:
                f.write(payload)
        rate = count / (time.perf_counter() - start)
        shutil.rmtree(folder)
        return rate

    ours_rates, base_rates = [], []
    for _ in range(repeats):
        base_rates.append(baseline())
        ours_rates.append(ours())
    store.close()
    return Row(
        f"{count:,} × 4 KiB saves at concurrency {concurrency} (local)",
        "files/s",
        ours_rates,
        "plain sync open/write/close",
        base_rates,
        0.7 if concurrency > 1 else None,
    )


def bench_shim(work: Path, count: int, repeats: int) -> Row:
    import flask

    payload = os.urandom(4096)
    fapp = flask.Flask(__name__)
    fapp.config["STORE_PATH"] = str(work / "shim")
    fstore = Store(fapp)
    qapp, qstore = local_store(work / "direct")

    def ours() -> float:
        with fapp.app_context():
            start = time.perf_counter()
            for i in range(count):
                fstore.Provider(payload, filename=f"f{i}.bin").save()
            return count / (time.perf_counter() - start)

    def baseline() -> float:
        async def go() -> float:
            async with qapp.app_context():
                start = time.perf_counter()
                for i in range(count):
                    await qstore.Provider(payload, filename=f"f{i}.bin").save()
                return count / (time.perf_counter() - start)

        return anyio.run(go)

    ours_rates, base_rates = [], []
    for _ in range(repeats):
        base_rates.append(baseline())
        ours_rates.append(ours())
        for folder in ("shim", "direct"):
            shutil.rmtree(work / folder)
            os.makedirs(work / folder)
    fstore.close()
    qstore.close()
    return Row(
        f"sync shim: {count:,} × 4 KiB saves, one after another",
        "files/s",
        ours_rates,
        "the same through the async API",
        base_rates,
        None,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "latest.md")
    args = parser.parse_args()
    quick = args.quick
    repeats = 3
    large = 16 * MIB if quick else 256 * MIB
    count = 200 if quick else 10_000
    s3_large = 16 * MIB if quick else 512 * MIB
    s3_small = 50 if quick else 1_000
    http_sizes = [16 * MIB, 64 * MIB] if quick else [256 * MIB, 1024 * MIB]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    sections: list[str] = []

    def add(*new: Row) -> None:
        for row in new:
            rows.append(row)
            print(row.figure, "vs", row.baseline_name, f"{row.ratio:.2f}", flush=True)

    with tempfile.TemporaryDirectory(prefix="async_store-bench-", dir="/tmp") as tmp:
        work = Path(tmp)
        http_rows, http_table = bench_http(work, http_sizes, repeats)
        add(*http_rows)
        sections += [*http_table, ""]
        add(bench_large_local(work, large, repeats))
        for concurrency in (1, 64):
            add(bench_small_local(work, count, concurrency, repeats))
        add(bench_shim(work, count // 10, repeats))
        add(*bench_s3(work, s3_large, s3_small, repeats, quick))
        peer_rows, peer_notes = bench_peers(work, repeats, quick)
        add(*peer_rows)
        sections += ["### Peers that cannot run here", "", *(f"- {n}" for n in peer_notes), ""]
    write_report(rows, repeats, args.out, sections)
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
