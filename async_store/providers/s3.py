"""Files in an S3 bucket: AWS S3 or any S3-compatible server (SeaweedFS, MinIO, Ceph RGW, R2).

The only module that imports aioboto3. How a save works, and why:

* the name is claimed with a conditional write (``If-None-Match: *`` on the PUT, or on
  ``CompleteMultipartUpload``), so two uploads of one name never overwrite each other; a HEAD
  first skips a name that is plainly taken. Servers without conditional writes
  (``STORE_S3_CONDITIONAL_WRITES = False``) get HEAD-then-PUT, which a concurrent writer of the
  same new name can race: documented, and the reason the default is on;
* small files go up in one PUT; larger ones as a multipart upload with at most
  ``STORE_S3_MAX_CONCURRENCY`` parts of ``STORE_S3_PART_SIZE`` in memory at once. A failed or
  cancelled multipart upload is aborted (aioboto3's ``upload_fileobj`` does not do that on
  cancellation, and cannot make the final step conditional: hence our own loop);
* one client per app and long-lived event loop (Quart's serving loop, the sync shim's loop),
  created in that loop and closed when it stops, and beside it, when needed, one that signs
  URLs for ``STORE_S3_PUBLIC_ENDPOINT_URL`` and one without retries for background mode's
  name check; any other loop (a Flask ``async def`` view runs each request in a new one) gets
  a client for the duration of one call;
* presigned URLs are SigV4 for the bucket's regional host (botocore would sign some regions
  with SigV2, which AWS refuses for buckets created since mid-2020, and point them at the
  global host); objects of active types (HTML, SVG, XML, scripts) are stored with
  ``Content-Disposition: attachment``, the rule of the local route (``_content``).

Credentials are never part of a repr, a log line or an error message.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import weakref
from typing import TYPE_CHECKING, Any, ClassVar, Self
from urllib.parse import quote

import anyio
import anyio.to_thread

from .._content import disposition_header, is_passive
from .._paths import content_type as guess_type
from ..exceptions import NotConfiguredError, NotFoundError, ProviderError, StoreError, first_error

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
        f"the S3 provider needs aioboto3 ({exc}): pip install 'async_store[s3]'"
    ) from exc

from .base import Provider, StoredFile, no_free_name

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Iterator

    from flask.sansio.app import App

    from .._sources import AsyncReadable, Source
    from ..config import StoreConfig

__all__ = ["S3GeventProvider", "S3Provider"]

MIB = 1024 * 1024
_LOGGERS = ("botocore", "aiobotocore", "aioboto3", "boto3", "s3transfer", "urllib3", "aiohttp")
#: The longest a presigned URL may be valid with SigV4: seven days.
_MAX_EXPIRES = 7 * 24 * 3600
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


class _Budget:
    """Bytes of upload content that one event loop's saves hold in memory (parts being read or
    sent): at most ``STORE_S3_MAX_MEMORY``, whatever the number of concurrent uploads.

    A save takes bytes as it reads them and waits while the budget is spent, so its client is
    slowed down (TCP backpressure) instead of memory growing with concurrency. The oldest save
    may always go on, past the limit if it must: every waiting save holds bytes, so otherwise
    they could all wait for each other. Memory stays under the limit plus one save's worth.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._holders: dict[int, int] = {}  # ticket: bytes held, oldest first
        self._tickets = itertools.count()
        self._changed = asyncio.Event()

    @contextlib.asynccontextmanager
    async def charge(self) -> AsyncIterator[_Charge]:
        """One save's account; what it still holds is given back when the block ends."""
        ticket = next(self._tickets)
        self._holders[ticket] = 0
        try:
            yield _Charge(self, ticket)
        finally:
            self.used -= self._holders.pop(ticket)
            self._wake()

    async def take(self, ticket: int, size: int) -> None:
        while self.used + size > self.limit and next(iter(self._holders)) != ticket:
            await self._changed.wait()
        self.used += size
        self._holders[ticket] += size

    def give(self, ticket: int, size: int) -> None:
        size = min(size, self._holders[ticket])
        self.used -= size
        self._holders[ticket] -= size
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


class _Charge:
    def __init__(self, budget: _Budget, ticket: int) -> None:
        self._budget, self._ticket = budget, ticket

    async def take(self, size: int) -> None:
        await self._budget.take(self._ticket, size)

    def give(self, size: int) -> None:
        self._budget.give(self._ticket, size)

    async def chunks(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """``chunks``, each taken from the budget once read."""
        async for chunk in chunks:
            await self.take(len(chunk))
            yield chunk


class _NameTaken(Exception):
    """The conditional write found the key taken (412): try the next name."""


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


class _Clients:
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
        endpoint = config.get("STORE_S3_ENDPOINT_URL")
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
            self.bucket_url = _aws_bucket_url(str(config["STORE_S3_BUCKET"]), self.region, style)
        else:
            self.bucket_url = f"{str(public).rstrip('/')}/{config['STORE_S3_BUCKET']}"
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
        self._claims: dict[tuple[asyncio.AbstractEventLoop, str], tuple[asyncio.Lock, int]] = {}
        self._max_memory = int(config["STORE_S3_MAX_MEMORY"])
        self._budgets: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Budget] = (
            weakref.WeakKeyDictionary()
        )

    def budget(self) -> _Budget:
        """This loop's memory budget for uploads."""
        loop = asyncio.get_running_loop()
        budget = self._budgets.get(loop)
        if budget is None:
            budget = self._budgets[loop] = _Budget(self._max_memory)
        return budget

    @contextlib.asynccontextmanager
    async def claiming(self, key: str) -> AsyncIterator[None]:
        """Serialise this process's conditional writes of one key.

        Not every server makes ``If-None-Match`` atomic (SeaweedFS lets two simultaneous
        ``CompleteMultipartUpload`` calls for one new key both succeed: the later one silently
        replaces the earlier). One writer at a time per key keeps the check meaningful within a
        process; across processes it is the server's job.
        """
        ident = (asyncio.get_running_loop(), key)
        lock, users = self._claims.get(ident, (asyncio.Lock(), 0))
        self._claims[ident] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._claims[ident]
            if users == 1:
                del self._claims[ident]
            else:
                self._claims[ident] = (lock, users - 1)

    @contextlib.asynccontextmanager
    async def _new(self, kind: str) -> AsyncIterator[Any]:
        _guard_logs(self._secrets)
        endpoint, botocore_config = self._kinds[kind]
        async with self._session.client(
            "s3", endpoint_url=endpoint, region_name=self.region, config=botocore_config
        ) as client:
            if kind == "main":
                _retry_with_refilling_quota(client, self._attempts)
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


class _Body:
    """The stored object, read in chunks: ``await f.read(n)``."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return bytes(await self._stream.read())
        # Like a local file: ``size`` bytes unless the object ends first (the network hands
        # over whatever arrived, often less).
        data = bytearray()
        while len(data) < size:
            chunk = await self._stream.read(size - len(data))
            if not chunk:
                break
            data += chunk
        return bytes(data)


class S3Provider(Provider):
    """Stores files in the bucket ``STORE_S3_BUCKET``, below the key prefix ``STORE_PATH``.

    ``STORE_DOMAIN`` is the public base URL (a CDN, or the bucket's own URL); without it,
    :attr:`absolute_url` points at the bucket on ``STORE_S3_PUBLIC_ENDPOINT_URL``,
    ``STORE_S3_ENDPOINT_URL`` or AWS. Private objects are fetched with :meth:`url`, a presigned
    GET. See the README for every ``STORE_S3_*`` key.
    """

    REQUIRED_CONFIGURATION: ClassVar[tuple[str, ...]] = ("STORE_S3_BUCKET",)
    config_backend = "s3"
    _clients: ClassVar[_Clients]

    @classmethod
    def check_config(cls, config: StoreConfig) -> None:
        # Each key's own check is in the config table (async_store.config.SETTINGS).
        super().check_config(config)
        has_key = config["STORE_S3_ACCESS_KEY"] is not None
        if has_key != (config["STORE_S3_SECRET_KEY"] is not None):
            raise NotConfiguredError(
                "STORE_S3_ACCESS_KEY and STORE_S3_SECRET_KEY go together: set both, or neither "
                "to use boto's credential chain (environment, ~/.aws, instance role)."
            )
        config["STORE_PATH"] = config.path.strip("/")

    @classmethod
    def bind(cls, config: StoreConfig) -> type[Self]:
        bound = super().bind(config)
        bound._clients = _Clients(config)
        return bound

    @classmethod
    async def startup(cls) -> None:
        cls._clients.keep_for_this_loop()

    @classmethod
    async def shutdown(cls) -> None:
        await cls._clients.close_this_loop()

    # --- names and URLs ----------------------------------------------------------------------

    @property
    def bucket(self) -> str:
        return str(self.config["STORE_S3_BUCKET"])

    def _key(self, relative: str) -> str:
        prefix = self.config.path
        return f"{prefix}/{relative}" if prefix else relative

    def _absolute_path(self, key: str) -> str:
        return self._key(key)

    def _url_base(self) -> str:
        return self.config.path

    def _default_domain(self) -> str:
        # The host presigned URLs are signed for too: the regional one on AWS.
        return self._clients.bucket_url

    async def url(
        self,
        expires: int | None = None,
        *,
        download_name: str | None = None,
        content_type: str | None = None,
    ) -> str:
        """A presigned GET URL valid for ``expires`` seconds (default: :attr:`absolute_url`).

        Signed with SigV4, for the host of :attr:`absolute_url` without ``STORE_DOMAIN``. A
        file of an active type (HTML, SVG, XML, scripts: what the local route sends as an
        attachment) is downloaded, never shown, whatever headers the object itself has.

        :param expires: seconds, at most 604800 (seven days, SigV4's limit).
        :param download_name: download the file (``Content-Disposition: attachment``) under
            this name, whatever its type.
        :param content_type: the ``Content-Type`` to answer with instead of the stored one.
        :raises ValueError: for ``expires`` out of range, or ``download_name`` or
            ``content_type`` without ``expires`` (only a presigned URL can carry them).
        """
        if expires is None:
            if download_name is not None or content_type is not None:
                raise ValueError(
                    "download_name= and content_type= need expires=: only a presigned URL "
                    "can carry them"
                )
            return self.absolute_url
        if isinstance(expires, bool) or not 1 <= int(expires) <= _MAX_EXPIRES:
            raise ValueError(
                f"expires must be 1 to {_MAX_EXPIRES} seconds (SigV4's limit), not {expires!r}"
            )
        self._require_saved()
        params = {"Bucket": self.bucket, "Key": self._key(self.relative_path)}
        if content_type is not None:
            params["ResponseContentType"] = content_type
        if download_name is not None:
            params["ResponseContentDisposition"] = disposition_header(download_name)
        else:
            forced = self._disposition(self.filename, content_type)
            if forced is not None:  # also protects objects stored before that rule, or by others
                params["ResponseContentDisposition"] = forced
        with self._map_errors(self.relative_path):
            async with self._clients.client("public") as s3:
                return str(
                    await s3.generate_presigned_url(
                        "get_object", Params=params, ExpiresIn=int(expires)
                    )
                )

    def _disposition(self, name: str, mimetype: str | None) -> str | None:
        """The ``Content-Disposition`` an object of ``name`` (of ``mimetype``, else the type
        ``STORE_S3_OBJECT_PARAMS`` or the name gives) must have, if any: an attachment for an
        active type, unless ``STORE_S3_OBJECT_PARAMS`` decides."""
        params = self.config["STORE_S3_OBJECT_PARAMS"] or {}
        if "ContentDisposition" in params:
            return None
        mimetype = mimetype or params.get("ContentType") or guess_type(name)
        return None if is_passive(str(mimetype)) else disposition_header(name)

    # --- errors ------------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        return scrub(text, self.config.secrets())

    @contextlib.contextmanager
    def _map_errors(self, key: str) -> Iterator[None]:
        where = f"{key!r} in bucket {self.bucket!r}"
        try:
            yield
        except StoreError:
            raise  # ours already (NotFoundError is an OSError too: keep it from the net below)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise NotFoundError(f"no stored file {where}") from exc
            if code == "NoSuchBucket":
                raise ProviderError(
                    f"bucket {self.bucket!r} does not exist: create it, or fix STORE_S3_BUCKET"
                ) from exc
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise ProviderError(
                    f"access denied to {where} ({code}): check the credentials "
                    f"(STORE_S3_ACCESS_KEY / STORE_S3_SECRET_KEY or boto's chain) and the "
                    f"bucket policy"
                ) from exc
            message = self._scrub(str(error.get("Message", "")))
            raise ProviderError(f"S3 error for {where}: {code} {status} {message}") from exc
        except EndpointConnectionError as exc:
            # aiobotocore raises this for a refused connection and for one reset mid-request
            # alike: the underlying error tells them apart.
            cause = exc.kwargs.get("error") or exc.__context__
            why = f" ({type(cause).__name__}: {self._scrub(str(cause))})" if cause else ""
            raise ProviderError(
                f"cannot reach the S3 endpoint for {where}{why}: check STORE_S3_ENDPOINT_URL "
                f"({self.config['STORE_S3_ENDPOINT_URL'] or 'AWS'}) and the network"
            ) from exc
        except BotoCoreError as exc:
            raise ProviderError(
                f"S3 request for {where} failed: {type(exc).__name__}: {self._scrub(str(exc))}"
            ) from exc
        except (TimeoutError, OSError) as exc:
            raise ProviderError(
                f"S3 connection for {where} failed: {type(exc).__name__}: {self._scrub(str(exc))}"
            ) from exc

    # --- the backend's half ------------------------------------------------------------------

    def _object_args(self, name: str) -> dict[str, Any]:
        params = self.config["STORE_S3_OBJECT_PARAMS"] or {}
        mimetype = guess_type(name)
        args: dict[str, Any] = {"ContentType": mimetype}
        # A public object or a presigned link is opened on the bucket's origin: an active type
        # is downloaded, not run there (the local route's rule).
        forced = self._disposition(name, params.get("ContentType") or mimetype)
        if forced is not None:
            args["ContentDisposition"] = forced
        if self.config["STORE_S3_ACL"] is not None:
            args["ACL"] = self.config["STORE_S3_ACL"]
        args.update(params)
        return args

    async def _head(self, s3: Any, key: str) -> bool:
        try:
            await s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    async def _save(self, location: str, names: Iterator[str], source: Source) -> str:
        conditional = bool(self.config["STORE_S3_CONDITIONAL_WRITES"])
        extra = {"IfNoneMatch": "*"} if conditional else {}
        async with self._clients.client() as s3, self._clients.budget().charge() as charge:
            head, rest = await self._read_head(source, charge)
            for name in names:
                relative = f"{location}/{name}" if location else name
                key = self._key(relative)
                # A conditional single PUT is its own check. Before a multipart upload (or
                # without conditional writes) a HEAD skips a name that is plainly taken.
                if (rest is not None or not conditional) and await self._head(s3, key):
                    continue
                try:
                    if rest is None:
                        await self._put(s3, key, name, b"".join(head), extra)
                    else:
                        await self._multipart(s3, key, name, head, rest, extra, charge)
                except _NameTaken:
                    if rest is None:
                        continue  # the bytes are still here: try the next name
                    # Someone claimed this new name between our HEAD and our write.
                    if not source.rewind():
                        raise ProviderError(
                            f"another upload claimed {relative!r} first and this upload's "
                            f"stream cannot be read twice; retry the upload"
                        ) from None
                    head, rest = await self._read_head(source, charge)
                    continue
                return name
        raise no_free_name(location)

    async def _read_head(
        self, source: Source, charge: _Charge
    ) -> tuple[list[bytes], AsyncIterator[bytes] | None]:
        """Read up to ``STORE_S3_MULTIPART_THRESHOLD``: ``(parts, None)`` when the file ended
        there (one PUT), ``(first parts, the rest)`` for a multipart upload. Every byte read is
        taken from the loop's memory budget (the caller's ``charge``)."""
        threshold = int(self.config["STORE_S3_MULTIPART_THRESHOLD"])
        part_size = int(self.config["STORE_S3_PART_SIZE"])
        if source.is_blocking:
            size = source.size
            if size is not None and size <= threshold:
                # In memory, one PUT: reading cannot block, so no worker thread at all (a hop
                # costs ~1 ms at concurrency 1 on a 2-core VM, an eighth of a 4 KiB PUT).
                await charge.take(size)
                return list(source.blocking_chunks(part_size)), None
            # Else the whole head in one hop: not one per chunk plus one more to find the end.
            reserved = threshold + part_size
            await charge.take(reserved)
            parts = _cut(source.blocking_chunks(part_size), part_size)
            head, more = await anyio.to_thread.run_sync(_take, parts, threshold)
            charge.give(reserved - sum(map(len, head)))
            return head, (charge.chunks(_in_thread(parts)) if more else None)
        chunks = _acut(charge.chunks(source.chunks(part_size)), part_size).__aiter__()
        head = []
        size = 0
        async for part in chunks:
            head.append(part)
            size += len(part)
            if size > threshold:
                return head, chunks
        return head, None

    async def _put(self, s3: Any, key: str, name: str, body: bytes, extra: dict[str, str]) -> None:
        try:
            async with self._clients.claiming(key):
                await s3.put_object(
                    Bucket=self.bucket, Key=key, Body=body, **self._object_args(name), **extra
                )
        except ClientError as exc:
            _raise_if_taken(exc)
            raise

    async def _multipart(
        self,
        s3: Any,
        key: str,
        name: str,
        head: list[bytes],
        rest: AsyncIterator[bytes],
        extra: dict[str, str],
        charge: _Charge,
    ) -> None:
        created = await s3.create_multipart_upload(
            Bucket=self.bucket, Key=key, **self._object_args(name)
        )
        upload_id = created["UploadId"]
        etags: dict[int, str] = {}
        # Each part in flight holds its bytes: the limiter bounds memory to N parts.
        limiter = anyio.Semaphore(int(self.config["STORE_S3_MAX_CONCURRENCY"]))

        async def send(number: int, body: bytes) -> None:
            try:
                response = await s3.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
                )
                etags[number] = response["ETag"]
            finally:
                limiter.release()
                charge.give(len(body))

        try:
            try:
                async with anyio.create_task_group() as tg:
                    following = len(head) + 1
                    for number, body in enumerate(head, start=1):
                        await limiter.acquire()
                        tg.start_soon(send, number, body)
                    head.clear()  # the part uploads hold them now; free each as it is sent
                    for number in itertools.count(following):
                        # Wait for a free slot *before* reading the next part into memory.
                        await limiter.acquire()
                        body = await anext(rest, b"")  # parts are never empty
                        if not body:
                            limiter.release()
                            break
                        tg.start_soon(send, number, body)
                        del body
            except BaseExceptionGroup as group:
                # One failure (a part upload, or the upload's own stream): raise it as itself.
                raise first_error(group) from None
            parts = [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]
            try:
                async with self._clients.claiming(key):
                    await s3.complete_multipart_upload(
                        Bucket=self.bucket,
                        Key=key,
                        UploadId=upload_id,
                        MultipartUpload={"Parts": parts},
                        **extra,
                    )
            except ClientError as exc:
                _raise_if_taken(exc)
                raise
        except BaseException:
            # Failed, cancelled or lost the name: never leave parts behind to be billed.
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await self._abort(s3, key, upload_id)
            raise

    async def _abort(self, s3: Any, key: str, upload_id: str) -> None:
        """Abort a multipart upload, again while parts show up: a part upload still in flight
        (cancelled here, not at the server) may land after the abort and bring it back, as
        S3's documentation warns."""
        for _ in range(3):
            await s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            await anyio.sleep(0.2)
            try:
                listed = await s3.list_parts(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except ClientError:
                return  # NoSuchUpload: gone for good
            if not listed.get("Parts"):
                return

    def _is_outage(self, exc: Exception) -> bool:
        if isinstance(exc, ClientError):
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            return int(status) >= 500
        return isinstance(exc, (BotoConnectionError, HTTPClientError, TimeoutError, OSError))

    async def _exists(self, key: str) -> bool:
        async with self._clients.client() as s3:
            return await self._head(s3, self._key(key))

    async def _exists_now(self, key: str) -> bool:
        # One attempt, short timeouts: the caller spools anyway when S3 is down.
        async with self._clients.client("quick") as s3:
            return await self._head(s3, self._key(key))

    @contextlib.asynccontextmanager
    async def _open(self, key: str) -> AsyncIterator[AsyncReadable]:
        async with self._clients.client() as s3:
            response = await s3.get_object(Bucket=self.bucket, Key=self._key(key))
            body = response["Body"]
            try:
                yield _Body(body)
            finally:
                body.close()  # releases the connection, read to the end or not

    @classmethod
    async def _list(cls, prefix: str) -> AsyncIterator[StoredFile]:
        # In the server's order, streamed: AWS lists keys in UTF-8 byte order (the path order
        # Provider.files promises), some S3-compatible servers do not (SeaweedFS walks its
        # folders: "a/b" before "a.txt"), and sorting would hold the whole listing in memory.
        base = cls.config.path + "/" if cls.config.path else ""
        bucket = str(cls.config["STORE_S3_BUCKET"])
        async with cls._clients.client() as s3:
            pages = s3.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=base + prefix
            )
            async for page in pages:
                for obj in page.get("Contents", ()):
                    path = obj["Key"][len(base) :]
                    # Folder markers and hidden keys are not files of the store.
                    if path and not path.endswith("/") and "/." not in f"/{path}":
                        yield StoredFile(path, int(obj["Size"]), obj["LastModified"])

    async def _delete(self, key: str) -> None:
        async with self._clients.client() as s3:
            # DELETE succeeds for a missing key too; HEAD first, so a typo is reported.
            if not await self._head(s3, self._key(key)):
                raise NotFoundError(f"no stored file {key!r} in bucket {self.bucket!r}")
            await s3.delete_object(Bucket=self.bucket, Key=self._key(key))


class _Cutter:
    """Re-cuts chunks into parts of exactly ``size`` bytes (the last one less)."""

    def __init__(self, size: int) -> None:
        self.size = size
        # Chunks are collected, then joined once: one copy per part, never a growing buffer.
        self._pending: list[bytes] = []
        self._count = 0

    def add(self, chunk: bytes) -> Iterator[bytes]:
        self._pending.append(chunk)
        self._count += len(chunk)
        if self._count == self.size:  # chunks that add up to a part (the usual case): no cut
            yield b"".join(self._pending)
            self._pending, self._count = [], 0
        while self._count >= self.size:
            joined = b"".join(self._pending)
            yield joined[: self.size]
            self._pending, self._count = [joined[self.size :]], self._count - self.size
            del joined

    def end(self) -> Iterator[bytes]:
        if self._count:
            yield b"".join(self._pending)


def _cut(chunks: Iterator[bytes], size: int) -> Iterator[bytes]:
    cutter = _Cutter(size)
    for chunk in chunks:
        yield from cutter.add(chunk)
    yield from cutter.end()


async def _acut(chunks: AsyncIterator[bytes], size: int) -> AsyncIterator[bytes]:
    cutter = _Cutter(size)
    async for chunk in chunks:
        for part in cutter.add(chunk):
            yield part
    for part in cutter.end():
        yield part


def _take(parts: Iterator[bytes], threshold: int) -> tuple[list[bytes], bool]:
    """Blocking: the parts up to just past ``threshold``, and whether more may follow."""
    head: list[bytes] = []
    size = 0
    for part in parts:
        head.append(part)
        size += len(part)
        if size > threshold:
            return head, True
    return head, False


async def _in_thread(parts: Iterator[bytes]) -> AsyncIterator[bytes]:
    """A blocking iterator's items, each fetched in a worker thread."""
    while part := await anyio.to_thread.run_sync(next, parts, b""):
        yield part


def _raise_if_taken(exc: ClientError) -> None:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = exc.response.get("Error", {}).get("Code")
    # 412: the key exists now. 409 ConditionalRequestConflict: a concurrent conditional write.
    if status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict"):
        raise _NameTaken() from exc


class S3GeventProvider(S3Provider):
    """The seed's gevent provider, kept by name: an S3 provider with background uploads on."""

    @classmethod
    def app_defaults(cls, app: App) -> None:
        app.config.setdefault("STORE_BACKGROUND", True)
