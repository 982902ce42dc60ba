"""async_store benchmarks: every figure a ratio against a baseline measured in the same run.

``make bench`` runs it; ``python -m bench.run --quick`` is a small smoke run. It writes
``bench/results/latest.md`` (figure, baseline, ratio, target, met?) and ``latest.png``.
Each measurement is repeated (median, with the range), because 2-core machines are noisy.

Measured so far: direct saves against ``shutil.copyfileobj``, many small files against plain
blocking writes, the sync shim against the async API, and S3 (a SeaweedFS the run starts on
127.0.0.1) against raw aioboto3. Large uploads through hypercorn and the peers come next.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import quart

from async_store import Store

from .report import Row, write_report

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


# --- S3 -------------------------------------------------------------------------------------


def bench_s3(work: Path, size: int, small: int, repeats: int) -> list[Row]:
    sys.path.insert(0, str(HERE.parent))
    from tests.conftest import S3_CREDENTIALS, s3_client, s3_config
    from tests.seaweed import SeaweedFS, find_weed

    weed = find_weed()
    if weed is None:
        return []
    server = SeaweedFS(work / "seaweed", weed)
    server.start()
    try:
        client = s3_client(server)
        client.create_bucket(Bucket="bench")
        source = work / "s3-source.bin"
        with open(source, "wb") as f:
            for _ in range(size // MIB):
                f.write(os.urandom(MIB))
        app = quart.Quart(__name__)
        app.config.update(s3_config(server, "bench", STORE_PATH="ours"))
        store = Store(app)

        async def with_serving(body: Callable[[], Awaitable[float]]) -> float:
            async with app.test_app(), app.app_context():  # a long-lived client, as in serving
                return await body()

        def ours_large() -> float:
            async def body() -> float:
                start = time.perf_counter()
                await store.Provider(source).save()
                elapsed = time.perf_counter() - start
                await store.Provider(f"{source.name}").delete()
                return size / MIB / elapsed

            return anyio.run(with_serving, body)

        def raw_large() -> float:
            import aioboto3
            from aiobotocore.config import AioConfig

            async def go() -> float:
                session = aioboto3.Session(
                    aws_access_key_id=S3_CREDENTIALS["STORE_S3_ACCESS_KEY"],
                    aws_secret_access_key=S3_CREDENTIALS["STORE_S3_SECRET_KEY"],
                    region_name="us-east-1",
                )
                async with session.client(
                    "s3",
                    endpoint_url=server.endpoint,
                    config=AioConfig(s3={"addressing_style": "path"}),
                ) as s3:
                    start = time.perf_counter()
                    with open(source, "rb") as f:
                        await s3.upload_fileobj(f, "bench", "raw/source.bin")
                    elapsed = time.perf_counter() - start
                    await s3.delete_object(Bucket="bench", Key="raw/source.bin")
                    return size / MIB / elapsed

            return anyio.run(go)

        rows = []
        ours_rates, base_rates = [], []
        for _ in range(repeats):
            base_rates.append(raw_large())
            ours_rates.append(ours_large())
        rows.append(
            Row(
                f"S3 Provider.save() of {size // MIB} MiB (SeaweedFS, loopback)",
                "MiB/s",
                ours_rates,
                "raw aioboto3 upload_fileobj",
                base_rates,
                0.9,
            )
        )

        payload = os.urandom(4096)
        for concurrency in (1, 32):

            def ours_small(c: int = concurrency) -> float:
                async def body() -> float:
                    limiter = anyio.Semaphore(c)

                    async def one(i: int) -> None:
                        async with limiter:
                            await store.Provider(payload, f"s{c}", filename=f"{i}.bin").save()

                    start = time.perf_counter()
                    async with anyio.create_task_group() as tg:
                        for i in range(small):
                            tg.start_soon(one, i)
                    return small / (time.perf_counter() - start)

                return anyio.run(with_serving, body)

            def raw_small(c: int = concurrency) -> float:
                import aioboto3
                from aiobotocore.config import AioConfig

                async def go() -> float:
                    session = aioboto3.Session(
                        aws_access_key_id=S3_CREDENTIALS["STORE_S3_ACCESS_KEY"],
                        aws_secret_access_key=S3_CREDENTIALS["STORE_S3_SECRET_KEY"],
                        region_name="us-east-1",
                    )
                    config = AioConfig(
                        s3={"addressing_style": "path"}, max_pool_connections=max(10, c)
                    )
                    async with session.client(
                        "s3", endpoint_url=server.endpoint, config=config
                    ) as s3:
                        limiter = anyio.Semaphore(c)

                        async def one(i: int) -> None:
                            async with limiter:
                                await s3.put_object(
                                    Bucket="bench", Key=f"raw{c}/{i}.bin", Body=payload
                                )

                        start = time.perf_counter()
                        async with anyio.create_task_group() as tg:
                            for i in range(small):
                                tg.start_soon(one, i)
                        return small / (time.perf_counter() - start)

                return anyio.run(go)

            ours_rates, base_rates = [], []
            for _ in range(repeats):
                base_rates.append(raw_small())
                ours_rates.append(ours_small())
                _empty_bucket(client)
            rows.append(
                Row(
                    f"S3 {small:,} × 4 KiB saves at concurrency {concurrency}",
                    "files/s",
                    ours_rates,
                    "raw aioboto3 put_object",
                    base_rates,
                    0.9,
                )
            )
        store.close()
        return rows
    finally:
        server.stop()


def _empty_bucket(client: Any) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="bench"):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket="bench", Delete={"Objects": keys})


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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="async_store-bench-", dir="/tmp") as tmp:
        work = Path(tmp)
        rows = [bench_large_local(work, large, repeats)]
        print(rows[-1].figure, f"{rows[-1].ratio:.2f}", flush=True)
        for concurrency in (1, 64):
            rows.append(bench_small_local(work, count, concurrency, repeats))
            print(rows[-1].figure, f"{rows[-1].ratio:.2f}", flush=True)
        rows.append(bench_shim(work, count // 10, repeats))
        print(rows[-1].figure, f"{rows[-1].ratio:.2f}", flush=True)
        for row in bench_s3(work, s3_large, s3_small, repeats):
            rows.append(row)
            print(row.figure, f"{row.ratio:.2f}", flush=True)
    write_report(rows, repeats, args.out)
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
