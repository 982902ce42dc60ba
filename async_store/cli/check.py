"""``store check``: config valid, backend reachable, a write / read / delete probe, and (with
background uploads) no spooled upload stranded for another store; for every storage of the
app, or the one ``--storage`` names.

Each step prints what it checked, on a line that names the storage; a failed step prints the
error (which names the config key) and what to do about it, the storage's later steps are
skipped, and the exit status is 1. The other storages are still checked.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from typing import TYPE_CHECKING

import anyio
import click

from .._storages import DEFAULT
from ..exceptions import StoreError
from ._app import keys_of, load_state, pick_storage, run, storage_option
from .drain import OTHERS_FIX, describe_others, split_others

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ..extension import StoreState

_PROBE_TIMEOUT = 60.0


def _describe(state: StoreState) -> str:
    config = state.config
    provider = state.provider_class
    if "STORE_S3_BUCKET" in config:
        where = (
            f"bucket {config['STORE_S3_BUCKET']!r}, prefix {config.path!r}, endpoint "
            f"{config.get('STORE_S3_ENDPOINT_URL') or 'AWS'}"
        )
    elif provider.config_backend == "local":
        where = f"STORE_PATH {config.path!r}"
    else:  # the memory backend, a third party's: what it says it is
        where = provider.backend.identity
    if config.get("STORE_BACKGROUND"):
        where += f", background uploads spooled in {config['STORE_SPOOL_PATH']!r}"
    return keys_of(state, f"{provider.__name__}: {where}")


def _fixes(state: StoreState) -> dict[str, str]:
    provider = state.provider_class
    if "STORE_S3_BUCKET" in state.config:
        fixes = {
            "reach": "check STORE_S3_ENDPOINT_URL, that the bucket exists (STORE_S3_BUCKET) and "
            "the credentials (STORE_S3_ACCESS_KEY / STORE_S3_SECRET_KEY or boto's chain); "
            "listing needs s3:ListBucket",
            "write": "grant s3:PutObject (and s3:PutObjectAcl while STORE_S3_ACL is set; "
            "STORE_S3_ACL = None for buckets with ACLs disabled)",
            "read": "grant s3:GetObject on the bucket's objects",
            "delete": "grant s3:DeleteObject on the bucket's objects",
        }
    elif provider.config_backend == "local":
        writable = "make STORE_PATH writable by this user, or set STORE_PATH to another folder"
        fixes = dict.fromkeys(("reach", "write", "read", "delete"), writable)
    else:
        other = f"see what {provider.__name__}'s backend needs (STORE_PROVIDER)"
        fixes = dict.fromkeys(("reach", "write", "read", "delete"), other)
    fixes["spool"] = OTHERS_FIX  # about the other store's keys: named as they are
    if state.name == DEFAULT:
        return fixes
    where = f"in STORE_STORAGES[{state.name!r}]: "
    return {
        step: where + (keys_of(state, fix) if step != "spool" else fix)
        for step, fix in fixes.items()
    }


@click.command()
@storage_option("Check only this storage (default: every storage of the app).")
@click.pass_context
def check(ctx: click.Context, storage: str | None) -> None:
    """Check each storage: config, backend reachable, and a write / read / delete probe.

    Writes a small file named async-store-check-<random>.txt at the top of the storage, reads
    it back and deletes it. With STORE_BACKGROUND, also looks at the spool: uploads spooled for
    another store (another provider, bucket or STORE_PATH) are named, and the check fails.
    Every storage of the app is checked (each line names it, if there are several), unless
    --storage names one; the first step that fails prints the fix and skips that storage's
    later steps. Exits with status 1 if a step failed.
    """
    try:
        state = load_state(ctx)
    except click.ClickException as exc:
        click.echo(f"config   FAILED  {exc.message}")
        raise SystemExit(1) from None
    chosen = [pick_storage(state, storage)] if storage else list(state.storages.values())
    # An app with one storage prints the seed's lines, without its name.
    width = max(len(each.name) for each in chosen) if len(state.storages) > 1 else 0
    failed = [each.name for each in chosen if not _check(each, width)]
    if failed:
        if width:
            which = ", ".join(map(repr, failed))
            click.echo(f"checks failed for the storage{'s' if len(failed) > 1 else ''} {which}")
        raise SystemExit(1)
    click.echo("all checks passed")


def _check(state: StoreState, width: int) -> bool:
    """Check one storage, its name on each line (padded to ``width``, none if 0); whether all
    passed."""
    label = f"{state.name:<{width}}  " if width else ""

    def say(step: str, status: str, text: str) -> None:
        for i, line in enumerate(text.splitlines() or [""]):
            click.echo(f"{label}{step if i == 0 else '':<8} {status if i == 0 else '':<7} {line}")

    say("config", "ok", _describe(state))
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
        theirs, foreign = split_others(state, others)
        if foreign:
            raise StoreError("\n".join(describe_others(state, foreign)))
        waiting = f"{len(ours)} uploads waiting for delivery" if ours else "no uploads waiting"
        siblings = "".join(
            f", {len(jobs)} of the storage {name!r}" for name, jobs in sorted(theirs.items())
        )
        return f"{waiting} in {background.spool.path!r}{siblings}"

    steps: list[tuple[str, Callable[[], Awaitable[str]]]] = [
        ("reach", reach),
        ("write", write),
        ("read", read),
        ("delete", delete),
    ]
    background = state.background
    if background is not None:
        steps.append(("spool", spool))

    async def probes() -> bool:
        for name, step in steps:
            try:
                with anyio.fail_after(_PROBE_TIMEOUT):
                    done = await step()
            except (StoreError, TimeoutError) as exc:
                reason = str(exc) or f"no answer within {_PROBE_TIMEOUT:.0f}s"
                say(name, "FAILED", reason if name == "spool" else keys_of(state, reason))
                say("", "fix:", fixes[name])
                if name == "read":
                    with contextlib.suppress(StoreError):
                        await probe.delete(missing_ok=True)
                return False
            say(name, "ok", done)
        return True

    return run([provider], probes)
