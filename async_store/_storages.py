"""Several storages per app: ``STORE_STORAGES`` read into one config per storage.

The seed's ``STORE_*`` keys configure the ``default`` storage, unchanged. ``STORE_STORAGES``
names more, each a dict of the same keys without ``STORE_``::

    app.config["STORE_STORAGES"] = {
        "documents": {"PROVIDER": "s3", "S3_BUCKET": "acme-docs", "S3_ACL": "private"},
        "exports": {"PROVIDER": "local", "PATH": "/srv/exports", "SERVE_FILES": False},
    }

A named storage takes nothing from the default one (not its domain, not its credentials): what
it does not set has the table's default, except where two storages would collide, which get
one of their own: its folder (``<instance>/uploads-NAME``), its URL prefix
(``<default prefix>-NAME``) and its spool (``<instance>/store-spool/NAME``). Its messages name
it: ``STORE_STORAGES['documents']: S3_BUCKET must be …``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .exceptions import NotConfiguredError

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from .config import StoreConfig

__all__ = ["DEFAULT", "StorageSpec", "check_apart", "named_error", "storage_specs"]

#: The storage the seed's keys configure.
DEFAULT = "default"
_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}\Z")
#: Shorter names a storage's dict may use for a key.
_ALIASES = {"SERVE": "SERVE_FILES"}


@dataclass(frozen=True)
class StorageSpec:
    """One storage's name and its ``STORE_*`` config as the app gives it."""

    name: str
    config: Mapping[str, Any]

    @property
    def where(self) -> str:
        """How messages name the place its keys are set."""
        return "app.config" if self.name == DEFAULT else f"STORE_STORAGES[{self.name!r}]"

    def defaults(self, instance_path: str, default_prefix: str) -> dict[str, Any]:
        """What a named storage gets instead of the default storage's folders and prefix."""
        if self.name == DEFAULT:
            return {}
        return {
            "STORE_PATH": os.path.join(instance_path, f"uploads-{self.name}"),
            "STORE_URL_PREFIX": f"{default_prefix.rstrip('/')}-{self.name}",
            "STORE_SPOOL_PATH": os.path.join(instance_path, "store-spool", self.name),
        }


def storage_specs(app_config: Mapping[str, Any]) -> list[StorageSpec]:
    """The default storage and each one ``STORE_STORAGES`` names, in that order.

    :raises NotConfiguredError: for a ``STORE_STORAGES`` that is not a dict of dicts, a bad
        name, or a key given twice (``PATH`` and ``STORE_PATH``).
    """
    own = {k: v for k, v in app_config.items() if k.startswith("STORE_") and k != "STORE_STORAGES"}
    specs = [StorageSpec(DEFAULT, own)]
    named = app_config.get("STORE_STORAGES") or {}
    if not isinstance(named, dict):
        raise NotConfiguredError(
            f"STORE_STORAGES must be a dict of storage name to its keys, such as "
            f"{{'documents': {{'PROVIDER': 's3', 'S3_BUCKET': 'docs'}}}}, not {named!r}."
        )
    for name, keys in named.items():
        if not isinstance(name, str) or not _NAME.match(name) or name == DEFAULT:
            raise NotConfiguredError(
                f"STORE_STORAGES: {name!r} is not a storage name: lower-case letters, digits and "
                f"'_', starting with a letter, at most 40 characters, and not {DEFAULT!r} (the "
                f"storage of the STORE_* keys)."
            )
        if not isinstance(keys, dict):
            raise NotConfiguredError(
                f"STORE_STORAGES[{name!r}] must be a dict of its keys without 'STORE_' "
                f"({{'PROVIDER': 'local', 'PATH': '/srv/exports'}}), not {keys!r}."
            )
        config: dict[str, Any] = {}
        for key, value in keys.items():
            short = str(key).removeprefix("STORE_")
            full = f"STORE_{_ALIASES.get(short, short)}"
            if full in config:
                raise NotConfiguredError(f"STORE_STORAGES[{name!r}] sets {full[6:]} twice.")
            config[full] = value
        specs.append(StorageSpec(name, config))
    return specs


def named_error(spec: StorageSpec, error: NotConfiguredError) -> NotConfiguredError:
    """``error``, raised for a named storage, naming its keys where they are set."""
    if spec.name == DEFAULT:
        return error
    message = str(error).replace("app.config[", f"{spec.where}[")
    message = re.sub(r"\bSTORE_(?!STORAGES)([A-Z0-9_]+)", r"\1", message)
    return NotConfiguredError(f"{spec.where}: {message}")


def check_apart(storages: Sequence[tuple[str, StoreConfig, str | None, bool]]) -> None:
    """Storages never share a URL prefix or a local folder, nor hold one another's.

    ``storages`` is ``(name, config, backend kind, serves files)`` per storage.

    :raises NotConfiguredError: naming both storages and the key.
    """
    served = [(name, config.url_prefix or "/") for name, config, _, serves in storages if serves]
    for (one, a), (other, b) in _pairs(served):
        if _nested(a, b, "/"):
            raise NotConfiguredError(
                f"the storages {one!r} and {other!r} are served under the URL prefixes {a!r} "
                f"and {b!r}: one would hide the other's files; give each a URL_PREFIX of its own."
            )
    folders = [(name, config.path) for name, config, kind, _ in storages if kind == "local"]
    for (one, a), (other, b) in _pairs(folders):
        if _nested(a, b, os.sep):
            raise NotConfiguredError(
                f"the storages {one!r} and {other!r} keep their files in {a!r} and {b!r}: one "
                f"would list, serve and delete the other's; give each a PATH of its own."
            )


def _pairs(items: list[tuple[str, str]]) -> Iterator[tuple[tuple[str, str], tuple[str, str]]]:
    for i, first in enumerate(items):
        for second in items[i + 1 :]:
            yield first, second


def _nested(a: str, b: str, sep: str) -> bool:
    a, b = a.rstrip(sep) + sep, b.rstrip(sep) + sep
    return a.startswith(b) or b.startswith(a)
