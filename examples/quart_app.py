"""The async_store demo: upload, list, download and delete files with Quart.

Run it with ``make demo`` (hypercorn) or ``python examples/quart_app.py`` (Quart's dev server),
then open http://127.0.0.1:5000. No config is needed: files go to ``examples/instance/uploads``
(git-ignored). The environment may override ``STORE_PATH`` and ``STORE_DOMAIN``.

From a shell::

    curl -F afile=@photo.jpg http://127.0.0.1:5000/upload          # prints the file's URL
    curl -X POST http://127.0.0.1:5000/delete/photo.jpg
"""

from __future__ import annotations

import os
from urllib.parse import urljoin

import anyio.to_thread
from quart import Quart, Response, abort, redirect, render_template_string, request, url_for
from quart.typing import ResponseReturnValue

from async_store import NotFoundError, Store, UnsafePathError

HERE = os.path.dirname(os.path.abspath(__file__))

# An explicit instance folder: run as a script, Quart would otherwise pick the current directory.
app = Quart(__name__, instance_path=os.path.join(HERE, "instance"))
for key in ("STORE_PATH", "STORE_DOMAIN"):
    if os.environ.get(key):
        app.config[key] = os.environ[key]
store = Store(app)  # STORE_PATH defaults to <instance folder>/uploads

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
{% if files %}
<ul>
  {% for name, url in files %}
  <li>
    <a href="{{ url }}">{{ name }}</a>
    <form method="post" action="{{ url_for('delete', name=name) }}" style="display:inline">
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


def list_stored(root: str) -> list[str]:
    """Relative paths of the stored files below ``root``, without dot-files (temp files)."""
    found: list[str] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        relative = os.path.relpath(folder, root)
        prefix = "" if relative == "." else relative.replace(os.sep, "/") + "/"
        found.extend(prefix + name for name in sorted(files) if not name.startswith("."))
    return found


def wants_html() -> bool:
    # Browsers ask for text/html first; curl sends */*, scripts may ask for text/plain.
    return request.accept_mimetypes.best in ("text/html", "application/xhtml+xml")


@app.get("/")
async def index() -> str:
    root = store.state().config.path
    # Listing a folder blocks: one hop to a worker thread, the event loop stays free.
    names = await anyio.to_thread.run_sync(list_stored, root)
    files = []
    for name in names:
        try:
            files.append((name, store.Provider(name).relative_url))
        except UnsafePathError:
            continue  # a name the store would not serve (backslash, control character)
    return await render_template_string(INDEX, files=files, root=root)


@app.post("/upload")
async def upload() -> ResponseReturnValue:
    uploads = [f for f in (await request.files).getlist("afile") if f.filename]
    if not uploads:
        abort(400, "no file in the 'afile' field")
    urls = [await store.Provider(f).save() for f in uploads]
    if wants_html():
        return redirect(url_for("index"), 303)
    # Without STORE_DOMAIN the URLs are relative; give scripts something they can fetch.
    text = "".join(urljoin(request.url_root, url) + "\n" for url in urls)
    return Response(text, mimetype="text/plain")


@app.post("/delete/<path:name>")
async def delete(name: str) -> ResponseReturnValue:
    try:
        await store.Provider(name).delete()
    except UnsafePathError:
        abort(400, "not a stored file's path")
    except NotFoundError:
        abort(404)
    if wants_html():
        return redirect(url_for("index"), 303)
    return Response(f"deleted {name}\n", mimetype="text/plain")


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=5000)
