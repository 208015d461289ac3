"""Uploaded float models: streamed to the blob store, accepted only once quantcore loads them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, UploadFile, status
from sqlalchemy import func, select

from api.deps import CurrentUser, Id, SessionDep, SettingsDep, StorageDep, owned
from api.errors import ApiError
from api.models import Job, JobStatus, Model
from api.schemas import NO_CONTROL, ModelPublic, ModelsPublic
from api.uploads import display_name, store_upload, validate_or_discard
from quantcore import InvalidParams, list_architectures

router = APIRouter(prefix="/models", tags=["models"])


def _validate_model(
    path: Path, arch: str, num_classes: int, in_channels: int, size: tuple[int, int]
) -> int:
    """Load the weights into the architecture and run one forward pass; returns #params."""
    import torch

    from quantcore.loading import load_model

    model = load_model(path, arch, num_classes=num_classes, in_channels=in_channels)
    with torch.no_grad():
        try:
            out = model(torch.zeros(1, in_channels, *size))
        except RuntimeError as exc:
            raise InvalidParams(
                f"{arch} cannot run on a {in_channels}x{size[0]}x{size[1]} input: {exc}",
                {"input_shape": [in_channels, *size]},
            ) from None
    if tuple(out.shape) != (1, num_classes):
        raise InvalidParams(f"the model gives {tuple(out.shape)} logits, not (1, {num_classes})")
    return sum(p.numel() for p in model.parameters())


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ModelPublic,
    responses={
        413: {"description": "upload too large"},
        422: {"description": "not a loadable model for this architecture"},
    },
)
async def upload_model(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    user: CurrentUser,
    file: Annotated[UploadFile, File(description="safetensors or torch state dict")],
    arch: Annotated[str, Form(max_length=64, pattern=NO_CONTROL, description="architecture name")],
    num_classes: Annotated[int, Form(ge=2, le=100_000)],
    in_channels: Annotated[int | None, Form(ge=1, le=64)] = None,
    input_height: Annotated[int | None, Form(ge=1, le=4096)] = None,
    input_width: Annotated[int | None, Form(ge=1, le=4096)] = None,
    name: Annotated[str | None, Form(max_length=255, pattern=NO_CONTROL)] = None,
) -> Model:
    info = {a.name: a for a in list_architectures()}.get(arch)
    if info is None:
        raise ApiError(
            422,
            "unknown_name",
            f"unknown architecture {arch!r}; known: "
            f"{', '.join(sorted(a.name for a in list_architectures()))}",
        )
    channels = in_channels or info.default_in_channels
    size = (input_height or info.default_input_size[0], input_width or info.default_input_size[1])
    blob = await store_upload(
        request, file, storage, limit=settings.max_upload_bytes, prefix="models", suffix=".bin"
    )
    num_params = await validate_or_discard(
        storage, blob, _validate_model, arch, num_classes, channels, size
    )
    filename = display_name(file.filename, "model")
    model = Model(
        owner_id=user.id,
        name=(name or filename).strip() or "model",
        arch=arch,
        num_classes=num_classes,
        in_channels=channels,
        input_height=size[0],
        input_width=size[1],
        num_params=num_params,
        size_bytes=blob.size,
        sha256=blob.sha256,
        blob_key=blob.key,
    )
    session.add(model)
    session.flush()
    return model


@router.get("", response_model=ModelsPublic)
def list_models(
    session: SessionDep,
    user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
) -> ModelsPublic:
    query = select(Model).where(Model.owner_id == user.id)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(Model.id.desc()).limit(limit).offset(offset)).all()
    return ModelsPublic(items=[ModelPublic.model_validate(r) for r in rows], total=total)


@router.get("/{model_id}", response_model=ModelPublic)
def get_model(model_id: Id, session: SessionDep, user: CurrentUser) -> Model:
    return owned(session, Model, model_id, user, "model")


@router.delete("/{model_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_model(model_id: Id, session: SessionDep, user: CurrentUser, storage: StorageDep) -> None:
    """Delete a model with its finished jobs and their artifacts (refused while jobs run)."""
    model = owned(session, Model, model_id, user, "model")
    jobs = session.scalars(select(Job).where(Job.model_id == model.id)).unique().all()
    busy = [j.id for j in jobs if not JobStatus(j.status).finished]
    if busy:
        raise ApiError(
            409,
            "conflict",
            f"model {model_id} has unfinished jobs {busy}: cancel them first",
            {"jobs": busy},
        )
    keys = [model.blob_key, *(a.blob_key for j in jobs for a in j.artifacts)]
    for job in jobs:
        session.delete(job)
    session.delete(model)
    session.commit()
    for key in keys:
        storage.delete(key)
