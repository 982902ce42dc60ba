"""The part URLs a direct multipart upload's batch gets: signed here from botocore's first one,
and exactly what botocore would sign (the resume test in test_direct.py sends parts to them,
against a SeaweedFS that checks signatures)."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

import pytest
from botocore.config import Config
from botocore.session import get_session

from async_store.backends._part_urls import PartSigner

Style = Literal["path", "virtual"]
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def client(endpoint: str | None, style: Style, token: str | None = None) -> Any:
    return get_session().create_client(
        "s3",
        region_name="eu-west-3",
        endpoint_url=endpoint,
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key=SECRET,
        aws_session_token=token,
        config=Config(signature_version="s3v4", s3={"addressing_style": style}),
    )


def same_second_urls(s3: Any, key: str, numbers: list[int]) -> list[str]:
    """botocore's URLs of these parts, all signed within one second (one X-Amz-Date)."""
    while True:
        urls = [
            s3.generate_presigned_url(
                "upload_part",
                Params={"Bucket": "media", "Key": key, "UploadId": "up/1+x=", "PartNumber": n},
                ExpiresIn=900,
            )
            for n in numbers
        ]
        if len({dict(parse_qsl(urlsplit(u).query))["X-Amz-Date"] for u in urls}) == 1:
            return urls


def parsed(url: str) -> tuple[str, dict[str, str]]:
    split = urlsplit(url)
    return f"{split.scheme}://{split.netloc}{split.path}", dict(parse_qsl(split.query))


@pytest.mark.parametrize(
    ("endpoint", "style", "token"),
    [
        ("http://127.0.0.1:8333", "path", None),
        (None, "virtual", None),  # AWS, the bucket in the host name
        (None, "path", "FwoGZXIvYXdzE+session/token=="),  # temporary credentials
        ("https://objects.example.com:9000", "path", None),
    ],
)
@pytest.mark.parametrize("key", [".direct/ab12/Report (final) é+&.pdf", "plain.bin"])
def test_a_part_url_is_what_botocore_signs(
    endpoint: str | None, style: Style, token: str | None, key: str
) -> None:
    s3 = client(endpoint, style, token)
    first, seventh, big = same_second_urls(s3, key, [1, 7, 10_000])
    signer = PartSigner(first, SECRET)
    assert signer.valid
    assert parsed(signer.url(7)) == parsed(seventh)
    assert parsed(signer.url(10_000)) == parsed(big)


def test_a_url_it_cannot_reproduce_is_left_to_botocore() -> None:
    (first,) = same_second_urls(client(None, "virtual"), "a.bin", [1])
    assert not PartSigner(first, "another secret").valid  # credentials changed meanwhile
    assert not PartSigner(
        first.replace("X-Amz-SignedHeaders=host", "X-Amz-SignedHeaders=host%3Bx"), SECRET
    ).valid
    assert not PartSigner("https://example.com/a.bin?partNumber=1", SECRET).valid
