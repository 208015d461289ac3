"""Artifact downloads: streamed, with Content-Length, ETag (the sha256) and byte ranges."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import Response, StreamingResponse

from api.deps import CurrentUser, Id, SessionDep, StorageDep
from api.errors import ApiError, not_found
from api.models import Artifact, Job

router = APIRouter(prefix="/artifacts", tags=["artifacts"])

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def _parse_range(header: str, size: int) -> tuple[int, int]:
    match = _RANGE.fullmatch(header.strip())
    if not match or match.groups() == ("", ""):
        raise ApiError(416, "bad_range", f"unsupported Range {header!r}: use bytes=START-END")
    first, last = match.groups()
    if first == "":  # the last N bytes
        start, end = max(size - int(last), 0), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise ApiError(
            416, "bad_range", f"range {header!r} is outside 0-{size - 1}", {"size": size}
        )
    return start, end


@router.get(
    "/{artifact_id}",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}},
        206: {"description": "partial content"},
    },
)
def download(
    artifact_id: Id,
    session: SessionDep,
    user: CurrentUser,
    storage: StorageDep,
    range_: Annotated[str | None, Header(alias="range")] = None,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    artifact = session.get(Artifact, artifact_id)
    job = None if artifact is None else session.get(Job, artifact.job_id)
    if artifact is None or job is None or job.owner_id != user.id:
        raise not_found("artifact", artifact_id)
    etag = f'"{artifact.sha256}"'
    headers = {
        "ETag": etag,
        "X-Content-SHA256": artifact.sha256,
        "Accept-Ranges": "bytes",
        "Content-Disposition": f'attachment; filename="{artifact.filename}"',
    }
    if if_none_match == etag:
        return Response(status_code=304, headers=headers)
    size = artifact.size_bytes
    if range_:
        start, end = _parse_range(range_, size)
        headers |= {
            "Content-Range": f"bytes {start}-{end}/{size}",
            "Content-Length": str(end - start + 1),
        }
        return StreamingResponse(
            storage.iter_range(artifact.blob_key, start, end),
            status_code=206,
            media_type=artifact.media_type,
            headers=headers,
        )
    headers["Content-Length"] = str(size)
    return StreamingResponse(
        storage.iter_range(artifact.blob_key), media_type=artifact.media_type, headers=headers
    )
