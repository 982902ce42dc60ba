"""The obstore backend's rows of the config table (``config.SETTINGS`` takes them as they are),
and their checks.

Kept apart from ``config.py`` so that table stays one screenful per backend; the checks only
look at the values (obstore is not imported: a missing extra is the provider's message).
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ._checks import integer, part, positive
from .exceptions import NotConfiguredError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["OBSTORE_ROWS", "SCHEMES", "Options", "obstore_options", "obstore_url"]

MIB = 1024 * 1024

#: The URL schemes the backend takes (obstore's ``from_url``), by the store they make.
SCHEMES = {
    "s3": "s3",
    "s3a": "s3",
    "gs": "gcs",
    "az": "azure",
    "azure": "azure",
    "adl": "azure",
    "abfs": "azure",
    "abfss": "azure",
    "memory": "memory",
}
# Words in an option's name that make its value a credential: blanked in reprs and messages.
_SECRET_WORDS = ("secret", "key", "token", "password", "sas", "credential", "service_account")


def obstore_url(key: str, value: Any) -> str | None:
    """``s3://bucket/prefix``, ``gs://bucket``, ``az://container``, ``memory://``; unset (None,
    ``''``) is the provider's to report (it is required)."""
    if value is None or value == "":
        return None
    scheme = urlsplit(value).scheme.lower() if isinstance(value, str) else ""
    if scheme not in SCHEMES:
        hint = " (local disk: STORE_PROVIDER = 'local')" if scheme == "file" else ""
        raise NotConfiguredError(
            f"{key} must be a store URL such as 's3://bucket/prefix', 'gs://bucket', "
            f"'az://container' or 'memory://'{hint}, not {value!r}."
        )
    return str(value)


class Options(dict[str, Any]):
    """``STORE_OBSTORE_OPTIONS``, checked: a dict whose repr blanks credentials (the
    config's repr shows it, and it holds keys such as ``secret_access_key``)."""

    def __repr__(self) -> str:
        return repr({k: ("***" if is_secret(k) and v else v) for k, v in self.items()})

    def secrets(self) -> list[str]:
        """The credential values, for blanking them out of error messages."""
        return [str(v) for k, v in self.items() if is_secret(k) and isinstance(v, str) and v]


def is_secret(option: str) -> bool:
    return any(word in option.lower() for word in _SECRET_WORDS) and option != "skip_signature"


def _duration(where: str, value: Any) -> Any:
    # Config from the environment is JSON: seconds as a number stand for obstore's timedelta.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise NotConfiguredError(f"{where} must be zero or more seconds, not {value!r}.")
        return timedelta(seconds=value)
    return value


def obstore_options(key: str, value: Any) -> Options:
    """A dict of ``from_url`` keyword arguments: the store's config keys (``endpoint``,
    ``region``, ``access_key_id``, …), ``client_options`` and ``retry_config`` (whose
    durations may be numbers of seconds)."""
    value = {} if value is None else value
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise NotConfiguredError(
            f"{key} must be a dict of obstore.store.from_url() options such as "
            f"{{'endpoint': 'http://127.0.0.1:9000', 'region': 'us-east-1', "
            f"'client_options': {{'allow_http': True}}}}, not {value!r}."
        )
    options = Options(value)
    for nested in ("client_options", "retry_config"):
        if not isinstance(options.get(nested, {}), dict):
            raise NotConfiguredError(f"{key}[{nested!r}] must be a dict, not {options[nested]!r}.")
    retry = dict(options.get("retry_config", {}))
    if retry:
        where = f"{key}['retry_config']"
        if "retry_timeout" in retry:
            retry["retry_timeout"] = _duration(f"{where}['retry_timeout']", retry["retry_timeout"])
        if isinstance(retry.get("backoff"), dict):
            backoff = dict(retry["backoff"])
            for name in ("init_backoff", "max_backoff"):
                if name in backoff:
                    backoff[name] = _duration(f"{where}['backoff'][{name!r}]", backoff[name])
            retry["backoff"] = backoff
        options["retry_config"] = retry
    return options


#: (key, default, check, doc line, given as text): the table's rows of backend ``"obstore"``.
OBSTORE_ROWS: tuple[tuple[str, Any, Callable[[str, Any], Any], str, bool], ...] = (
    ("STORE_OBSTORE_URL", None, obstore_url, "the store: s3://, gs://, az:// or memory://", True),
    ("STORE_OBSTORE_OPTIONS", {}, obstore_options, "from_url options: endpoint, keys…", False),
    ("STORE_OBSTORE_MULTIPART_THRESHOLD", 8 * MIB, part, "staged multipart from this size", False),
    ("STORE_OBSTORE_PART_SIZE", 8 * MIB, part, "the size of each part", False),
    ("STORE_OBSTORE_MAX_CONCURRENCY", 4, positive, "parts of one upload in flight", False),
    ("STORE_OBSTORE_MAX_MEMORY", 128 * MIB, integer(1), "upload bytes in memory per loop", False),
)
