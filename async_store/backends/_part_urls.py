"""Presigned URLs for the parts of one multipart upload: botocore signs the first, this the rest.

botocore's ``generate_presigned_url`` costs about 0.58 ms a URL on this project's 2-core VM (it
resolves the endpoint rule set again for each one, then signs), and a 1 GiB upload in Uppy's
5 MiB parts needs 205 of them: most of the app's work in a direct upload. The parts of one
upload differ only in ``partNumber``, so botocore signs part one (endpoint, addressing style,
credentials and scope, as for any request) and the others are that URL with another number,
signed here by SigV4's rules for query-string signatures: the canonical request, the string to
sign, the key derived for the URL's date, region and service.

This is checked, never trusted: part one's signature, recomputed here, must equal botocore's.
A URL of another form (headers signed besides ``host``, a signing scheme this does not know,
credentials refreshed in between) fails that check, and then botocore signs every part.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

__all__ = ["PartSigner", "part_urls"]

_ALGORITHM = "AWS4-HMAC-SHA256"


def _encode(text: str) -> str:
    # SigV4 encodes every byte but the unreserved characters, '/' included.
    return quote(text, safe="-_.~")


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


class PartSigner:
    """Signs ``UploadPart`` URLs like ``first``, a presigned URL of one part of the same upload,
    with the secret key that signed it. :attr:`valid` says whether this reproduces ``first``'s
    signature; only then may :meth:`url` be used."""

    def __init__(self, first: str, secret_key: str) -> None:
        split = urlsplit(first)
        self._base = f"{split.scheme}://{split.netloc}{split.path}"
        self._host, self._path = split.netloc, split.path
        query = parse_qsl(split.query, keep_blank_values=True)
        found = dict(query)
        self._params = [(k, v) for k, v in query if k != "X-Amz-Signature"]
        self.valid = False
        credential = found.get("X-Amz-Credential", "").split("/")
        if (
            found.get("X-Amz-Algorithm") != _ALGORITHM
            or found.get("X-Amz-SignedHeaders") != "host"
            or len(credential) != 5
            or "partNumber" not in found
        ):
            return
        _, date, region, service, _ = credential
        self._date, self._scope = found.get("X-Amz-Date", ""), "/".join(credential[1:])
        key = _hmac(f"AWS4{secret_key}".encode(), date)
        for part in (region, service, "aws4_request"):
            key = _hmac(key, part)
        self._key = key
        self.valid = hmac.compare_digest(
            self._sign(self._canonical_query(self._params)), found.get("X-Amz-Signature", "")
        )

    @staticmethod
    def _canonical_query(params: list[tuple[str, str]]) -> str:
        return "&".join(f"{k}={v}" for k, v in sorted((_encode(k), _encode(v)) for k, v in params))

    def _sign(self, canonical_query: str) -> str:
        request = "\n".join(
            (
                "PUT",
                self._path,
                canonical_query,
                f"host:{self._host}",
                "",
                "host",
                "UNSIGNED-PAYLOAD",
            )
        )
        digest = hashlib.sha256(request.encode()).hexdigest()
        to_sign = f"{_ALGORITHM}\n{self._date}\n{self._scope}\n{digest}"
        return hmac.new(self._key, to_sign.encode(), hashlib.sha256).hexdigest()

    def url(self, number: int) -> str:
        """The presigned URL of part ``number``."""
        params = [(k, str(number) if k == "partNumber" else v) for k, v in self._params]
        query = self._canonical_query(params)
        return f"{self._base}?{query}&X-Amz-Signature={self._sign(query)}"


async def part_urls(
    s3: Any, bucket: str, key: str, upload_id: str, numbers: list[int], expires: int
) -> list[str]:
    """Presigned ``UploadPart`` URLs of the parts ``numbers`` of an upload, by the aioboto3
    client ``s3``: botocore's for the first, the rest from it when :class:`PartSigner` can."""

    async def botocore_url(number: int) -> str:
        params = {"Bucket": bucket, "Key": key, "UploadId": upload_id, "PartNumber": number}
        return str(await s3.generate_presigned_url("upload_part", Params=params, ExpiresIn=expires))

    if not numbers:
        return []
    first = await botocore_url(numbers[0])
    signer = None
    # The key that signed it: botocore keeps the client's credentials on its request signer.
    credentials = getattr(getattr(s3, "_request_signer", None), "_credentials", None)
    if len(numbers) > 1 and credentials is not None:
        frozen = await credentials.get_frozen_credentials()
        signer = PartSigner(first, frozen.secret_key)
    if signer is None or not signer.valid:
        return [first, *[await botocore_url(n) for n in numbers[1:]]]
    return [first, *map(signer.url, numbers[1:])]
