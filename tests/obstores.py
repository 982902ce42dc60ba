"""The obstore backend's test configs: obstore on the suite's SeaweedFS, and on obstore's own
memory store, and what such a store really holds (read with obstore, behind the backend)."""

from __future__ import annotations

from typing import Any

import obstore
import pytest

from async_store.backends.base import Backend
from async_store.backends.obstore import ObstoreBackend
from tests.seaweed import SeaweedFS

#: SeaweedFS takes any key (no identities configured); obstore needs one to sign requests.
KEYS = {"access_key_id": "test-access-key", "secret_access_key": "test-secret"}


def seaweed_options(server: SeaweedFS, **more: Any) -> dict[str, Any]:
    """``STORE_OBSTORE_OPTIONS`` for the suite's SeaweedFS: plain HTTP on 127.0.0.1."""
    return {
        "endpoint": server.endpoint,
        "region": "us-east-1",
        **KEYS,
        "client_options": {"allow_http": True},
        **more,
    }


def obstore_s3_config(server: SeaweedFS, bucket: str, **config: Any) -> dict[str, Any]:
    """An app's config for obstore on SeaweedFS, in ``bucket`` below ``media/``."""
    return {
        "STORE_PROVIDER": "obstore",
        "STORE_OBSTORE_URL": f"s3://{bucket}",
        "STORE_OBSTORE_OPTIONS": seaweed_options(server),
        "STORE_PATH": "media",
        **config,
    }


def obstore_config(backend: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """The conftest ``app`` fixture's config for ``backend`` ``"obstore"`` (SeaweedFS) or
    ``"obstore-memory"``."""
    if backend == "obstore-memory":
        return {"STORE_PROVIDER": "obstore", "STORE_OBSTORE_URL": "memory://"}
    server = request.getfixturevalue("s3_server")
    return obstore_s3_config(server, request.getfixturevalue("bucket"))


def memory_store_files(backend: Backend) -> dict[str, bytes]:
    """Every object of an obstore backend's store (below its URL's prefix), hidden ones
    included: {key: bytes}."""
    assert isinstance(backend, ObstoreBackend)
    found = {}
    for page in obstore.list(backend.store):
        for meta in page:
            found[meta["path"]] = bytes(obstore.get(backend.store, meta["path"]).bytes())
    return found
