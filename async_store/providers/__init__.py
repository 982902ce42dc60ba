"""Providers, and how ``STORE_PROVIDER`` names one.

``STORE_PROVIDER`` takes a short name (``"local"``, ``"s3"``, ``"memory"``, ``"obstore"``), a
dotted path to any :class:`Provider` subclass (``"myapp.storage.MyProvider"``), the seed
Flask-Store's paths (``"flask_store.providers.local.LocalProvider"``, …) or a class. Modules
are imported only when named, so ``aioboto3`` (or ``obstore``) is never imported by an app that
stores on local disk.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any

from ..exceptions import NotConfiguredError
from .base import Provider

__all__ = ["Provider", "get_provider_class"]

_SHORT_NAMES = {
    "local": "async_store.providers.local.LocalProvider",
    "s3": "async_store.providers.s3.S3Provider",
    "memory": "async_store.providers.memory.MemoryProvider",
    "obstore": "async_store.providers.obstore.ObstoreProvider",
}
# The seed's dotted paths keep working without a module called flask_store.
_SEED_PATHS = {
    "flask_store.providers.local.LocalProvider": "async_store.providers.local.LocalProvider",
    "flask_store.providers.s3.S3Provider": "async_store.providers.s3.S3Provider",
    "flask_store.providers.s3.S3GeventProvider": "async_store.providers.s3.S3GeventProvider",
}
_EXTRAS = {"async_store.providers.s3": "s3", "async_store.providers.obstore": "obstore"}


@cache
def _import(path: str) -> type[Provider]:
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise NotConfiguredError(
            f"STORE_PROVIDER {path!r} is neither a short name ({', '.join(_SHORT_NAMES)}) nor a "
            f"dotted path such as 'myapp.storage.MyProvider'."
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = _EXTRAS.get(module_name)
        if extra and exc.name != module_name:
            hint = f"install its dependencies with: pip install 'async_store[{extra}]'"
        else:
            hint = "check the module path"
        raise NotConfiguredError(
            f"STORE_PROVIDER {path!r} cannot be imported ({exc}); {hint}."
        ) from exc
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise NotConfiguredError(
            f"STORE_PROVIDER {path!r} must name a subclass of async_store.Provider, found {cls!r}."
        )
    return cls


def get_provider_class(name: Any) -> type[Provider]:
    """Return the provider class ``STORE_PROVIDER`` names.

    :raises NotConfiguredError: if the name is unknown, cannot be imported (the message says which
        extra to install) or is not a :class:`Provider` subclass.
    """
    if isinstance(name, type) and issubclass(name, Provider):
        return name
    if not isinstance(name, str) or not name:
        raise NotConfiguredError(
            f"STORE_PROVIDER must be 'local', 's3', 'memory', 'obstore', a dotted path or a "
            f"Provider class, not {name!r}."
        )
    path = _SHORT_NAMES.get(name.lower(), _SEED_PATHS.get(name, name))
    return _import(path)
