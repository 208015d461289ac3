"""``python -m api users …``: users and tokens from the command line, and the first admin.

Each command opens its own session on a database that must be at head, does one thing and
commits. Passwords are read from stdin (``--password-stdin``) or asked twice on a terminal, never
taken from the command line, where other users could see them in the process list.
"""

from __future__ import annotations

import argparse
import getpass
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import select
from sqlalchemy.orm import Session

from api import auth
from api.db import current_and_head, make_engine, make_sessionmaker
from api.errors import ApiError
from api.models import ApiToken, User
from api.settings import Settings

FIRST_ADMIN = "admin"


@contextmanager
def _session(settings: Settings) -> Iterator[Session]:
    engine = make_engine(settings)
    try:
        current, head = current_and_head(engine, settings)
        if current != head:
            raise SystemExit(
                f"the database is at revision {current or 'none'}, not {head}: "
                "run `python -m api migrate` first"
            )
        with make_sessionmaker(engine)() as session, session.begin():
            yield session
    finally:
        engine.dispose()


def ensure_first_admin(settings: Settings) -> str | None:
    """Create the user ``admin`` with a random password when no one can log in yet.

    Returns the password (to print once), or None when a user with a password already exists.
    """
    with _session(settings) as session:
        if session.scalar(select(User.id).where(User.password_hash.is_not(None)).limit(1)):
            return None
        password = secrets.token_urlsafe(12)
        user = auth.find_user(session, FIRST_ADMIN)
        if user is None:
            auth.create_user(session, FIRST_ADMIN, password, is_admin=True)
        else:
            auth.set_password(user, password)
            user.is_admin = True
        return password


def _read_password(from_stdin: bool) -> str:
    if from_stdin or not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise SystemExit("the two passwords differ")
    return first


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    users = sub.add_parser("users", help="manage users and their API tokens")
    cmds = users.add_subparsers(dest="users_command", required=True)
    create = cmds.add_parser("create", help="create a user (password from stdin or a prompt)")
    create.add_argument("name")
    create.add_argument("--admin", action="store_true", help="may manage other users")
    create.add_argument("--password-stdin", action="store_true")
    password = cmds.add_parser("password", help="set a user's password")
    password.add_argument("name")
    password.add_argument("--password-stdin", action="store_true")
    cmds.add_parser("list", help="list users")
    token = cmds.add_parser("token", help="create an API token for a user and print it")
    token.add_argument("name", help="the user")
    token.add_argument("--label", default="cli", help="what the token is for")
    revoke = cmds.add_parser("revoke", help="revoke an API token by its id")
    revoke.add_argument("token_id", type=int)


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        with _session(settings) as session:
            return _run(args, session)
    except ApiError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1


def _user(session: Session, name: str) -> User:
    user = auth.find_user(session, name)
    if user is None:
        raise ApiError(404, "not_found", f"no user named {name!r}")
    return user


def _run(args: argparse.Namespace, session: Session) -> int:
    command = args.users_command
    if command == "create":
        user = auth.create_user(
            session, args.name, _read_password(args.password_stdin), is_admin=args.admin
        )
        print(f"created user {user.name!r} (id {user.id}{', admin' if user.is_admin else ''})")
    elif command == "password":
        auth.set_password(_user(session, args.name), _read_password(args.password_stdin))
        print(f"password of {args.name!r} changed")
    elif command == "list":
        for user in session.scalars(select(User).order_by(User.id)):
            login = "password" if user.password_hash else "tokens only"
            admin = ", admin" if user.is_admin else ""
            print(f"{user.id}\t{user.name}\t({login}{admin})")
    elif command == "token":
        row, secret = auth.issue_token(session, _user(session, args.name), args.label)
        print(secret)
        print(f"token {row.id} for {args.name!r}; it is not shown again", file=sys.stderr)
    elif command == "revoke":
        token = session.get(ApiToken, args.token_id)
        if token is None:
            raise ApiError(404, "not_found", f"no token with id {args.token_id}")
        auth.revoke_token(token)
        print(f"token {args.token_id} revoked")
    return 0
