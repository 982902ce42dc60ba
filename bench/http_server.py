"""The servers ``bench/http.py`` uploads to: one hypercorn process per variant and run, so each
has its own peak RSS. ``python -m bench.http_server VARIANT PORT FOLDER [SERVER]`` (``hypercorn``,
the default, ``uvicorn`` or ``granian``: see ``bench/servers.py``).

Variants, each storing the file field ``f`` of a ``multipart/form-data`` POST to ``/up``:

- ``raw``: a bare ASGI app that reads the body and drops it (the ceiling of the transport);
- ``bare``: a bare ASGI app that parses the body with python-multipart and writes the file with
  plain blocking writes (the least work that stores the file);
- ``naive``: Quart's own way, ``await (await request.files)["f"].save(path)``;
- ``files``: Quart's ``request.files``, then ``store.Provider(file).save()``;
- ``ours``: ``await store.save_request(fields=["f"])``, the streaming path;
- ``flask-naive``: a Flask app served by Werkzeug's threaded WSGI server, Flask's own way,
  ``request.files["f"].save(path)`` (hypercorn's WSGI mode reads the whole body into memory
  before the app starts, so it cannot stream);
- ``flask-ours``: the same Flask app and server, ``store.save_request(fields=["f"])`` through
  the sync API.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from typing import Any

import quart
from hypercorn.asyncio import serve
from hypercorn.config import Config
from python_multipart.multipart import MultipartParser, parse_options_header

from async_store import Store


def raw_app(folder: str) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (message := await receive())["type"] == "http.request":
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def bare_app(folder: str) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = dict(scope["headers"])
        _, params = parse_options_header(headers[b"content-type"])
        with open(os.path.join(folder, uuid.uuid4().hex), "wb") as f:
            parser = MultipartParser(
                params[b"boundary"], {"on_part_data": lambda d, s, e: f.write(d[s:e])}
            )
            while (message := await receive())["type"] == "http.request":
                parser.write(message.get("body", b""))
                if not message.get("more_body"):
                    break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def quart_app(folder: str, variant: str) -> Any:
    app = quart.Quart(__name__)
    app.config["MAX_CONTENT_LENGTH"] = None  # several GiB allowed, as a dataset upload needs
    app.config["STORE_PATH"] = folder
    store = Store(app)

    @app.post("/up")
    async def up() -> str:
        if variant == "naive":
            await (await quart.request.files)["f"].save(os.path.join(folder, uuid.uuid4().hex))
        elif variant == "files":
            await store.Provider((await quart.request.files)["f"]).save()
        else:
            await store.save_request(fields=["f"])
        return "ok"

    return app


def flask_app(folder: str, variant: str) -> Any:
    import flask

    app = flask.Flask(__name__)
    app.config["STORE_MAX_CONTENT_LENGTH"] = None  # no body limit: Flask's own default
    app.config["STORE_PATH"] = folder
    store = Store(app)

    @app.post("/up")
    def up() -> str:
        if variant == "flask-naive":
            flask.request.files["f"].save(os.path.join(folder, uuid.uuid4().hex))
        else:
            store.save_request(fields=["f"])
        return "ok"

    return app


def run(app: Any, port: int, server: str) -> None:
    """Serve the ASGI ``app`` on 127.0.0.1:``port`` with ``server``: ``hypercorn`` (Quart's
    default), ``uvicorn`` (with uvloop and httptools, as ``uvicorn[standard]`` runs it) or
    ``granian`` (its embedded asyncio server), each as its documentation starts one worker."""
    if server == "uvicorn":
        import uvicorn

        uvicorn.run(
            app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
            log_level="warning", access_log=False, lifespan="on",
        )  # fmt: skip
        return
    if server == "granian":
        from granian.constants import Interfaces
        from granian.server.embed import Server

        asyncio.run(Server(app, port=port, interface=Interfaces.ASGI, log_enabled=False).serve())
        return
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    asyncio.run(serve(app, config))


def main() -> None:
    variant, port, folder = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    server = sys.argv[4] if len(sys.argv) > 4 else "hypercorn"
    if variant.startswith("flask-"):
        from werkzeug.serving import make_server

        make_server("127.0.0.1", port, flask_app(folder, variant), threaded=True).serve_forever()
        return
    apps = {"raw": raw_app, "bare": bare_app}
    app = apps[variant](folder) if variant in apps else quart_app(folder, variant)
    run(app, port, server)


if __name__ == "__main__":
    main()
