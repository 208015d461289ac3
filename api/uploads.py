"""Receiving an upload: size limit (413), streaming into the blob store, validate-or-discard."""

from __future__ import annotations

import unicodedata
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from fastapi import Request, UploadFile
from fastapi.concurrency import run_in_threadpool

from api.errors import ApiError
from api.storage import CHUNK, BlobStore, StoredBlob, TooLarge

T = TypeVar("T")
MULTIPART_OVERHEAD = 65536  # form fields and boundaries around the file
MAX_DISPLAY_NAME = 200


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413, "too_large", f"the upload is larger than the limit of {limit} bytes", {"limit": limit}
    )


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(CHUNK):
        yield chunk


async def store_upload(
    request: Request,
    file: UploadFile,
    storage: BlobStore,
    *,
    limit: int,
    prefix: str,
    suffix: str,
) -> StoredBlob:
    """Stream ``file`` into the store; 413 past ``limit`` (from Content-Length when declared)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + MULTIPART_OVERHEAD:
        raise _too_large(limit)
    try:
        return await storage.save_stream(_chunks(file), prefix=prefix, suffix=suffix, limit=limit)
    except TooLarge as exc:
        raise _too_large(exc.limit) from None


async def validate_or_discard(
    storage: BlobStore, blob: StoredBlob, check: Callable[..., T], *args: Any
) -> T:
    """Run ``check(path, *args)`` off the event loop; delete the blob if it raises."""
    try:
        return await run_in_threadpool(check, storage.path(blob.key), *args)
    except BaseException:
        storage.delete(blob.key)
        raise


def display_name(filename: str | None, default: str) -> str:
    """A user's filename made safe to show and store; it is a label, never used as a path.

    Such names are cleaned rather than refused: browsers and tools send whatever the file is
    called locally (``C:\\Users\\me\\net.pt``), so refusing would only punish the user. Kept:
    the last path component (``/`` and ``\\`` both separate), without control or format
    characters (NUL, newlines, ESC, bidi overrides: Unicode category C), at most
    ``MAX_DISPLAY_NAME`` characters from the end (the extension survives). A name of dots only
    (``..``) or nothing left becomes ``default``.
    """
    last = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in last if unicodedata.category(ch)[0] != "C").strip()
    if not name.strip("."):
        return default
    return name[-MAX_DISPLAY_NAME:]
