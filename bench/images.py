"""A thumbnail of a 50-megapixel JPEG: peak RSS and time, draft decoding against a full decode.

``python -m bench.images [--repeats R] [--width W --height H]`` makes the photo once with Pillow
(8660×5773 by default, a smooth picture with noise on top, quality 90, EXIF orientation 6 like a
phone's), then runs each way of making a 256×256 WebP thumbnail (and a 1280-wide preview) in a
fresh subprocess, so each peak RSS (``VmHWM``) is that run's alone:

* ``draft``: ``async_store._render.render``, what ``make_variants`` runs in its worker thread
  (``Image.draft`` has libjpeg decode at 1/8 scale; orientation, fit, encode);
* ``full``: the baseline, as code without draft mode writes it: ``Image.open``, ``load()``
  (the whole image decoded, 3 bytes per pixel), ``exif_transpose``, ``ImageOps.fit``, save;
* ``preview-draft``: ``render`` of a 1280-wide preview (decoded at 1/4 scale).

Each line reports the median of the repeats: seconds from open to encoded bytes, peak RSS, and
the RSS the interpreter had before opening the image (imports done), so the difference is the
decode's own.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageFilter, ImageOps

ROOT = Path(__file__).parent.parent
MIB = 1024 * 1024
MODES = ("draft", "full", "preview-draft")


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def make_photo(path: Path, width: int, height: int) -> None:
    """A photo-like JPEG: smooth shapes (a small random image blown up) and fine noise."""
    small = Image.effect_noise((width // 64, height // 64), 80).convert("RGB")
    image = small.resize((width, height), Image.Resampling.BICUBIC)
    noise = Image.effect_noise((width, height), 24).filter(ImageFilter.BoxBlur(1))
    image = Image.merge("RGB", [Image.blend(c, noise, 0.3) for c in image.split()])
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, "JPEG", quality=90, exif=exif)


def run_one(mode: str, path: str) -> dict[str, float]:
    """One way of making the thumbnail, in this process; what it cost."""
    from async_store._images import Variant
    from async_store._render import render

    before = _status_mib("VmRSS")
    start = time.perf_counter()
    if mode == "full":
        with Image.open(path) as image:
            image.load()
            shown = ImageOps.exif_transpose(image)
            thumb = ImageOps.fit(shown, (256, 256), Image.Resampling.LANCZOS)
            out = io.BytesIO()
            thumb.save(out, "WEBP", quality=85)
        size = len(out.getvalue())
    else:
        if mode == "draft":
            spec = {"thumb": Variant(256, 256, format="webp", fit="cover")}
        else:
            spec = {"preview": Variant(width=1280, format="webp")}
        made = render(path, spec, 10**9, repr(path))
        assert made is not None
        size = sum(len(data) for data, _ in made.values())
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_mib": _status_mib("VmHWM"),
        "before_mib": before,
        "bytes": size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=8660)
    parser.add_argument("--height", type=int, default=5773)
    parser.add_argument("--run", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print(json.dumps(run_one(*args.run)))
        return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "photo.jpg"
        make_photo(path, args.width, args.height)
        pixels = args.width * args.height
        print(
            f"{args.width}×{args.height} JPEG ({pixels / 1e6:.1f} MP, "
            f"{path.stat().st_size / MIB:.1f} MiB; decoded RGB: {pixels * 3 / MIB:.0f} MiB)"
        )
        results: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
        for _ in range(args.repeats):
            for mode in MODES:  # alternating, so a slow spell of the machine hits each
                run = subprocess.run(
                    [sys.executable, "-m", "bench.images", "--run", mode, str(path)],
                    capture_output=True,
                    text=True,
                    check=True,
                    cwd=ROOT,
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                )
                results[mode].append(json.loads(run.stdout))
        print("| mode | time (median) | peak RSS | RSS before the image | decode's own |")
        print("|---|---|---|---|---|")
        for mode, runs in results.items():
            seconds = statistics.median(r["seconds"] for r in runs)
            peak = statistics.median(r["peak_mib"] for r in runs)
            before = statistics.median(r["before_mib"] for r in runs)
            times = ", ".join(f"{r['seconds']:.2f}" for r in runs)
            print(
                f"| {mode} | {seconds:.2f} s ({times}) | {peak:.0f} MiB | {before:.0f} MiB "
                f"| {peak - before:.0f} MiB |"
            )


if __name__ == "__main__":
    main()
