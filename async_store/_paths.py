"""The one place where names become paths: client filenames, ``location=`` and stored keys.

Two different jobs live here and must not be confused:

* :func:`clean_filename` *repairs* a name a client sent. Whatever comes in, something safe comes
  out: one path segment, no control or bidi characters, at most :data:`MAX_NAME_BYTES` even after
  the collision suffix is added, Unicode letters and the extension kept.
* :func:`clean_key` and :func:`clean_location` *validate* paths the application gives us (a
  stored path read back from a database, a ``location=``). Those are not repaired: a path that
  would leave the store raises :class:`~async_store.exceptions.UnsafePathError`.
"""

from __future__ import annotations

import os
import re
import unicodedata
import uuid

from .exceptions import UnsafePathError

__all__ = [
    "MAX_NAME_BYTES",
    "clean_filename",
    "clean_key",
    "clean_location",
    "collision_name",
    "is_hidden_segment",
    "safe_join",
    "shortuuid",
    "split_ext",
]

#: The longest file name most file systems (and S3 keys per segment, in practice) accept.
MAX_NAME_BYTES = 255
#: What :func:`collision_name` adds: ``"_"`` and a 22 character short UUID.
_SUFFIX_BYTES = 1 + 22
#: A cleaned name leaves room for the collision suffix, so a renamed file still fits.
_CLEAN_NAME_BYTES = MAX_NAME_BYTES - _SUFFIX_BYTES
_MAX_EXT_BYTES = 32
#: Longest stored key we accept; far above any real one, far below PATH_MAX.
MAX_KEY_BYTES = 1024

# Punctuation that is harmless in a file name, a URL path and a shell word.
_KEEP = frozenset("-_.+=@,()[]~")
# Characters that vanish: control, format (bidi overrides, zero width), surrogates,
# private use, unassigned. None of them is visible, all of them can deceive.
_DROP_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})
_SEPARATORS = re.compile(r"[/\\]")
_UNDERSCORES = re.compile(r"_{2,}")
_WINDOWS_DEVICES = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{dev}{n}" for dev in ("COM", "LPT") for n in [*"0123456789", "¹", "²", "³"]}
)
_COMPOUND_EXTS = (".tar.gz", ".tar.bz2", ".tar.xz", ".tar.zst")
_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def shortuuid() -> str:
    """A random 22 character, URL-safe, unambiguous id (the ``shortuuid`` package's format)."""
    n = uuid.uuid4().int
    out = []
    for _ in range(22):
        n, rem = divmod(n, len(_ALPHABET))
        out.append(_ALPHABET[rem])
    return "".join(out)


def split_ext(name: str) -> tuple[str, str]:
    """Split ``name`` into root and extension, keeping ``.tar.gz`` and friends whole."""
    lower = name.lower()
    for ext in _COMPOUND_EXTS:
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], name[-len(ext) :]
    root, ext = os.path.splitext(name)
    if len(ext.encode()) > _MAX_EXT_BYTES or ext == ".":
        return name, ""
    return root, ext


def _truncate(text: str, max_bytes: int) -> str:
    encoded = text.encode()
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode("utf-8", "ignore")


def _clean_chars(name: str) -> str:
    out = []
    for ch in name:
        category = unicodedata.category(ch)
        if category[0] in "LMN" or ch in _KEEP:
            out.append(ch)
        elif category in _DROP_CATEGORIES:
            continue
        else:  # spaces, symbols, quotes, colons, …
            out.append("_")
    return _UNDERSCORES.sub("_", "".join(out))


def _strip(text: str) -> str:
    # Leading dots would hide the file (and collide with our temp files), a leading dash reads as
    # a command-line option; trailing dots and spaces are dropped by Windows.
    return text.lstrip("._-~").rstrip("._")


def clean_filename(name: str | bytes | None, default: str = "file") -> str:
    """Turn whatever name a client sent into one safe path segment.

    The result is a single segment (only the part after the last ``/`` or ``\\`` is kept), in
    Unicode NFKC form (so fullwidth ``．`` and ``／`` become ``.`` and ``/`` before that split),
    without control, format or bidi characters, never a Windows device name, never empty, never
    starting with a dot, and short enough that :func:`collision_name` stays within
    :data:`MAX_NAME_BYTES` bytes. Letters of every script and the extension are kept::

        >>> clean_filename("../../etc/passwd")
        'passwd'
        >>> clean_filename("фото отпуск.jpg")
        'фото_отпуск.jpg'

    :param name: the client's file name (``FileStorage.filename``); bytes are decoded as UTF-8.
    :param default: the name used when nothing usable is left.
    """
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    text = unicodedata.normalize("NFKC", name or "")
    parts = [p for p in _SEPARATORS.split(text) if _strip(_clean_chars(p))]
    text = _strip(_clean_chars(parts[-1])) if parts else ""
    root, ext = split_ext(text)
    root = _strip(root)
    if not root:
        # ".jpg" or "...jpg": there was no name, only what looked like an extension.
        root, ext = _strip(ext), ""
    if not root:
        root = default
    if root.split(".")[0].upper() in _WINDOWS_DEVICES:
        root = f"{root}_"
    root = _strip(_truncate(root, _CLEAN_NAME_BYTES - len(ext.encode()))) or default
    return root + ext


def collision_name(name: str) -> str:
    """The manual's ``{root}_{shortuuid}{ext}`` form, for a name that is already taken."""
    root, ext = split_ext(name)
    return f"{root}_{shortuuid()}{ext}"


def is_hidden_segment(segment: str) -> bool:
    """Dot-names are never stored by us: they are temp files or someone else's files."""
    return segment.startswith(".")


def _check_segment(segment: str, whole: str) -> None:
    if segment in ("", ".", ".."):
        raise UnsafePathError(f"{whole!r} is not a plain relative path ({segment!r} segment)")
    if is_hidden_segment(segment):
        raise UnsafePathError(f"{whole!r} has a hidden segment {segment!r}")
    if "\\" in segment or any(unicodedata.category(ch) in _DROP_CATEGORIES for ch in segment):
        raise UnsafePathError(f"{whole!r} contains a backslash or a control character")
    if len(segment.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise UnsafePathError(f"{whole!r} has a segment over {MAX_NAME_BYTES} bytes")


def clean_location(location: str | None) -> str:
    """Validate a ``location=``: a relative folder inside the store, ``""`` for the top.

    Leading and trailing slashes are ignored (the manual writes ``location='/some/where'``);
    ``..``, ``.``, hidden, backslash or control-character segments raise
    :class:`~async_store.exceptions.UnsafePathError`.
    """
    if not location:
        return ""
    stripped = location.strip("/")
    if not stripped:
        return ""
    for segment in stripped.split("/"):
        _check_segment(segment, location)
    return stripped


def clean_key(path: str) -> str:
    """Validate the relative path of a stored file (``'docs/a.txt'``) and return it.

    :raises UnsafePathError: for absolute paths, ``..``, hidden segments, backslashes, control
        characters or over-long paths.
    """
    too_long = len(path.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES
    if not path or path.startswith("/") or too_long:
        raise UnsafePathError(f"{path!r} is not a relative path of a stored file")
    for segment in path.split("/"):
        _check_segment(segment, path)
    return path


def safe_join(root: str, key: str) -> str:
    """Join a validated key below ``root`` and make sure the result is still inside it."""
    path = os.path.join(root, *clean_key(key).split("/"))
    if os.path.commonpath([root, path]) != root:  # pragma: no cover - clean_key prevents it
        raise UnsafePathError(f"{key!r} resolves outside the store")
    return path
