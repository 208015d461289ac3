"""Users, passwords, bearer tokens, browser sessions and the login rate limit.

Passwords are hashed with argon2id (argon2-cffi's defaults). API tokens and session secrets are
32 random bytes, so one sha256 is enough to store them safely (a slow hash is for low-entropy
secrets such as passwords); only that hash is kept, and a token is shown once, when created.

These functions change the session they are given and never commit: the request (or the CLI
command) that calls them decides.
"""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from api.errors import ApiError
from api.models import ApiToken, LoginFailure, LoginSession, User, utcnow
from api.settings import Settings

TOKEN_PREFIX = "qs_"
SESSION_COOKIE = "qs_session"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024

_hasher = PasswordHasher()


@functools.cache
def _unusable_hash() -> str:
    """Verified against when the user does not exist, so a login takes as long either way."""
    return _hasher.hash(secrets.token_urlsafe(16))


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)  # SQLite drops the zone


def hash_password(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ApiError(
            422,
            "invalid_password",
            f"a password needs {MIN_PASSWORD} to {MAX_PASSWORD} characters",
            {"field": "password"},
        )
    return _hasher.hash(password)


def check_password(user: User | None, password: str) -> bool:
    """True when ``password`` is ``user``'s; the same work is done for a missing user."""
    stored = user.password_hash if user is not None and user.password_hash else None
    try:
        return _hasher.verify(stored or _unusable_hash(), password[:MAX_PASSWORD]) and bool(stored)
    except (VerificationError, InvalidHashError):
        return False


def find_user(session: Session, name: str) -> User | None:
    return session.scalar(select(User).where(User.name == name))


def create_user(session: Session, name: str, password: str | None, is_admin: bool = False) -> User:
    if not NAME_PATTERN.match(name):
        raise ApiError(
            422,
            "invalid_name",
            "a user name is 1 to 100 letters, digits or . _ @ -, starting with a letter or digit",
            {"field": "name"},
        )
    if find_user(session, name) is not None:
        raise ApiError(409, "conflict", f"user {name!r} already exists", {"field": "name"})
    user = User(
        name=name,
        password_hash=hash_password(password) if password is not None else None,
        is_admin=is_admin,
    )
    session.add(user)
    session.flush()
    return user


def set_password(user: User, password: str) -> None:
    user.password_hash = hash_password(password)


def issue_token(session: Session, user: User, name: str) -> tuple[ApiToken, str]:
    """A new token for ``user``: the row, and the token itself (never stored)."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(user_id=user.id, name=name, prefix=secret[:10], token_hash=_sha256(secret))
    session.add(row)
    session.flush()
    return row, secret


def user_for_token(session: Session, token: str) -> User | None:
    row = session.scalar(
        select(ApiToken).where(ApiToken.token_hash == _sha256(token), ApiToken.revoked_at.is_(None))
    )
    if row is None:
        return None
    now = utcnow()
    if row.last_used_at is None or now - _aware(row.last_used_at) > timedelta(minutes=1):
        row.last_used_at = now  # at most one write a minute per token
    return session.get(User, row.user_id)


def revoke_token(row: ApiToken) -> None:
    if row.revoked_at is None:
        row.revoked_at = utcnow()


def open_session(session: Session, user: User, ttl_s: int) -> str:
    """A new browser session; returns the secret that goes into the cookie."""
    secret = secrets.token_urlsafe(32)
    now = utcnow()
    session.execute(delete(LoginSession).where(LoginSession.expires_at < now))
    session.add(
        LoginSession(
            user_id=user.id, secret_hash=_sha256(secret), expires_at=now + timedelta(seconds=ttl_s)
        )
    )
    session.flush()
    return secret


def user_for_session(session: Session, secret: str) -> User | None:
    row = session.scalar(select(LoginSession).where(LoginSession.secret_hash == _sha256(secret)))
    if row is None or _aware(row.expires_at) <= utcnow():
        return None
    return session.get(User, row.user_id)


def close_session(session: Session, secret: str) -> None:
    session.execute(delete(LoginSession).where(LoginSession.secret_hash == _sha256(secret)))


def login_retry_after(session: Session, settings: Settings, username: str, client: str) -> int:
    """Seconds until ``username`` from ``client`` may try again; 0 when it may now.

    Failures are counted in the database, so every API process enforces the same limit: at most
    ``login_max_failures`` per user name and ``login_max_failures_per_client`` per address within
    ``login_window_s``.
    """
    since = utcnow() - timedelta(seconds=settings.login_window_s)
    for column, value, limit in (
        (LoginFailure.username, username, settings.login_max_failures),
        (LoginFailure.client, client, settings.login_max_failures_per_client),
    ):
        count, oldest = session.execute(
            select(func.count(), func.min(LoginFailure.created_at)).where(
                column == value, LoginFailure.created_at > since
            )
        ).one()
        if count >= limit:
            elapsed = (utcnow() - _aware(oldest)).total_seconds()
            return max(1, int(settings.login_window_s - elapsed) + 1)
    return 0


def record_login_failure(session: Session, settings: Settings, username: str, client: str) -> None:
    cutoff = utcnow() - timedelta(seconds=settings.login_window_s)
    session.execute(delete(LoginFailure).where(LoginFailure.created_at < cutoff))
    session.add(LoginFailure(username=username[:100], client=client[:64]))


def forget_login_failures(session: Session, username: str) -> None:
    session.execute(delete(LoginFailure).where(LoginFailure.username == username))
