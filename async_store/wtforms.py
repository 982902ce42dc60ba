"""A WTForms validator that runs a storage's validation rules on a form's file field.

For Flask-WTF and WTForms users, who validate the form before they save: the same rules the
save checks (``STORE_MAX_FILE_SIZE``, ``STORE_ALLOWED_EXTENSIONS``, ``STORE_ALLOWED_TYPES``,
``STORE_CHECK_CONTENT``, ``STORE_IMAGE_*``, and a :class:`~async_store.Rules` of the field's own
over them), on the upload's first bytes and its size, so the form shows why a file is refused
next to its field instead of a 413/415/422 page::

    from async_store import Rules
    from async_store.wtforms import StoreRules

    class AvatarForm(FlaskForm):
        avatar = FileField(validators=[FileRequired(), StoreRules(Rules(types=["image/*"]))])

The save checks them again as the bytes stream in (a form is no guarantee of what is stored).
Validators that are coroutine functions run in an event loop of their own, so this validator is
for sync views (classic Flask); in a Quart view, let ``save()`` check them.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any

from ._paths import clean_filename
from ._record import storage_named
from ._storages import DEFAULT
from ._validate import Check, Rules
from .exceptions import BadUploadError, StoreError

if TYPE_CHECKING:
    from werkzeug.datastructures import FileStorage

__all__ = ["StoreRules"]


class StoreRules:
    """A WTForms validator: the storage's rules (and ``rules`` over them) on the field's file.

    :param rules: rules of this field over the storage's, as ``Provider(validate=...)`` takes.
    :param storage: the storage whose rules apply (``'default'``: the ``STORE_*`` keys').
    :param message: the error shown instead of the rule's own message.
    """

    def __init__(
        self, rules: Rules | None = None, *, storage: str = DEFAULT, message: str | None = None
    ) -> None:
        self.rules = rules
        self.storage = storage
        self.message = message

    def __call__(self, form: Any, field: Any) -> None:
        from wtforms.validators import StopValidation

        data = field.data
        files = data if isinstance(data, list) else [data]
        for upload in files:
            if upload is None or not getattr(upload, "filename", None):
                continue  # no file picked: FileRequired's to say
            try:
                self._check(upload)
            except BadUploadError as refused:
                # StopValidation: the field's later validators have nothing valid to look at.
                raise StopValidation(self.message or refused.description or str(refused)) from None

    def _check(self, upload: FileStorage) -> None:
        state = storage_named(self.storage, "the StoreRules validator")
        rules = state.provider_class.storage_rules()
        rules = rules.merged(self.rules) if self.rules is not None else rules
        if not rules:
            return
        check = Check(rules, clean_filename(upload.filename), upload.filename)
        stream = upload.stream
        start = stream.tell()
        size = stream.seek(0, os.SEEK_END) - start
        stream.seek(start)
        check.before(size)
        if not (check.reads_head or check.has_validators):
            return
        head = stream.read(check.head_size)
        stream.seek(start)  # the save reads it from the start
        info = check.inspect(head if isinstance(head, bytes) else bytes(head), size)
        if check.has_validators:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                asyncio.run(check.validate(info))
            else:
                raise StoreError(
                    "StoreRules runs the rules' validators in an event loop of its own, and one "
                    "is running here (an async view): let save() check them instead"
                )
