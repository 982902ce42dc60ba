"""Resumable uploads through the app: a tus 1.0 server for Quart and Flask, into any storage.

::

    from async_store.tus import tus_blueprint

    app.register_blueprint(tus_blueprint(store, url_prefix="/files", on_complete=stored))

It speaks the core protocol and the creation, creation-with-upload, termination, expiration and
checksum extensions (what tus-js-client, Uppy and tuspy use). Uploads wait in
``STORE_TUS_PATH``, one folder each, locked while written: any worker process of the host may
take any request, and a restarted server carries on where the last one stopped. A finished upload
is saved into the storage like any other file. :func:`remove_expired` clears the abandoned ones.
"""

from __future__ import annotations

from ._blueprint import tus_blueprint
from ._state import remove_expired

__all__ = ["remove_expired", "tus_blueprint"]
