"""Load, small: 200 concurrent clients through hypercorn + Quart + save_request, for a few seconds.

The full run (4 KiB to 20 MiB, a minute each) is ``make bench`` (``bench/load.py``); this one
proves the same properties on smaller files: every 2xx upload stored with the right sha256, no
upload refused, nothing extra or half-written left, the server's peak RSS bounded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.load import KIB, MIB, run_load
from tests.conftest import s3_client, s3_config
from tests.seaweed import SeaweedFS

pytestmark = pytest.mark.slow

CLIENTS, SECONDS, SIZES = 200, 1.0, (4 * KIB, 2 * MIB)
#: The server's peak RSS: Python, Quart and botocore take ~90 MiB before the first request, each
#: streaming request buffers some (hypercorn's app queue, the flow-control queue), and S3 saves
#: hold up to STORE_S3_MAX_MEMORY of content (16 MiB here; aiohttp's socket buffer copies what
#: is being sent). Measured: ~190 MiB; S3 without that budget, 360 MiB.
RSS_LIMIT = 300 * MIB


@pytest.mark.parametrize("mode", ["direct", "background"])
@pytest.mark.parametrize("backend", ["local", "s3"])
def test_concurrent_uploads_all_arrive_whole(
    backend: str, mode: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    client: Any = None
    if backend == "s3":
        server: SeaweedFS = request.getfixturevalue("s3_server")
        bucket = request.getfixturevalue("bucket")
        config: dict[str, Any] = s3_config(
            server, bucket, STORE_PATH="media", STORE_S3_MAX_MEMORY=16 * MIB
        )
        client = s3_client(server)
    else:
        config = {"STORE_PATH": str(tmp_path / "store")}
    if mode == "background":
        config.update(STORE_BACKGROUND=True, STORE_SPOOL_PATH=str(tmp_path / "spool"))
    result = run_load(
        tmp_path / "run", f"{backend}, {mode}", config, CLIENTS, SECONDS, SIZES, client
    )
    print(result.summary())
    assert result.errors == []
    assert result.failed == 0
    assert result.ok >= CLIENTS, result.summary()
    assert result.lost == []
    assert result.extra == []
    assert result.leftovers == []
    assert result.peak_rss < RSS_LIMIT, result.summary()
