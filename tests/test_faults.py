"""Faults on a bad day, for real: a full disk (a small tmpfs), permission denied (a process that
dropped root), S3 down (nothing listening), resets, 5xx and 403 from the fault proxy.

Each must give a clear error that names the problem and the file, leave nothing partial (no temp
file, no half object, no unfinished multipart upload, no spooled job or name reservation of a
failed save), and background uploads must stay spooled and be delivered once S3 is back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
import pytest
import quart

from async_store import ProviderError, ProviderUnavailableError, Store
from tests.conftest import s3_app, s3_client, unavailable
from tests.faultproxy import FaultProxy
from tests.seaweed import SeaweedFS

MIB = 1024 * 1024
ROOT = Path(__file__).parent.parent
SMALL_PARTS = {"STORE_S3_MULTIPART_THRESHOLD": 5 * MIB, "STORE_S3_PART_SIZE": 5 * MIB}
FAST = {"STORE_BACKGROUND_BACKOFF": 0.05, "STORE_BACKGROUND_MAX_BACKOFF": 0.2}

# Saves one file in a fresh process (in a tmpfs namespace, or as nobody) and reports, as JSON,
# the error and what the folders hold afterwards: the parent cannot see into either.
CHILD = """
import json, os, sys
import anyio, quart
from async_store import Store
import anyio._backends._asyncio, async_store.providers.local, async_store._background

args = json.loads(sys.argv[1])
if args.get("drop"):  # root no more: the interpreter's own files stay readable, imported
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
app = quart.Quart("child")
app.config.update(args["config"])
result = {}
try:
    store = Store(app)
except Exception as exc:
    result["error"] = [type(exc).__name__, str(exc)]
else:
    async def main():
        async with app.app_context():
            data = os.urandom(args["size"])
            provider = store.Provider(data, args["location"], filename="big.bin")
            try:
                await provider.save()
            except Exception as exc:
                result["error"] = [type(exc).__name__, str(exc)]
    anyio.run(main)
result["files"] = {
    folder: sorted(
        os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs
    )
    for folder in args["look"] if os.path.isdir(folder)
}
print(json.dumps(result))
"""


def run_child(args: dict[str, Any], prefix: list[str], **popen: Any) -> dict[str, Any]:
    done = subprocess.run(
        [*prefix, sys.executable, "-c", CHILD, json.dumps(args)],
        capture_output=True,
        cwd=ROOT,
        timeout=60,
        **popen,
    )
    if done.returncode != 0:
        raise AssertionError(done.stderr.decode(errors="replace")[-3000:])
    return dict(json.loads(done.stdout.decode().strip().splitlines()[-1]))


def in_small_tmpfs(folder: Path) -> list[str]:
    """A command prefix that runs the rest in a mount namespace with a 2 MiB tmpfs on ``folder``."""
    folder.mkdir()
    unshare = shutil.which("unshare")
    probe = [
        unshare or "unshare",
        "--mount",
        "--map-root-user",
        "mount",
        "-t",
        "tmpfs",
        "x",
        "/mnt",
    ]
    if unshare is None or subprocess.run(probe, capture_output=True).returncode != 0:
        unavailable("a tmpfs for the full-disk test needs unshare(1) with user namespaces")
    script = 'mount -t tmpfs -o size=2m tmpfs "$0" && exec "$@"'
    return [unshare, "--mount", "--map-root-user", "sh", "-c", script, str(folder)]


@pytest.mark.parametrize("mode", ["direct", "background"])
def test_full_disk_names_the_problem_and_leaves_nothing(tmp_path: Path, mode: str) -> None:
    disk = tmp_path / "disk"
    prefix = in_small_tmpfs(disk)
    store, spool = disk / "store", disk / "spool"
    config: dict[str, Any] = {"STORE_PATH": str(store if mode == "direct" else tmp_path / "s")}
    if mode == "background":
        config.update(STORE_BACKGROUND=True, STORE_SPOOL_PATH=str(spool))
    report = run_child(
        {
            "config": config,
            "size": 3 * MIB,
            "location": "",
            "look": [str(disk), config["STORE_PATH"]],
        },
        prefix,
    )
    kind, message = report["error"]
    assert kind == "ProviderError", report
    assert "disk is full" in message and "big.bin" in message, message
    # Nothing left: no temp file in the store, no half-spooled job, no name reservation.
    assert report["files"].get(str(disk)) == [], report


@pytest.fixture
def open_tmp() -> Any:
    """A temp folder that other users may enter (pytest's own is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="async_store-faults-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("where", ["store", "location", "spool"])
def test_permission_denied_names_the_path(open_tmp: Path, where: str) -> None:
    tmp_path = open_tmp
    store = tmp_path / "store"
    (store / "sub").mkdir(parents=True)
    spool = tmp_path / "spool"
    spool.mkdir()
    for folder in (tmp_path, store, store / "sub", spool):
        folder.chmod(0o755)  # and owned by root: nobody may read but not write
    config: dict[str, Any] = {"STORE_PATH": str(store)}
    if where == "spool":
        config.update(STORE_BACKGROUND=True, STORE_SPOOL_PATH=str(spool))
    drop = os.getuid() == 0
    if not drop:  # already unprivileged: folders we cannot write
        for folder in (store, store / "sub", spool):
            folder.chmod(0o555)
    if where != "store":
        store.chmod(0o777)
    location = "sub" if where == "location" else ""
    args = {"config": config, "size": 1000, "location": location, "look": [str(store)]}
    report = run_child({**args, "drop": drop}, [])
    kind, message = report["error"]
    if where == "spool":
        # Refused at init_app, naming the key, rather than at the first upload.
        assert kind == "NotConfiguredError" and "STORE_SPOOL_PATH" in message, report
    elif where == "store":
        assert kind == "NotConfiguredError" and "STORE_PATH" in message, report
    else:
        assert kind == "ProviderError", report
        assert "permission denied" in message and "sub/big.bin" in message, message
        assert str(store) in message, message
    assert report["files"][str(store)] == []


# --- S3: down, reset, 5xx, 403; direct and background ---------------------------------------


def proxied_app(server: SeaweedFS, bucket: str, proxy: FaultProxy, **config: Any) -> quart.Quart:
    return s3_app(
        server,
        bucket,
        STORE_S3_ENDPOINT_URL=proxy.endpoint,
        STORE_S3_MAX_ATTEMPTS=2,
        STORE_S3_CONNECT_TIMEOUT=2,
        **SMALL_PARTS,
        **config,
    )


def bucket_state(server: SeaweedFS, bucket: str) -> tuple[dict[str, bytes], list[str]]:
    """Objects ({key: bytes}) and unfinished multipart uploads."""
    client = s3_client(server)
    found = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    objects = {
        o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in found
    }
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return objects, [u["Key"] for u in uploads]


FAULTS = {
    "down": ("cannot reach the S3 endpoint", "connect", "STORE_S3_ENDPOINT_URL"),
    "reset": ("connection reset", "a.bin"),
    "500": ("InternalError", "a.bin"),
    "403": ("access denied", "STORE_S3_SECRET_KEY"),
}


# What a failed delivery records in its job (a reset may also come as "connection closed").
LAST_ERROR = {
    "down": "cannot reach the s3 endpoint",
    "reset": "connection",
    "500": "internalerror",
    "403": "access denied",
}


def inject(proxy: FaultProxy, fault: str) -> None:
    if fault == "down":
        proxy.down()
    elif fault == "reset":
        proxy.reset_after = (lambda r: r.method == "PUT", 64 * 1024)
    else:
        proxy.fail_with = (lambda r: r.method in ("PUT", "POST"), int(fault))


def heal(proxy: FaultProxy, fault: str) -> None:
    if fault == "down":
        proxy.up()
    proxy.clear()


@pytest.mark.parametrize("size", [100_000, 12 * MIB])
@pytest.mark.parametrize("fault", list(FAULTS))
async def test_s3_fault_gives_a_clear_error_and_leaves_nothing(
    s3_server: SeaweedFS, bucket: str, proxy: FaultProxy, fault: str, size: int
) -> None:
    app = proxied_app(s3_server, bucket, proxy)
    store = Store(app)
    async with app.test_app(), app.app_context():
        await store.Provider(b"first", filename="ok.txt").save()
        inject(proxy, fault)
        with pytest.raises(ProviderError) as info:
            await store.Provider(os.urandom(size), filename="a.bin").save()
        heal(proxy, fault)
    message = str(info.value).lower()
    for needle in FAULTS[fault]:
        assert needle.lower() in message, message
    # Down, reset or a 5xx: down for now (background mode spools then); a 403 is for good.
    assert isinstance(info.value, ProviderUnavailableError) is (fault != "403"), info.value
    objects, uploads = bucket_state(s3_server, bucket)
    assert objects == {"media/ok.txt": b"first"}
    assert uploads == []


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_background_uploads_wait_out_an_outage_and_arrive_once(
    s3_server: SeaweedFS, bucket: str, proxy: FaultProxy, tmp_path: Path, fault: str
) -> None:
    """S3 fails for longer than every retry: the uploads stay spooled, and once it is back the
    running server delivers them, each once, without a restart."""
    spool = tmp_path / "spool"
    app = proxied_app(
        s3_server,
        bucket,
        proxy,
        STORE_BACKGROUND=True,
        STORE_SPOOL_PATH=str(spool),
        STORE_BACKGROUND_RETRIES=2,
        **FAST,
    )
    store = Store(app)
    files = {"small.txt": b"s" * 1000, "large.bin": os.urandom(12 * MIB)}
    async with app.test_app(), app.app_context():
        inject(proxy, fault)
        providers = [store.Provider(data, filename=name) for name, data in files.items()]
        for provider in providers:
            await provider.save()
        for provider in providers:  # every retry spent: failed for now, still spooled
            with anyio.fail_after(30), pytest.raises(Exception, match="stays spooled"):
                await provider.wait()
        jobs = [p for p in spool.iterdir() if p.name != "names" and not p.name.startswith(".")]
        assert len(jobs) == len(files)
        last = json.loads((jobs[0] / "job.json").read_text())["last_error"]
        assert LAST_ERROR[fault] in last.lower(), last
        objects, _ = bucket_state(s3_server, bucket)  # (the next attempt may be under way)
        assert objects == {}
        heal(proxy, fault)
        with anyio.fail_after(30):
            while [p for p in spool.iterdir() if p.name != "names" and not p.name.startswith(".")]:
                await anyio.sleep(0.05)
    objects, uploads = bucket_state(s3_server, bucket)
    # With S3 down even the name check failed: those were spooled under {root}_{shortuuid}.
    assert objects == {
        f"media/{p.relative_path}": data for p, data in zip(providers, files.values(), strict=True)
    }
    if fault != "down":
        assert sorted(p.filename for p in providers) == sorted(files)
    assert uploads == []
    assert os.listdir(spool / "names") == []
