"""Real services for the integration tests: PostgreSQL, Redis, and a Celery worker subprocess.

Each test module gets its own PostgreSQL database (created and dropped here), its own Redis
database number, its own data directory, and a worker process started with the same settings as
the API. ``embedded`` gives the default shape instead: SQLite and kombu's filesystem broker.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from safetensors.torch import save_file
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from api import auth
from api.db import make_engine, make_sessionmaker, upgrade_to_head
from api.main import create_app
from api.settings import Settings
from quantcore import build, load_dataset, train
from quantcore.context import RunContext
from worker.__main__ import worker_command

PG_ADMIN_URL = os.environ.get(
    "QS_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("QS_TEST_REDIS_URL", "redis://127.0.0.1:6379")
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Service:
    client: TestClient
    settings: Settings
    env: dict[str, str]
    worker: subprocess.Popen[bytes] | None = None

    def start_worker(self) -> None:
        log = open(self.settings.data_dir / "worker.log", "ab")
        self.worker = subprocess.Popen(  # what `python -m worker` starts per device
            worker_command(f"test-{secrets.token_hex(3)}"),
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop_worker(self, sig: int = signal.SIGTERM) -> None:
        if self.worker is not None and self.worker.poll() is None:
            os.killpg(self.worker.pid, sig)
            try:
                self.worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.worker.pid, signal.SIGKILL)
                self.worker.wait()
        self.worker = None

    def upload_lenet(self, weights: Path) -> int:
        """Upload LeNet5 float weights (the ``lenet_weights`` fixture) as a model; its id."""
        with open(weights, "rb") as f:
            made = self.client.post(
                "/api/v1/models",
                data={"arch": "lenet5", "num_classes": "10"},
                files={"file": ("lenet5.safetensors", f)},
            )
        assert made.status_code == 201, made.text
        return int(made.json()["id"])

    def worker_log(self) -> str:
        path = self.settings.data_dir / "worker.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def wait_for(self, job_id: int, states: set[str], timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.client.get(f"/api/v1/jobs/{job_id}").json()
            if job["status"] in states:
                return job
            time.sleep(0.3)
        raise AssertionError(
            f"job {job_id} is still {job['status']}; worker log:\n{self.worker_log()}"
        )


def signed_in_client(app: FastAPI, name: str, is_admin: bool = False) -> TestClient:
    """A client acting as a new user ``name`` (password "password-<name>"), by bearer token."""
    with app.state.sessionmaker() as session, session.begin():
        user = auth.create_user(session, name, f"password-{name}", is_admin=is_admin)
        _, token = auth.issue_token(session, user, "tests")
    return TestClient(app, headers={"Authorization": f"Bearer {token}"})


def _service(settings: Settings, env: dict[str, str]) -> Service:
    upgrade_to_head(settings)
    app = create_app(settings)
    return Service(signed_in_client(app, "alice", is_admin=True), settings, env)


@pytest.fixture(params=["sqlite", "postgresql"])
def session(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Session]:
    """A session on a migrated database: SQLite (the embedded default), then the module's
    PostgreSQL database (which outlives the test: make rows unique)."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    settings = Settings(data_dir=tmp_path, database_url=url)
    upgrade_to_head(settings)
    engine = make_engine(settings)
    with make_sessionmaker(engine)() as s:
        yield s
    engine.dispose()


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    name = f"qs_test_{secrets.token_hex(4)}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def start_production(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str, **extra_env: str
) -> Service:
    """PostgreSQL + Redis (a database number of its own) + one worker process."""
    import redis

    db_number = 1 + secrets.randbelow(14)
    redis.Redis.from_url(f"{REDIS_URL}/{db_number}").flushdb()
    data_dir = tmp_path_factory.mktemp("prod")
    env = {
        **os.environ,
        "QS_DATA_DIR": str(data_dir),
        "QS_DATABASE_URL": postgres_url,
        "QS_BROKER_URL": f"{REDIS_URL}/{db_number}",
        "QS_MAX_UPLOAD_BYTES": str(8 * 2**20),
        "QS_JOB_LEASE_S": "8",  # a killed worker's job is taken over after 8 s
        "CUDA_VISIBLE_DEVICES": "",
        **extra_env,
    }
    service = _service(
        Settings(
            data_dir=data_dir,
            database_url=postgres_url,
            broker_url=f"{REDIS_URL}/{db_number}",
            max_upload_bytes=8 * 2**20,
            job_lease_s=8,
        ),
        env,
    )
    service.start_worker()
    return service


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory, postgres_url: str) -> Iterator[Service]:
    """PostgreSQL + Redis + one worker process."""
    service = start_production(tmp_path_factory, postgres_url)
    yield service
    service.stop_worker()


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The defaults: SQLite and the filesystem broker under one data directory."""
    data_dir = tmp_path_factory.mktemp("embedded")
    env = {**os.environ, "QS_DATA_DIR": str(data_dir), "CUDA_VISIBLE_DEVICES": ""}
    for key in ("QS_DATABASE_URL", "QS_BROKER_URL"):
        env.pop(key, None)
    service = _service(Settings(data_dir=data_dir), env)
    service.start_worker()
    yield service
    service.stop_worker()


@pytest.fixture(scope="session")
def lenet_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LeNet5 trained for one epoch on digits (28x28): small, real, and better than chance."""
    torch.manual_seed(0)
    data = load_dataset("digits", image_size=28)
    model = build("lenet5", num_classes=10, in_channels=1)
    loader, _ = data.loaders(32)
    train(
        model,
        loader,
        epochs=2,
        optimizer=torch.optim.Adam(model.parameters(), 2e-3),
        ctx=RunContext(),
    )
    path = tmp_path_factory.mktemp("weights") / "lenet5.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path
