"""Uploads on disk: one folder each, a lock, the bytes so far and a JSON of what is known.

``<spool>/<id>/`` holds ``data`` (the bytes received, appended to), ``info.json`` (length, offset,
metadata, expiry, and once published the stored path; replaced atomically, never edited in
place) and ``lock``, which every writer holds with ``flock`` while it changes the upload. So a
PATCH may land on any worker process of the host, and nothing in memory is needed to continue:
a restarted server reads the folder.

``info.json``'s offset is the truth. ``data`` may be longer (a worker killed between a write and
the commit, a chunk whose checksum failed): the next writer cuts it back to the offset before it
appends, so a byte is never counted twice, nor one lost that the offset counts.

Everything here blocks; the core (``_core``) calls it from worker threads. A :class:`Held`
upload's steps and its release take one thread lock, and no step starts after the release: a
request cancelled while its thread still writes (Quart cancels the task of a client that went
away) releases only once that write is done, and counts it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["Held", "Spool", "UploadInfo", "new_id", "remove_expired"]

_ID = re.compile(r"[0-9a-f]{32}\Z")
_INFO, _DATA, _LOCK = "info.json", "data", "lock"
_TMP_PREFIX = ".new-"
# A folder being created (or half removed) that is older than this is debris of a crash.
_DEBRIS_AGE = 3600.0


def new_id() -> str:
    """A fresh upload id: 128 random bits, the upload URL's only secret."""
    return secrets.token_hex(16)


def is_id(text: str) -> bool:
    return bool(_ID.match(text))


@dataclass
class UploadInfo:
    """What ``info.json`` holds."""

    id: str
    length: int
    offset: int
    #: Who may serve it: the blueprint's name and storage (another never sees it).
    owner: str
    #: The ``Upload-Metadata`` header as the client sent it (HEAD echoes it).
    raw_metadata: str | None
    metadata: dict[str, str]
    created: float
    expires: float
    #: Set once the upload is published into the storage.
    stored_path: str | None = None
    stored_url: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.offset >= self.length

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UploadInfo:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class Spool:
    """The folder of one server's uploads (``STORE_TUS_PATH``)."""

    def __init__(self, root: str, *, fsync: bool = False) -> None:
        self.root = root
        self.fsync = fsync

    def folder(self, upload_id: str) -> str:
        return os.path.join(self.root, upload_id)

    def create(self, info: UploadInfo) -> None:
        """Make the upload's folder, complete, under its final name in one rename."""
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        temp = os.path.join(self.root, f"{_TMP_PREFIX}{info.id}")
        os.mkdir(temp, 0o700)
        try:
            for name in (_DATA, _LOCK):
                with open(os.path.join(temp, name), "xb"):
                    pass
            _write_json(os.path.join(temp, _INFO), info.to_json(), self.fsync)
            os.rename(temp, self.folder(info.id))
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        if self.fsync:
            _fsync_folder(self.root)

    def read(self, upload_id: str) -> UploadInfo | None:
        """The upload's info, or None when there is no such upload (or it is half removed)."""
        try:
            with open(os.path.join(self.folder(upload_id), _INFO), "rb") as f:
                return UploadInfo.from_json(json.load(f))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (ValueError, TypeError):  # not ours, or damaged: treated as gone
            return None

    def try_lock(self, upload_id: str) -> Held | None:
        """Lock the upload for this caller: its :class:`Held`, or None when another holds it.

        :raises FileNotFoundError: when there is no such upload (or it is being removed).
        """
        try:
            fd = os.open(os.path.join(self.folder(upload_id), _LOCK), os.O_RDWR | os.O_CLOEXEC)
        except NotADirectoryError as exc:
            raise FileNotFoundError(upload_id) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        # Read under the lock: a writer that held it before may have changed or removed it.
        info = self.read(upload_id)
        if info is None:
            _unlock(fd)
            raise FileNotFoundError(upload_id)
        return Held(self, info, fd)

    def remove(self, upload_id: str) -> None:
        """Remove an upload's folder (its lock held, or the upload abandoned): the info first,
        so that a reader never sees an upload without its bytes."""
        folder = self.folder(upload_id)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(folder, _INFO))
        shutil.rmtree(folder, ignore_errors=True)

    def ids(self) -> Iterator[str]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return
        yield from (name for name in names if is_id(name))


class Held:
    """An upload whose ``flock`` this caller holds, until :meth:`release`."""

    def __init__(self, spool: Spool, info: UploadInfo, lock_fd: int) -> None:
        self.spool = spool
        self.info = info
        self._fd: int | None = lock_fd
        self._data: IO[bytes] | None = None
        self._guard = threading.Lock()
        self._released = False
        #: A write of this request failed: nothing more is appended (see ``_append``).
        self._broken = False
        #: The offset the bytes of this request are appended at.
        self.start = info.offset
        #: Bytes of this request written to ``data`` (whole batches only).
        self.written = 0
        #: A ``hashlib`` object the bytes are fed to, for ``Upload-Checksum``.
        self.digest: Any = None
        #: Received and not yet written: the core adds chunks, a worker thread writes them.
        #: Kept too when the request ends early (a client that went away mid-batch).
        self.pending: list[bytes] = []

    @property
    def base(self) -> int:
        """Where ``data`` starts in the upload: the bytes before went to the storage already
        (S3 parts uploaded as they filled, ``_s3_parts``)."""
        return int(self.info.extra.get("base", 0))

    @property
    def data_path(self) -> str:
        base = self.base
        return os.path.join(
            self.spool.folder(self.info.id), _DATA if not base else f"{_DATA}-{base}"
        )

    def note(self, values: dict[str, Any]) -> None:
        """Keep ``values`` in the upload's info (``extra``), written at once."""
        with self._guard:
            self._step()
            self.info.extra.update(values)
            self.save_info()

    def read_head(self, size: int) -> bytes:
        """The first ``size`` bytes of ``data`` (a part to upload)."""
        with self._guard:
            self._step()
            with open(self.data_path, "rb") as f:
                return f.read(size)

    def rebase(self, new_base: int, part: dict[str, Any]) -> None:
        """Record ``part`` as stored and keep only the bytes from ``new_base`` here: the rest is
        copied to ``data-NEW_BASE``, the info switched to it in one atomic write, then the old
        file goes (a crash in between leaves a stray file the next :meth:`open_data` removes)."""
        with self._guard:
            self._step()
            old, base = self.data_path, self.base
            folder = self.spool.folder(self.info.id)
            new = os.path.join(folder, f"{_DATA}-{new_base}")
            with open(old, "rb") as src, open(new, "wb") as dst:
                src.seek(new_base - base)
                shutil.copyfileobj(src, dst)
                dst.flush()
                if self.spool.fsync:
                    os.fsync(dst.fileno())
            self.info.extra["base"] = new_base
            self.info.extra.setdefault("parts", []).append(part)
            self.save_info()
            os.unlink(old)

    def _step(self) -> None:
        if self._released:
            raise RuntimeError("the upload was released before this step started")

    def open_data(self) -> None:
        """Open ``data`` for appending at the info's offset (cut back to it first)."""
        with self._guard:
            self._step()
            folder, current = self.spool.folder(self.info.id), os.path.basename(self.data_path)
            for name in os.listdir(folder):  # a crash between a rebase's steps left one
                if name.startswith(f"{_DATA}-") and name != current:
                    os.unlink(os.path.join(folder, name))
            f = open(self.data_path, "r+b")  # closed by finish() or release()
            f.truncate(self.info.offset - self.base)
            f.seek(self.info.offset - self.base)
            self._data = f
            self.start, self.written, self._broken = self.info.offset, 0, False

    def write_pending(self) -> None:
        """Append the batch of the body received so far (:attr:`pending`); counted once all of
        it is written."""
        with self._guard:
            self._step()
            self._write_pending()

    def write_batch(self, batch: list[bytes]) -> None:
        """Append ``batch``, the body's next chunks (taken from :attr:`pending` by the caller,
        which collects the following ones meanwhile); counted once all of it is written."""
        with self._guard:
            self._step()
            self._append(batch)

    def _write_pending(self) -> None:
        batch, self.pending = self.pending, []
        self._append(batch)

    def _append(self, batch: list[bytes]) -> None:
        if not batch:
            return
        if self._broken:
            raise RuntimeError("an earlier write of this request failed: nothing goes after it")
        f = self._data
        assert f is not None, "open_data() first"
        try:
            for chunk in batch:
                f.write(chunk)
                if self.digest is not None:
                    self.digest.update(chunk)
        except BaseException:
            # The offset counts whole batches only (``_finish`` cuts the rest away), so no
            # later byte of this request may be written after the gap.
            self._broken = True
            raise
        self.written += sum(map(len, batch))

    def checkpoint(self, expires: float) -> None:
        """Make what was written so far count: flushed (and fsynced) before the offset says it."""
        with self._guard:
            self._step()
            self._flush()
            self.info.offset = self.start + self.written
            self.info.expires = expires
            self.save_info()

    def finish(self, *, keep: bool, expires: float) -> None:
        """Close ``data``: keep what this request wrote (the offset moves on) or cut it away."""
        with self._guard:
            self._finish(keep, expires)

    def _finish(self, keep: bool, expires: float) -> None:
        if keep and self._data is not None and not self._broken:
            self._write_pending()
        self.pending = []
        f, self._data = self._data, None
        if f is None:
            return
        with f:
            offset = self.start + (self.written if keep else 0)
            f.truncate(offset - self.base)
            self._flush(f)
        if offset != self.info.offset:
            self.info.offset = offset
            self.info.expires = expires
            self.save_info()

    def _flush(self, f: IO[bytes] | None = None) -> None:
        f = f or self._data
        if f is None:
            return
        f.flush()
        if self.spool.fsync:
            os.fsync(f.fileno())

    def save_info(self) -> None:
        _write_json(
            os.path.join(self.spool.folder(self.info.id), _INFO),
            self.info.to_json(),
            self.spool.fsync,
        )

    def published(self, path: str, url: str) -> None:
        """Record where the upload is stored; its bytes here are no longer needed."""
        with self._guard:
            self.info.stored_path, self.info.stored_url = path, url
            self.save_info()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.data_path)

    def remove(self) -> None:
        """Remove the upload (termination, expiry) while holding its lock."""
        with self._guard:
            f, self._data = self._data, None
            if f is not None:
                f.close()
            self.spool.remove(self.info.id)

    def release(self, *, keep: bool = False, expires: float | None = None) -> None:
        """Finish ``data`` if still open (see :meth:`finish`) and give up the lock."""
        with self._guard:
            if self._released:
                return
            try:
                if self._data is not None:
                    self._finish(keep, expires if expires is not None else self.info.expires)
            finally:
                self._released = True
                fd, self._fd = self._fd, None
                if fd is not None:
                    _unlock(fd)


def remove_expired(path: str | os.PathLike[str], *, now: float | None = None) -> list[str]:
    """Remove the uploads of the tus folder ``path`` that expired by ``now`` (default: the time
    now), finished or not, and debris a crash left; uploads a request holds are left for later.
    Returns the ids removed. Safe to run while servers use the folder (a cron job, a CLI)."""
    now = time.time() if now is None else now
    spool = Spool(os.fspath(path))
    removed = []
    for upload_id in list(spool.ids()):
        info = spool.read(upload_id)
        if info is not None and info.expires > now:
            continue
        if info is None and not _older_than(spool.folder(upload_id), now - _DEBRIS_AGE):
            continue  # no info: being created right now, or half removed by a crash
        try:
            held = spool.try_lock(upload_id)
        except FileNotFoundError:
            spool.remove(upload_id)  # debris without info
            removed.append(upload_id)
            continue
        if held is None:
            continue  # in use
        try:
            if held.info.expires > now:
                continue  # renewed meanwhile
            held.remove()
            removed.append(upload_id)
        finally:
            held.release()
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(spool.root):
            full = os.path.join(spool.root, name)
            if name.startswith(_TMP_PREFIX) and _older_than(full, now - _DEBRIS_AGE):
                shutil.rmtree(full, ignore_errors=True)
    return removed


def _older_than(path: str, when: float) -> bool:
    try:
        return os.stat(path).st_mtime < when
    except FileNotFoundError:
        return False


def _unlock(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _write_json(path: str, data: dict[str, Any], fsync: bool) -> None:
    temp = f"{path}.{secrets.token_hex(4)}.tmp"
    try:
        with open(temp, "w", encoding="utf-8") as f:
            json.dump(data, f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def _fsync_folder(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
