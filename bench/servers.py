"""Which ASGI server to run a Quart app that takes large uploads with (issue 17).

``python -m bench.servers [--size-mib N] [--repeats R]`` posts one file with curl (as
``bench/http.py`` does) to the same two apps under hypercorn (Quart's default), uvicorn (uvloop
and httptools) and granian, a fresh server process per upload, alternating:

* ``bare``: a bare ASGI app parsing the body with python-multipart and writing the file with
  plain blocking writes, the least work that stores it (the server's own ceiling);
* ``ours``: Quart and ``store.save_request(fields=["f"])``.

It prints each one's MiB/s (median) and server peak RSS, ``ours`` against ``bare`` on the same
server, and each server's ``ours`` against hypercorn's. Needs ``uvicorn[standard]`` and
``granian`` (the bench extra).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
from pathlib import Path

from .http import MIB, upload
from .report import make_source

SERVERS = ("hypercorn", "uvicorn", "granian")
VARIANTS = ("bare", "ours")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-servers-"))
    source = make_source(work / "upload.bin", args.size_mib * MIB)
    rates: dict[tuple[str, str], list[float]] = {}
    peaks: dict[tuple[str, str], list[float]] = {}
    try:
        for _ in range(args.repeats):  # alternating: drift hits every one alike
            for server in SERVERS:
                for variant in VARIANTS:
                    rate, peak = upload(variant, source, work, server)
                    rates.setdefault((server, variant), []).append(rate)
                    peaks.setdefault((server, variant), []).append(peak)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"{args.size_mib} MiB posted with curl, {args.repeats} repeats, "
        f"load {os.getloadavg()[0]:.2f}"
    )
    median = {key: statistics.median(values) for key, values in rates.items()}
    for server in SERVERS:
        for variant in VARIANTS:
            key = (server, variant)
            every = [round(v) for v in rates[key]]
            print(
                f"  {server:>9} {variant:>4}: {median[key]:6.0f} MiB/s (all {every}), "
                f"peak RSS {max(peaks[key]):.0f} MiB"
            )
        ours, bare = median[(server, "ours")], median[(server, "bare")]
        versus = ours / median[("hypercorn", "ours")]
        print(f"  {server:>9}: save_request {ours / bare:.2f}x the bare parse, ", end="")
        print(f"{versus:.2f}x hypercorn's")


if __name__ == "__main__":
    main()
