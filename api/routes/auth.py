"""Logging in and out (browser sessions), API tokens, and users (administrators only)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from sqlalchemy import select

from api import auth
from api.deps import AdminUser, CurrentUser, Id, SessionDep, SettingsDep
from api.errors import ApiError
from api.models import ApiToken, User
from api.schemas import (
    LoginRequest,
    TokenCreate,
    TokenCreated,
    TokenPublic,
    UserCreate,
    UserPublic,
)

router = APIRouter(tags=["auth"])


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.post("/auth/login", response_model=UserPublic)
def login(
    body: LoginRequest,
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
) -> User:
    """Check the password and set the session cookie (HttpOnly, SameSite=Strict)."""
    client = _client(request)
    wait = auth.login_retry_after(session, settings, body.username, client)
    if wait:
        raise ApiError(
            429,
            "rate_limited",
            f"too many failed logins; try again in {wait} s",
            {"retry_after_s": wait},
            headers={"Retry-After": str(wait)},
        )
    user = auth.find_user(session, body.username)
    if user is None or not auth.check_password(user, body.password):
        auth.record_login_failure(session, settings, body.username, client)
        session.commit()  # the failure must count even though this request fails
        raise ApiError(401, "invalid_credentials", "wrong user name or password")
    auth.forget_login_failures(session, body.username)
    secret = auth.open_session(session, user, settings.session_ttl_s)
    secure = settings.cookie_secure
    response.set_cookie(
        auth.SESSION_COOKIE,
        secret,
        max_age=settings.session_ttl_s,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https" if secure is None else secure,
        path="/",
    )
    return user


@router.post("/auth/logout", status_code=status.HTTP_204_NO_CONTENT)
def logout(request: Request, response: Response, session: SessionDep) -> None:
    """End the browser session (harmless without one)."""
    secret = request.cookies.get(auth.SESSION_COOKIE)
    if secret:
        auth.close_session(session, secret)
    response.delete_cookie(auth.SESSION_COOKIE, path="/", httponly=True, samesite="strict")


@router.get("/auth/me", response_model=UserPublic)
def me(user: CurrentUser) -> User:
    return user


@router.get("/tokens", response_model=list[TokenPublic])
def list_tokens(session: SessionDep, user: CurrentUser) -> list[ApiToken]:
    """Your API tokens, newest first (revoked ones included, with ``revoked_at``)."""
    return list(
        session.scalars(
            select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id.desc())
        )
    )


@router.post("/tokens", response_model=TokenCreated, status_code=status.HTTP_201_CREATED)
def create_token(body: TokenCreate, session: SessionDep, user: CurrentUser) -> TokenCreated:
    """A new bearer token; the response is the only place it is ever shown."""
    row, secret = auth.issue_token(session, user, body.name)
    return TokenCreated.model_validate(
        {**TokenPublic.model_validate(row).model_dump(), "token": secret}
    )


@router.delete("/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_token(token_id: Id, session: SessionDep, user: CurrentUser) -> None:
    row = session.get(ApiToken, token_id)
    if row is None or row.user_id != user.id:  # another user's token is a 404 too
        raise ApiError(404, "not_found", f"token {token_id} does not exist", {"id": token_id})
    auth.revoke_token(row)


@router.get("/users", response_model=list[UserPublic])
def list_users(session: SessionDep, _admin: AdminUser) -> list[User]:
    return list(session.scalars(select(User).order_by(User.id)))


@router.post("/users", response_model=UserPublic, status_code=status.HTTP_201_CREATED)
def create_user(body: UserCreate, session: SessionDep, _admin: AdminUser) -> User:
    return auth.create_user(session, body.name, body.password, body.is_admin)
