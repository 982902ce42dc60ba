"""``store drain``: deliver the spooled background uploads now, with progress.

Each job goes through the app's own delivery (``Background.deliver``: its lock, retries and
exactly-once rules); this module only picks the jobs, waits for those another worker is
delivering, and reports, naming the jobs spooled for another destination, which it never
delivers. Without ``--storage`` it drains every storage of the app that has background uploads,
each from its own spool, one after the other.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import click

from .._storages import DEFAULT
from ..exceptions import StoreError
from ._app import load_state, pick_storage, progress_bar, run, storage_option

if TYPE_CHECKING:
    from .._background import Background
    from .._spool import Job
    from ..extension import StoreState

__all__ = ["OTHERS_FIX", "describe_others", "drain", "split_others"]

# How often to look again at a job another process (or the app's own loop) is delivering.
_POLL = 0.1
# How many keys of another store's jobs to print.
_SHOWN = 10


#: What to do about uploads spooled for another store (``check`` gives the same advice).
OTHERS_FIX = (
    "deliver them with the store they were spooled for: 'store drain' with its STORE_PROVIDER, "
    "STORE_S3_BUCKET and STORE_PATH (STORE_S3_ENDPOINT_URL may differ); or remove their job "
    "folders from STORE_SPOOL_PATH if they are not wanted"
)


def split_others(state: StoreState, others: list[Job]) -> tuple[dict[str, list[Job]], list[Job]]:
    """Of the jobs in ``state``'s spool that are not its own: those of another storage of the
    same app that spools in the same folder (by its name; its drain delivers them), and the
    rest, spooled for a store this app does not have."""
    background = state.background
    assert background is not None
    here = os.path.realpath(background.spool.path)
    siblings = [
        (each.name, other)
        for each in state.storages.values()
        if each is not state
        and (other := each.background) is not None
        and os.path.realpath(other.spool.path) == here
    ]
    theirs: dict[str, list[Job]] = {}
    foreign: list[Job] = []
    for job in others:
        owner = next((name for name, other in siblings if other.owns(job.target)), None)
        if owner is None:
            foreign.append(job)
        else:
            theirs.setdefault(owner, []).append(job)
    return theirs, foreign


def describe_others(state: StoreState, others: list[Job]) -> list[str]:
    """Lines naming the spooled jobs of other destinations, by destination."""
    background = state.background
    assert background is not None
    by_target: dict[str, list[Job]] = {}
    for job in others:
        by_target.setdefault(job.target, []).append(job)
    lines = [
        f"{len(others)} spooled uploads in {background.spool.path!r} are for another store, "
        f"not the storage {state.name!r} ({background.target}):"
    ]
    for target, jobs in sorted(by_target.items()):
        jobs.sort(key=lambda job: job.key)
        shown = ", ".join(f"{job.key} (job {job.id})" for job in jobs[:_SHOWN])
        more = f" and {len(jobs) - _SHOWN} more" if len(jobs) > _SHOWN else ""
        lines.append(f"  {target}: {shown}{more}")
    return lines


async def _deliver(background: Background, job: Job) -> str | None:
    """Deliver one job; None once it is delivered, else why it is still spooled."""
    spool = background.spool
    directory = os.path.join(spool.path, job.id)
    tried = False
    while await anyio.to_thread.run_sync(os.path.exists, directory):
        fd = await anyio.to_thread.run_sync(spool.lock, job.id)
        if fd is None:  # another worker is on it: wait for its outcome
            await anyio.sleep(_POLL)
            continue
        os.close(fd)
        if tried:
            left = await anyio.to_thread.run_sync(spool.load, job.id)
            return left.last_error or "not delivered (see the async_store.background log)"
        await background.deliver(job.id)
        tried = True
    return None


@click.command()
@storage_option("Drain only this storage (default: every one with background uploads on).")
@click.pass_context
def drain(ctx: click.Context, storage: str | None) -> None:
    """Deliver the spooled background uploads now (STORE_BACKGROUND), with progress.

    Every storage of the app with background uploads on is drained, each from its own spool,
    unless --storage names one. Uploads another worker is delivering are waited for, not sent
    twice. Exits with status 1 if some could not be delivered (they stay spooled; the message
    says why), or if some were spooled for another store (another provider, bucket or
    STORE_PATH): they are named.
    """
    state = load_state(ctx)
    if storage is None:
        chosen = [s for s in state.storages.values() if s.background]
        if not chosen:
            every = " for every storage" if len(state.storages) > 1 else ""
            click.echo(f"STORE_BACKGROUND is off{every}: no uploads are spooled")
            return
    else:
        chosen = [pick_storage(state, storage)]
        if chosen[0].background is None:
            name = chosen[0].name
            off = "STORE_BACKGROUND" if name == DEFAULT else f"STORE_STORAGES[{name!r}]: BACKGROUND"
            click.echo(f"{off} is off: no uploads are spooled")
            return
    failed = [each.name for each in chosen if not _drain(each, alone=storage is not None)]
    if failed:
        raise SystemExit(1)


def _drain(state: StoreState, *, alone: bool) -> bool:
    """Drain one storage's spool and report, each line naming it; whether all went well.
    ``alone``: the only storage drained, so the uploads of another storage in its spool are
    pointed out (otherwise that storage's drain delivers them)."""
    background = state.background
    assert background is not None
    name = state.name
    # Each line names the storage, unless it is the app's only one (the seed's lines).
    say = f"{name}: " if len(state.storages) > 1 else ""
    others: list[Job] = []

    async def main() -> dict[str, str]:
        jobs, foreign = await background.jobs()
        others.extend(foreign)
        failed: dict[str, str] = {}
        bar = progress_bar(sum(job.size for job in jobs), f"{say}{len(jobs)} uploads")
        limiter = anyio.CapacityLimiter(background.concurrency)

        async def one(job: Job) -> None:
            async with limiter:
                error = await _deliver(background, job)
            if error is None:
                bar.update(job.size)
            else:
                failed[job.key] = error

        try:
            async with anyio.create_task_group() as tg:
                for job in jobs:
                    tg.start_soon(one, job)
        finally:
            bar.close()
        click.echo(f"{say}delivered {len(jobs) - len(failed)} of {len(jobs)} spooled uploads")
        return failed

    try:
        failed = run([state.provider_class], main)
    except KeyboardInterrupt:
        click.echo("interrupted: what was not delivered stays spooled; run it again")
        raise SystemExit(130) from None
    except StoreError as exc:
        click.echo(f"{say}failed: {exc}")
        return False
    for key, error in sorted(failed.items()):
        click.echo(f"{say}not delivered: {key}: {error}")
    theirs, foreign = split_others(state, others)
    if alone:
        for sibling, jobs in sorted(theirs.items()):
            click.echo(
                f"{say}{len(jobs)} uploads in the same spool are the storage {sibling!r}'s: "
                f"'store drain --storage {sibling}' delivers them"
            )
    if foreign:
        for line in describe_others(state, foreign):
            click.echo(f"{say}{line}")
        click.echo(f"{say}fix: {OTHERS_FIX}")
    return not (failed or foreign)
