"""Making variants of one image with Pillow: the blocking half, run in a worker thread.

The image is opened (its header: format, size, orientation), its declared size held against
the storage's pixel limit before a pixel is decoded, then decoded once at the smallest size
every variant can be made from: a JPEG through ``draft()``, which has libjpeg decode at 1/2,
1/4 or 1/8 scale (a 50-megapixel photo made into a 1280-wide preview never exists in memory at
full size); other formats are decoded whole (PNG, WebP and GIF have no scaled decoding) and
shrunk with ``reduce()`` first (``resize(reducing_gap=...)``). The EXIF orientation is applied,
and each variant is encoded with no metadata but its colour profile: no EXIF (GPS), no XMP.
"""

from __future__ import annotations

import io
import math
from typing import IO, TYPE_CHECKING

from ._image_check import orientation_of
from ._images import EXTENSIONS
from .exceptions import InvalidFileError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from PIL import Image as PILImage

    from ._images import Variant

__all__ = ["Rendered", "render"]

#: What :func:`render` gives for each variant: its bytes and its file extension.
Rendered = dict[str, tuple[bytes, str]]
_QUARTER_TURNS = frozenset({5, 6, 7, 8})
# resize() shrinks by an integer factor with reduce() first while the image is this many times
# larger than the result: most of the work at a fraction of the cost, quality kept.
_REDUCING_GAP = 3.0


def _scale(shown: tuple[int, int], variant: Variant) -> float:
    """How much the whole image (``shown``: oriented) is scaled to make ``variant`` (≤ 1)."""
    width, height = shown
    box_w, box_h = variant.width or width, variant.height or height
    if variant.fit == "cover":
        return min(1.0, max(box_w / width, box_h / height))
    return min(1.0, box_w / width, box_h / height)


def _resized(image: PILImage.Image, variant: Variant) -> PILImage.Image:
    from PIL import Image, ImageOps

    width, height = image.size
    if variant.fit == "cover":
        assert variant.width is not None and variant.height is not None
        shrink = min(1.0, width / variant.width, height / variant.height)  # never enlarged
        box = (max(1, round(variant.width * shrink)), max(1, round(variant.height * shrink)))
        return ImageOps.fit(image, box, Image.Resampling.LANCZOS)
    scale = _scale(image.size, variant)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size == image.size:
        return image.copy()
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=_REDUCING_GAP)


def _encoded(image: PILImage.Image, fmt: str, variant: Variant, icc: bytes | None) -> bytes:
    from PIL import Image

    if fmt == "jpeg" and image.mode != "RGB":
        if image.mode in ("RGBA", "LA", "P", "PA"):  # transparency onto white: JPEG has none
            rgba = image.convert("RGBA")
            background = Image.new("RGB", rgba.size, (255, 255, 255))
            background.paste(rgba, mask=rgba.getchannel("A"))
            image = background
        else:
            image = image.convert("RGB")
    elif image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert(
            "RGBA" if "transparency" in image.info or "A" in image.mode else "RGB"
        )
    image.info = {}  # nothing of the original's metadata is written, unless asked for below
    options: dict[str, object] = {"quality": variant.quality} if fmt != "png" else {}
    if icc:
        options["icc_profile"] = icc  # colour, not metadata: without it colours shift
    out = io.BytesIO()
    image.save(out, fmt.upper(), **options)
    return out.getvalue()


def render(
    source: str | IO[bytes], variants: Mapping[str, Variant], max_pixels: int, label: str
) -> Rendered | None:
    """Make ``variants`` of the image in ``source`` (a path or a binary file); None when it is no
    image Pillow reads. Blocking: run it in a worker thread.

    :param max_pixels: the most pixels it may have (checked from its header, before decoding).
    :param label: how messages name the file.
    :raises InvalidFileError: an image over ``max_pixels``, or one whose data is broken.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    def refused(why: str, rule: str = "images.max_pixels") -> InvalidFileError:
        return InvalidFileError(f"no variants of {label} are made: {why}", rule=rule)

    try:
        image = Image.open(source)
    except UnidentifiedImageError:
        return None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise refused(f"Pillow refuses to decode it ({exc})") from exc
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise refused(f"it is {width:,}×{height:,}, over {max_pixels:,} pixels")
        fmt = str(image.format).lower()
        quarter = orientation_of(image) in _QUARTER_TURNS
        shown = (height, width) if quarter else (width, height)
        scales = [_scale(shown, v) for v in variants.values()]
        if fmt == "jpeg":
            need = (math.ceil(shown[0] * max(scales)), math.ceil(shown[1] * max(scales)))
            image.draft(image.mode, (need[1], need[0]) if quarter else need)
        icc = image.info.get("icc_profile")
        try:
            ImageOps.exif_transpose(image, in_place=True)  # decodes it (drafted: scaled)
        except (OSError, SyntaxError, ValueError) as exc:
            raise refused(f"its image data is broken ({exc})", "images") from exc
        made: Rendered = {}
        for name, variant in variants.items():
            out = variant.format or (fmt if fmt in EXTENSIONS else "png")
            made[name] = _encoded(_resized(image, variant), out, variant, icc), EXTENSIONS[out]
        return made
