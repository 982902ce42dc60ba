"""``store drain``: deliver the spooled background uploads now, with progress.

Each job goes through the app's own delivery (``Background.deliver``: its lock, retries and
exactly-once rules); this module only picks the jobs, waits for those another worker is
delivering, and reports, naming the jobs spooled for another destination, which it never
delivers.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import click

from ._app import load_state, progress_bar, run

if TYPE_CHECKING:
    from .._background import Background
    from .._spool import Job

__all__ = ["drain"]

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


def describe_others(background: Background, others: list[Job]) -> list[str]:
    """Lines naming the spooled jobs of other destinations, by destination."""
    by_target: dict[str, list[Job]] = {}
    for job in others:
        by_target.setdefault(job.target, []).append(job)
    lines = [
        f"{len(others)} spooled uploads in {background.spool.path!r} are for another store, "
        f"not this one ({background.target}):"
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
@click.pass_context
def drain(ctx: click.Context) -> None:
    """Deliver the spooled background uploads now (STORE_BACKGROUND), with progress.

    Uploads another worker is delivering are waited for, not sent twice. Exits with status 1
    if some could not be delivered (they stay spooled; the message says why), or if some were
    spooled for another store (another provider, bucket or STORE_PATH): they are named.
    """
    state = load_state(ctx)
    background = state.provider_class._background
    if background is None:
        click.echo("STORE_BACKGROUND is off: no uploads are spooled")
        return

    others: list[Job] = []

    async def main() -> dict[str, str]:
        jobs, foreign = await background.jobs()
        others.extend(foreign)
        failed: dict[str, str] = {}
        bar = progress_bar(sum(job.size for job in jobs), f"{len(jobs)} uploads")
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
        click.echo(f"delivered {len(jobs) - len(failed)} of {len(jobs)} spooled uploads")
        return failed

    try:
        failed = run([state.provider_class], main)
    except KeyboardInterrupt:
        click.echo("interrupted: what was not delivered stays spooled; run it again")
        raise SystemExit(130) from None
    for key, error in sorted(failed.items()):
        click.echo(f"not delivered: {key}: {error}")
    if others:
        for line in describe_others(background, others):
            click.echo(line)
        click.echo(f"fix: {OTHERS_FIX}")
    if failed or others:
        raise SystemExit(1)
