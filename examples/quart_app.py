"""The async_store demo: an upload page with drag and drop, a progress bar per file, a gallery
of the stored files and delete, on Quart and SQLAlchemy.

Run it with ``make demo`` (hypercorn) or ``python examples/quart_app.py`` (Quart's dev server),
then open http://127.0.0.1:5000. No config is needed: each upload is a row of an SQLite database,
``examples/instance/demo.sqlite``, whose ``StoreType`` column holds the path of a file in
``examples/instance/uploads`` (both git-ignored).

The environment changes that: ``DATABASE_URL`` (any async SQLAlchemy URL) and every ``STORE_*``
key, read as JSON when it parses as a number, ``true``/``false`` or an object, else as text
(paths, URLs, names and keys always as text). To store in S3 or an S3-compatible server::

    STORE_PROVIDER=s3 STORE_S3_BUCKET=my-bucket STORE_S3_REGION=eu-west-1 \\
    STORE_S3_ACCESS_KEY=... STORE_S3_SECRET_KEY=... make demo
    # MinIO, SeaweedFS, R2, ...: add STORE_S3_ENDPOINT_URL=http://127.0.0.1:8333

Uploads take the library's fastest path, :meth:`Provider.save_request`: each file is parsed out
of the request body as it arrives and streamed straight into the store (never spooled to a temp
file first), and a failed commit deletes them again. Local files are served by the store's safe
route; S3 files through presigned URLs (the bucket stays private).

From a shell::

    curl -F afile=@photo.jpg http://127.0.0.1:5000/upload          # prints the file's URL
    curl -X POST http://127.0.0.1:5000/delete/1                     # by the row's id
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urljoin

import anyio
from markupsafe import Markup
from quart import Quart, Response, abort, redirect, render_template, request, url_for
from quart.typing import ResponseReturnValue
from sqlalchemy import DateTime, String, select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from werkzeug.exceptions import HTTPException

from async_store import Store
from async_store.config import config_from_env
from async_store.serve import content_policy
from async_store.sqla import StoreType

HERE = os.path.dirname(os.path.abspath(__file__))
# How long the links of a page stay valid when they are presigned (S3).
LINK_SECONDS = 3600
# An explicit instance folder: run as a script, Quart would otherwise pick the current directory.
app = Quart(__name__, instance_path=os.path.join(HERE, "instance"))
# save_request streams each file into the store, so a large limit costs no memory.
app.config["MAX_CONTENT_LENGTH"] = 1024**3
app.config.update(config_from_env())  # STORE_* variables, e.g. STORE_PROVIDER=s3
store = Store(app)  # STORE_PATH defaults to <instance folder>/uploads


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
    __tablename__ = "uploads"

    id: Mapped[int] = mapped_column(primary_key=True)
    # The stored file's name: the client's, cleaned, or renamed when that one was taken.
    name: Mapped[str] = mapped_column(String(255))
    size: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=lambda: datetime.now(UTC)
    )
    # 'demo/photo.jpg' in the database (below STORE_PATH), a provider once loaded.
    file = mapped_column(StoreType(256, location="demo"), nullable=False)


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
    #: The extension, for the icon of the others ("PDF", "TXT").
    kind: str


async def card(row: Upload) -> Card:
    mimetype, attachment = content_policy(row.file.filename)
    extension = os.path.splitext(row.file.filename)[1].lstrip(".")
    return Card(
        id=row.id,
        name=row.name,
        size=row.size,
        created_at=row.created_at,
        # The store's own route for local files; a presigned GET for a private bucket.
        url=await row.file.url(LINK_SECONDS),
        image=mimetype.startswith("image/") and not attachment,
        kind=extension[:4].upper() or "FILE",
    )


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


def where() -> Markup:
    """Where the files go, for the page's header."""
    config = store.state().config
    if config["STORE_PROVIDER"] == "s3":
        prefix = config.path.strip("/")
        bucket = Markup("in the S3 bucket <code>{}</code>").format(config["STORE_S3_BUCKET"])
        return bucket + Markup(", under <code>{}/</code>").format(prefix) if prefix else bucket
    return Markup("on the local disk, in <code>{}</code>").format(config.path)


@app.get("/")
async def index() -> str:
    newest_first = select(Upload).order_by(Upload.created_at.desc(), Upload.id.desc())
    async with Session() as session:
        uploads = (await session.scalars(newest_first)).all()
    cards = [await card(row) for row in uploads]
    limit = filesize(app.config["MAX_CONTENT_LENGTH"])
    return await render_template("index.html", cards=cards, where=where(), limit=limit)


@app.post("/upload")
async def upload() -> ResponseReturnValue:
    # Every file of the 'afile' field streamed into <STORE_PATH>/demo as the body arrives; a
    # file in any other field is a 400, and on any failure none of them is left behind.
    stored = await store.Provider.save_request(fields=["afile"], location="demo")
    files = stored.files.getlist("afile")
    if not files:
        abort(400, "no file in the 'afile' field")
    rows = [Upload(name=f.filename, size=stored.sizes[f.relative_path], file=f) for f in files]
    try:
        async with Session.begin() as session:
            session.add_all(rows)
    except BaseException:
        # No row points at the files: delete them (StoreType does this for uploads it saves
        # itself; these were saved before the transaction began).
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
    urls = [urljoin(request.url_root, await f.url(LINK_SECONDS)) for f in files]
    return Response("".join(url + "\n" for url in urls), mimetype="text/plain")


@app.post("/delete/<int:upload_id>")
async def delete(upload_id: int) -> ResponseReturnValue:
    async with Session.begin() as session:
        row = await session.get(Upload, upload_id)
        if row is None:
            abort(404)
        path = row.file.relative_path
        await session.delete(row)
    # Committed: StoreType has deleted the file too.
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


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=5000)
