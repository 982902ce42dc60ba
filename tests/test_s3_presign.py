"""Presigned URLs: SigV4 for the bucket's regional host, and what a browser gets from them.

Shapes are checked for AWS regions without any network (signing is local); acceptance,
tampering and expiry against a SeaweedFS that knows one identity and refuses everything else,
as tests/test_cli.py starts it (the suite's shared server accepts any key, and so any URL).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import flask
import pytest

from async_store import Store
from tests.conftest import S3_CREDENTIALS, s3_app, s3_client
from tests.seaweed import SeaweedFS


@pytest.fixture(scope="module")
def identity_server(signed_s3_server: SeaweedFS) -> SeaweedFS:
    """Refuses anonymous and badly signed requests (see conftest), with a bucket of ours."""
    s3_client(signed_s3_server).create_bucket(Bucket="signed")
    return signed_s3_server


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    """A browser's GET: status, headers, body (error statuses included)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


async def fetch(url: str) -> tuple[int, dict[str, str], bytes]:
    return await anyio.to_thread.run_sync(get, url)


@pytest.fixture
def no_aws_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No region from the environment or ~/.aws: what an unset STORE_S3_REGION means is ours."""
    for name in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))


# --- the URL's shape, for AWS ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("region", "bucket", "host"),
    [
        ("us-east-1", "pics", "pics.s3.us-east-1.amazonaws.com"),
        ("eu-west-1", "pics", "pics.s3.eu-west-1.amazonaws.com"),
        (None, "pics", "pics.s3.us-east-1.amazonaws.com"),
        # A dotted name would not match the certificate of *.s3.<region>.amazonaws.com.
        ("eu-west-1", "my.pics", "s3.eu-west-1.amazonaws.com"),
    ],
)
async def test_presigned_urls_are_sigv4_for_the_regional_host(
    no_aws_config: None, region: str | None, bucket: str, host: str
) -> None:
    app = flask.Flask(__name__)
    app.config.update(
        STORE_PROVIDER="s3", STORE_S3_BUCKET=bucket, STORE_S3_REGION=region, **S3_CREDENTIALS
    )
    provider = Store(app).AsyncProvider("cats/a.jpg")
    signed = urlsplit(await provider.url(expires=600))
    query = parse_qs(signed.query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Credential"][0].endswith(f"/{region or 'us-east-1'}/s3/aws4_request")
    assert query["X-Amz-Expires"] == ["600"]
    assert "AWSAccessKeyId" not in query and "Signature" not in query  # SigV2's
    assert (signed.scheme, signed.netloc) == ("https", host)
    # The same place absolute_url points at (a public object's link).
    assert provider.absolute_url == f"https://{host}{signed.path}"
    assert signed.path.endswith("/cats/a.jpg")


@pytest.mark.parametrize("expires", [0, -5, 7 * 24 * 3600 + 1, True])
async def test_expiry_out_of_sigv4_range_is_refused(expires: Any) -> None:
    app = flask.Flask(__name__)
    app.config.update(STORE_PROVIDER="s3", STORE_S3_BUCKET="pics", **S3_CREDENTIALS)
    with pytest.raises(ValueError, match="expires must be 1 to 604800 seconds"):
        await Store(app).AsyncProvider("a.jpg").url(expires=expires)


async def test_response_overrides_need_a_presigned_url() -> None:
    app = flask.Flask(__name__)
    app.config.update(STORE_PROVIDER="s3", STORE_S3_BUCKET="pics", **S3_CREDENTIALS)
    with pytest.raises(ValueError, match="need expires="):
        provider: Any = Store(app).AsyncProvider("a.jpg")  # an S3Provider: url() takes more
        await provider.url(download_name="b.jpg")


# --- a server that checks signatures ---------------------------------------------------------


async def test_signed_url_is_accepted_and_a_tampered_or_expired_one_refused(
    identity_server: SeaweedFS,
) -> None:
    app = s3_app(identity_server, "signed", STORE_PATH="presign")
    store = Store(app)
    async with app.app_context():
        provider = store.Provider(b"for your eyes", filename="a.txt")
        await provider.save()
        await store.Provider(b"someone else's", filename="b.txt").save()
        signed = await provider.url(expires=600)
        short = await provider.url(expires=1)
        signed_at = time.monotonic()
    query = parse_qs(urlsplit(signed).query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    status, _, body = await fetch(signed)
    assert (status, body) == (200, b"for your eyes")
    # The server does check: without a signature, no access.
    assert (await fetch(provider.absolute_url))[0] == 403
    parts = urlsplit(signed)
    signature = query["X-Amz-Signature"][0]
    tampered = {
        "another file": parts._replace(path=parts.path.replace("a.txt", "b.txt")).geturl(),
        "a longer expiry": signed.replace("X-Amz-Expires=600", "X-Amz-Expires=6000"),
        "another signature": signed.replace(signature, signature[::-1]),
    }
    for what, url in tampered.items():
        status, _, body = await fetch(url)
        assert status == 403, f"{what}: {status}"
        assert b"someone else's" not in body
    await anyio.sleep(max(0.0, signed_at + 2.5 - time.monotonic()))
    status, _, body = await fetch(short)
    assert status == 403 and b"for your eyes" not in body


async def test_public_endpoint_signer_is_kept_for_the_serving_loop(
    identity_server: SeaweedFS,
) -> None:
    # A new client per URL cost ~30 times the signing itself, with blocking file I/O on the
    # loop; Quart's serving loop keeps one, as it does for the main client.
    public = f"http://localhost:{identity_server.s3_port}"
    app = s3_app(
        identity_server, "signed", STORE_PATH="public", STORE_S3_PUBLIC_ENDPOINT_URL=public
    )
    store = Store(app)
    clients = store.state().provider_class.backend._clients  # type: ignore[attr-defined]
    async with app.test_app(), app.app_context():
        provider = store.Provider(b"public", filename="a.txt")
        await provider.save()
        links = [await provider.url(expires=60) for _ in range(3)]
        signers = {
            id(client): client.meta.endpoint_url
            for _, client in clients._kept.values()
            if client.meta.endpoint_url == public
        }
        assert len(signers) == 1
        assert len(clients._kept) == 2  # and the main client, for the save
    assert clients._kept == {}  # both closed by after_serving
    for link in links:
        assert link.startswith(f"{public}/signed/public/a.txt?")
        status, _, body = await fetch(link)
        assert (status, body) == (200, b"public")
