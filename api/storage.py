"""Blob storage: a local directory (shared with the workers), written in chunks with a sha256.

Keys are generated here (never from a user's filename), so a name with ``../`` or NUL cannot
escape the directory. Writes go to a temporary file and are renamed into place, so a reader
never sees half a blob and a refused upload leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import tempfile
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path


class TooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"larger than {limit} bytes")
        self.limit = limit


@dataclass(frozen=True)
class StoredBlob:
    key: str
    size: int
    sha256: str


CHUNK = 1 << 20
_KEY = re.compile(r"[a-z]+/[0-9a-f]{32}(\.[a-z0-9]+)?")


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        if not _KEY.fullmatch(key):
            raise ValueError(f"bad blob key {key!r}")
        return self.root / key

    def _new_key(self, prefix: str, suffix: str) -> str:
        (self.root / prefix).mkdir(parents=True, exist_ok=True)
        return f"{prefix}/{secrets.token_hex(16)}{suffix}"

    def _temp(self) -> tuple[int, str]:
        return tempfile.mkstemp(dir=self.root, prefix=".upload-")

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
            return self._commit(tmp, prefix, suffix, size, digest.hexdigest())
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
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
            return self._commit(tmp, prefix, suffix, size, digest.hexdigest())
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _commit(self, tmp: str, prefix: str, suffix: str, size: int, sha: str) -> StoredBlob:
        key = self._new_key(prefix, suffix)
        os.replace(tmp, self.path(key))
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
