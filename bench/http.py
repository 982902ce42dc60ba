"""Large uploads through the whole stack: curl posting multipart over loopback to hypercorn.

Each variant of ``bench/http_server.py`` runs in a fresh server process per upload, so its peak
RSS (``VmHWM``) belongs to that upload alone. curl streams the file from disk (``Expect:``
cleared, or it would wait a second for a ``100 Continue``). The variants alternate within each
repeat, so drift on a noisy machine hits them alike.
"""

from __future__ import annotations

import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from .report import Row, make_source

HERE = Path(__file__).parent
MIB = 1024 * 1024
VARIANTS = ("raw", "bare", "naive", "files", "ours")
#: Flask behind Werkzeug's threaded WSGI server; measured at the smallest size only (the server,
#: not async_store, sets the pace there, and the big size would add minutes to the run).
FLASK_VARIANTS = ("flask-naive", "flask-ours")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the bench server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the bench server did not start")


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def upload(
    variant: str, source: Path, work: Path, server: str = "hypercorn"
) -> tuple[float, float]:
    """POST ``source`` to a fresh ``server`` of ``variant``: (MiB/s, server peak RSS in MiB)."""
    folder = work / f"srv-{variant}"
    folder.mkdir()
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.http_server", variant, str(port), str(folder), server],
        cwd=HERE.parent,
    )
    warm = work / "warm-up.bin"
    warm.write_bytes(b"w" * 1024)

    def post(path: Path) -> tuple[str, str]:
        result = subprocess.run(
            [
                *("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_total}"),
                *("-H", "Expect:", "-F", f"f=@{path};type=application/octet-stream"),
                f"http://127.0.0.1:{port}/up",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        status, seconds = result.stdout.split()
        return status, seconds

    try:
        _wait_for(port, proc)
        # One small upload first, untimed: a served app has done its first request long ago
        # (lazy imports, the sync shim's event-loop thread, worker threads).
        post(warm)
        status, seconds = post(source)
        peak = _peak_rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    stored = sorted(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    size = source.stat().st_size
    if status != "200" or (variant != "raw" and stored != [1024, size]):
        raise RuntimeError(f"{variant}: HTTP {status}, stored sizes {stored}")
    shutil.rmtree(folder)
    return size / MIB / float(seconds), peak


def copy_rate(source: Path, work: Path) -> float:
    target = work / "cp-copy.bin"
    start = time.perf_counter()
    subprocess.run(["cp", str(source), str(target)], check=True)
    elapsed = time.perf_counter() - start
    target.unlink()
    return source.stat().st_size / MIB / elapsed


def bench_http(work: Path, sizes: list[int], repeats: int) -> tuple[list[Row], list[str]]:
    """Rows of ratios, and a Markdown table of every variant's rate and peak RSS."""
    rows: list[Row] = []
    table = [
        "### Large uploads through hypercorn: every variant",
        "",
        "| size | variant | MiB/s (median, range) | server peak RSS, MiB (max) |",
        "|---|---|---|---|",
    ]
    for size in sizes:
        source = make_source(work / f"upload-{size // MIB}.bin", size)
        variants = VARIANTS + (FLASK_VARIANTS if size == sizes[0] else ())
        rates: dict[str, list[float]] = {v: [] for v in (*variants, "cp")}
        peaks: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(repeats):
            rates["cp"].append(copy_rate(source, work))
            for variant in variants:
                rate, peak = upload(variant, source, work)
                rates[variant].append(rate)
                peaks[variant].append(peak)
        source.unlink()
        label = f"{size // MIB} MiB" if size < 1024 * MIB else f"{size // (1024 * MIB)} GiB"
        what = f"{label} multipart upload through hypercorn + Quart"
        rows += [
            Row(f"{what}, save_request", "MiB/s", rates["ours"],
                "bare ASGI app: python-multipart + plain writes", rates["bare"], 0.8),
            Row(f"{what}, save_request", "MiB/s", rates["ours"],
                'naive Quart: (await request.files)["f"].save()', rates["naive"], 4.0),
            Row(f"{what}, save_request", "MiB/s", rates["ours"],
                "bare ASGI app reading the raw body, dropping it", rates["raw"], None),
            Row(f"{what}, save_request", "MiB/s", rates["ours"],
                "cp of the file on the same disk", rates["cp"], None),
            Row(f"{what}, Provider(request.files[...]).save()", "MiB/s", rates["files"],
                'naive Quart: (await request.files)["f"].save()', rates["naive"], None),
        ]  # fmt: skip
        if size == sizes[0]:
            rows.append(
                Row(f"{label} multipart upload to Flask (Werkzeug threaded server), save_request",
                    "MiB/s", rates["flask-ours"], 'Flask: request.files["f"].save()',
                    rates["flask-naive"], None)
            )  # fmt: skip
        for variant in variants:
            values = rates[variant]
            table.append(
                f"| {label} | {variant} | {statistics.median(values):,.0f} "
                f"({min(values):,.0f}–{max(values):,.0f}) | {max(peaks[variant]):,.0f} |"
            )
        if size >= 1024 * MIB:
            rows.append(
                Row(f"server peak RSS, {label} upload, save_request", "MiB", peaks["ours"],
                    "the target's ceiling", [100.0], 1.0, lower_is_better=True)
            )  # fmt: skip
    return rows, table
