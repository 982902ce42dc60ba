"""The app ``bench/tus.py`` measures: a Quart app on local disk with the tus endpoint at
``/files/`` and ``save_request`` at ``/up``, under hypercorn (the demo's server)."""

from __future__ import annotations

import sys

import quart

from async_store import Store
from async_store.tus import tus_blueprint

from .direct_server import run


def make_app(folder: str) -> quart.Quart:
    app = quart.Quart(__name__)
    app.config.update(
        MAX_CONTENT_LENGTH=None,
        STORE_PATH=f"{folder}/store",
        STORE_TUS_PATH=f"{folder}/tus",
        STORE_TUS_MAX_SIZE=None,
    )
    store = Store(app)
    app.register_blueprint(tus_blueprint(store, url_prefix="/files"))

    @app.post("/up")
    async def up() -> str:
        stored = await store.save_request(fields=["f"])
        return str(stored.files["f"].relative_path)

    return app


def main() -> None:
    port, folder = int(sys.argv[1]), sys.argv[2]
    run(make_app(folder), port)


if __name__ == "__main__":
    main()
