"""What a storage says about images: the rules an image must pass, and the variants made of it.

Both are plain declarations (no Pillow needed to write them): :class:`ImageRules` goes into
:class:`~async_store.Rules` (``images=``) and is checked from an upload's first bytes by
``_image_check`` (its ``strip_metadata`` is applied by ``_strip`` as the bytes stream in);
:class:`Variant` is one declared derivative (a thumbnail, a preview), made by ``_variants``
after the original is stored. Pillow is imported only where an image is read,
and :func:`require_images` says how to install it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .exceptions import NotConfiguredError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "EXTENSIONS",
    "ImageRules",
    "Variant",
    "image_formats",
    "require_images",
    "variant_name",
    "variants_of",
]

#: The most pixels a variant is made from when the storage sets no ``IMAGE_MAX_PIXELS``: the
#: value of Pillow's own default ``MAX_IMAGE_PIXELS``, set here so that a change of Pillow's
#: global elsewhere in the process does not change what is decoded.
DEFAULT_MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3
#: The formats variants are written in, with their extension.
EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp"}
_ALIASES = {"jpg": "jpeg", "tif": "tiff"}
_FORMAT = re.compile(r"[a-z0-9]{2,16}\Z")
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}\Z")
_CHECKS = ("formats", "max_width", "max_height", "max_pixels")


def require_images(what: str) -> None:
    """Check that Pillow is installed, for ``what`` (a key or an option) that needs it.

    :raises NotConfiguredError: naming the extra to install.
    """
    try:
        import PIL.Image  # noqa: F401
    except ImportError:
        raise NotConfiguredError(
            f"{what} reads images with Pillow, which is not installed: "
            f"pip install async_store[images]"
        ) from None


def image_formats(value: Collection[str] | str | None) -> frozenset[str] | None:
    """Format names, lowercased, aliases resolved (``'JPG'`` is ``'jpeg'``); None: any.

    :raises ValueError: for a name that is no format's.
    """
    if value is None:
        return None
    names = [value] if isinstance(value, str) else list(value)
    formats = set()
    for name in names:
        lowered = str(name).strip().lstrip(".").lower()
        if not isinstance(name, str) or not _FORMAT.match(lowered):
            raise ValueError(f"not an image format such as 'jpeg', 'png' or 'webp': {name!r}")
        formats.add(_ALIASES.get(lowered, lowered))
    if not formats:
        raise ValueError("an empty list of image formats would refuse every file")
    return frozenset(formats)


def _limit(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} is a whole number of at least 1, not {value!r}")


@dataclass(frozen=True)
class ImageRules:
    """What an image must be to be stored, read from its header (its first bytes), never by
    decoding it, and whether its metadata is stored; a field left None is not checked (or, in
    a call's rules, is the storage's)::

        Rules(images=ImageRules(formats=["jpeg", "png", "webp"], max_pixels=40_000_000))
        Rules(images=ImageRules(strip_metadata=True))     # no GPS in the stored photo

    :param formats: the formats (Pillow's names: ``'jpeg'``, ``'png'``, ``'webp'``, ``'gif'``…)
        a file may be; with it set, a file that is no image of these is refused (415).
    :param max_width: the widest image taken, pixels (422).
    :param max_height: the tallest image taken, pixels (422).
    :param max_pixels: the most pixels (width × height) an image may have (422): what keeps
        a decompression bomb (a small file claiming 100000×100000) out.
    :param strip_metadata: store a JPEG, PNG or WebP without its metadata (EXIF with its GPS
        tags, XMP, IPTC, comments, text chunks), losslessly: the segments that carry it are left
        out as the bytes stream in, the pixels' bytes are copied, the colour profile and the
        orientation stay (see ``async_store._strip``); other files are stored unchanged, and
        :attr:`~async_store.Provider.size` and ``sha256`` are the stored bytes'. It applies to
        what a save streams (``save()``, ``save_request``, background mode, the sync shim, tus
        uploads), not to direct-to-bucket uploads nor to tus uploads to S3 larger than a part:
        their bytes reach the bucket without passing through the app. ``max_size`` still counts
        the upload as it came. ``False`` in a call's rules turns the storage's off; so does
        ``validate=False``. Needs no Pillow.
    :raises ValueError: for a malformed rule.
    """

    formats: Collection[str] | None = None
    max_width: int | None = None
    max_height: int | None = None
    max_pixels: int | None = None
    strip_metadata: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "formats", image_formats(self.formats))
        for name in ("max_width", "max_height", "max_pixels"):
            _limit(name, getattr(self, name))
        if self.strip_metadata is not None and not isinstance(self.strip_metadata, bool):
            raise ValueError(f"strip_metadata is True or False, not {self.strip_metadata!r}")

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) is not None for f in dataclasses.fields(self))

    @property
    def checks(self) -> bool:
        """Whether a rule reads the header (with Pillow): stripping reads none, it is no rule."""
        return any(getattr(self, name) is not None for name in _CHECKS)

    def merged(self, call: ImageRules | None) -> ImageRules:
        """These rules with each rule ``call`` sets over them."""
        if call is None:
            return self
        changes = {
            f.name: getattr(call, f.name)
            for f in dataclasses.fields(call)
            if getattr(call, f.name) is not None
        }
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Variant:
    """A derivative of each stored image: made after the original is stored, in a worker
    thread, orientation applied and metadata (EXIF, GPS, XMP) stripped, stored next to it::

        Variant(256, 256, format="webp", fit="cover")    # a square thumbnail
        Variant(width=1280)                               # a preview, 1280 wide at most

    In config: ``{"size": [256, 256], "format": "webp", "fit": "cover"}``, ``{"width": 1280}``.
    An image is never enlarged.

    :param width: the widest it may be, pixels.
    :param height: the tallest it may be, pixels.
    :param format: ``'jpeg'``, ``'png'`` or ``'webp'``; None: the original's when it is one of
        these, else PNG.
    :param fit: ``'contain'``: the whole image within width × height; ``'cover'``: cropped
        (centred) to fill them exactly (needs both).
    :param quality: the encoder's quality for JPEG and WebP, 1–100.
    :raises ValueError: for a malformed variant.
    """

    width: int | None = None
    height: int | None = None
    format: str | None = None
    fit: Literal["contain", "cover"] = "contain"
    quality: int = 85

    def __post_init__(self) -> None:
        _limit("width", self.width)
        _limit("height", self.height)
        if self.width is None and self.height is None:
            raise ValueError("a variant needs a width, a height or both (size=[w, h])")
        if self.format is not None:
            fmt = _ALIASES.get(str(self.format).lower(), str(self.format).lower())
            if fmt not in EXTENSIONS:
                raise ValueError(f"a variant's format is one of {sorted(EXTENSIONS)}, not {fmt!r}")
            object.__setattr__(self, "format", fmt)
        if self.fit not in ("contain", "cover"):
            raise ValueError(f"a variant's fit is 'contain' or 'cover', not {self.fit!r}")
        if self.fit == "cover" and (self.width is None or self.height is None):
            raise ValueError("fit='cover' needs both a width and a height")
        quality = self.quality
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
            raise ValueError(f"a variant's quality is 1 to 100, not {quality!r}")

    @classmethod
    def of(cls, spec: Variant | Mapping[str, Any]) -> Variant:
        """A variant from its config form (``size``, ``width``, ``height``, ``format``, ``fit``,
        ``quality``), or the variant itself.

        :raises ValueError: for an unknown key or a malformed value.
        """
        if isinstance(spec, Variant):
            return spec
        if not isinstance(spec, Mapping):
            raise ValueError(f"a variant is a dict such as {{'width': 1280}}, not {spec!r}")
        options = dict(spec)
        size = options.pop("size", None)
        if size is not None:
            if not isinstance(size, (list, tuple)) or len(size) != 2:
                raise ValueError(f"a variant's size is [width, height], not {size!r}")
            options.setdefault("width", size[0])
            options.setdefault("height", size[1])
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(options) - known):
            known_text = ", ".join(["size", *sorted(known)])
            raise ValueError(f"unknown variant option {', '.join(unknown)} (known: {known_text})")
        return cls(**options)


def variant_name(name: Any) -> str:
    """A variant's name: lowercase letters, digits, ``-`` and ``_`` (it names its file).

    :raises ValueError: otherwise.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"a variant's name is like 'thumb' or 'preview-2x', not {name!r}")
    return name


def variants_of(value: Mapping[str, Variant | Mapping[str, Any]] | None) -> dict[str, Variant]:
    """Declared variants by name, from config or code.

    :raises ValueError: for a malformed name or variant.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"variants are a dict of name: variant, not {value!r}")
    return {variant_name(name): Variant.of(spec) for name, spec in value.items()}
