"""How the obstore backend reaches its store: the ``ObjectStore`` made from the config, and
what obstore's errors mean.

The only module that imports obstore (``backends/obstore.py`` takes the calls from here), and
says which extra to install when it is missing.

obstore raises a handful of classes (``NotFoundError``, ``AlreadyExistsError``,
``PermissionDeniedError``, …) and one ``GenericError`` for everything else, a refused
connection and a 503 included. What tells "down for now" apart is only in the message, which
object_store writes in a fixed form (``HttpError { kind: Connect, … }``, ``status code: 503``):
:func:`is_outage` reads that, as nothing else is exposed.
"""

from __future__ import annotations

import contextlib
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

try:
    import obstore
    from obstore import exceptions as obstore_errors
    from obstore.store import AzureStore, GCSStore, S3Store, from_url
except ImportError as exc:  # pragma: no cover - depends on the extra
    raise ImportError(
        f"the obstore backend needs obstore ({exc}): pip install 'async_store[obstore]'"
    ) from exc

from .._obstore_config import SCHEMES, Options
from ..exceptions import (
    NotConfiguredError,
    NotFoundError,
    ProviderError,
    ProviderUnavailableError,
    StoreError,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from obstore.store import ObjectStore

    from ..config import StoreConfig

__all__ = [
    "AzureStore",
    "Errors",
    "GCSStore",
    "NameTaken",
    "S3Store",
    "build",
    "is_outage",
    "obstore",
    "store_kind",
]

#: What a conditional write or copy that lost raises: the key exists.
NameTaken = (obstore_errors.AlreadyExistsError, obstore_errors.PreconditionError)

# object_store's message for a request that never got an answer (no connection, a timeout, a
# reset), or got a 5xx, after its retries.
_OUTAGE = re.compile(
    r"HttpError \{\s*kind: (?:Connect|Request|Timeout|Interrupted)\b"
    r"|status code: 5\d\d|error sending request|timed out",
)
#: Background mode's name check gives up this soon: it spools anyway when the store is down.
_QUICK = {"connect_timeout": "2s", "timeout": "5s"}


def store_kind(url: str) -> str:
    """``"s3"``, ``"gcs"``, ``"azure"`` or ``"memory"``: the store ``url`` (checked) makes."""
    return SCHEMES[urlsplit(url).scheme.lower()]


def build(config: StoreConfig, *, quick: bool = False) -> ObjectStore:
    """The store of ``STORE_OBSTORE_URL`` with ``STORE_OBSTORE_OPTIONS``; no request is made.

    On S3, copy-if-not-exists (how a staged large upload takes its name) is object_store's
    ``multipart`` mode unless the options choose another: a one-part multipart copy completed
    with ``If-None-Match: *``, which AWS and SeaweedFS honour. GCS and Azure do it natively.

    :param quick: one attempt and short timeouts (background mode's name check).
    :raises NotConfiguredError: naming ``STORE_OBSTORE_OPTIONS`` when obstore refuses them.
    """
    url = str(config["STORE_OBSTORE_URL"])
    options: dict[str, Any] = dict(config["STORE_OBSTORE_OPTIONS"])
    kind = store_kind(url)
    if kind == "s3" and not any(k.lower().endswith("copy_if_not_exists") for k in options):
        options["copy_if_not_exists"] = "multipart"
    if quick and kind != "memory":
        options["retry_config"] = {**options.get("retry_config", {}), "max_retries": 0}
        options["client_options"] = {**options.get("client_options", {}), **_QUICK}
    try:
        return from_url(url, **options)
    except BaseException as exc:
        # A wrong option key can make obstore panic: a PanicException, a BaseException.
        if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
            raise
        raise NotConfiguredError(
            f"STORE_OBSTORE_OPTIONS are not accepted by obstore for {url!r}: "
            f"{_first_lines(str(exc))}. See obstore.store.from_url for the keys of this store "
            f"(client settings such as allow_http go in 'client_options')."
        ) from exc


def is_outage(exc: BaseException) -> bool:
    """Whether an obstore (or socket) error means the store is down or failing for now."""
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    return isinstance(exc, obstore_errors.GenericError) and bool(_OUTAGE.search(str(exc)))


def _first_lines(text: str) -> str:
    # object_store appends its Rust Debug dump ("Debug source: ..."): not for a reader.
    text = text.split("\n\nDebug source:")[0]
    text = " ".join(text.split())
    return text if len(text) <= 400 else text[:400] + "…"


class Errors:
    """obstore's exceptions as ours, naming the key and the store, credentials blanked."""

    def __init__(self, url: str, options: Options) -> None:
        self._url = url
        self._secrets = options.secrets()

    def message(self, exc: BaseException) -> str:
        text = _first_lines(str(exc))
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def missing(self, key: str) -> NotFoundError:
        return NotFoundError(f"no stored file {key!r} in {self._url}")

    @contextlib.contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        """Turn obstore's exceptions into ours, naming ``key`` (``raise … from exc``); ours
        and unknown ones pass unchanged."""
        try:
            yield
        except StoreError:
            raise  # ours already (NotFoundError is an OSError too: keep it from the net below)
        except (obstore_errors.NotFoundError, FileNotFoundError) as exc:
            # obstore raises the builtin FileNotFoundError for a missing object.
            raise self.missing(key) from exc
        except (obstore_errors.PermissionDeniedError, obstore_errors.UnauthenticatedError) as exc:
            raise ProviderError(
                f"access denied to {key!r} in {self._url}: {self.message(exc)}; check the "
                f"credentials in STORE_OBSTORE_OPTIONS (or the environment) and the policy"
            ) from exc
        except obstore_errors.NotSupportedError as exc:
            raise ProviderError(
                f"{self._url} cannot do this for {key!r}: {self.message(exc)}; on S3, a large "
                f"upload needs copy_if_not_exists in STORE_OBSTORE_OPTIONS ('multipart', the "
                f"default, or a server's 'header:...')"
            ) from exc
        except (obstore_errors.BaseError, OSError) as exc:
            error = ProviderUnavailableError if is_outage(exc) else ProviderError
            raise error(f"{self._url} failed for {key!r}: {self.message(exc)}") from exc
