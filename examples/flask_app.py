"""The Flask-Store manual's Quick Start, on async_store: only the import line changed.

Run it with ``python examples/flask_app.py``, then::

    curl -F afile=@localfile.jpg http://127.0.0.1:5000/upload
    curl -F afile=@localfile.jpg http://127.0.0.1:5000/upload-async

Files go to ``examples/instance/uploads`` (git-ignored) unless ``STORE_PATH`` is set in the
environment; ``STORE_DOMAIN`` may be overridden the same way.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, request

from async_store import Store

HERE = os.path.dirname(os.path.abspath(__file__))

app = Flask(__name__, instance_path=os.path.join(HERE, "instance"))
app.config["STORE_DOMAIN"] = os.environ.get("STORE_DOMAIN") or "http://127.0.0.1:5000"
app.config["STORE_PATH"] = os.environ.get("STORE_PATH") or os.path.join(
    app.instance_path, "uploads"
)
store = Store(app)


@app.route("/upload", methods=["POST"])
def upload() -> Any:  # store.Provider is Any: the async class in Quart, the sync one here
    provider = store.Provider(request.files.get("afile"))
    provider.save()

    return provider.absolute_url


@app.route("/upload-async", methods=["POST"])
async def upload_async() -> str:
    # Flask runs an async view in a fresh event loop of its own, where the blocking shim
    # (store.Provider) refuses to run: use the async provider there.
    provider = store.AsyncProvider(request.files["afile"])
    await provider.save()
    return provider.absolute_url


@app.get("/")
def index() -> str:
    return """<!doctype html>
<html lang="en">
<meta charset="utf-8">
<title>async_store with Flask</title>
<h1>async_store with Flask</h1>
<form method="post" action="/upload" enctype="multipart/form-data">
  <input type="file" name="afile" required> <button>Upload (sync view)</button>
</form>
<form method="post" action="/upload-async" enctype="multipart/form-data">
  <input type="file" name="afile" required> <button>Upload (async view)</button>
</form>
</html>
"""


if __name__ == "__main__":
    app.run()
