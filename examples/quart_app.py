"""The async_store demo: upload, list, download and delete files with Quart and SQLAlchemy.

Run it with ``make demo`` (hypercorn) or ``python examples/quart_app.py`` (Quart's dev server),
then open http://127.0.0.1:5000. No config is needed: each upload is a row of an SQLite database,
``examples/instance/demo.sqlite``, whose ``StoreType`` column holds the path of a file in
``examples/instance/uploads`` (both git-ignored). The environment may override ``DATABASE_URL``
(any async SQLAlchemy URL), ``STORE_PATH`` and ``STORE_DOMAIN``.

The column does the file work: the commit that inserts a row stores its file (and a commit that
fails leaves no file behind), and the commit that deletes a row deletes its file.

From a shell::

    curl -F afile=@photo.jpg http://127.0.0.1:5000/upload          # prints the file's URL
    curl -X POST http://127.0.0.1:5000/delete/1                     # by the row's id
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from urllib.parse import urljoin

import anyio
from quart import Quart, Response, abort, redirect, render_template_string, request, url_for
from quart.datastructures import FileStorage
from quart.typing import ResponseReturnValue
from sqlalchemy import DateTime, String, select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from async_store import Store
from async_store.sqla import StoreType

HERE = os.path.dirname(os.path.abspath(__file__))

# An explicit instance folder: run as a script, Quart would otherwise pick the current directory.
app = Quart(__name__, instance_path=os.path.join(HERE, "instance"))
for key in ("STORE_PATH", "STORE_DOMAIN"):
    if os.environ.get(key):
        app.config[key] = os.environ[key]
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
    # The name the client sent; the store cleans it and renames on collision (see file).
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


INDEX = """<!doctype html>
<html lang="en">
<meta charset="utf-8">
<title>async_store demo</title>
<h1>async_store demo</h1>
<form method="post" action="{{ url_for('upload') }}" enctype="multipart/form-data">
  <input type="file" name="afile" multiple required>
  <button>Upload</button>
</form>
<h2>Stored files</h2>
<p><small>in {{ root }}</small></p>
{% if uploads %}
<ul>
  {% for upload in uploads %}
  <li>
    <a href="{{ upload.file.absolute_url }}">{{ upload.name }}</a>
    <small>
      {{ "{:,}".format(upload.size) }} bytes, {{ upload.created_at.strftime("%Y-%m-%d %H:%M") }} UTC
      {%- if upload.file.filename != upload.name %}, stored as {{ upload.file.filename }}{% endif %}
    </small>
    <form method="post" action="{{ url_for('delete', upload_id=upload.id) }}"
          style="display:inline">
      <button>delete</button>
    </form>
  </li>
  {% endfor %}
</ul>
{% else %}
<p>Nothing yet: upload something.</p>
{% endif %}
</html>
"""


def size_of(upload: FileStorage) -> int:
    # Quart spooled the upload to memory or a temporary file: seeking does not wait on anything.
    stream = upload.stream
    position = stream.tell()
    size = stream.seek(0, os.SEEK_END)
    stream.seek(position)
    return size


def wants_html() -> bool:
    # Browsers ask for text/html first; curl sends */*, scripts may ask for text/plain.
    return request.accept_mimetypes.best in ("text/html", "application/xhtml+xml")


@app.get("/")
async def index() -> str:
    newest_first = select(Upload).order_by(Upload.created_at.desc(), Upload.id.desc())
    async with Session() as session:
        uploads = (await session.scalars(newest_first)).all()
    root = store.state().config.path
    return await render_template_string(INDEX, uploads=uploads, root=root)


@app.post("/upload")
async def upload() -> ResponseReturnValue:
    files = [f for f in (await request.files).getlist("afile") if f.filename]
    if not files:
        abort(400, "no file in the 'afile' field")
    rows = [Upload(name=(f.filename or "")[:255], size=size_of(f), file=f) for f in files]
    # The flush stores the files; if the commit fails, StoreType deletes them again.
    async with Session.begin() as session:
        session.add_all(rows)
    if wants_html():
        return redirect(url_for("index"), 303)
    # Without STORE_DOMAIN the URLs are relative; give scripts something they can fetch.
    text = "".join(urljoin(request.url_root, row.file.absolute_url) + "\n" for row in rows)
    return Response(text, mimetype="text/plain")


@app.post("/delete/<int:upload_id>")
async def delete(upload_id: int) -> ResponseReturnValue:
    async with Session.begin() as session:
        row = await session.get(Upload, upload_id)
        if row is None:
            abort(404)
        path = row.file.relative_path
        await session.delete(row)
    # Committed: StoreType has deleted the file too.
    if wants_html():
        return redirect(url_for("index"), 303)
    return Response(f"deleted {path}\n", mimetype="text/plain")


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=5000)
