"""``store check``: config valid, backend reachable, a write / read / delete probe, and (with
background uploads) no spooled upload stranded for another store.

Each step prints what it checked; a failed step prints the error (which names the config key)
and what to do about it, the later steps are skipped, and the exit status is 1.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from typing import TYPE_CHECKING

import anyio
import click

from ..exceptions import StoreError
from ._app import load_state, run
from .drain import OTHERS_FIX, describe_others

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ..extension import StoreState

_PROBE_TIMEOUT = 60.0


def _describe(state: StoreState) -> str:
    config = state.config
    name = state.provider_class.__name__
    if "STORE_S3_BUCKET" in config:
        where = (
            f"bucket {config['STORE_S3_BUCKET']!r}, prefix {config.path!r}, endpoint "
            f"{config.get('STORE_S3_ENDPOINT_URL') or 'AWS'}"
        )
    else:
        where = f"STORE_PATH {config.path!r}"
    if config.get("STORE_BACKGROUND"):
        where += f", background uploads spooled in {config['STORE_SPOOL_PATH']!r}"
    return f"{name}: {where}"


def _fixes(state: StoreState) -> dict[str, str]:
    if "STORE_S3_BUCKET" in state.config:
        return {
            "reach": "check STORE_S3_ENDPOINT_URL, that the bucket exists (STORE_S3_BUCKET) and "
            "the credentials (STORE_S3_ACCESS_KEY / STORE_S3_SECRET_KEY or boto's chain); "
            "listing needs s3:ListBucket",
            "write": "grant s3:PutObject (and s3:PutObjectAcl while STORE_S3_ACL is set; "
            "STORE_S3_ACL = None for buckets with ACLs disabled)",
            "read": "grant s3:GetObject on the bucket's objects",
            "delete": "grant s3:DeleteObject on the bucket's objects",
        }
    writable = "make STORE_PATH writable by this user, or set STORE_PATH to another folder"
    return {"reach": writable, "write": writable, "read": writable, "delete": writable}


@click.command()
@click.pass_context
def check(ctx: click.Context) -> None:
    """Check the store: config, backend reachable, and a write / read / delete probe.

    Writes a small file named async-store-check-<random>.txt at the top of the store, reads it
    back and deletes it. With STORE_BACKGROUND, also looks at the spool: uploads spooled for
    another store (another provider, bucket or STORE_PATH) are named, and the check fails.
    Exits with status 1, printing the fix, at the first step that fails.
    """
    try:
        state = load_state(ctx)
    except click.ClickException as exc:
        click.echo(f"config   FAILED  {exc.message}")
        raise SystemExit(1) from None
    click.echo(f"config   ok      {_describe(state)}")
    provider = state.provider_class
    fixes = _fixes(state)
    content = f"async_store check {uuid.uuid4()}\n".encode()
    probe = provider(content, filename=f"async-store-check-{os.urandom(6).hex()}.txt")

    async def reach() -> str:
        async for _ in provider.files():
            return "listed the store"
        return "listed the store (empty)"

    async def write() -> str:
        await probe.save()
        await probe.wait()  # a background upload is delivered, not just spooled
        return f"stored {probe.relative_path!r} ({len(content)} bytes)"

    async def read() -> str:
        async with probe.open() as f:
            back = await f.read(len(content) + 1)
        if back != content:
            raise StoreError(f"read back {len(back)} bytes that differ from what was written")
        return "read the same bytes back"

    async def delete() -> str:
        await probe.delete()
        if await probe.exists():
            raise StoreError(f"{probe.relative_path!r} is still there after delete()")
        return "deleted it"

    async def spool() -> str:
        assert background is not None
        ours, others = await background.jobs()
        if others:
            raise StoreError("\n".join(describe_others(background, others)))
        waiting = f"{len(ours)} uploads waiting for delivery" if ours else "no uploads waiting"
        return f"{waiting} in {background.spool.path!r}"

    steps: list[tuple[str, Callable[[], Awaitable[str]]]] = [
        ("reach", reach),
        ("write", write),
        ("read", read),
        ("delete", delete),
    ]
    background = provider._background
    if background is not None:
        steps.append(("spool", spool))
        fixes["spool"] = OTHERS_FIX

    async def probes() -> bool:
        for name, step in steps:
            try:
                with anyio.fail_after(_PROBE_TIMEOUT):
                    done = await step()
            except (StoreError, TimeoutError) as exc:
                reason = str(exc) or f"no answer within {_PROBE_TIMEOUT:.0f}s"
                click.echo(f"{name:<8} FAILED  {reason}")
                click.echo(f"{'':<8} fix:    {fixes[name]}")
                if name == "read":
                    with contextlib.suppress(StoreError):
                        await probe.delete(missing_ok=True)
                return False
            click.echo(f"{name:<8} ok      {done}")
        return True

    if not run([provider], probes):
        raise SystemExit(1)
    click.echo("all checks passed")
