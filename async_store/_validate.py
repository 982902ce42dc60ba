"""Validation rules, and the check one save runs with them as the bytes stream in.

A storage declares rules in its config (``STORE_MAX_FILE_SIZE``, ``STORE_ALLOWED_EXTENSIONS``,
``STORE_ALLOWED_TYPES``, ``STORE_CHECK_CONTENT``, ``STORE_IMAGE_*``); a call adds its own
(``Provider(..., validate=Rules(...))``, ``save_request(validate=...)``), which override the
storage's rule for rule, custom validators added after the storage's. ``Source`` runs the
:class:`Check`: the name before any byte is read, the type and the validators on the first
:data:`~._sniff.HEAD_SIZE` bytes before any is written (``IMAGE_HEAD_SIZE`` with image rules:
an image's header may come later), the size on every chunk as it is read. A refusal stops the
read at once, and the save's own cleanup leaves nothing behind. ``ImageRules(strip_metadata=True)``
is no check but travels with them: the rules see the upload's bytes as they came (its type,
``max_size``), the store gets them stripped (``_strip``, run by ``Source``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._image_check import IMAGE_HEAD_SIZE, check_image
from ._images import ImageRules, require_images
from ._paths import content_type as guess_type
from ._sniff import HEAD_SIZE, extension_of, require, sniff
from .exceptions import (
    BadUploadError,
    ContentMismatchError,
    DisallowedTypeError,
    FileTooLargeError,
    InvalidFileError,
)

if TYPE_CHECKING:
    from .config import StoreConfig

__all__ = ["Check", "Rules", "UploadInfo", "Validator", "rules_of"]


@dataclass(frozen=True)
class UploadInfo:
    """What a custom validator is given: what is known once the first bytes are in."""

    #: The name the client gave the file (None when it gave none).
    filename: str | None
    #: The cleaned name it is to be stored under (a collision may add a suffix before the
    #: extension).
    name: str
    #: Its extension, lowercased, without the dot (``'png'``; ``''`` for none).
    extension: str
    #: The MIME type found in its bytes; None when they match no known signature (or no
    #: rule asked for the type: then the validators' own rules sniff it).
    detected_type: str | None
    #: The type it is stored with: the detected one, else the one its name gives.
    content_type: str
    #: Its first bytes: up to 8 KiB, 256 KiB with image rules (all of it for a smaller file).
    head: bytes
    #: Its size, when known already (the whole file is in ``head``, or it is in memory);
    #: None for a file still streaming in (``max_size`` checks it as it grows).
    size: int | None


#: A custom validator: a plain or async callable given an :class:`UploadInfo`; it refuses the
#: file by raising ``ValueError`` (a 422 naming the validator and the file) or a
#: ``BadUploadError`` of its choice, and accepts it by returning.
Validator = Callable[[UploadInfo], None | Awaitable[None]]


def _extensions(value: Collection[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    return frozenset(str(e).lower().lstrip(".") for e in value)


def _types(value: Collection[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    types = tuple(str(t).lower() for t in value)
    for t in types:
        if t.count("/") != 1 or not all(t.split("/")) or " " in t:
            raise ValueError(f"not a MIME type or family such as 'image/*': {t!r}")
    return types


@dataclass(frozen=True)
class Rules:
    """What a file must be to be stored; a field left None is not checked (or, in a call's
    rules, is the storage's)::

        Rules(max_size=5 * 1024**2, types=["image/*"], check_content=True)

    :param max_size: the most bytes the file may have (a 413 as soon as it is over).
    :param extensions: the extensions it may have (``["jpg", "png", "tar.gz"]``, no dot
        needed, any case); a name without one is refused (415).
    :param types: the MIME types (``'application/pdf'``) or families (``'image/*'``) it may
        have, **detected from its bytes** (415); bytes of no known signature count as
        ``application/octet-stream``, except text, which has no signature: the type its name
        gives stands in for it.
    :param check_content: refuse bytes that are not what the extension says (a 422): an
        ``.png`` that is HTML, a ``.pdf`` that is a ZIP (see ``async_store._sniff``).
    :param validators: custom checks, plain or async, run on the first bytes (an
        :class:`UploadInfo`) before anything is written.
    :param images: :class:`~async_store.ImageRules` for images (format, width, height, pixels),
        read from their header before anything is written (needs ``async_store[images]``), and
        whether their metadata is stripped as they are stored (``strip_metadata``).
    :raises ValueError: for a malformed type.
    """

    max_size: int | None = None
    extensions: Collection[str] | None = None
    types: Collection[str] | None = None
    check_content: bool | None = None
    validators: Sequence[Validator] = field(default=())
    images: ImageRules | None = None

    def __post_init__(self) -> None:
        if self.max_size is not None and (
            isinstance(self.max_size, bool) or not isinstance(self.max_size, int)
        ):
            raise ValueError(f"max_size is a number of bytes, not {self.max_size!r}")
        object.__setattr__(self, "extensions", _extensions(self.extensions))
        object.__setattr__(self, "types", _types(self.types))
        object.__setattr__(self, "validators", tuple(self.validators))
        if self.images is not None and not isinstance(self.images, ImageRules):
            raise ValueError(f"images= takes ImageRules(...), not {self.images!r}")
        if self.images is not None and not self.images:
            object.__setattr__(self, "images", None)
        # The sniffer and Pillow are imported where the rules are made (a module's import,
        # init_app), not by the first save that needs them, which may run on an event loop
        # (an import reads files). Not installed: the save that needs them says what to install.
        images = self.images is not None and self.images.checks
        for needed, module in ((self.sniffs, "puremagic"), (images, "PIL.Image")):
            if needed:
                with contextlib.suppress(ImportError):
                    importlib.import_module(module)
        # Whether any rule is set, once: every save asks (dataclasses.fields is slow).
        rules = (getattr(self, f.name) for f in dataclasses.fields(self))
        object.__setattr__(self, "_set", any(rule not in (None, False, ()) for rule in rules))

    def __bool__(self) -> bool:
        return bool(self.__dict__["_set"])

    def merged(self, call: Rules | None) -> Rules:
        """These rules (a storage's) with ``call``'s over them: each rule ``call`` sets
        replaces this one's; its validators run after these."""
        if call is None:
            return self
        changes: dict[str, Any] = {
            f.name: getattr(call, f.name)
            for f in dataclasses.fields(call)
            if f.name != "validators" and getattr(call, f.name) is not None
        }
        changes["validators"] = (*self.validators, *call.validators)
        if self.images is not None and call.images is not None:
            changes["images"] = self.images.merged(call.images)  # rule for rule, too
        return dataclasses.replace(self, **changes)

    @property
    def sniffs(self) -> bool:
        """Whether checking these rules reads the first bytes before writing any."""
        images = self.images is not None and self.images.checks
        return bool(self.types is not None or self.check_content or self.validators or images)


def rules_of(config: StoreConfig) -> Rules:
    """A storage's rules, from its (checked) ``STORE_*`` keys."""
    return Rules(
        max_size=config.get("STORE_MAX_FILE_SIZE"),
        extensions=config.get("STORE_ALLOWED_EXTENSIONS"),
        types=config.get("STORE_ALLOWED_TYPES"),
        check_content=bool(config.get("STORE_CHECK_CONTENT")),
        images=ImageRules(
            formats=config.get("STORE_IMAGE_FORMATS"),
            max_width=config.get("STORE_IMAGE_MAX_WIDTH"),
            max_height=config.get("STORE_IMAGE_MAX_HEIGHT"),
            max_pixels=config.get("STORE_IMAGE_MAX_PIXELS"),
            # None, not False, when off: rules that are all None make no check at all.
            strip_metadata=config.get("STORE_IMAGE_STRIP_METADATA") or None,
        ),
    )


def _allowed(mime: str, types: Collection[str]) -> bool:
    family = mime.partition("/")[0]
    return any(t == mime or t == "*/*" or t == f"{family}/*" for t in types)


class Check:
    """The rules of one save, run on its source as it is read (see the module docstring).

    :param name: the cleaned name the file is to be stored under.
    :param client_name: the client's name for it, which messages use.
    """

    def __init__(self, rules: Rules, name: str, client_name: str | None) -> None:
        if rules.sniffs:
            require("validation by type (types=, check_content=, validators=, images=)")
        images = rules.images is not None and rules.images.checks
        if images:
            require_images("image rules (images=ImageRules(...), STORE_IMAGE_*)")
        self.rules = rules
        self.name = name
        self.client_name = client_name
        #: Whether the first bytes are read before any is written (to sniff them).
        self.reads_head = rules.sniffs
        #: How many: an image's header may come after 64 KiB segments (EXIF, ICC).
        self.head_size = IMAGE_HEAD_SIZE if images else HEAD_SIZE
        #: Whether the bytes stored are the upload's with its metadata left out (``_strip``).
        self.strips = bool(rules.images is not None and rules.images.strip_metadata)
        #: Whether the validators must be awaited (then no blocking save without a loop).
        self.has_validators = bool(rules.validators)

    def _file(self) -> str:
        return repr(self.client_name or self.name)

    def before(self, size: int | None) -> None:
        """What is checked before any byte is read: the extension, and a size known already."""
        allowed = self.rules.extensions
        if allowed is not None:
            lowered = self.name.lower()
            if not any(e and lowered.endswith(f".{e}") for e in allowed):
                ext = extension_of(self.name)
                raise DisallowedTypeError(
                    f"the file {self._file()} is refused by the rule extensions="
                    f"{sorted(allowed)}: its extension is {('.' + ext) if ext else 'none'}",
                    rule="extensions",
                    filename=self.client_name,
                    found=ext,
                )
        if size is not None:
            self.count(size)

    def count(self, size: int) -> None:
        """Called with the bytes read so far, as they grow.

        :raises FileTooLargeError: once they are over ``max_size``.
        """
        limit = self.rules.max_size
        if limit is not None and size > limit:
            raise FileTooLargeError(
                f"the file {self._file()} is refused by the rule max_size={limit:,} bytes: "
                f"it is larger ({size:,} bytes read so far)",
                rule="max_size",
                filename=self.client_name,
                found=size,
            )

    def inspect(self, head: bytes, size: int | None) -> UploadInfo:
        """Check the first bytes (``head``; ``size``: the file's, when known) against the type
        rules; what the validators are then given.

        :raises ContentMismatchError: bytes that are not what the extension says.
        :raises DisallowedTypeError: a detected type (or image format) the rules do not take.
        :raises InvalidFileError: an image over a size rule (``images=``).
        """
        rules = self.rules
        sniffed = sniff(head[:HEAD_SIZE], self.name)
        if rules.check_content and sniffed.mismatch is not None:
            raise ContentMismatchError(
                f"the file {self._file()} is refused by the rule check_content: {sniffed.mismatch}",
                rule="check_content",
                filename=self.client_name,
                found=sniffed.mime,
            )
        stored = sniffed.content_type
        if rules.types is not None:
            checked = stored or "application/octet-stream"
            if not _allowed(checked, rules.types):
                found = "unrecognised bytes" if stored is None else checked
                raise DisallowedTypeError(
                    f"the file {self._file()} is refused by the rule types="
                    f"{list(rules.types)}: its bytes are {found}",
                    rule="types",
                    filename=self.client_name,
                    found=checked,
                )
        if rules.images is not None and rules.images.checks:
            complete = size is not None and len(head) >= size
            mime = sniffed.mime
            check_image(rules.images, head, complete, mime, self._file(), self.client_name)
        return UploadInfo(
            self.client_name,
            self.name,
            extension_of(self.name),
            sniffed.mime,
            stored or guess_type(self.name),
            head,
            size,
        )

    async def validate(self, info: UploadInfo) -> None:
        """Run the custom validators, in order.

        :raises InvalidFileError: for a ``ValueError`` one raised (naming it).
        """
        for validator in self.rules.validators:
            try:
                result = validator(info)
                if inspect.isawaitable(result):
                    await result
            except BadUploadError:
                raise
            except ValueError as exc:
                rule = getattr(validator, "__name__", type(validator).__name__)
                raise InvalidFileError(
                    f"the file {self._file()} is refused by the validator {rule}: {exc}",
                    rule=rule,
                    filename=self.client_name,
                    found=info.detected_type,
                ) from exc
