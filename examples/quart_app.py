"""The async_store demo: an upload page with drag and drop, a progress bar per file, a gallery
of the stored files with a thumbnail of each image, and delete, on Quart and SQLAlchemy.

Run it with ``make demo`` (or ``python examples/quart_app.py [--host H] [--port P]``: uvicorn,
as ``make demo`` runs it), then open http://127.0.0.1:5000. No config is needed: each upload is a
row of an SQLite database, ``examples/instance/demo.sqlite``, whose ``FileType`` column holds the
record of a file in ``examples/instance/uploads`` (both git-ignored): its path, size and type,
and the path of its thumbnail.

Each image gets a thumbnail, a variant the store makes once the original is stored (Pillow,
in a worker thread; ``STORE_IMAGE_VARIANTS``, by default ``thumb``: 400×300 WebP, cropped to
the card's 4:3), saved next to it under ``demo/_variants/`` and deleted with it. The gallery
shows it and links to the original. ``STORE_IMAGE_VARIANTS='{}'`` turns them off: cards then show
the originals.

The environment changes that: ``DATABASE_URL`` (any async SQLAlchemy URL) and every ``STORE_*``
key, read as JSON when it parses as a number, ``true``/``false`` or an object, else as text
(paths, URLs, names and keys always as text). To store in S3 or an S3-compatible server::

    STORE_PROVIDER=s3 STORE_S3_BUCKET=my-bucket STORE_S3_REGION=eu-west-1 \\
    STORE_S3_ACCESS_KEY=... STORE_S3_SECRET_KEY=... make demo
    # MinIO, SeaweedFS, R2, ...: add STORE_S3_ENDPOINT_URL=http://127.0.0.1:8333

On S3 the page uploads **straight to the bucket**: the app mounts the direct-upload endpoints
(:meth:`Store.direct_uploads` at ``/direct-uploads``, the protocol of Uppy's ``@uppy/aws-s3``)
and only signs: a presigned POST for a small file, the parts of a multipart upload (5 MiB each)
for one over 10 MiB. The page sends the bytes with Uppy's core and AwsS3 plugin (vendored in
``static/vendor``, loaded only on S3; no Uppy UI), then posts the upload's key to ``/confirm``,
which stores it under its name in ``demo/`` (``confirm(key, location="demo")``: a copy inside
the bucket, its thumbnail made) and adds its row. The bucket needs a CORS rule letting the page's
origin in (docs/direct.md, "CORS"; without it the file's line says so). The keys it hands out
are signed with ``SECRET_KEY``: the environment's, else a fixed development key (said at
startup; set ``SECRET_KEY`` anywhere but your own machine). ``/?via=tus`` sends the files
through the app instead, as on local disk.

On local disk (or with ``?via=tus``) the page uploads through the resumable path: tus
(:func:`async_store.tus.tus_blueprint` at ``/files``, tus-js-client in the page, vendored in
``static/vendor``), a few MiB per request.
A dropped connection or a restarted server costs at most the request in flight: the page
retries, asks where the upload stopped and sends the rest. The upload waits in
``STORE_TUS_PATH`` (``examples/instance/store-tus``) until its last byte; then it is stored like
any file (on local disk or S3), its thumbnail made, and the endpoint's ``on_complete`` hook adds
its row. Without JavaScript the form posts to ``/upload``, the library's one-request path,
:meth:`Provider.save_request`: each file streamed into the store as the body arrives, then its
thumbnail made (:func:`~async_store.make_variants`). Local files
are served by the store's safe route; S3 files through presigned URLs (the bucket stays
private). With ``STORE_BACKGROUND=true`` a card says "uploading" until its file is delivered.

Each row also records which storage holds its file: one database may serve the demo run with
other ``STORE_*`` settings (local, then S3), and the page shows, opens and deletes only the files
of the storage it runs with, never another storage's file of the same path.

From a shell::

    curl -F afile=@photo.jpg http://127.0.0.1:5000/upload          # prints the file's URL
    curl -X POST http://127.0.0.1:5000/delete/1                     # by the row's id
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin

import anyio
from markupsafe import Markup
from quart import Quart, Response, abort, redirect, render_template, request, url_for
from quart.typing import ResponseReturnValue
from sqlalchemy import DateTime, String, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from werkzeug.exceptions import HTTPException, InternalServerError, ServiceUnavailable

from async_store import (
    NotFoundError,
    ProviderError,
    Store,
    StoreError,
    UnsafePathError,
    make_variants,
)
from async_store.config import config_from_env
from async_store.serve import content_policy
from async_store.sqla import FileRecord, FileType
from async_store.tus import tus_blueprint

HERE = os.path.dirname(os.path.abspath(__file__))
# How long the links of a page stay valid when they are presigned (S3). Local files get the
# store's route, permanent: a signed local link would need the app's SECRET_KEY.
LINK_SECONDS = 3600
#: The variant the gallery shows of an image (the card's box is 4:3).
THUMB = "thumb"
# An explicit instance folder: run as a script, Quart would otherwise pick the current directory.
app = Quart(__name__, instance_path=os.path.join(HERE, "instance"))
# The form's path (without JavaScript): save_request streams each file into the store, so a
# large limit costs no memory. The resumable path has its own, STORE_TUS_MAX_SIZE (5 GiB).
app.config["MAX_CONTENT_LENGTH"] = 1024**3
app.config["STORE_IMAGE_VARIANTS"] = {THUMB: {"size": [400, 300], "format": "webp", "fit": "cover"}}
app.config.update(config_from_env())  # STORE_* variables, e.g. STORE_PROVIDER=s3
store = Store(app)  # STORE_PATH defaults to <instance folder>/uploads
CONFIG = store.state(app).config
ON_S3 = any(cls.__name__ == "S3Provider" for cls in store.state(app).provider_class.__mro__)
BACKGROUND = bool(CONFIG["STORE_BACKGROUND"])
#: Said at startup when it is the one in use: direct uploads sign their keys with SECRET_KEY.
DEV_SECRET_KEY = "async_store demo: a development key, not a secret"
# The environment's SECRET_KEY, else the demo's fixed one: a key per process would refuse, after a
# restart, the uploads the page began before it.
app.config["SECRET_KEY"] = os.environ.get("SECRET_KEY") or DEV_SECRET_KEY


def storage_name() -> str:
    """The storage this process stores in, as each row records it: ``local:/srv/uploads``, or
    ``s3:http://127.0.0.1:8333/my-bucket/media`` (``s3:aws/...`` without an endpoint URL)."""
    if ON_S3:
        endpoint = CONFIG.get("STORE_S3_ENDPOINT_URL") or "aws"
        return f"s3:{endpoint}/{CONFIG['STORE_S3_BUCKET']}/{CONFIG.path.strip('/')}".rstrip("/")
    return f"local:{CONFIG.path}"


STORAGE = storage_name()


def default_database_url() -> str:
    # SQLite creates the file but not its folder (absent while STORE_PATH points elsewhere).
    os.makedirs(app.instance_path, exist_ok=True)
    return "sqlite+aiosqlite:///" + os.path.join(app.instance_path, "demo.sqlite")


engine = create_async_engine(os.environ.get("DATABASE_URL") or default_database_url())
# Views read rows (and their files' URLs) after the commit: keep them loaded.
Session = async_sessionmaker(engine, expire_on_commit=False)


class Base(DeclarativeBase):
    pass


class Upload(Base):
    # Earlier versions of the demo kept rows in 'uploads' (without the storage column), then in
    # 'files', whose StoreType column is a VARCHAR(256) of the path: FileType reads those paths,
    # but its records (JSON, with the thumbnail's path) outgrow that column on PostgreSQL and
    # MySQL. Both tables are left alone.
    __tablename__ = "gallery"

    id: Mapped[int] = mapped_column(primary_key=True)
    # The stored file's name: the client's, cleaned, or renamed when that one was taken.
    name: Mapped[str] = mapped_column(String(255))
    size: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=lambda: datetime.now(UTC)
    )
    # The STORAGE that holds the file. Two storages may each hold a 'demo/photo.jpg': a row
    # only ever opens or deletes the file of its own.
    storage: Mapped[str] = mapped_column(String(1024), index=True)
    # The file's record: 'demo/photo.jpg' (below STORE_PATH), its size and type, and its
    # variants ({'thumb': 'demo/_variants/photo.jpg/thumb.webp'}), released with the row.
    file: Mapped[FileRecord] = mapped_column(FileType(location="demo"), nullable=False)


_tables_lock = anyio.Lock()
_tables_created = False


@app.before_serving
async def create_tables() -> None:
    """Create the tables, once per process: at startup, or before the first request when
    nothing ran the startup hooks (Quart's test client outside ``app.test_app()``)."""
    global _tables_created
    if _tables_created:
        return
    async with _tables_lock:
        if not _tables_created:
            async with engine.begin() as connection:
                await connection.run_sync(Base.metadata.create_all)
            _tables_created = True


app.before_request(create_tables)


@app.after_serving
async def dispose_engine() -> None:
    await engine.dispose()


@dataclass
class Card:
    """One stored file as the page shows it."""

    id: int
    name: str
    size: int
    created_at: datetime
    url: str
    #: Shown as a thumbnail: an image the store serves inline (never SVG, which may hold script).
    image: bool
    #: The URL of its thumbnail variant; None: the card shows the original (no variant made).
    thumbnail: str | None
    #: The extension, for the icon of the others ("PDF", "TXT").
    kind: str
    #: False while a background upload is on its way: the URL finds nothing yet.
    delivered: bool


async def is_delivered(file: Any) -> bool:
    """Whether the file's URL finds it. With ``STORE_BACKGROUND`` on, ``save()`` returns once
    the file is spooled, and the URL finds nothing until the upload is delivered."""
    if not BACKGROUND:
        return True
    if file.upload is not None:  # saved by this request: its upload knows
        return bool(file.status == "delivered")
    try:
        return bool(await file.exists())
    except ProviderError:
        return False  # the backend is down: the file waits in the spool


async def link(file: Any) -> str:
    """The store's own route for a local file; a presigned GET for a private bucket."""
    return str(await file.url(LINK_SECONDS if ON_S3 else None))


async def card(row: Upload) -> Card:
    record: FileRecord = row.file
    name = record.path.rpartition("/")[2]
    mimetype, attachment = content_policy(name)
    extension = os.path.splitext(name)[1].lstrip(".")
    # A provider of a path knows the background upload this process has under way for it.
    file = record.provider
    thumb = record.variant(THUMB).provider if THUMB in record.variants else None
    delivered = await is_delivered(file) and (thumb is None or await is_delivered(thumb))
    return Card(
        id=row.id,
        name=row.name,
        size=row.size,
        created_at=row.created_at,
        url=await link(file),
        image=thumb is not None or (mimetype.startswith("image/") and not attachment),
        thumbnail=await link(thumb) if thumb is not None else None,
        kind=extension[:4].upper() or "FILE",
        delivered=delivered,
    )


async def find(session: AsyncSession, upload_id: int) -> Upload:
    """The row ``upload_id`` of this storage; a 404 for a row of another storage, whose path
    may name a file of this one."""
    row = await session.get(Upload, upload_id)
    if row is None or row.storage != STORAGE:
        abort(404, f"no upload {upload_id} in this storage ({STORAGE})")
    return row


async def add_row(provider: Any, metadata: dict[str, str]) -> None:
    """The tus endpoint's ``on_complete``: a finished upload, stored, its thumbnail made
    (``provider.variants``), gets its row. This runs in the request that finished the upload,
    before the answer telling the page where the file went (``Upload-Stored-Path``), so the row
    is there when the page asks for its card."""
    row = Upload(name=provider.filename, size=provider.size, storage=STORAGE, file=provider)
    try:
        async with Session.begin() as session:
            session.add(row)  # the record lists the variants: the row releases them too
    except BaseException:
        # No row points at the file: delete it and its thumbnail, as /upload does.
        with anyio.CancelScope(shield=True):
            await provider.delete(missing_ok=True)
        raise


# The resumable path the page uploads through: POST /files/ creates an upload, PATCH
# /files/<id> appends to it (a few MiB each), HEAD says how much arrived.
app.register_blueprint(
    tus_blueprint(store, url_prefix="/files", location="demo", on_complete=add_row)
)
# On S3 the page sends each file straight to the bucket instead: these endpoints (Uppy's
# @uppy/aws-s3 protocol) sign a presigned POST, or the parts of a multipart upload, for a staged
# key in the bucket; then the page posts that key to /confirm. The bytes never reach this app.
if ON_S3:
    store.direct_uploads(app, url_prefix="/direct-uploads")


@app.template_filter("filesize")
def filesize(size: int) -> str:
    """``'512 bytes'``, ``'16.6 KiB'``, ``'3.0 MiB'``."""
    if size < 1024:
        return f"{size} bytes"
    value, unit = size / 1024, "KiB"
    for larger in ("MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    return f"{value:.1f} {unit}"


def is_script() -> bool:
    """The page's own JavaScript: it wants the new cards as HTML, errors as text."""
    return request.headers.get("X-Requested-With") == "XMLHttpRequest"


def wants_html() -> bool:
    # Browsers ask for text/html first; curl sends */*, scripts may ask for text/plain.
    return request.accept_mimetypes.best in ("text/html", "application/xhtml+xml")


def direct() -> bool:
    """Whether the page sends its files straight to the bucket: on S3, unless ``?via=tus`` asks
    for the resumable path through this app (to compare the two)."""
    return ON_S3 and request.args.get("via") != "tus"


def where() -> Markup:
    """Where the files go, for the page's header."""
    if ON_S3:
        prefix = CONFIG.path.strip("/")
        bucket = Markup("in the S3 bucket <code>{}</code>").format(CONFIG["STORE_S3_BUCKET"])
        return bucket + Markup(", under <code>{}/</code>").format(prefix) if prefix else bucket
    return Markup("on the local disk, in <code>{}</code>").format(CONFIG.path)


@app.get("/")
async def index() -> str:
    mine = select(Upload).where(Upload.storage == STORAGE)
    newest_first = mine.order_by(Upload.created_at.desc(), Upload.id.desc())
    others = select(func.count()).select_from(Upload).where(Upload.storage != STORAGE)
    async with Session() as session:
        uploads = (await session.scalars(newest_first)).all()
        elsewhere = await session.scalar(others) or 0
    cards = [await card(row) for row in uploads]
    # The limit of the path the page's script takes, not the form's MAX_CONTENT_LENGTH.
    largest = CONFIG["STORE_DIRECT_MAX_SIZE" if direct() else "STORE_TUS_MAX_SIZE"]
    limit = f"up to {filesize(largest)} each" if largest is not None else "any size"
    return await render_template(
        "index.html",
        cards=cards,
        where=where(),
        limit=limit,
        elsewhere=elsewhere,
        direct=direct(),
        on_s3=ON_S3,
    )


@app.post("/upload")
async def upload() -> ResponseReturnValue:
    # Every file of the 'afile' field streamed into <STORE_PATH>/demo as the body arrives; a
    # file in any other field is a 400, and on any failure none of them is left behind.
    stored = await store.Provider.save_request(fields=["afile"], location="demo")
    files = stored.files.getlist("afile")
    if not files:
        abort(400, "no file in the 'afile' field")
    rows = [
        Upload(name=f.filename, size=stored.sizes[f.relative_path], storage=STORAGE, file=f)
        for f in files
    ]
    try:
        for f in files:
            # Each image's thumbnail, listed in f.variants: the row's record names it. A broken
            # image is a 422 (InvalidFileError), and nothing of this request is kept.
            await make_variants(f)
        async with Session.begin() as session:
            session.add_all(rows)
    except BaseException:
        # No row points at the files: delete them and their variants (FileType does this for
        # uploads it saves itself; these were saved before the transaction began).
        with anyio.CancelScope(shield=True):
            for f in files:
                await f.delete(missing_ok=True)
        raise
    if is_script():
        cards = [await card(row) for row in rows]
        return await render_template("_cards.html", cards=cards)
    if wants_html():
        return redirect(url_for("index"), 303)
    # Relative URLs without STORE_DOMAIN; give scripts something they can fetch.
    urls = [urljoin(request.url_root, await link(f)) for f in files]
    return Response("".join(url + "\n" for url in urls), mimetype="text/plain")


@app.post("/confirm")
async def confirm() -> str:
    """A direct upload has arrived in the bucket, staged (``demo/.direct/...``): store it under
    its name in ``demo/`` (a copy inside the bucket, never over another file; its thumbnail
    made), add its row, and answer its card. ``key`` is the one /direct-uploads handed the page
    for it; any other is a 400, a key nothing arrived at a 404."""
    key = (await request.form).get("key", "")
    if not key:
        abort(400, "no key: post the key /direct-uploads gave the upload")
    try:
        record = await store["default"].confirm(key, location="demo")
    except NotFoundError as error:
        abort(404, str(error))
    name = record.path.rpartition("/")[2]
    row = Upload(name=name, size=record.size or 0, storage=STORAGE, file=record)
    try:
        async with Session.begin() as session:
            session.add(row)
    except BaseException:
        # No row points at the file: delete it and its thumbnail, as add_row does.
        with anyio.CancelScope(shield=True):
            for path in record.paths:
                await store.Provider(path).delete(missing_ok=True)
        raise
    return await render_template("_cards.html", cards=[await card(row)])


@app.get("/card")
async def card_of_file() -> str:
    """The card of the row holding the stored file ``?path=demo/big.iso``: the page asks for it
    once the tus endpoint has said where an upload went (``Upload-Stored-Path``)."""
    try:
        path = store.Provider(request.args.get("path", "")).relative_path  # a clean path
    except UnsafePathError as error:
        abort(404, str(error))
    # The column holds JSON: rows are found by the file's name (a column of its own), then
    # told apart by their record's path, the same query on every database.
    named = select(Upload).where(Upload.storage == STORAGE, Upload.name == path.rpartition("/")[2])
    async with Session() as session:
        found = await session.scalars(named.order_by(Upload.id.desc()))
        row = next((r for r in found if r.file.path == path), None)
    if row is None:
        abort(404, f"no upload of {path} in this storage ({STORAGE})")
    return await render_template("_cards.html", cards=[await card(row)])


@app.get("/card/<int:upload_id>")
async def one_card(upload_id: int) -> str:
    """One card as it is now: the page's script asks again until a background upload is
    delivered, then shows the thumbnail."""
    async with Session() as session:
        row = await find(session, upload_id)
    return await render_template("_cards.html", cards=[await card(row)])


@app.post("/delete/<int:upload_id>")
async def delete(upload_id: int) -> ResponseReturnValue:
    async with Session.begin() as session:
        row = await find(session, upload_id)
        path = row.file.relative_path
        await session.delete(row)
    # Committed: FileType has deleted the file and its variants too.
    if wants_html() and not is_script():
        return redirect(url_for("index"), 303)
    return Response(f"deleted {path}\n", mimetype="text/plain")


@app.errorhandler(HTTPException)
async def plain_errors(error: HTTPException) -> HTTPException | ResponseReturnValue:
    """Errors as one line of text for the page's script and for curl; browsers get Quart's."""
    if wants_html() and not is_script():
        return error
    return Response(
        f"{error.code} {error.name}: {error.description}\n",
        error.code or 500,
        mimetype="text/plain",
    )


@app.errorhandler(StoreError)
async def store_errors(error: StoreError) -> HTTPException | ResponseReturnValue:
    """The library's message, which names the file and the key to check (S3 down, a full
    disk), instead of a bare "500 Internal Server Error"."""
    if isinstance(error, HTTPException):  # BadUploadError (400), UploadTooLargeError (413)
        return await plain_errors(error)
    app.logger.error("%s", error)
    if isinstance(error, ProviderError):
        return await plain_errors(ServiceUnavailable(str(error)))
    return await plain_errors(InternalServerError(str(error)))


def main(argv: list[str] | None = None) -> int:
    """``make demo``: serve the demo with uvicorn until Ctrl-C.

    uvicorn, with uvloop and httptools, is the server the README recommends for production:
    ``save_request`` took a 1 GiB upload at about twice hypercorn's speed (``bench/servers.py``).
    """
    import asyncio

    import uvicorn

    parser = argparse.ArgumentParser(description="Serve the async_store demo with uvicorn.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    try:
        # Bound here and handed to uvicorn: a port in use is one line, not its traceback.
        listener = socket.create_server((args.host, args.port), family=family)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            why = "is in use (another make demo?)"
        else:
            why = f"cannot be listened on ({exc.strerror})"
        print(
            f"error: {args.host}:{args.port} {why}: stop what holds it, or pick another port, "
            f"e.g. make demo PORT={args.port + 1}",
            file=sys.stderr,
        )
        return 1
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    print(f"async_store demo on http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    print(f"files {Markup(where()).striptags()}; rows in {engine.url}", flush=True)
    if ON_S3:
        host = f"[{args.host}]" if ":" in args.host else args.host
        origin = f"http://{host}:{args.port}"
        print(
            f"the page uploads straight to the bucket: its CORS rule must let {origin} in "
            "(docs/direct.md)",
            flush=True,
        )
        if app.config["SECRET_KEY"] == DEV_SECRET_KEY:
            print(
                "SECRET_KEY is not set: the uploads' keys are signed with the demo's "
                "development key (set SECRET_KEY to a random value anywhere else)",
                flush=True,
            )
    asyncio.run(server.serve(sockets=[listener]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
