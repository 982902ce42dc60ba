"""Which spooled jobs an app delivers: those bound for its destination (provider kind, bucket,
key prefix), however the backend is reached; ``drain`` and ``check`` name the others."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import anyio
import pytest

from async_store import Store
from tests.conftest import make_app, spool_undeliverable
from tests.faultproxy import FaultProxy
from tests.seaweed import SeaweedFS
from tests.test_background import objects, s3_app, spool_undelivered, spooled


def as_an_earlier_version_spooled_it(spool: Path, bucket: str, endpoint: str) -> None:
    """Rewrite the spooled job as versions before 0.x wrote it: the target ends with the
    endpoint, no owner, and an empty name reservation under that target."""
    (job_id,) = spooled(spool)
    path = spool / job_id / "job.json"
    job = json.loads(path.read_text())
    old = f"async_store.providers.s3.S3Provider:media:{bucket}:{endpoint}"
    job["target"] = old
    job.pop("owner", None)
    path.write_text(json.dumps(job))
    for name in (spool / "names").iterdir():
        name.unlink()
    digest = hashlib.sha256(f"{old}\0{job['name']}".encode()).hexdigest()
    (spool / "names" / digest).write_bytes(b"")


@pytest.mark.parametrize("spooled_by", ["this version", "an earlier version"])
async def test_uploads_spooled_before_the_endpoint_was_respelt_are_delivered(
    s3_server: SeaweedFS, bucket: str, proxy: FaultProxy, tmp_path: Path, spooled_by: str
) -> None:
    spool = tmp_path / "spool"
    await spool_undelivered(s3_server, bucket, spool, proxy, {"a.txt": b"kept"})
    if spooled_by == "an earlier version":
        as_an_earlier_version_spooled_it(spool, bucket, proxy.endpoint)
    # Restarted with the same server spelt otherwise: localhost for 127.0.0.1.
    respelt = proxy.endpoint.replace("127.0.0.1", "localhost")
    app = s3_app("quart", s3_server, bucket, spool, respelt)
    store = Store(app)
    async with app.test_app(), app.app_context():
        with anyio.fail_after(20):
            while spooled(spool):
                await anyio.sleep(0.05)
        # Its name is reserved no more: a new save of it is told the bucket has it.
        again = store.Provider(b"new", filename="a.txt")
        await again.save()
        assert again.filename != "a.txt"
        await again.wait()
    puts = [r for r in proxy.requests if r.method == "PUT" and r.path.endswith("/a.txt")]
    assert [r.headers["host"].split(":")[0] for r in puts] == ["localhost"]
    assert objects(s3_server, bucket)["media/a.txt"] == b"kept"
    assert list((spool / "names").iterdir()) == []


@pytest.mark.parametrize("command", ["drain", "check"])
def test_drain_and_check_name_the_uploads_spooled_for_another_store(
    tmp_path: Path, command: str
) -> None:
    old = tmp_path / "old"
    _, config = spool_undeliverable(tmp_path, 3, old)
    # The app now stores elsewhere (STORE_PATH moved), with the same spool.
    app = make_app("quart", tmp_path / "new", **config)
    store = Store(app)
    try:
        result = app.test_cli_runner().invoke(args=["store", command])
    finally:
        store.close()
    assert result.exit_code == 1, result.output
    assert "3 spooled uploads" in result.output and "for another store" in result.output
    shown = rf"path={re.escape(str(old))}: docs/0.bin \(job [^)]+\), docs/1.bin .*, docs/2.bin"
    assert re.search(shown, result.output), result.output
    if command == "check":
        assert "spool    FAILED" in result.output and "fix:" in result.output
    else:
        assert "delivered 0 of 0 spooled uploads" in result.output
        assert "fix: deliver them with the store they were spooled for" in result.output
    assert len(spooled(Path(str(config["STORE_SPOOL_PATH"])))) == 3  # kept, not lost
    assert not (tmp_path / "new" / "docs").exists()


async def test_uploads_spooled_for_another_key_prefix_are_not_delivered_here(
    s3_server: SeaweedFS, bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    """The destination still counts: only how it is reached may differ."""
    spool = tmp_path / "spool"
    await spool_undelivered(s3_server, bucket, spool, proxy, {"a.txt": b"theirs"})
    other = s3_app("quart", s3_server, bucket, spool, proxy.endpoint)
    other.config["STORE_PATH"] = "elsewhere"
    Store(other)
    async with other.test_app():
        await anyio.sleep(0.5)  # several scans (STORE_BACKGROUND_MAX_BACKOFF 0.1)
    assert len(spooled(spool)) == 1
    assert objects(s3_server, bucket) == {}
