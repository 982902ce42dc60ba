"""Reading one app's store config: every storage's provider class and checked config.

The default storage (the ``STORE_*`` keys) first, then each of ``STORE_STORAGES``; each gets its
provider's defaults, the table's and the ones that keep storages apart, is checked as its
provider checks it, and all are checked against each other (no shared folder or URL prefix).
Nothing is written and nothing is created: ``Store.check_config`` runs exactly this, and
``init_app`` then writes the defaults in force back into ``app.config``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from ._storages import DEFAULT, StorageSpec, check_apart, named_error, storage_specs
from .config import Folders, defaults, read_config
from .exceptions import NotConfiguredError
from .providers import get_provider_class

if TYPE_CHECKING:
    from flask.sansio.app import App

    from .config import StoreConfig
    from .providers.base import Provider

__all__ = ["ReadStorage", "read_storages"]


class ReadStorage(NamedTuple):
    """One storage's config, as read."""

    spec: StorageSpec
    provider_class: type[Provider]
    #: The checked config.
    config: StoreConfig
    #: Every key with its default filled in (what ``init_app`` writes back, default storage).
    given: dict[str, Any]


def read_storages(app: App) -> list[ReadStorage]:
    """Every storage of ``app``, the default one first; no side effects.

    :raises NotConfiguredError: naming the key (and the storage, for a named one).
    """
    read: list[ReadStorage] = []
    for spec in storage_specs(app.config):
        try:
            read.append(_read_storage(app, spec, read))
        except NotConfiguredError as exc:
            if spec.name == DEFAULT:
                raise
            raise named_error(spec, exc) from exc
    check_apart(
        [
            (
                spec.name,
                config,
                cls.config_backend,
                bool(config["STORE_SERVE_FILES"] and cls.register_route),
            )
            for spec, cls, config, _ in read
        ]
    )
    return read


def _read_storage(app: App, spec: StorageSpec, read: list[ReadStorage]) -> ReadStorage:
    provider_class = get_provider_class(spec.config.get("STORE_PROVIDER", "local"))
    folders = Folders(app.root_path, app.instance_path, provider_class.config_backend)
    own = dict(app.config) if spec.name == DEFAULT else dict(spec.config)
    scratch = _Scratch(app, own)
    provider_class.app_defaults(scratch)  # type: ignore[arg-type]  # its defaults first
    prefix = read[0].config.url_prefix if read else ""
    given = {**defaults(folders), **spec.defaults(app.instance_path, prefix), **scratch.config}
    extra = (*provider_class.REQUIRED_CONFIGURATION, *provider_class.config_keys)
    named = None if spec.name == DEFAULT else spec.name
    config = read_config(given, folders, extra, named)
    provider_class.check_config(config)
    return ReadStorage(spec, provider_class, config, given)


class _Scratch:
    """An app's folders and a copy of its config, for provider hooks that set defaults
    (``app_defaults``) without touching the app itself."""

    def __init__(self, app: App, config: dict[str, Any]) -> None:
        self.config = config
        self.root_path = app.root_path
        self.instance_path = app.instance_path
