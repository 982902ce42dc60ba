"""The keys direct uploads are staged under: chosen, and signed, by the server.

A staged upload lives at ``.direct/{ID}/{name}`` in the storage (hidden: never listed or served
as a stored file). ``ID`` is the time it was issued, a random part and an HMAC of both and the
name, keyed by the app's ``SECRET_KEY`` (with a salt of ours and the storage's name), so a key
the client hands back, to sign a part, to complete or to confirm, is one this server issued for
this storage, not one it made up (another user's file, a path out of staging).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from typing import TYPE_CHECKING, Any

from .._signing import derived_keys
from ..exceptions import NotConfiguredError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ["STAGING", "StagedKeys"]

#: The folder of a storage that holds staged uploads.
STAGING = ".direct"
_SALT = b"async_store.direct-upload\x00"
_KEY = re.compile(
    rf"{re.escape(STAGING)}/(?P<issued>[0-9a-f]{{1,12}})-(?P<nonce>[0-9a-f]{{24}})-"
    r"(?P<signature>[A-Za-z0-9_-]{43})/(?P<name>[^/\x00]{1,255})",
    re.ASCII,
)


class StagedKeys:
    """Issues and checks one storage's staged keys with the app's ``SECRET_KEY``.

    :param app_config: the app's ``config`` (read at each call: a rotated key is seen at once).
    :param storage: the storage's name.
    :param clock: the current Unix time (tests pass another).
    """

    def __init__(
        self, app_config: Mapping[str, Any], storage: str, clock: Callable[[], float] = time.time
    ) -> None:
        self._app_config = app_config
        self.storage = storage
        self.clock = clock

    def _keys(self) -> list[bytes]:
        keys = derived_keys(self._app_config, _SALT + self.storage.encode())
        if not keys:
            raise NotConfiguredError(
                "direct uploads sign the keys they hand out with the app's SECRET_KEY, which is "
                "not set: set app.config['SECRET_KEY'] to a long random value, the same in "
                "every worker."
            )
        return keys

    @staticmethod
    def _signature(key: bytes, issued: str, nonce: str, name: str) -> str:
        message = f"{issued}\x00{nonce}\x00{name}".encode()
        digest = hmac.new(key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def issue(self, name: str) -> str:
        """A new staged key for a file of the (already cleaned) ``name``."""
        issued, nonce = f"{int(self.clock()):x}", secrets.token_hex(12)
        signature = self._signature(self._keys()[0], issued, nonce, name)
        return f"{STAGING}/{issued}-{nonce}-{signature}/{name}"

    def check(self, key: object, max_age: float) -> tuple[str, float] | None:
        """(the file's name, its age in seconds) if ``key`` is one of ours, issued less than
        ``max_age`` seconds ago; None otherwise."""
        found = _KEY.fullmatch(key) if isinstance(key, str) else None
        if found is None:
            return None
        issued, nonce, name = found["issued"], found["nonce"], found["name"]
        age = self.clock() - int(issued, 16)
        if not -60 <= age <= max_age:  # a minute of clock skew between workers
            return None
        for secret in self._keys():
            if hmac.compare_digest(
                self._signature(secret, issued, nonce, name), found["signature"]
            ):
                return name, age
        return None
