"""Datasets: the built-ins this server has, and uploads (validated before acceptance).

An upload is an ``.npz`` (x_train, y_train, x_val, y_val) or an ImageFolder archive (``.zip``,
``.tar``, ``.tar.gz``; see ``api.archives``). The ``kind`` form field says which; without it the
file's first bytes decide (a zip whose first member is an ``.npy`` is an ``.npz``), never its name.
An archive is unpacked into the blob store, and its folder is the dataset's blob.
"""

from __future__ import annotations

import shutil
import zipfile
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Request, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from api.archives import (
    SNIFF_BYTES,
    ArchiveLimits,
    Container,
    delete_tree,
    extract_imagefolder,
    first_zip_member,
    publish_tree,
    sniff,
)
from api.deps import CurrentUser, Id, SessionDep, SettingsDep, StorageDep, owned
from api.errors import ApiError
from api.models import Dataset, Job, JobStatus
from api.schemas import NO_CONTROL, DatasetPublic
from api.settings import Settings
from api.storage import LocalBlobStore
from api.uploads import display_name, store_upload, validate_or_discard
from quantcore import InvalidDataset, list_datasets, load_dataset
from quantcore.data.imagefolder import scan_images

router = APIRouter(prefix="/datasets", tags=["datasets"])
Kind = Literal["npz", "imagefolder"]
_SUFFIX = {"zip": ".zip", "tar": ".tar", "gzip": ".tgz"}


def _builtins() -> list[DatasetPublic]:
    return [
        DatasetPublic(
            name=d.name,
            kind="builtin",
            title=d.title,
            available=not d.needs_root,
            description=d.description,
            **(
                {}
                if d.shape is None
                else {
                    "num_classes": d.shape.num_classes,
                    "in_channels": d.shape.in_channels,
                    "input_height": d.shape.input_size[0],
                    "input_width": d.shape.input_size[1],
                    "num_train": d.shape.num_train,
                    "num_val": d.shape.num_val,
                }
            ),
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


def _renamed(exc: InvalidDataset, path: Path, filename: str) -> InvalidDataset:
    """The same error naming the upload instead of the server's path."""
    return InvalidDataset(
        exc.message.replace(str(path), filename),
        {
            k: (v.replace(str(path), filename) if isinstance(v, str) else v)
            for k, v in exc.details.items()
        },
    )


def _inspect_npz(path: Path, filename: str, max_bytes: int) -> dict[str, Any]:
    """Load the archive as a job would; errors name the upload, never the server's path.

    An ``.npz`` is a zip: its declared unpacked size is checked first (zipfile never reads a
    member past its declared size), so a small file cannot unpack into all of memory.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        declared = 0  # not a zip: the loader below says what it is not
    if declared > max_bytes:
        raise ApiError(
            413,
            "archive_too_large",
            f"{filename} unpacks to {declared} bytes, more than {max_bytes} (QS_MAX_ARCHIVE_BYTES)",
            {"limit": max_bytes},
        )
    try:
        bundle = load_dataset("npz", root=path)
    except InvalidDataset as exc:
        raise _renamed(exc, path, filename) from None
    height, width = bundle.input_size
    return {
        "num_classes": bundle.num_classes,
        "in_channels": bundle.in_channels,
        "input_height": height,
        "input_width": width,
        "num_train": len(bundle.train),  # type: ignore[arg-type]
        "num_val": len(bundle.val),  # type: ignore[arg-type]
    }


def _inspect_imagefolder(root: Path, filename: str, max_pixels: int) -> dict[str, Any]:
    """Load the tree as a job would and decode every image; sizes are the most common one."""
    try:
        bundle = load_dataset("imagefolder", root=root, augment=False)
        sizes: Counter[tuple[int, int]] = Counter()
        for split in (bundle.train, bundle.val):
            sizes += scan_images(split, max_pixels=max_pixels)  # type: ignore[arg-type]
    except InvalidDataset as exc:
        raise _renamed(exc, root, filename) from None
    (height, width), _ = sizes.most_common(1)[0]
    return {
        "num_classes": bundle.num_classes,
        "in_channels": bundle.in_channels,
        "input_height": height,
        "input_width": width,
        "num_train": len(bundle.train),  # type: ignore[arg-type]
        "num_val": len(bundle.val),  # type: ignore[arg-type]
    }


def _unpack_imagefolder(
    archive: Path, container: Container, storage: LocalBlobStore, settings: Settings, filename: str
) -> tuple[str, dict[str, Any]]:
    """Unpack, validate, then publish under a new key; nothing is left behind on failure."""
    limits = ArchiveLimits(settings.max_archive_members, settings.max_archive_bytes)
    folder = extract_imagefolder(archive, container, storage.root, limits, filename)
    try:
        facts = _inspect_imagefolder(folder, filename, settings.max_image_pixels)
        return publish_tree(storage, folder), facts
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _kind(declared: Kind | None, head: bytes, filename: str) -> tuple[Kind, Container | None]:
    """What an upload is: the ``kind`` field if given, else its first bytes (never its name)."""
    container = sniff(head)
    if declared == "npz":
        return "npz", None
    if container is None:
        if declared == "imagefolder":
            raise ApiError(
                422,
                "invalid_archive",
                f"{filename} is not a .zip, .tar or .tar.gz archive",
                {"kind": declared},
            )
        return "npz", None  # the .npz reader says what is wrong with it
    if declared is None and container == "zip":
        first = first_zip_member(head)
        if first is not None and first.endswith(".npy"):
            return "npz", None
    return "imagefolder", container


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetPublic,
    responses={
        413: {"description": "upload, or archive unpacked, too large"},
        422: {"description": "not a usable .npz or ImageFolder archive, or an unsafe archive"},
    },
)
async def upload_dataset(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    user: CurrentUser,
    file: Annotated[
        UploadFile,
        File(
            description=".npz with x_train, y_train, x_val, y_val; or a .zip/.tar/.tar.gz "
            "of train/<class>/<image> and val/<class>/<image> (.png, .jpg, .jpeg, .bmp)"
        ),
    ],
    name: Annotated[str | None, Form(max_length=255, pattern=NO_CONTROL)] = None,
    kind: Annotated[
        Kind | None,
        Form(description="npz or imagefolder; by default read from the file's first bytes"),
    ] = None,
) -> DatasetPublic:
    head = await file.read(SNIFF_BYTES)
    await file.seek(0)
    filename = display_name(file.filename, "dataset")
    what, container = _kind(kind, head, filename)
    if container is None:
        blob = await store_upload(
            request,
            file,
            storage,
            limit=settings.max_upload_bytes,
            prefix="datasets",
            suffix=".npz",
        )
        facts = await validate_or_discard(
            storage, blob, _inspect_npz, filename, settings.max_archive_bytes
        )
        key = blob.key
    else:
        blob = await store_upload(
            request,
            file,
            storage,
            limit=settings.max_upload_bytes,
            prefix="uploads",
            suffix=_SUFFIX[container],
        )
        try:
            key, facts = await run_in_threadpool(
                _unpack_imagefolder, storage.path(blob.key), container, storage, settings, filename
            )
        finally:
            storage.delete(blob.key)  # the unpacked folder is the dataset; the archive goes
    row = Dataset(
        owner_id=user.id,
        name=(name or filename).strip() or "dataset",
        kind=what,
        size_bytes=blob.size,
        sha256=blob.sha256,
        blob_key=key,
        **facts,
    )
    try:
        session.add(row)
        session.flush()
    except BaseException:
        _delete_blob(storage, what, key)
        raise
    return _public(row)


def _delete_blob(storage: LocalBlobStore, kind: str, key: str) -> None:
    if kind == "imagefolder":
        delete_tree(storage, key)
    else:
        storage.delete(key)


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
    kind, key = row.kind, row.blob_key
    session.delete(row)
    session.commit()
    _delete_blob(storage, kind, key)
