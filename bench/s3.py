"""S3 benchmarks on a SeaweedFS the run starts on 127.0.0.1: Provider.save() vs raw aioboto3."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import quart

from async_store import Store

from .report import Row

HERE = Path(__file__).parent
MIB = 1024 * 1024


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
