"""tus uploads into S3 in parts as they fill: the local folder keeps only the tail.

The real tuspy client against real servers and the suite's SeaweedFS (helpers of
``tests/test_tus.py``); parts of 5 MiB, S3's smallest.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx
import pytest
from tusclient import client as tus_client

from tests.conftest import s3_client, s3_config
from tests.faultproxy import FaultProxy
from tests.seaweed import SeaweedFS
from tests.test_cli import invoke
from tests.test_tus import MIB, V, b64, kind, serving, source_file, tuspy_upload

__all__ = ["kind"]  # the fixture, shared

PART = 5 * MIB


def config_for(server: SeaweedFS, bucket: str) -> dict[str, Any]:
    return s3_config(
        server,
        bucket,
        STORE_PATH="media",
        STORE_S3_PART_SIZE=PART,
        STORE_S3_MULTIPART_THRESHOLD=PART,
    )


def objects(server: SeaweedFS, bucket: str) -> dict[str, bytes]:
    s3 = s3_client(server)
    listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def local_bytes(folder: Path) -> int:
    """What the tus folder holds of uploads' bytes now."""
    return sum(p.stat().st_size for p in folder.rglob("data*") if p.is_file())


async def create(client: httpx.AsyncClient, endpoint: Any, length: Any, name: str) -> Any:
    """A tus creation request for a file of ``length`` bytes called ``name``."""
    return await client.post(
        endpoint.url,
        headers={**V, "Upload-Length": str(length), "Upload-Metadata": f"filename {b64(name)}"},
    )


async def patch(client: httpx.AsyncClient, location: str, data: bytes) -> Any:
    """All of ``data`` at offset 0 of the upload at ``location``."""
    return await client.patch(
        location,
        content=data,
        headers={**V, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
    )


async def test_a_large_upload_goes_up_in_parts_and_keeps_only_the_tail(
    kind: str, tmp_path: Path, free_tcp_port: int, s3_server: SeaweedFS, bucket: str
) -> None:
    path, data = source_file(tmp_path, 3 * PART + 123)
    async with serving(
        kind, tmp_path, free_tcp_port, config=config_for(s3_server, bucket), location="tus"
    ) as endpoint:
        seen: list[int] = []
        with open(path, "rb") as stream:
            uploader = tus_client.TusClient(endpoint.url).uploader(
                file_stream=stream, chunk_size=MIB, metadata={"filename": "Data set.bin"}
            )
            while uploader.offset < len(data):
                await anyio.to_thread.run_sync(uploader.upload_chunk)
                seen.append(local_bytes(endpoint.tus_path))
        [(provider, _)] = endpoint.completed
    # Never more than a part (and the chunk that filled it) on local disk.
    assert max(seen) < PART + MIB
    assert provider.relative_path == "tus/Data_set.bin"
    assert uploader.request is not None
    assert uploader.request.response_headers["upload-stored-path"] == "tus/Data_set.bin"
    stored = objects(s3_server, bucket)
    assert list(stored) == ["media/tus/Data_set.bin"]  # the staged object went
    assert (
        hashlib.sha256(stored["media/tus/Data_set.bin"]).digest() == hashlib.sha256(data).digest()
    )
    assert not s3_client(s3_server).list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert local_bytes(endpoint.tus_path) == 0


async def test_parts_on_their_way_are_resumed_by_another_server(
    tmp_path: Path, free_tcp_port: int, s3_server: SeaweedFS, bucket: str
) -> None:
    """The upload's parts and tail are on disk and in S3, not in a worker's memory: a new server
    (here: a Flask one after a Quart one) picks it up from its offset."""
    path, data = source_file(tmp_path, 2 * PART + 7)
    config = config_for(s3_server, bucket)
    async with serving("quart", tmp_path, free_tcp_port, config=config) as first:
        with open(path, "rb") as stream:
            uploader = tus_client.TusClient(first.url).uploader(
                file_stream=stream, chunk_size=3 * MIB, metadata={"filename": "a.bin"}
            )
            for _ in range(2):  # 6 MiB: one part sent, 1 MiB of tail
                await anyio.to_thread.run_sync(uploader.upload_chunk)
            url = uploader.url
    assert url is not None
    async with serving("flask", tmp_path, free_tcp_port, config=config) as second:
        upload_url = second.upload_url(url.rsplit("/files/", 1)[1])
        with open(path, "rb") as stream:
            resumed = tus_client.TusClient(second.url).uploader(
                file_stream=stream, chunk_size=3 * MIB, url=upload_url
            )
            assert resumed.offset == 6 * MIB
            await anyio.to_thread.run_sync(resumed.upload)
        [(provider, _)] = second.completed
    assert objects(s3_server, bucket) == {f"media/{provider.relative_path}": data}


async def test_a_terminated_upload_leaves_no_parts(
    tmp_path: Path, free_tcp_port: int, s3_server: SeaweedFS, bucket: str
) -> None:
    path, data = source_file(tmp_path, PART + MIB)
    async with serving("quart", tmp_path, free_tcp_port, config=config_for(s3_server, bucket)) as e:
        async with httpx.AsyncClient(timeout=60) as client:
            created = await create(client, e, str(len(data)), "x.bin")
            location = e.upload_url(created.headers["Location"])
            patched = await patch(client, location, data[: PART + 1])
            assert patched.status_code == 204
            assert s3_client(s3_server).list_multipart_uploads(Bucket=bucket).get("Uploads")
            deleted = await client.delete(location, headers=V)
            assert deleted.status_code == 204
    assert not s3_client(s3_server).list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert objects(s3_server, bucket) == {}


@pytest.mark.parametrize("size", [0, 10, PART])
async def test_small_uploads_are_saved_from_the_spool_as_before(
    size: int, tmp_path: Path, free_tcp_port: int, s3_server: SeaweedFS, bucket: str
) -> None:
    path, data = source_file(tmp_path, size)
    async with serving("quart", tmp_path, free_tcp_port, config=config_for(s3_server, bucket)) as e:
        await anyio.to_thread.run_sync(
            lambda: tuspy_upload(e.url, path, chunk_size=MIB, metadata={"filename": "s.bin"})
        )
        [(provider, _)] = e.completed
    assert provider.sha256 == hashlib.sha256(data).hexdigest()  # a save: it counted them
    assert objects(s3_server, bucket) == {"media/s.bin": data}


@pytest.mark.parametrize("where", ["local", "s3"])
async def test_the_storages_rules_refuse_a_lying_upload_and_keep_nothing(
    where: str, tmp_path: Path, free_tcp_port: int, s3_server: SeaweedFS, bucket: str
) -> None:
    data = b"<html><script>alert(1)</script>" + b" " * (PART + MIB)
    config = config_for(s3_server, bucket) if where == "s3" else {}
    config["STORE_CHECK_CONTENT"] = True
    async with serving("quart", tmp_path, free_tcp_port, config=config) as e:
        async with httpx.AsyncClient(timeout=60) as client:
            created = await create(client, e, str(len(data)), "photo.png")
            location = e.upload_url(created.headers["Location"])
            patched = await patch(client, location, data)
            assert patched.status_code == 422, patched.text
            assert "photo.png" in patched.text and "HTML" in patched.text
            gone = await client.head(location, headers=V)
            assert gone.status_code == 404
        assert e.completed == []
        stored = Path(e.app.config["STORE_PATH"]) if where == "local" else None
    assert objects(s3_server, bucket) == {}
    assert stored is None or not [p for p in stored.rglob("*") if p.is_file()]
    assert not s3_client(s3_server).list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert local_bytes(e.tus_path) == 0


async def test_a_creation_over_the_storages_size_limit_is_a_413(
    tmp_path: Path, free_tcp_port: int, s3_server: SeaweedFS, bucket: str
) -> None:
    config = {**config_for(s3_server, bucket), "STORE_MAX_FILE_SIZE": 1000}
    async with serving("flask", tmp_path, free_tcp_port, config=config) as e:
        async with httpx.AsyncClient(timeout=60) as client:
            created = await create(client, e, "1001", "a")
    assert created.status_code == 413 and "max_size" in created.text


async def test_a_finished_upload_waits_out_an_s3_outage_and_is_stored_when_it_ends(
    tmp_path: Path, free_tcp_port: int, s3_server: SeaweedFS, bucket: str, proxy: FaultProxy
) -> None:
    """Clients retry a 503 to a PATCH and a 423 to a HEAD; a 5xx to a HEAD would make
    tus-js-client and Uppy send the whole file again."""
    data = b"every byte arrives while S3 is down"
    config = {
        **config_for(s3_server, bucket),
        "STORE_S3_ENDPOINT_URL": proxy.endpoint,
        "STORE_S3_MAX_ATTEMPTS": 1,
    }
    async with serving("quart", tmp_path, free_tcp_port, config=config) as e:
        async with httpx.AsyncClient(timeout=60) as client:
            created = await create(client, e, str(len(data)), "a.txt")
            location = e.upload_url(created.headers["Location"])
            proxy.down()
            try:
                patched = await patch(client, location, data)
                assert patched.status_code == 503 and patched.headers["Retry-After"] == "5"
                waiting = await client.head(location, headers=V)
                assert waiting.status_code == 423, waiting.text
            finally:
                proxy.up()
            done = await client.head(location, headers=V)
            assert done.status_code == 200
            assert done.headers["Upload-Offset"] == str(len(data))
            assert done.headers["Upload-Stored-Path"] == "a.txt"
        assert len(e.completed) == 1
    assert objects(s3_server, bucket) == {"media/a.txt": data}


async def test_store_cleanup_aborts_the_parts_of_tus_uploads_left_idle(
    tmp_path: Path, free_tcp_port: int, s3_server: SeaweedFS, bucket: str
) -> None:
    data = b"x" * (PART + 10)
    config = config_for(s3_server, bucket)
    async with serving("quart", tmp_path, free_tcp_port, config=config) as e:
        async with httpx.AsyncClient(timeout=60) as client:
            created = await create(client, e, str(2 * len(data)), "left.bin")
            patched = await patch(client, e.upload_url(created.headers["Location"]), data)
            assert patched.status_code == 204  # a part in S3, the client gone
    s3 = s3_client(s3_server)
    assert len(s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])) == 1
    young = await anyio.to_thread.run_sync(invoke, ["cleanup"], config)
    assert "aborted 0 multipart uploads" in young.output  # idle less than STORE_TUS_EXPIRES
    idle = await anyio.to_thread.run_sync(invoke, ["cleanup", "--older-than", "0"], config)
    assert idle.exit_code == 0, idle.output
    assert "aborted 1 multipart upload never completed" in idle.output
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
