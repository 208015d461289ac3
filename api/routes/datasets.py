"""Datasets: the built-ins this server has, and ``.npz`` uploads (validated before acceptance)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile, status
from sqlalchemy import select

from api.deps import CurrentUser, Id, SessionDep, SettingsDep, StorageDep, owned
from api.errors import ApiError
from api.models import Dataset, Job, JobStatus
from api.schemas import DatasetPublic
from api.uploads import display_name, store_upload, validate_or_discard
from quantcore import InvalidDataset, list_datasets, load_dataset

router = APIRouter(prefix="/datasets", tags=["datasets"])


def _builtins() -> list[DatasetPublic]:
    return [
        DatasetPublic(
            name=d.name,
            kind="builtin",
            title=d.title,
            available=not d.needs_root,
            description=d.description,
        )
        for d in list_datasets()
        if d.name not in ("npz", "imagefolder")  # these two are what uploads are
    ]


def _public(row: Dataset) -> DatasetPublic:
    return DatasetPublic.model_validate(row).model_copy(update={"title": row.name})


@router.get("", response_model=list[DatasetPublic])
def list_all(session: SessionDep, user: CurrentUser) -> list[DatasetPublic]:
    """Built-ins first (``available`` says whether this server has their files), then uploads."""
    rows = session.scalars(
        select(Dataset).where(Dataset.owner_id == user.id).order_by(Dataset.id.desc())
    ).all()
    return _builtins() + [_public(r) for r in rows]


def _inspect_npz(path: Path, filename: str) -> dict[str, Any]:
    """Load the archive as a job would; errors name the upload, never the server's path."""
    try:
        bundle = load_dataset("npz", root=path)
    except InvalidDataset as exc:
        raise InvalidDataset(
            exc.message.replace(str(path), filename),
            {k: (filename if v == str(path) else v) for k, v in exc.details.items()},
        ) from None
    height, width = bundle.input_size
    return {
        "num_classes": bundle.num_classes,
        "in_channels": bundle.in_channels,
        "input_height": height,
        "input_width": width,
        "num_train": len(bundle.train),  # type: ignore[arg-type]
        "num_val": len(bundle.val),  # type: ignore[arg-type]
    }


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetPublic,
    responses={
        413: {"description": "upload too large"},
        422: {"description": "not a usable .npz dataset"},
    },
)
async def upload_dataset(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    user: CurrentUser,
    file: Annotated[UploadFile, File(description=".npz with x_train, y_train, x_val, y_val")],
    name: Annotated[str | None, Form(max_length=255)] = None,
) -> DatasetPublic:
    filename = display_name(file.filename, "dataset.npz")
    blob = await store_upload(
        request, file, storage, limit=settings.max_upload_bytes, prefix="datasets", suffix=".npz"
    )
    facts = await validate_or_discard(storage, blob, _inspect_npz, filename)
    row = Dataset(
        owner_id=user.id,
        name=(name or filename).strip() or "dataset",
        kind="npz",
        size_bytes=blob.size,
        sha256=blob.sha256,
        blob_key=blob.key,
        **facts,
    )
    session.add(row)
    session.flush()
    return _public(row)


@router.get("/{dataset_id}", response_model=DatasetPublic)
def get_dataset(dataset_id: Id, session: SessionDep, user: CurrentUser) -> DatasetPublic:
    return _public(owned(session, Dataset, dataset_id, user, "dataset"))


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_dataset(
    dataset_id: Id, session: SessionDep, user: CurrentUser, storage: StorageDep
) -> None:
    """Delete an upload; finished jobs keep their results (refused while jobs use it)."""
    row = owned(session, Dataset, dataset_id, user, "dataset")
    busy = session.scalars(
        select(Job.id).where(
            Job.dataset_id == row.id, Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING])
        )
    ).all()
    if busy:
        raise ApiError(
            409,
            "conflict",
            f"dataset {dataset_id} is used by unfinished jobs {list(busy)}: cancel them first",
            {"jobs": list(busy)},
        )
    key = row.blob_key
    session.delete(row)
    session.commit()
    storage.delete(key)
