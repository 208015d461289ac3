"""Dependencies: settings, database session, blob store, broker, the current user."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, TypeVar

from celery import Celery
from fastapi import Depends, Path, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.models import User
from api.settings import Settings
from api.storage import LocalBlobStore

T = TypeVar("T")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    """One session per request; the request boundary commits (services never do)."""
    session = request.app.state.sessionmaker()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def get_storage(request: Request) -> LocalBlobStore:
    return request.app.state.storage


def get_celery(request: Request) -> Celery:
    return request.app.state.celery


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
StorageDep = Annotated[LocalBlobStore, Depends(get_storage)]
CeleryDep = Annotated[Celery, Depends(get_celery)]


def get_current_user(session: SessionDep, settings: SettingsDep) -> User:
    """Until users and tokens land, every request acts as the configured default user."""
    user = session.scalar(select(User).where(User.name == settings.default_user))
    if user is None:
        user = User(name=settings.default_user)
        session.add(user)
        session.flush()
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


def owned(session: Session, cls: type[T], ident: int, user: User, kind: str) -> T:
    """The row ``ident`` of ``cls`` owned by ``user``; another user's row is a 404, like a
    missing one."""
    from api.errors import not_found

    row = session.get(cls, ident)
    if row is None or getattr(row, "owner_id", None) != user.id:
        raise not_found(kind, ident)
    return row


Id = Annotated[int, Path(ge=1, le=2**62, description="A row id.")]
