"""Dependencies: settings, database session, blob store, broker, the current user."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, TypeVar

from celery import Celery
from fastapi import Depends, Path, Request
from sqlalchemy.orm import Session

from api import auth
from api.errors import ApiError, not_found
from api.models import User
from api.schemas import MAX_ID
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
# scope="function": the session commits when the route returns, before the response is sent,
# so a client that acts on a 201 at once finds the row it was told about.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
StorageDep = Annotated[LocalBlobStore, Depends(get_storage)]
CeleryDep = Annotated[Celery, Depends(get_celery)]


_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _unauthenticated(message: str, code: str = "unauthenticated") -> ApiError:
    return ApiError(401, code, message, headers={"WWW-Authenticate": "Bearer"})


def get_current_user(request: Request, session: SessionDep) -> User:
    """The user a request acts for: a bearer token, else the browser session cookie.

    A cookie-authenticated request that changes something must also carry ``X-Requested-With``:
    a cross-site form cannot set that header, and a cross-site script would need a CORS
    preflight this API never grants (the cookie is SameSite=Strict as well).
    """
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthenticated("send the token as `Authorization: Bearer <token>`")
        user = auth.user_for_token(session, token.strip())
        if user is None:
            raise _unauthenticated("the API token is unknown or revoked", "invalid_token")
        return user
    secret = request.cookies.get(auth.SESSION_COOKIE)
    if secret:
        user = auth.user_for_session(session, secret)
        if user is None:
            raise _unauthenticated("your session has ended; log in again", "session_expired")
        if request.method not in _SAFE_METHODS and not request.headers.get("x-requested-with"):
            raise ApiError(
                403,
                "csrf",
                "a request that changes something needs the X-Requested-With header "
                "(the web UI sends it; scripts should use a bearer token)",
            )
        return user
    raise _unauthenticated(
        "log in (POST /api/v1/auth/login) or send `Authorization: Bearer <token>`; "
        "`python -m api users token NAME` creates a token"
    )


CurrentUser = Annotated[User, Depends(get_current_user)]


def get_admin(user: CurrentUser) -> User:
    if not user.is_admin:
        raise ApiError(403, "forbidden", "only an administrator may do this")
    return user


AdminUser = Annotated[User, Depends(get_admin)]


def owned(session: Session, cls: type[T], ident: int, user: User, kind: str) -> T:
    """The row ``ident`` of ``cls`` owned by ``user``; another user's row is a 404, like a
    missing one."""
    row = session.get(cls, ident)
    if row is None or getattr(row, "owner_id", None) != user.id:
        raise not_found(kind, ident)
    return row


Id = Annotated[int, Path(ge=1, le=MAX_ID, description="A row id.")]
