"""Smoke runs of bench parts: each stores what it claims to measure, on tiny sizes.

The figures themselves come from ``make bench``; here a part that no longer stores its files
(a 413 from a body limit, a server that fails to start) fails in seconds instead of in the
lead's hour-long run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench import local_small
from bench.http import upload
from bench.local_small import sync_loop
from bench.run import bench_small_local
from tests.conftest import unavailable

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("variant", ["flask-ours", "flask-naive"])
def test_http_variants_store_the_upload(variant: str, tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        unavailable("the HTTP bench posts with curl, which is not installed")
    source = tmp_path / "upload.bin"
    source.write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    # upload() raises unless the server answers 200 and stored exactly the warm-up file and
    # this one, whole; it removes its folder when it succeeds.
    rate, peak = upload(variant, source, tmp_path)
    assert rate > 0 and 10 < peak < 1000
    assert not (tmp_path / f"srv-{variant}").exists()


def test_small_files_bench_deletes_nothing_between_runs(tmp_path: Path) -> None:
    row = bench_small_local(tmp_path, 20, 4, 3, "test", 0.7)
    assert len(row.ours) == len(row.baseline) == 3 and min(row.ours + row.baseline) > 0
    # Every run wrote its own folder, and all of them are still there: no deletion (and so no
    # ext4 inode-allocator slowdown) between the timed runs.
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert len(folders) == 6 and {f.split("-")[0] for f in folders} == {"ours", "plain"}
    for folder in folders:
        assert len(list((tmp_path / folder).iterdir())) == 20, folder


def test_the_same_guarantees_loop_never_replaces_a_file(tmp_path: Path) -> None:
    (tmp_path / "f1.bin").write_bytes(b"theirs")
    sync_loop(tmp_path, 3, b"ours")
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    # The taken name gets the next one; no temp file is left.
    assert files == {"f0.bin": b"ours", "f1.bin": b"theirs", "f1_1.bin": b"ours", "f2.bin": b"ours"}


def test_the_same_guarantees_row_measures_both_sides(tmp_path: Path) -> None:
    row = local_small.row(50, 8, str(tmp_path), 2)
    assert len(row.ours) == len(row.baseline) == 2 and min(row.ours + row.baseline) > 0
    assert row.target == 0.5 and not list(tmp_path.iterdir())  # its scratch folder is gone
