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

import mimetypes
import os
import re
import unicodedata
import uuid

from .exceptions import UnsafePathError

__all__ = [
    "MAX_NAME_BYTES",
    "clean_filename",
    "content_type",
    "load_mimetypes",
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
# Names made only of ASCII letters, digits and _KEEP: the characters _clean_chars keeps as they are.
_PLAIN_ASCII = re.compile(r"[A-Za-z0-9\-_.+=@,()\[\]~]+")
_WINDOWS_DEVICES = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{dev}{n}" for dev in ("COM", "LPT") for n in [*"0123456789", "¹", "²", "³"]}
)
_COMPOUND_EXTS = (".tar.gz", ".tar.bz2", ".tar.xz", ".tar.zst")
#: Cleaning passes over a name until it no longer changes; see :func:`clean_filename`.
_MAX_PASSES = 4
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
    if lower.endswith(_COMPOUND_EXTS):  # one test for the common case: none of them
        for ext in _COMPOUND_EXTS:
            # A root of dots only ("..tar.gz") is no root: splitext's rule, as for "..jpg".
            if lower.endswith(ext) and name[: -len(ext)].strip("."):
                return name[: -len(ext)], name[-len(ext) :]
    root, ext = os.path.splitext(name)
    if len(ext.encode()) > _MAX_EXT_BYTES or ext == ".":
        return name, ""
    return root, ext


def _visible(text: str) -> str:
    return "".join(ch for ch in text if unicodedata.category(ch) not in _DROP_CATEGORIES)


def _clean_chars(name: str) -> str:
    out = []
    for ch in name:
        if unicodedata.category(ch)[0] in "LMN" or ch in _KEEP:
            out.append(ch)
        else:  # spaces, symbols, quotes, colons, …
            out.append("_")
    return _UNDERSCORES.sub("_", "".join(out))


def _strip(text: str) -> str:
    # Leading dots would hide the file (and collide with our temp files), a leading dash reads as
    # a command-line option; trailing dots and spaces are dropped by Windows.
    return text.lstrip("._-~").rstrip("._")


def _clean_segment(text: str, default: str) -> str:
    """One pass over a segment that holds only allowed characters."""
    # ".jpg" and "...jpg" have no extension (splitext keeps leading dots in the root), while
    # "😀.jpg" ("_.jpg" by now) has one: it becomes "file.jpg", not "jpg" (what werkzeug makes
    # of "фото.jpg").
    root, ext = split_ext(text.rstrip("._"))
    root = _strip(root) or default
    stem, dot, rest = root.partition(".")
    if stem.upper() in _WINDOWS_DEVICES:
        # Windows opens the device for "CON", "con.txt" and "CON.a.b" alike; "CON_.a.b" is a file.
        root = f"{stem}_{dot}{rest}"
    max_bytes = _CLEAN_NAME_BYTES - len(ext.encode())
    if len(encoded := root.encode()) > max_bytes:
        root = encoded[:max_bytes].decode("utf-8", "ignore")  # never half a character
    return root.rstrip(".") + ext


def clean_filename(name: str | bytes | None, default: str = "file") -> str:
    """Turn whatever name a client sent into one safe path segment.

    The result is a single segment (only the part after the last ``/`` or ``\\`` is kept), in
    Unicode NFKC form (so fullwidth ``．`` and ``／`` become ``.`` and ``/`` before that split),
    without control, format or bidi characters, never a Windows device name, never empty, never
    starting with a dot, and short enough that :func:`collision_name` stays within
    :data:`MAX_NAME_BYTES` bytes. Letters of every script and the extension are kept, and
    cleaning a clean name changes nothing::

        >>> clean_filename("../../etc/passwd")
        'passwd'
        >>> clean_filename("фото отпуск.jpg")
        'фото_отпуск.jpg'

    :param name: the client's file name (``FileStorage.filename``); bytes are decoded as UTF-8.
    :param default: the name used when nothing usable is left.
    """
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    if name and _PLAIN_ASCII.fullmatch(name):
        # The common name ("IMG_0042.jpg"): nothing for NFKC, the invisible-character filter,
        # the separators or the per-character pass to do; the result is the same, byte for byte.
        segment = _UNDERSCORES.sub("_", name)
        segment = segment if _strip(segment) else ""
    else:
        segment = _segment_of(name)
    # A pass can expose what only the next one sees: "x_.tar_.gz" becomes "x_.tar.gz", whose
    # extension is now ".tar.gz" and whose root "x_" loses its "_". Passes only ever shorten the
    # name (a device's "_" is added once), so a few reach the fixed point; for the usual name
    # the first pass changes nothing, and the next one would not either.
    cleaned = _clean_segment(segment, default)
    for _ in range(_MAX_PASSES):
        if cleaned == segment:
            break
        segment, cleaned = cleaned, _clean_segment(cleaned, default)
    return cleaned


def _segment_of(name: str | None) -> str:
    """The last segment of any text, its characters cleaned (the slow path)."""
    # Invisible characters go before NFKC: left in, they keep it from composing what they
    # separate ("=", U+200B, U+0338), and cleaning the result again would compose it ("≠").
    text = unicodedata.normalize("NFKC", _visible(name or ""))
    parts = [p for p in _SEPARATORS.split(text) if _strip(_clean_chars(p))]
    return _clean_chars(parts[-1]) if parts else ""


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
    if "\\" in segment or (
        # Printable ASCII has no control or format characters: no per-character lookup.
        not (segment.isascii() and segment.isprintable())
        and any(unicodedata.category(ch) in _DROP_CATEGORIES for ch in segment)
    ):
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
    # A prefix test, not os.path.commonpath (6 µs, most of this function's time): a checked
    # key has no "..", "." or empty segment, so nothing in the path needs normalising.
    if not path.startswith(root.rstrip(os.sep) + os.sep):  # pragma: no cover - clean_key
        raise UnsafePathError(f"{key!r} resolves outside the store")
    return path


def load_mimetypes() -> None:
    """Read the system's MIME tables now (at ``init_app``): the first ``guess_type`` would
    otherwise read them from disk on the event loop."""
    if not mimetypes.inited:
        mimetypes.init()


def content_type(name: str) -> str:
    """The MIME type a file name implies; ``application/octet-stream`` when none does."""
    return mimetypes.guess_type(name)[0] or "application/octet-stream"
