"""How the S3 backend reaches S3: aioboto3 clients per event loop and kind, what their errors
mean, and the credentials kept out of both (and out of boto's logs).

* one client per long-lived event loop (Quart's serving loop, the sync shim's loop) and kind,
  created in that loop and closed when it stops; any other loop (a Flask ``async def`` view
  runs each request in a new one) gets a client for the duration of one call;
* SigV4 always, for the bucket's regional host (botocore would sign some regions with SigV2,
  which AWS refuses for buckets created since mid-2020, and point them at the global host);
* retries whose quota refills after an outage (:class:`_RetryQuota`);
* errors mapped to ours by :meth:`Clients.errors`: "down for now" (no connection, a timeout, a
  5xx) is :class:`~async_store.exceptions.ProviderUnavailableError`.

The only module that imports aioboto3 (``backends/s3.py`` imports botocore's ``ClientError``
from here), and says which extra to install when it is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

try:
    import aioboto3
    from aiobotocore.config import AioConfig
    from aiobotocore.retries import standard as retries
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        EndpointConnectionError,
        HTTPClientError,
    )
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.retries.quota import RetryQuota
    from botocore.retries.standard import ExponentialBackoff, RetryEventAdapter, RetryQuotaChecker
    from botocore.utils import check_dns_name
except ImportError as exc:  # pragma: no cover - depends on the extra
    raise ImportError(
        f"the S3 backend needs aioboto3 ({exc}): pip install 'async_store[s3]'"
    ) from exc

from ..exceptions import NotFoundError, ProviderError, ProviderUnavailableError, StoreError
from ._s3_endpoints import resolve_once_per_bucket

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Iterator

    from ..config import StoreConfig

__all__ = ["ClientError", "Clients", "NameTaken", "is_outage", "raise_if_taken", "scrub"]

_LOGGERS = ("botocore", "aiobotocore", "aioboto3", "boto3", "s3transfer", "urllib3", "aiohttp")
#: Background mode's name check gives up this soon (seconds): it spools anyway when S3 is down.
_QUICK_CONNECT_TIMEOUT = 2
_QUICK_READ_TIMEOUT = 5
# A configured secret this long is blanked wherever it shows: no word is that long by chance.
# AWS access key ids have at least 16 characters, secret keys 40, session tokens hundreds.
_RARE_LENGTH = 16
# Where credentials show, whatever their length (a development key such as "any" would turn
# "many" into "m***" if blanked everywhere): the access key in a SigV4 Authorization header or
# presigned URL (Credential=KEY/..., X-Amz-Credential=KEY%2F...), a SigV2 URL and an error body
# (<AWSAccessKeyId>); the session token in its header (as botocore logs headers, and in a
# canonical request) and in a presigned URL's query.
_CREDENTIAL_FIELDS = re.compile(
    r"(?i)(\bcredential=|\bawsaccesskeyid=|<awsaccesskeyid>)[^/%&\s,;'\"<]+"
    r"|(x-amz-security-token['\"]?\s*[:=]\s*b?['\"]?|<x-amz-security-token>)[^&\s,;'\"<]+"
)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every credential in it replaced by ``***``."""
    text = _CREDENTIAL_FIELDS.sub(lambda m: f"{m[1] or m[2]}***", text)
    for secret in secrets:
        if len(secret) >= _RARE_LENGTH:
            # Raw, and percent-encoded as in a URL (a token's "/", "+" and "=").
            for form in {secret, quote(secret, safe=""), quote(secret)}:
                text = text.replace(form, "***")
    return text


class _Scrub(logging.Filter):
    """Blanks credentials out of the records of boto's loggers (DEBUG logs the Authorization
    header, which carries the access key)."""

    def __init__(self) -> None:
        super().__init__("async_store.scrub")
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        scrubbed = scrub(message, self.secrets)
        if scrubbed != message:
            record.msg, record.args = scrubbed, ()
        return True


_scrub = _Scrub()


def _guard_logs(secrets: list[str]) -> None:
    # A filter acts only on the logger it is attached to, not on its children: attach it to
    # every boto logger there is (they are created at import and at first client creation).
    _scrub.secrets.update(secrets)
    if not _scrub.secrets:
        return
    for name in list(logging.root.manager.loggerDict):
        if name.split(".")[0] in _LOGGERS:
            logger = logging.getLogger(name)
            if _scrub not in logger.filters:
                logger.addFilter(_scrub)


class NameTaken(Exception):
    """A conditional write found the key taken (412): try the next name."""


def raise_if_taken(exc: ClientError) -> None:
    """Raise :class:`NameTaken` if ``exc`` says a conditional write lost: the key exists."""
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = exc.response.get("Error", {}).get("Code")
    # 412: the key exists now. 409 ConditionalRequestConflict: a concurrent conditional write.
    if status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict"):
        raise NameTaken() from exc


def is_outage(exc: BaseException) -> bool:
    """Whether a botocore (or socket) error means S3 is down or failing for now (no
    connection, a timeout, a 5xx answer) rather than refusing for good."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return int(status) >= 500
    return isinstance(exc, (BotoConnectionError, HTTPClientError, TimeoutError, OSError))


class _RetryQuota(RetryQuota):
    """botocore's retry quota, full again after any success.

    Standard retry mode spends quota on each retry (5, 10 after a timeout) and stops retrying
    once the 500 it starts with are gone: about 50 failing calls in a row, an outage, after
    which calls fail fast instead of each waiting through its backoff. Neither the quota's size
    nor its use can be configured. But botocore gives back only 1 per successful call, so
    after the outage the client would retry almost nothing for hundreds of calls; here the
    first success ends the outage.
    """

    def release(self, capacity_amount: int) -> None:
        super().release(self.INITIAL_CAPACITY)


def _retry_with_refilling_quota(client: Any, attempts: int) -> None:
    """Replace the standard retry handler botocore registered on ``client`` (the same one,
    ``attempts`` in all) by one whose quota is a :class:`_RetryQuota`."""
    service = client.meta.service_model.service_id.hyphenize()
    checker = RetryQuotaChecker(_RetryQuota())
    handler = retries.AioRetryHandler(
        retry_policy=retries.AioRetryPolicy(
            retry_checker=retries.AioStandardRetryConditions(max_attempts=attempts),
            retry_backoff=ExponentialBackoff(),
        ),
        retry_event_adapter=RetryEventAdapter(),
        retry_quota=checker,  # type: ignore[arg-type]  # botocore passes a checker too
    )
    unique_id = f"retry-config-{service}"
    events = client.meta.events
    events.unregister(f"needs-retry.{service}", unique_id=unique_id)
    # The old quota's after-call hook stays, giving back to a quota nobody asks any more.
    events.register(f"after-call.{service}", checker.release_retry_quota)
    events.register(f"needs-retry.{service}", handler.needs_retry, unique_id=unique_id)


def _aws_bucket_url(bucket: str, region: str, style: str) -> str:
    """The bucket's regional AWS URL, as botocore addresses it (and signs for)."""
    # A dotted name would not match the TLS certificate of *.s3.<region>.amazonaws.com.
    if style == "path" or not check_dns_name(bucket) or "." in bucket:
        return f"https://s3.{region}.amazonaws.com/{bucket}"
    return f"https://{bucket}.s3.{region}.amazonaws.com"


class Clients:
    """aioboto3 clients: one per long-lived loop and kind, else one per call.

    Kinds: ``main`` does the work; ``public`` signs URLs for ``STORE_S3_PUBLIC_ENDPOINT_URL``
    (when it differs from ``STORE_S3_ENDPOINT_URL``); ``quick`` answers background mode's name
    check with one attempt and short timeouts.
    """

    def __init__(self, config: StoreConfig) -> None:
        self._session = aioboto3.Session(
            aws_access_key_id=config.get("STORE_S3_ACCESS_KEY"),
            aws_secret_access_key=config.get("STORE_S3_SECRET_KEY"),
            aws_session_token=config.get("STORE_S3_SESSION_TOKEN"),
            region_name=config.get("STORE_S3_REGION"),
        )
        self.bucket = str(config["STORE_S3_BUCKET"])
        endpoint = config.get("STORE_S3_ENDPOINT_URL")
        self._endpoint = endpoint
        public = config.get("STORE_S3_PUBLIC_ENDPOINT_URL") or endpoint
        # The region signatures are made for, and the URLs point at: boto's configuration
        # (AWS_DEFAULT_REGION, ~/.aws/config, read once, here at init_app) when the key is unset.
        self.region = str(config.get("STORE_S3_REGION") or self._session.region_name or "us-east-1")
        # S3-compatible servers on an IP or localhost only answer path-style requests. On AWS,
        # "virtual" (not "auto") and the regional us-east-1 endpoint, or presigned URLs would
        # point at the global s3.amazonaws.com.
        style: Any = config.get("STORE_S3_ADDRESSING_STYLE") or ("path" if endpoint else "virtual")
        s3: dict[str, Any] = {"addressing_style": style}
        if not endpoint:
            s3["us_east_1_regional_endpoint"] = "regional"
            self.bucket_url = _aws_bucket_url(self.bucket, self.region, style)
        else:
            self.bucket_url = f"{str(public).rstrip('/')}/{self.bucket}"
        # botocore's max_attempts counts retries; total_max_attempts counts the first one too,
        # which is what STORE_S3_MAX_ATTEMPTS means.
        self._attempts = int(config["STORE_S3_MAX_ATTEMPTS"])
        connect, read = config["STORE_S3_CONNECT_TIMEOUT"], config["STORE_S3_READ_TIMEOUT"]
        common: dict[str, Any] = {
            # SigV4 always: botocore presigns with SigV2 for some regions unless told.
            "signature_version": "s3v4",
            "s3": s3,
            "max_pool_connections": config["STORE_S3_MAX_POOL_CONNECTIONS"],
        }
        # botocore computes no checksum of its own (its CRC32, read from a copy of the body),
        # only where an operation requires one: an upload carries the one it was sent with.
        common["request_checksum_calculation"] = "when_required"
        common["response_checksum_validation"] = "when_required"
        if config.get("STORE_S3_CHECKSUM") != "off":
            # Every upload request carries its body's checksum (x-amz-checksum-*, signed),
            # which the server verifies: SigV4's own hash of the body (botocore's payload
            # signing, on plain-HTTP endpoints) would hash each byte a second time.
            s3["payload_signing_enabled"] = False
        # 'off' sends none, for servers that refuse checksums (Backblaze B2, GCS's XML API):
        # SigV4's payload hash (plain HTTP) or TLS then covers the body.
        main = AioConfig(
            retries={"mode": "standard", "total_max_attempts": self._attempts},
            connect_timeout=connect,
            read_timeout=read,
            **common,
        )
        quick = AioConfig(
            retries={"mode": "standard", "total_max_attempts": 1},
            connect_timeout=min(connect, _QUICK_CONNECT_TIMEOUT),
            read_timeout=min(read, _QUICK_READ_TIMEOUT),
            **common,
        )
        self._kinds: dict[str, tuple[str | None, AioConfig]] = {
            "main": (endpoint, main),
            "quick": (endpoint, quick),
        }
        if public != endpoint:
            self._kinds["public"] = (public, main)
        self._secrets = config.secrets()
        self._kept: dict[
            tuple[asyncio.AbstractEventLoop, str], tuple[contextlib.AsyncExitStack, Any]
        ] = {}
        self._long_lived: set[asyncio.AbstractEventLoop] = set()
        self._locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}

    # --- clients ---------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _new(self, kind: str) -> AsyncIterator[Any]:
        _guard_logs(self._secrets)
        endpoint, botocore_config = self._kinds[kind]
        async with self._session.client(
            "s3", endpoint_url=endpoint, region_name=self.region, config=botocore_config
        ) as client:
            if kind == "main":
                _retry_with_refilling_quota(client, self._attempts)
            resolve_once_per_bucket(client)
            yield client

    def keep_for_this_loop(self) -> None:
        self._long_lived.add(asyncio.get_running_loop())

    @contextlib.asynccontextmanager
    async def client(self, kind: str = "main") -> AsyncIterator[Any]:
        """This loop's client of ``kind`` (``public`` is ``main`` without a public endpoint)."""
        loop = asyncio.get_running_loop()
        if kind not in self._kinds:
            kind = "main"
        if loop not in self._long_lived:
            async with self._new(kind) as client:
                yield client
            return
        ident = (loop, kind)
        if ident not in self._kept:
            async with self._locks.setdefault(loop, asyncio.Lock()):
                if ident not in self._kept:
                    stack = contextlib.AsyncExitStack()
                    client = await stack.enter_async_context(self._new(kind))
                    self._kept[ident] = (stack, client)
        yield self._kept[ident][1]

    async def close_this_loop(self) -> None:
        loop = asyncio.get_running_loop()
        self._long_lived.discard(loop)
        self._locks.pop(loop, None)
        async with contextlib.AsyncExitStack() as closing:  # each one, whatever the others do
            for ident in [ident for ident in self._kept if ident[0] is loop]:
                closing.push_async_callback(self._kept.pop(ident)[0].aclose)

    # --- errors ----------------------------------------------------------------------------------

    def scrub(self, text: str) -> str:
        return scrub(text, self._secrets)

    @contextlib.contextmanager
    def errors(self, key: str) -> Iterator[None]:
        """Turn botocore's exceptions into ours, naming ``key`` (``raise … from exc``); ours and
        unknown ones pass unchanged."""
        try:
            yield
        except StoreError:
            raise  # ours already (NotFoundError is an OSError too: keep it from the net below)
        except (BotoCoreError, ClientError, TimeoutError, OSError) as exc:
            error = ProviderUnavailableError if is_outage(exc) else ProviderError
            raise self._mapped(exc, key, error) from exc

    def _mapped(self, exc: Exception, key: str, error: type[ProviderError]) -> StoreError:
        where = f"{key!r} in bucket {self.bucket!r}"
        if isinstance(exc, ClientError):
            details = exc.response.get("Error", {})
            code = str(details.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchKey", "404", "NotFound"):
                return NotFoundError(f"no stored file {where}")
            if code == "NoSuchBucket":
                return error(
                    f"bucket {self.bucket!r} does not exist: create it, or fix STORE_S3_BUCKET"
                )
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return error(
                    f"access denied to {where} ({code}): check the credentials "
                    f"(STORE_S3_ACCESS_KEY / STORE_S3_SECRET_KEY or boto's chain) and the "
                    f"bucket policy"
                )
            message = self.scrub(str(details.get("Message", "")))
            return error(f"S3 error for {where}: {code} {status} {message}")
        if isinstance(exc, EndpointConnectionError):
            # aiobotocore raises this for a refused connection and for one reset mid-request
            # alike: the underlying error tells them apart.
            cause = exc.kwargs.get("error") or exc.__context__
            while (
                isinstance(cause, OSError)
                and cause.errno is None
                and isinstance(cause.__cause__, OSError)
            ):
                # aiohttp's "Can not write request body for <url>" wraps what the socket said
                # (a reset, a broken pipe) when a body sent in slices meets it mid-write.
                cause = cause.__cause__
            text = self.scrub(str(cause))
            if isinstance(cause, ConnectionResetError) and "connection reset" not in text.lower():
                text = f"connection reset: {text}"  # aiohttp's "Cannot write to closing transport"
            why = f" ({type(cause).__name__}: {text})" if cause else ""
            return error(
                f"cannot reach the S3 endpoint for {where}{why}: check STORE_S3_ENDPOINT_URL "
                f"({self._endpoint or 'AWS'}) and the network"
            )
        if isinstance(exc, BotoCoreError):
            return error(
                f"S3 request for {where} failed: {type(exc).__name__}: {self.scrub(str(exc))}"
            )
        return error(
            f"S3 connection for {where} failed: {type(exc).__name__}: {self.scrub(str(exc))}"
        )
