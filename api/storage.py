"""Blob storage: a local directory (shared with the workers), written in chunks with a sha256.

Keys are generated here (never from a user's filename), so a name with ``../`` or NUL cannot
escape the directory. Writes go to a temporary file (``.upload-*`` in the root), flushed to disk
and then renamed into place, so a reader never sees half a blob and a refused upload leaves
nothing behind. A process killed in the middle of a write leaves its temporary file: opening
the store removes those untouched for :data:`STALE_TEMP_S` (a write in progress touches its file
with every chunk, and other processes sharing the directory may be writing theirs). A full disk
is :class:`StorageFull`, with the partial file removed.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

log = logging.getLogger(__name__)


class TooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"larger than {limit} bytes")
        self.limit = limit


class StorageFull(Exception):
    """The blob store's file system has no space (or quota) left for a write."""

    def __init__(self, root: Path) -> None:
        super().__init__("the blob store is out of disk space")
        self.root = root


@dataclass(frozen=True)
class StoredBlob:
    key: str
    size: int
    sha256: str


CHUNK = 1 << 20
TEMP_PREFIX = ".upload-"
STALE_TEMP_S = 15 * 60  # a temporary file untouched this long belongs to a dead process
_KEY = re.compile(r"[a-z]+/[0-9a-f]{32}(\.[a-z0-9]+)?")
_FULL = (errno.ENOSPC, errno.EDQUOT)


class BlobStore(Protocol):
    """What the service needs of blob storage: everything outside this module goes through it.

    :class:`LocalBlobStore` implements it on a directory that the API and every worker host
    mount at the same path (NFS or similar). An S3-compatible bucket would implement the same
    five methods, with ``path`` fetching the blob into a local cache for the worker to read.
    Folder-shaped blobs (unpacked image datasets, ``api.archives``) need a local directory.
    """

    async def save_stream(
        self, chunks: AsyncIterator[bytes], *, prefix: str, suffix: str = "", limit: int
    ) -> StoredBlob: ...

    def save_file(self, source: Path, *, prefix: str, suffix: str = "") -> StoredBlob: ...

    def path(self, key: str) -> Path: ...

    def delete(self, key: str) -> None: ...

    def iter_range(self, key: str, start: int = 0, end: int | None = None) -> Iterable[bytes]: ...


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.sweep_temp()

    def sweep_temp(self, older_than_s: float = STALE_TEMP_S) -> int:
        """Remove temporary files of writes that died (untouched for ``older_than_s``)."""
        cutoff, removed = time.time() - older_than_s, 0
        for path in self.root.glob(TEMP_PREFIX + "*"):
            try:
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:  # another process swept it first
                continue
        if removed:
            log.info(
                "blob store: removed %d stale temporary file(s) of interrupted writes", removed
            )
        return removed

    def path(self, key: str) -> Path:
        if not _KEY.fullmatch(key):
            raise ValueError(f"bad blob key {key!r}")
        return self.root / key

    def _new_key(self, prefix: str, suffix: str) -> str:
        (self.root / prefix).mkdir(parents=True, exist_ok=True)
        return f"{prefix}/{secrets.token_hex(16)}{suffix}"

    def _temp(self) -> tuple[int, str]:
        return tempfile.mkstemp(dir=self.root, prefix=TEMP_PREFIX)

    async def save_stream(
        self, chunks: AsyncIterator[bytes], *, prefix: str, suffix: str = "", limit: int
    ) -> StoredBlob:
        """Write an async stream of chunks; raises :class:`TooLarge` past ``limit`` bytes."""
        fd, tmp = self._temp()
        digest, size = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise TooLarge(limit)
                    digest.update(chunk)
                    out.write(chunk)
                _flush(out)
            return self._commit(tmp, prefix, suffix, size, digest.hexdigest())
        except BaseException as exc:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(exc, OSError) and exc.errno in _FULL:
                raise StorageFull(self.root) from exc
            raise

    def save_file(self, source: Path, *, prefix: str, suffix: str = "") -> StoredBlob:
        """Copy a local file (a worker's output) into the store."""
        fd, tmp = self._temp()
        digest, size = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                for chunk in iter(lambda: src.read(CHUNK), b""):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                _flush(out)
            return self._commit(tmp, prefix, suffix, size, digest.hexdigest())
        except BaseException as exc:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(exc, OSError) and exc.errno in _FULL:
                raise StorageFull(self.root) from exc
            raise

    def _commit(self, tmp: str, prefix: str, suffix: str, size: int, sha: str) -> StoredBlob:
        key = self._new_key(prefix, suffix)
        final = self.path(key)
        os.replace(tmp, final)
        _fsync_dir(final.parent)  # the rename itself survives a crash
        return StoredBlob(key, size, sha)

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def iter_range(self, key: str, start: int = 0, end: int | None = None) -> Iterable[bytes]:
        """Bytes ``start..end`` (inclusive end, as HTTP ranges count) in chunks."""
        with open(self.path(key), "rb") as f:
            f.seek(start)
            remaining = None if end is None else end - start + 1
            while remaining is None or remaining > 0:
                chunk = f.read(CHUNK if remaining is None else min(CHUNK, remaining))
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk


def _flush(out: IO[bytes]) -> None:
    """Everything written reaches the disk before the rename publishes the file."""
    out.flush()
    os.fsync(out.fileno())


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
