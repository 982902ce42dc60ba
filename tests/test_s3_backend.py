"""The S3 backend object on its own (``backends/s3.py``), against the suite's SeaweedFS: byte
ranges, stat, identity, and which class each failure is ("down for now" or not). Then the
object-store parts it is built from (``_multipart``), without any server.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from async_store import NotFoundError, ProviderError, ProviderUnavailableError, Store
from async_store._multipart import Budget, Parts, cut, send_parts
from async_store._sources import Source, SourceFailure
from async_store.backends import StoredFile
from async_store.backends.s3 import S3Backend
from tests.conftest import S3_CREDENTIALS, s3_app, s3_client
from tests.faultproxy import FaultProxy
from tests.seaweed import SeaweedFS

MIB = 1024 * 1024
SMALL_PARTS = {"STORE_S3_PART_SIZE": 5 * MIB, "STORE_S3_MULTIPART_THRESHOLD": 5 * MIB}
DATA = bytes(range(256)) * 40  # 10,240 bytes, each position recognisable


def backend_for(server: SeaweedFS, bucket: str, **config: Any) -> S3Backend:
    """The backend ``Store(app)`` made for an app storing in ``bucket`` under ``media/``."""
    backend = Store(s3_app(server, bucket, **config)).state().provider_class.backend
    assert isinstance(backend, S3Backend)
    return backend


@asynccontextmanager
async def opened(server: SeaweedFS, bucket: str, **config: Any) -> AsyncIterator[S3Backend]:
    """``backend_for``'s backend, closed after the block (``async with`` on it directly gives a
    ``Backend`` to a type checker: ``Backend.__aenter__`` is not typed as returning ``Self``)."""
    backend = backend_for(server, bucket, **config)
    async with backend:
        yield backend


async def write(
    backend: S3Backend, name: str, data: bytes, location: str = "", hashed: bool = False
) -> str:
    source = Source(name, blocking=[data])
    if hashed:  # as Provider(..., checksum=True) does
        source.digest = hashlib.sha256()
    return await backend.write(location, iter([name]), source)


async def listed(backend: S3Backend, prefix: str = "") -> list[StoredFile]:
    return [file async for file in backend.list(prefix)]


async def read(backend: S3Backend, key: str, start: int = 0, end: int | None = None) -> bytes:
    async with backend.open(key, start, end) as f:
        return await f.read()


# --- endpoint resolution ----------------------------------------------------------------------


async def test_the_endpoint_rule_set_runs_once_per_bucket_not_once_per_key(
    s3_server: SeaweedFS, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """botocore caches S3's endpoint by the rule set's parameters, the object key among them:
    ten saves under ten names evaluated the whole rule set ten times (28 % of a small PUT's
    client CPU). The key is read by no rule, so the backend's clients leave it out."""
    from botocore.endpoint_provider import RuleSet

    evaluations = 0
    real = RuleSet.evaluate

    def counted(self: Any, input_parameters: Any) -> Any:
        nonlocal evaluations
        evaluations += 1
        return real(self, input_parameters)

    monkeypatch.setattr(RuleSet, "evaluate", counted)
    async with opened(s3_server, bucket) as backend:
        await backend.enter_loop()  # as a served app's: one client for the loop's requests
        for i in range(10):
            await write(backend, f"{i}.bin", DATA, "docs")
        evaluations_for_ten = evaluations
        assert [f.path for f in await listed(backend, "docs")][:2] == ["docs/0.bin", "docs/1.bin"]
    # One per operation (HEAD, PUT, LIST), not one per key.
    assert evaluations_for_ten <= 3, evaluations_for_ten


# --- ranges and stat ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end"),
    [(0, None), (0, 1), (1000, 2000), (10_000, None), (10_239, 10_240), (5, 5)],
)
async def test_open_reads_a_byte_range(
    s3_server: SeaweedFS, bucket: str, proxy: FaultProxy, start: int, end: int | None
) -> None:
    async with opened(s3_server, bucket, STORE_S3_ENDPOINT_URL=proxy.endpoint) as backend:
        await write(backend, "a.bin", DATA, "docs")
        proxy.requests.clear()
        assert await read(backend, "docs/a.bin", start, end) == DATA[start:end]
    gets = [r for r in proxy.requests if r.method == "GET"]
    if end == start:
        assert gets == []  # nothing to fetch: a HEAD says whether it is there
    elif (start, end) == (0, None):
        assert "range" not in gets[0].headers
    else:
        assert gets[0].headers["range"] == f"bytes={start}-{'' if end is None else end - 1}"


@pytest.mark.parametrize(("start", "end"), [(len(DATA), None), (len(DATA) + 5, None), (0, 99999)])
async def test_a_range_past_the_end_reads_what_there_is(
    s3_server: SeaweedFS, bucket: str, start: int, end: int | None
) -> None:
    async with opened(s3_server, bucket) as backend:
        await write(backend, "a.bin", DATA)
        assert await read(backend, "a.bin", start, end) == DATA[start:end]


async def test_a_range_of_a_multipart_object_crosses_its_parts(
    s3_server: SeaweedFS, bucket: str
) -> None:
    data = os.urandom(12 * MIB)
    async with opened(s3_server, bucket, **SMALL_PARTS) as backend:
        await write(backend, "big.bin", data)
        start, end = 5 * MIB - 10, 10 * MIB + 10
        async with backend.open("big.bin", start, end) as f:
            chunks = []
            while chunk := await f.read(MIB):
                chunks.append(chunk)
    assert b"".join(chunks) == data[start:end]
    assert [len(c) for c in chunks[:-1]] == [MIB] * (len(chunks) - 1)  # full reads, as a file


@pytest.mark.parametrize(("start", "end"), [(0, None), (3, 10), (4, 4)])
async def test_open_of_a_missing_key_is_not_found(
    s3_server: SeaweedFS, bucket: str, start: int, end: int | None
) -> None:
    async with opened(s3_server, bucket) as backend:
        with pytest.raises(NotFoundError, match="'gone.txt' in bucket"):
            await read(backend, "gone.txt", start, end)


@pytest.mark.parametrize(("start", "end"), [(-1, None), (5, 4)])
async def test_a_reversed_or_negative_range_is_refused(
    s3_server: SeaweedFS, bucket: str, start: int, end: int | None
) -> None:
    async with opened(s3_server, bucket) as backend:
        with pytest.raises(ValueError, match="not a byte range of 'a.bin'"):
            await read(backend, "a.bin", start, end)


async def test_stat_gives_size_and_time(s3_server: SeaweedFS, bucket: str) -> None:
    async with opened(s3_server, bucket) as backend:
        before = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=2)
        await write(backend, "a.bin", DATA, "docs", hashed=True)
        await write(backend, "b.bin", DATA, "plain")
        stat = await backend.stat("docs/a.bin")
        unhashed = await backend.stat("plain/b.bin")
        files = await listed(backend, "docs/")
        with pytest.raises(NotFoundError, match="'docs/b.bin' in bucket"):
            await backend.stat("docs/b.bin")
    assert (stat.path, stat.size) == ("docs/a.bin", len(DATA))
    assert stat.modified.tzinfo is not None
    assert before <= stat.modified <= datetime.now(UTC) + timedelta(seconds=2)
    # A listing has no content type nor checksum (ListObjects gives neither); stat asks HEAD,
    # which gives the SHA-256 the upload was sent and verified with (STORE_S3_CHECKSUM): under
    # 'auto', that of an upload hashed anyway; one that is not is sent with a CRC32.
    assert stat.content_type == "application/octet-stream"
    assert stat.sha256 == hashlib.sha256(DATA).hexdigest()
    assert unhashed.sha256 is None
    assert files == [dataclasses.replace(stat, content_type=None, sha256=None)]


def test_identity_names_bucket_and_prefix_never_the_endpoint_or_keys(
    s3_server: SeaweedFS, bucket: str
) -> None:
    backend = backend_for(s3_server, bucket, STORE_PATH="/media/2024/")
    assert backend.identity == f"s3 bucket={bucket} path=media/2024"
    assert backend.absolute_path("a/b.txt") == "media/2024/a/b.txt"
    assert repr(backend) == f"<S3Backend s3 bucket={bucket} path=media/2024>"
    for secret in (str(s3_server.s3_port), *S3_CREDENTIALS.values()):
        assert secret not in backend.identity and secret not in repr(backend)
    assert (S3Backend.kind, S3Backend.signs, S3Backend.loop_bound) == ("s3", True, True)


# --- which failures are "down for now" --------------------------------------------------------


async def test_an_unreachable_endpoint_is_unavailable_at_every_call(
    s3_server: SeaweedFS, bucket: str, proxy: FaultProxy
) -> None:
    backend = backend_for(
        s3_server,
        bucket,
        STORE_S3_ENDPOINT_URL=proxy.endpoint,
        STORE_S3_MAX_ATTEMPTS=1,
        STORE_S3_CONNECT_TIMEOUT=2,
    )
    async with backend:
        await write(backend, "there.txt", b"x")
        proxy.down()  # connections refused
        try:
            calls: dict[str, Callable[[], Awaitable[object]]] = {
                "write": lambda: write(backend, "a.txt", b"y"),
                "exists": lambda: backend.exists("there.txt"),
                "exists_now": lambda: backend.exists_now("there.txt"),
                "open": lambda: read(backend, "there.txt", 0, 1),
                "stat": lambda: backend.stat("there.txt"),
                "delete": lambda: backend.delete("there.txt"),
                "list": lambda: listed(backend),
            }
            for call, run in calls.items():
                with pytest.raises(ProviderUnavailableError) as info:
                    await run()
                message = str(info.value)
                assert "cannot reach the S3 endpoint" in message, (call, message)
                assert "STORE_S3_ENDPOINT_URL" in message and bucket in message
                assert info.value.__cause__ is not None
            # Signing needs no connection.
            assert "X-Amz-Signature=" in await backend.sign("there.txt", 60)
        finally:
            proxy.up()
    assert s3_client(s3_server).list_objects_v2(Bucket=bucket)["KeyCount"] == 1


@pytest.mark.parametrize(("status", "down"), [(500, True), (503, True), (403, False)])
async def test_5xx_is_unavailable_and_403_is_not(
    s3_server: SeaweedFS, bucket: str, proxy: FaultProxy, status: int, down: bool
) -> None:
    backend = backend_for(
        s3_server, bucket, STORE_S3_ENDPOINT_URL=proxy.endpoint, STORE_S3_MAX_ATTEMPTS=1
    )
    proxy.fail_with = (lambda r: True, status)
    async with backend:
        for call in (lambda: write(backend, "a.txt", b"x"), lambda: backend.exists("a.txt")):
            with pytest.raises(ProviderError) as info:
                await call()
            assert isinstance(info.value, ProviderUnavailableError) is down, info.value


async def test_a_missing_bucket_is_refused_for_good(s3_server: SeaweedFS) -> None:
    async with opened(s3_server, "no-such-bucket") as backend:
        with pytest.raises(ProviderError, match="does not exist") as info:
            await listed(backend)
    assert not isinstance(info.value, ProviderUnavailableError)


async def test_the_uploads_own_error_passes_unmapped(s3_server: SeaweedFS, bucket: str) -> None:
    async def broken() -> AsyncIterator[bytes]:
        for _ in range(11):  # past the threshold: a multipart upload is under way
            yield b"x" * MIB
        raise OSError("client went away")

    async with opened(s3_server, bucket, **SMALL_PARTS) as backend:
        for source in (Source("a", chunks=broken()), Source("a", blocking=iter_broken())):
            with pytest.raises(SourceFailure) as info:
                await backend.write("", iter(["a.bin"]), source)
            assert str(info.value.error) == "client went away"
    client = s3_client(s3_server)
    assert client.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def iter_broken() -> Iterator[bytes]:
    yield b"x" * 11 * MIB
    raise OSError("client went away")


# --- _multipart, the reusable parts -----------------------------------------------------------


@pytest.mark.parametrize("sizes", [[5, 5, 5], [3, 9, 1, 7], [20], [1] * 17, []])
def test_cut_makes_parts_of_exactly_the_part_size(sizes: list[int]) -> None:
    chunks = [os.urandom(n) for n in sizes]
    parts = list(cut(iter(chunks), 5))
    assert b"".join(parts) == b"".join(chunks)
    assert all(len(p) == 5 for p in parts[:-1]) and all(0 < len(p) <= 5 for p in parts)


async def test_budget_makes_younger_saves_wait_and_lets_the_oldest_go_on() -> None:
    budget = Budget(100)
    order: list[str] = []
    async with budget.charge() as old, budget.charge() as young:
        await old.take(80)
        async with anyio.create_task_group() as tg:

            async def young_takes() -> None:
                await young.take(50)  # over the limit: waits for the oldest to give back
                order.append("young")

            tg.start_soon(young_takes)
            await anyio.sleep(0.05)
            await old.take(50)  # the oldest may go past the limit: no deadlock
            order.append("old")
            old.give(130)
        assert order == ["old", "young"] and budget.used == 50
    assert budget.used == 0


class FakeParts(Parts):
    def __init__(self, fail_at: int | None = None) -> None:
        self.sent: list[int] = []
        self.in_flight = self.most_in_flight = 0
        self.fail_at = fail_at
        self.completed = self.aborted = False

    async def send(self, number: int, body: bytes) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await anyio.sleep(0.01)
            if number == self.fail_at:
                raise RuntimeError(f"part {number} failed")
            self.sent.append(number)
        finally:
            self.in_flight -= 1

    async def complete(self) -> None:
        self.completed = True

    async def abort(self) -> None:
        await anyio.sleep(0)
        self.aborted = True


async def parts_of(count: int) -> AsyncIterator[bytes]:
    for i in range(count):
        yield bytes([i]) * 10


@pytest.mark.parametrize("fail_at", [None, 2, 7])
async def test_send_parts_bounds_what_is_in_flight_and_aborts_on_failure(
    fail_at: int | None,
) -> None:
    upload = FakeParts(fail_at)
    budget = Budget(1000)
    async with budget.charge() as charge:
        await charge.take(20)  # what the head holds
        head = [b"a" * 10, b"b" * 10]
        if fail_at is None:
            await send_parts(upload, head, parts_of(6), concurrency=3, charge=charge)
        else:
            with pytest.raises(RuntimeError, match=f"part {fail_at} failed"):
                await send_parts(upload, head, parts_of(6), concurrency=3, charge=charge)
    assert upload.most_in_flight == 3
    assert (upload.completed, upload.aborted) == (fail_at is None, fail_at is not None)
    if fail_at is None:
        assert sorted(upload.sent) == list(range(1, 9))


async def test_send_parts_aborts_when_cancelled() -> None:
    upload = FakeParts()
    async with Budget(1000).charge() as charge:
        with anyio.move_on_after(0.015):
            await send_parts(upload, [], parts_of(50), concurrency=2, charge=charge)
    assert upload.aborted and not upload.completed


def test_a_reset_met_while_writing_a_body_is_named_a_reset(
    s3_server: SeaweedFS, bucket: str
) -> None:
    from aiohttp import ClientOSError
    from aiohttp.client_exceptions import ClientConnectionResetError
    from botocore.exceptions import EndpointConnectionError

    backend = backend_for(s3_server, bucket)
    # What aiohttp raises when a body sent in slices meets a reset mid-write: its own
    # "Can not write request body" (no errno, the URL with the upload's id), caused by the reset.
    wrapper = ClientOSError(
        None, "Can not write request body for http://127.0.0.1:1/b/k?uploadId=x"
    )
    wrapper.__cause__ = ClientConnectionResetError("Cannot write to closing transport")
    with pytest.raises(ProviderError) as info:
        with backend._clients.errors("a.bin"):
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1", error=wrapper)
    message = str(info.value)
    assert "connection reset" in message and "'a.bin'" in message
    assert "uploadId" not in message  # the reset itself, not aiohttp's wrapper and its URL
