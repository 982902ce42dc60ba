"""Retries of the S3 client: how many attempts, what an outage leaves behind, and the name
check background mode makes without waiting. Faults come from tests/faultproxy.py."""

from __future__ import annotations

import anyio
import pytest
import quart

from async_store import AsyncStore, ProviderError, ProviderUnavailableError, Store
from tests.conftest import s3_app
from tests.faultproxy import FaultProxy
from tests.seaweed import SeaweedFS


def app_for(
    server: SeaweedFS, bucket: str, proxy: FaultProxy, **config: object
) -> tuple[quart.Quart, AsyncStore]:
    app = s3_app(server, bucket, STORE_S3_ENDPOINT_URL=proxy.endpoint, **config)
    return app, Store(app)


@pytest.mark.parametrize("attempts", [1, 2])
async def test_max_attempts_counts_the_first_attempt(
    s3_server: SeaweedFS, bucket: str, proxy: FaultProxy, attempts: int
) -> None:
    _, store = app_for(s3_server, bucket, proxy, STORE_S3_MAX_ATTEMPTS=attempts)
    proxy.fail_with = (lambda r: r.method == "PUT", 500)
    with pytest.raises(ProviderError, match="InternalError"):
        await store.AsyncProvider(b"x", filename="a.txt").save()
    assert len([r for r in proxy.requests if r.method == "PUT"]) == attempts


async def test_retries_come_back_after_an_outage(
    s3_server: SeaweedFS, bucket: str, proxy: FaultProxy
) -> None:
    app, store = app_for(s3_server, bucket, proxy, STORE_S3_MAX_ATTEMPTS=2)
    async with app.test_app(), app.app_context():  # one client for the serving loop
        # An outage: enough failing calls to spend botocore's whole retry quota.
        proxy.fail_with = (lambda r: True, 500)
        async with anyio.create_task_group() as tg:
            for i in range(120):
                tg.start_soon(failing_exists, store, f"{i}.txt")
        proxy.clear()
        await store.Provider(b"back", filename="first.txt").save()  # S3 answers again
        # One more 5xx: retried, as before the outage.
        proxy.fail_with, proxy.fail_times = (lambda r: r.method == "PUT", 500), 1
        await store.Provider(b"retried", filename="second.txt").save()
    puts = [r for r in proxy.requests if r.method == "PUT" and r.path.endswith("/second.txt")]
    assert len(puts) == 2


async def failing_exists(store: AsyncStore, name: str) -> None:
    with pytest.raises(ProviderError):
        await store.Provider(name).exists()


async def test_exists_now_makes_one_attempt(
    s3_server: SeaweedFS, bucket: str, proxy: FaultProxy
) -> None:
    app, store = app_for(s3_server, bucket, proxy, STORE_S3_MAX_ATTEMPTS=3)
    async with app.test_app(), app.app_context():
        provider = store.Provider(b"x", filename="a.txt")
        await provider.save()
        backend = store.state().provider_class.backend
        assert await backend.exists_now("a.txt") is True
        assert await backend.exists_now("b.txt") is False
        proxy.requests.clear()
        proxy.fail_with = (lambda r: r.method == "HEAD", 503)
        with pytest.raises(Exception) as info:
            await backend.exists_now("c.txt")
        assert isinstance(info.value, ProviderUnavailableError)  # background mode spools then
        assert len(proxy.requests) == 1
        with pytest.raises(Exception) as info:  # the ordinary check retries
            await backend.exists("c.txt")
        assert len(proxy.requests) == 1 + 3
        clients = store.state().provider_class.backend._clients  # type: ignore[attr-defined]
        quick = [c for (_, kind), (_, c) in clients._kept.items() if kind == "quick"]
        assert len(quick) == 1  # kept for the loop, like the main client
        assert quick[0].meta.config.connect_timeout == 2
