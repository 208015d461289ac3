"""Users, passwords, tokens, browser sessions and the login rate limit, against a real database.

These need no worker: an app on a fresh PostgreSQL database (and one on the embedded SQLite
default for the first-start admin) is enough.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from api import admin
from api.db import upgrade_to_head
from api.main import create_app
from api.models import ApiToken, LoginSession, User
from api.settings import Settings
from tests.integration.conftest import ROOT, signed_in_client

LOGIN = "/api/v1/auth/login"


@pytest.fixture(scope="module")
def settings(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("auth"),
        database_url=postgres_url,
        login_max_failures=3,
        login_max_failures_per_client=50,
    )
    upgrade_to_head(settings)
    return settings


@pytest.fixture(scope="module")
def app(settings: Settings) -> Iterator[FastAPI]:
    app = create_app(settings)
    yield app
    app.state.engine.dispose()


def _error(response, status: int) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    return response.json()["error"]


def _login(app: FastAPI, name: str, password: str) -> TestClient:
    client = TestClient(app)
    response = client.post(LOGIN, json={"username": name, "password": password})
    assert response.status_code == 200, response.text
    return client


def test_every_resource_needs_a_user_but_health_does_not(app: FastAPI) -> None:
    anonymous = TestClient(app)
    for path in ("/api/v1/models", "/api/v1/jobs", "/api/v1/datasets", "/api/v1/methods"):
        response = anonymous.get(path)
        assert _error(response, 401)["code"] == "unauthenticated"
        assert response.headers["www-authenticate"] == "Bearer"
    assert _error(anonymous.post("/api/v1/jobs", json={}), 401)["code"] == "unauthenticated"
    bad_scheme = anonymous.get("/api/v1/models", headers={"Authorization": "Basic abc"})
    assert _error(bad_scheme, 401)["code"] == "unauthenticated"
    forged = anonymous.get("/api/v1/models", headers={"Authorization": "Bearer qs_forged"})
    assert _error(forged, 401)["code"] == "invalid_token"
    assert anonymous.get("/healthz").status_code == 200


def test_login_sets_a_strict_httponly_cookie_and_logout_ends_it(app: FastAPI) -> None:
    signed_in_client(app, "carol")
    client = TestClient(app)
    response = client.post(LOGIN, json={"username": "carol", "password": "password-carol"})
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "carol"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("qs_session=")
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "samesite=strict" in cookie.lower()
    assert client.get("/api/v1/auth/me").json()["name"] == "carol"
    assert client.get("/api/v1/models").status_code == 200

    with app.state.sessionmaker() as session:  # only a hash of the cookie's secret is stored
        secret = client.cookies["qs_session"]
        stored = session.scalars(select(LoginSession.secret_hash)).all()
        assert secret not in stored
        assert len(stored) >= 1

    assert client.post("/api/v1/auth/logout").status_code == 204
    client.cookies.set("qs_session", secret)  # an old cookie replayed after logout
    assert _error(client.get("/api/v1/auth/me"), 401)["code"] == "session_expired"


def test_a_cookie_alone_cannot_change_anything(app: FastAPI) -> None:
    signed_in_client(app, "dave")
    client = _login(app, "dave", "password-dave")
    refused = client.post("/api/v1/tokens", json={"name": "from a forged form"})
    assert _error(refused, 403)["code"] == "csrf"
    assert [t["name"] for t in client.get("/api/v1/tokens").json()] == ["tests"]
    made = client.post(
        "/api/v1/tokens", json={"name": "ui"}, headers={"X-Requested-With": "quantserve"}
    )
    assert made.status_code == 201, made.text


def test_wrong_passwords_are_rate_limited_per_user_name(app: FastAPI, settings: Settings) -> None:
    signed_in_client(app, "erin")
    client = TestClient(app)
    for _ in range(settings.login_max_failures):
        wrong = client.post(LOGIN, json={"username": "erin", "password": "not-her-password"})
        assert _error(wrong, 401)["code"] == "invalid_credentials"
    blocked = client.post(LOGIN, json={"username": "erin", "password": "password-erin"})
    err = _error(blocked, 429)
    assert err["code"] == "rate_limited"
    assert 1 <= int(blocked.headers["retry-after"]) <= settings.login_window_s + 1
    # Another API process on the same database enforces the same limit.
    second = create_app(settings)
    try:
        again = TestClient(second).post(
            LOGIN, json={"username": "erin", "password": "password-erin"}
        )
        assert _error(again, 429)["code"] == "rate_limited"
    finally:
        second.state.engine.dispose()
    # A missing user answers like a wrong password: nothing tells which names exist.
    ghost = client.post(LOGIN, json={"username": "nobody-here", "password": "whatever1"})
    assert _error(ghost, 401)["message"] == "wrong user name or password"


def test_tokens_are_shown_once_stored_hashed_and_revocable(app: FastAPI) -> None:
    frank = signed_in_client(app, "frank")
    made = frank.post("/api/v1/tokens", json={"name": "ci"})
    assert made.status_code == 201, made.text
    token = made.json()["token"]
    assert token.startswith("qs_")
    scripted = TestClient(app, headers={"Authorization": f"Bearer {token}"})
    assert scripted.get("/api/v1/auth/me").json()["name"] == "frank"

    listed = frank.get("/api/v1/tokens").json()
    assert {t["name"] for t in listed} == {"tests", "ci"}
    assert all("token" not in t for t in listed)
    with app.state.sessionmaker() as session:
        assert token not in session.scalars(select(ApiToken.token_hash)).all()
        password_hash = session.scalar(select(User.password_hash).where(User.name == "frank"))
        assert password_hash is not None
        assert password_hash.startswith("$argon2id$")

    # Someone else's token id is a 404, and revoking it leaves it working.
    grace = signed_in_client(app, "grace")
    assert _error(grace.delete(f"/api/v1/tokens/{made.json()['id']}"), 404)["code"] == "not_found"
    assert scripted.get("/api/v1/auth/me").status_code == 200

    assert frank.delete(f"/api/v1/tokens/{made.json()['id']}").status_code == 204
    assert _error(scripted.get("/api/v1/auth/me"), 401)["code"] == "invalid_token"


def test_only_an_admin_manages_users(app: FastAPI) -> None:
    heidi = signed_in_client(app, "heidi")
    root = signed_in_client(app, "root", is_admin=True)
    body = {"name": "ivan", "password": "long-enough"}
    assert _error(heidi.post("/api/v1/users", json=body), 403)["code"] == "forbidden"
    assert root.post("/api/v1/users", json=body).status_code == 201
    assert _error(root.post("/api/v1/users", json=body), 409)["code"] == "conflict"
    short = root.post("/api/v1/users", json={"name": "judy", "password": "short"})
    assert _error(short, 422)["details"]["errors"][0]["field"] == "password"
    slash = root.post("/api/v1/users", json={"name": "../judy", "password": "long-enough"})
    assert _error(slash, 422)["code"] == "invalid_name"
    _login(app, "ivan", "long-enough")


def _cli(settings: Settings, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {"QS_DATA_DIR": str(settings.data_dir), "QS_DATABASE_URL": settings.database_url or ""}
    return subprocess.run(
        [sys.executable, "-m", "api", "users", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**_base_env(), **env},
        timeout=120,
    )


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("QS_")}


def test_the_cli_creates_users_and_tokens(app: FastAPI, settings: Settings) -> None:
    created = _cli(settings, "create", "kim", "--password-stdin", stdin="kims-password\n")
    assert created.returncode == 0, created.stderr
    _login(app, "kim", "kims-password")

    issued = _cli(settings, "token", "kim", "--label", "laptop")
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    client = TestClient(app, headers={"Authorization": f"Bearer {token}"})
    assert client.get("/api/v1/auth/me").json()["name"] == "kim"

    token_id = client.get("/api/v1/tokens").json()[0]["id"]
    assert _cli(settings, "revoke", str(token_id)).returncode == 0
    assert client.get("/api/v1/auth/me").status_code == 401

    duplicate = _cli(settings, "create", "kim", "--password-stdin", stdin="kims-password\n")
    assert duplicate.returncode == 1
    assert "already exists" in duplicate.stderr
    assert _cli(settings, "token", "nobody").returncode == 1


def test_the_first_embedded_start_creates_an_admin_once(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    upgrade_to_head(settings)
    password = admin.ensure_first_admin(settings)
    assert password
    assert admin.ensure_first_admin(settings) is None  # later starts leave it alone
    app = create_app(settings)
    try:
        client = _login(app, admin.FIRST_ADMIN, password)
        me = client.get("/api/v1/auth/me").json()
        assert me["is_admin"] is True
    finally:
        app.state.engine.dispose()
