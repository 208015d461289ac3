"""What the service offers: architectures and methods (with their params schemas)."""

from __future__ import annotations

from fastapi import APIRouter

from api.errors import not_found
from api.schemas import ArchitecturePublic, MethodPublic
from quantcore import list_architectures, list_methods

router = APIRouter(tags=["catalogue"])


@router.get("/architectures", response_model=list[ArchitecturePublic])
def architectures() -> list[ArchitecturePublic]:
    return [ArchitecturePublic.model_validate(a) for a in list_architectures()]


@router.get("/methods", response_model=list[MethodPublic])
def methods() -> list[MethodPublic]:
    return [MethodPublic.model_validate(m) for m in list_methods()]


@router.get("/methods/{name}", response_model=MethodPublic)
def method(name: str) -> MethodPublic:
    for m in list_methods():
        if m.name == name:
            return MethodPublic.model_validate(m)
    raise not_found("method", name)
