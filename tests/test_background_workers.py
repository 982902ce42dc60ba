"""Several workers sharing one spool, each a process of its own: a job is delivered by one of
them at a time, and the worker that spooled it learns how it ended, wherever that was.

The second worker is ``python -m async_store --app worker drain`` for the same store; each tags
what it writes (``x-amz-meta-worker``), so the fault proxy sees who sent each request.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import quart

from async_store import AsyncStore, Store, UploadError
from tests.conftest import s3_client, s3_config
from tests.faultproxy import FaultProxy, Recorded
from tests.seaweed import SeaweedFS

ROOT = Path(__file__).parent.parent
#: Worker A's attempt at slow.txt fails (until the test heals S3), and it then holds that job
#: for a 30 s backoff (never reached: shutdown ends it), with no rescan either: all it does
#: meanwhile is watch.
HOLD = {
    "STORE_BACKGROUND_CONCURRENCY": 1,
    "STORE_BACKGROUND_BACKOFF": 30,
    "STORE_BACKGROUND_MAX_BACKOFF": 60,
    "STORE_BACKGROUND_DRAIN_TIMEOUT": 1,
}


def config(server: SeaweedFS, bucket: str, proxy: FaultProxy, spool: Path, worker: str) -> Any:
    return s3_config(
        server,
        bucket,
        STORE_PATH="media",
        STORE_S3_ENDPOINT_URL=proxy.endpoint,
        STORE_S3_MAX_ATTEMPTS=1,
        STORE_BACKGROUND=True,
        STORE_SPOOL_PATH=str(spool),
        STORE_S3_OBJECT_PARAMS={"Metadata": {"worker": worker}},
    )


WORKER_APP = """
import json, os
import quart
from async_store import Store

app = quart.Quart(__name__)
app.config.update(json.loads(os.environ["WORKER_CONFIG"]))
store = Store(app)
"""


@contextmanager
def drain_process(settings: dict[str, Any], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m async_store --app worker drain``: a worker of the same store (``settings``),
    in its own process."""
    (log.parent / "worker.py").write_text(WORKER_APP)
    env = {**os.environ, "WORKER_CONFIG": json.dumps(settings), "PYTHONPATH": str(ROOT)}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "async_store", "--app", "worker", "drain"],
            cwd=log.parent,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def puts(proxy: FaultProxy, name: str, worker: str | None = None) -> list[Recorded]:
    return [
        r
        for r in proxy.requests
        if r.method == "PUT"
        and r.path.endswith(f"/{name}")
        and worker in (None, r.headers.get("x-amz-meta-worker"))
    ]


async def until(what: str, check: Any, timeout: float = 20) -> None:
    with anyio.fail_after(timeout):
        while not check():
            await anyio.sleep(0.05)


async def hold_the_slot(store: AsyncStore, proxy: FaultProxy) -> None:
    """Worker A's one delivery slot is taken by slow.txt, waiting out its backoff."""
    proxy.fail_with = (lambda r: r.method == "PUT" and r.path.endswith("/slow.txt"), 500)
    await store.Provider(b"slow", filename="slow.txt").save()
    await until("the first attempt at slow.txt", lambda: puts(proxy, "slow.txt"))


async def test_the_spooling_worker_follows_what_another_worker_does_with_its_jobs(
    s3_server: SeaweedFS, bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    app = quart.Quart(__name__)
    app.config.update(config(s3_server, bucket, proxy, spool, "a"), **HOLD)
    store = Store(app)
    log = tmp_path / "drain.log"
    with contextlib.ExitStack() as stack:
        async with app.test_app(), app.app_context():
            await hold_the_slot(store, proxy)
            proxy.delay = (lambda r: r.method == "PUT" and r.path.endswith("/gone.txt"), 3.0)
            queued = {
                name: store.Provider(name.encode(), filename=name)
                for name in ("landed.txt", "taken.txt", "gone.txt")
            }
            for provider in queued.values():
                await provider.save()
            assert all(p.status == "pending" for p in queued.values())
            # Someone else stores taken.txt, with other content, before it is delivered.
            s3_client(s3_server).put_object(Bucket=bucket, Key="media/taken.txt", Body=b"theirs")
            b = config(s3_server, bucket, proxy, spool, "b")
            worker = stack.enter_context(drain_process(b, log))
            # Worker B delivers the queued jobs; gone.txt is deleted while B is sending it.
            await until("B to send gone.txt", lambda: puts(proxy, "gone.txt", "b"))
            await queued["gone.txt"].delete()
            with anyio.fail_after(20):
                await queued["landed.txt"].wait()
                with pytest.raises(UploadError, match="taken by another file"):
                    await queued["taken.txt"].wait()
                while queued["gone.txt"].status == "pending":
                    await anyio.sleep(0.05)
            assert {n: p.status for n, p in queued.items()} == {
                "landed.txt": "delivered",
                "taken.txt": "failed",
                "gone.txt": "discarded",
            }
            proxy.clear()
        # A stopped: B delivers slow.txt too, then names the one it could not deliver.
        await anyio.to_thread.run_sync(worker.wait, 60)
    output = log.read_text()
    assert worker.returncode == 1, output
    assert "not delivered: taken.txt" in output
    client = s3_client(s3_server)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert sorted(keys) == ["media/landed.txt", "media/slow.txt", "media/taken.txt"]
    assert len(puts(proxy, "landed.txt")) == 1  # delivered once, by B


async def test_a_job_waiting_out_its_backoff_is_not_delivered_by_another_worker(
    s3_server: SeaweedFS, bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    """A failed attempt rewrites job.json; the lock must still exclude a second worker."""
    spool = tmp_path / "spool"
    app = quart.Quart(__name__)
    app.config.update(config(s3_server, bucket, proxy, spool, "a"), **HOLD)
    store = Store(app)
    log = tmp_path / "drain.log"
    with contextlib.ExitStack() as stack:
        async with app.test_app(), app.app_context():
            await hold_the_slot(store, proxy)
            (job,) = [p for p in spool.iterdir() if p.name[0] != "." and p.name != "names"]
            await until("the attempt in job.json", lambda: b'"attempts": 1' in job_json(job))
            proxy.clear()
            b = config(s3_server, bucket, proxy, spool, "b")
            worker = stack.enter_context(drain_process(b, log))
            await until("B to start draining", lambda: "1 uploads" in log.read_text(), 30)
            await anyio.sleep(1)  # time B would need to deliver it, were it not locked
            assert puts(proxy, "slow.txt", "b") == []
        # A let go of the job at shutdown (left spooled): now B delivers it, once.
        await anyio.to_thread.run_sync(worker.wait, 60)
    assert worker.returncode == 0, log.read_text()
    assert len(puts(proxy, "slow.txt", "b")) == 1
    head = s3_client(s3_server).head_object(Bucket=bucket, Key="media/slow.txt")
    assert head["Metadata"] == {"worker": "b"}


def job_json(job: Path) -> bytes:
    try:
        return (job / "job.json").read_bytes()
    except FileNotFoundError:  # being replaced
        return b""
