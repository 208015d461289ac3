"""Faults against real PostgreSQL, Redis, worker and API processes: the broker restarted with
jobs queued, the database connection dropped mid-job, the API killed mid-upload, and the blob
store's disk full while artifacts are written.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from api.db import upgrade_to_head
from api.main import create_app
from api.settings import Settings
from api.storage import TEMP_PREFIX
from tests.integration.conftest import PG_ADMIN_URL, ROOT, Service, signed_in_client
from tests.integration.test_service import _submit, _upload

pytestmark = pytest.mark.slow

LEASE_S = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _blob_files(service: Service) -> set[Path]:
    return {p for p in service.settings.resolved_blob_dir.rglob("*") if p.is_file()}


# --- 1. Redis restarted while jobs are queued ---------------------------------------------------


class PrivateRedis:
    """A redis-server of the test's own, persisting to an append-only file in ``folder``: the
    setting a deployment needs for queued messages to survive a restart (see README)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        log = open(self.folder / "redis.log", "ab")
        self.proc = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--dir", str(self.folder), "--save", "", "--appendonly", "yes"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(redis.ConnectionError, redis.BusyLoadingError):
                if client.ping():
                    return
            assert time.monotonic() < deadline, (self.folder / "redis.log").read_text()
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=20)
        self.proc = None

    def queued_messages(self) -> int:
        import redis

        return int(redis.Redis.from_url(self.url).llen("jobs"))


@pytest.fixture(scope="module")
def redis_service(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str
) -> Iterator[tuple[Service, PrivateRedis]]:
    """The production shape on a private Redis (the shared one must never be restarted)."""
    broker = PrivateRedis(tmp_path_factory.mktemp("redis"))
    broker.start()
    data_dir = tmp_path_factory.mktemp("redis-prod")
    settings = Settings(
        data_dir=data_dir,
        database_url=postgres_url,
        broker_url=broker.url,
        max_upload_bytes=8 * 2**20,
        job_lease_s=LEASE_S,
    )
    env = {
        **os.environ,
        "QS_DATA_DIR": str(data_dir),
        "QS_DATABASE_URL": postgres_url,
        "QS_BROKER_URL": broker.url,
        "QS_JOB_LEASE_S": str(LEASE_S),
        "CUDA_VISIBLE_DEVICES": "",
    }
    upgrade_to_head(settings)
    service = Service(signed_in_client(create_app(settings), "redis-owner"), settings, env)
    try:
        yield service, broker
    finally:
        service.stop_worker()
        broker.stop()


def test_jobs_queued_across_a_redis_restart_run_exactly_once(
    redis_service: tuple[Service, PrivateRedis], lenet_weights: Path
) -> None:
    """Jobs queued (no worker running), Redis stopped and started again on the same files:
    every job runs, once. While Redis is down, POST /jobs answers 503 and stores nothing."""
    service, broker = redis_service
    model = _upload(service, lenet_weights)
    jobs = [_submit(service, model["id"], params={"bits": b}) for b in (2, 3, 4)]
    assert broker.queued_messages() == len(jobs)

    broker.stop()  # SIGTERM: Redis shuts down cleanly and then comes back from its files
    before = service.client.get("/api/v1/jobs").json()
    refused = service.client.post(
        "/api/v1/jobs",
        json={"model_id": model["id"], "method": "uniform", "dataset": "digits"},
    )
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "broker_unavailable"
    assert refused.headers["retry-after"]
    assert service.client.get("/api/v1/jobs").json() == before  # no row left behind
    broker.start()
    assert broker.queued_messages() == len(jobs)

    service.start_worker()
    later = _submit(service, model["id"], params={"bits": 5})  # the API reconnected
    blobs = service.settings.resolved_blob_dir
    for job in [*jobs, later]:
        done = service.wait_for(job["id"], {"succeeded", "failed", "cancelled"}, timeout=240)
        assert done["status"] == "succeeded", done["error_message"]
        assert done["attempts"] == 1
        assert sorted(a["kind"] for a in done["artifacts"]) == [
            "onnx",
            "qpack",
            "report",
            "safetensors",
        ]
        assert service.client.get(f"/api/v1/jobs/{job['id']}/result").status_code == 200
    listed = service.client.get("/api/v1/jobs").json()
    assert listed["total"] == len(jobs) + 1
    # One set of artifacts per job: nothing stored by a second run, nothing left half-written.
    artifact_files = list((blobs / "artifacts").iterdir())
    assert len(artifact_files) == 4 * (len(jobs) + 1)
    assert not list(blobs.glob(TEMP_PREFIX + "*"))

    # A worker connected to Redis when Redis restarts reconnects and takes the next job.
    broker.stop()
    broker.start()
    after = _submit(service, model["id"], params={"bits": 6})
    done = service.wait_for(after["id"], {"succeeded", "failed"}, timeout=120)
    assert done["status"] == "succeeded", done["error_message"]
    assert done["attempts"] == 1


# --- 2. PostgreSQL connections dropped while a job runs ------------------------------------------


@contextlib.contextmanager
def _database_down(database: str) -> Iterator[int]:
    """Refuse new connections to ``database`` and end every open one (the worker's, the API's);
    yields how many were ended. Connections are allowed again on leaving."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
            ended = conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = :db AND pid <> pg_backend_pid()"
                ),
                {"db": database},
            ).scalar_one()
        yield int(ended)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
        admin.dispose()


def _stages(service: Service, job_id: int) -> list[str]:
    from sqlalchemy import select

    from api.models import JobEvent

    with service.client.app.state.sessionmaker() as session:
        return list(
            session.scalars(
                select(JobEvent.stage).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
            )
        )


def test_a_job_survives_its_database_connections_dropping(
    production: Service, lenet_weights: Path, postgres_url: str
) -> None:
    """The database goes away while a job runs (every connection ended, new ones refused) and
    stays away until the job has computed everything: the job carries on, waits for the
    database and then records its end state (succeeded, with the progress it made meanwhile),
    on its first attempt. The worker then serves the next job."""
    model = _upload(production, lenet_weights)
    artifacts = production.settings.resolved_blob_dir / "artifacts"
    before = set(artifacts.iterdir()) if artifacts.exists() else set()
    # Batches of one image: a few seconds of work (three evaluations of 360 images), so the
    # database is gone before the job has done much.
    job = _submit(production, model["id"], batch_size=1)
    running = production.wait_for(job["id"], {"running", "succeeded", "failed"}, timeout=120)
    assert running["status"] == "running", "the job ended before the database went away"
    with _database_down(postgres_url.rsplit("/", 1)[1]) as ended:
        assert ended >= 1  # at least the worker's connection
        # The job goes on without the database until its artifacts reach the blob store; only
        # recording them needs the database, and that waits for it.
        deadline = time.monotonic() + 120
        while not (set(artifacts.iterdir()) - before if artifacts.exists() else set()):
            assert time.monotonic() < deadline, f"{running}\n{production.worker_log()}"
            time.sleep(0.2)
        time.sleep(2 * LEASE_S / 4)  # a few heartbeats and write attempts fail meanwhile
    done = production.wait_for(job["id"], {"succeeded", "failed", "cancelled"}, timeout=120)
    assert done["status"] == "succeeded", done["error_message"]
    assert done["attempts"] == 1
    assert len(done["artifacts"]) == 4
    assert production.client.get(f"/api/v1/jobs/{job['id']}/result").status_code == 200
    stages = _stages(production, job["id"])
    # Progress made while the database was away was kept and written with the end state.
    assert {"evaluate quantized", "evaluate artifact", "done"} <= set(stages)
    # The end state was written by a retry once the database came back, not before.
    assert "database unreachable while recording the result" in production.worker_log()

    later = _submit(production, model["id"], params={"bits": 3})
    assert production.wait_for(later["id"], {"succeeded", "failed"})["status"] == "succeeded"


# --- 3. The API killed in the middle of an upload -----------------------------------------------


@contextlib.contextmanager
def _api(service: Service, port: int, spool: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m api serve` on the service's database, broker and blob store."""
    env = {
        **service.env,
        "TMPDIR": str(spool),  # where Starlette spools request bodies
        "QS_MAX_UPLOAD_BYTES": str(96 * 2**20),
    }
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "api", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _multipart(size: int, boundary: str) -> tuple[bytes, bytes]:
    """The parts around a ``size``-byte file field of a model upload."""
    fields = {"arch": "lenet5", "num_classes": "10", "name": "interrupted"}
    head = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    )
    head += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="big.safetensors"\r\nContent-Type: application/octet-stream\r\n\r\n'
    ).encode()
    return head, f"\r\n--{boundary}--\r\n".encode()


def _upload_request(
    port: int, auth: str, size: int, on_chunk: object = None, pause: float = 0.0
) -> httpx.Response:
    boundary = secrets.token_hex(12)
    head, tail = _multipart(size, boundary)
    chunk = b"\0" * (1 << 18)

    def body() -> Iterator[bytes]:
        yield head
        sent = 0
        while sent < size:
            part = chunk[: size - sent]
            yield part
            sent += len(part)
            if callable(on_chunk):
                on_chunk(sent)
            time.sleep(pause)
        yield tail

    return httpx.post(
        f"http://127.0.0.1:{port}/api/v1/models",
        content=body(),
        headers={
            "Authorization": auth,
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(len(head) + size + len(tail)),
        },
        timeout=120,
    )


def test_an_upload_interrupted_by_an_api_restart_leaves_no_model(
    production: Service, tmp_path: Path
) -> None:
    """kill -9 of the API while a model upload streams in, and again while it is being written
    to the blob store: after a restart the model list is unchanged, nothing of the upload is
    left in the spool or blob directories, and the temporary file of the interrupted blob write
    is swept at start once it is stale (a fresh one may be another API's write in progress)."""
    auth = production.client.headers["authorization"]
    spool = tmp_path / "spool"
    spool.mkdir()
    port, log = _free_port(), tmp_path / "api.log"
    blobs = production.settings.resolved_blob_dir
    models_before = production.client.get("/api/v1/models").json()
    files_before = _blob_files(production)

    with _api(production, port, spool, log) as api:

        def kill_midway(sent: int) -> None:
            if sent >= 4 * 2**20 and api.poll() is None:
                os.killpg(api.pid, signal.SIGKILL)
                api.wait()

        with pytest.raises(httpx.HTTPError):
            _upload_request(port, auth, 16 * 2**20, kill_midway, pause=0.01)
        assert api.poll() is not None

    assert not list(spool.iterdir())  # the spooled body was an anonymous temporary file
    assert _blob_files(production) == files_before

    with _api(production, port, spool, log) as api:
        listed = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/models", headers={"Authorization": auth}
        )
        assert listed.json() == models_before

        # Now the whole body arrives and the API dies while copying it into the blob store.
        import threading

        answer: list[object] = []
        sender = threading.Thread(
            target=lambda: answer.append(_try(lambda: _upload_request(port, auth, 80 * 2**20))),
            daemon=True,
        )
        sender.start()
        leftover: list[Path] = []
        deadline = time.monotonic() + 120
        while not leftover and sender.is_alive() and time.monotonic() < deadline:
            leftover = list(blobs.glob(TEMP_PREFIX + "*"))
            time.sleep(0.001)
        os.killpg(api.pid, signal.SIGKILL)
        api.wait()
        sender.join(30)
    assert leftover, f"the API was not caught writing the blob: it answered {answer}"
    stale = [p for p in blobs.glob(TEMP_PREFIX + "*") if p.is_file()]
    assert stale, "the killed write left no temporary file"
    old = time.time() - 3600
    for path in stale:
        os.utime(path, (old, old))
    fresh = blobs / f"{TEMP_PREFIX}in-progress"
    fresh.write_bytes(b"another process is writing this")

    with _api(production, port, spool, log):
        assert production.client.get("/api/v1/models").json() == models_before
        assert not any(p.exists() for p in stale)  # swept at start
        assert fresh.exists()  # too recent to be an abandoned write
    fresh.unlink()
    assert not list(spool.iterdir())
    assert _blob_files(production) == files_before


def _try(call: object) -> object:
    try:
        return call()  # type: ignore[operator]
    except httpx.HTTPError as exc:
        return exc


# --- 4. The blob store's disk fills up while artifacts are written ------------------------------


@contextlib.contextmanager
def _small_filesystem(folder: Path, size: int) -> Iterator[None]:
    """A tmpfs of ``size`` bytes mounted over ``folder`` (needs root / CAP_SYS_ADMIN)."""
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {mounted.stderr.strip()}")
    try:
        yield
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_full_blob_store_fails_the_job_cleanly(production: Service, lenet_weights: Path) -> None:
    """The blob store has room for the uploaded model and little more: the job fails with
    ``storage_full`` and keeps no artifact (no row, no file, no temporary file). With room
    again, the same job succeeds and every download's sha256 is the one recorded."""
    blobs = production.settings.resolved_blob_dir
    room = lenet_weights.stat().st_size + 2**20  # the model and the small .qpack, not the rest
    with _small_filesystem(blobs, room):
        model = _upload(production, lenet_weights)
        job = _submit(production, model["id"])
        done = production.wait_for(job["id"], {"succeeded", "failed", "cancelled"})
        assert done["status"] == "failed"
        assert done["error_code"] == "storage_full", done["error_message"]
        assert "out of disk space" in done["error_message"]
        assert str(blobs) not in done["error_message"]
        assert done["artifacts"] == []
        assert production.client.get(f"/api/v1/jobs/{job['id']}/result").status_code == 404
        left = {p.relative_to(blobs) for p in blobs.rglob("*") if p.is_file()}
        assert [p.parts[0] for p in left] == ["models"]  # the uploaded model only

        models_before = production.client.get("/api/v1/models").json()
        with open(lenet_weights, "rb") as f:  # no room for a second copy of the model
            full = production.client.post(
                "/api/v1/models",
                data={"arch": "lenet5", "num_classes": "10"},
                files={"file": ("again.safetensors", f)},
            )
        assert full.status_code == 507, full.text
        assert full.json()["error"]["code"] == "storage_full"
        assert production.client.get("/api/v1/models").json() == models_before
        assert not list(blobs.glob(TEMP_PREFIX + "*"))

        subprocess.run(["mount", "-o", "remount,size=64m", str(blobs)], check=True)
        again = _submit(production, model["id"])
        ok = production.wait_for(again["id"], {"succeeded", "failed", "cancelled"})
        assert ok["status"] == "succeeded", ok["error_message"]
        assert len(ok["artifacts"]) == 4
        for artifact in ok["artifacts"]:
            download = production.client.get(f"/api/v1/artifacts/{artifact['id']}")
            assert download.status_code == 200
            digest = hashlib.sha256(download.content).hexdigest()
            assert digest == artifact["sha256"] == download.headers["x-content-sha256"]
            assert len(download.content) == artifact["size_bytes"]
        assert not list(blobs.glob(TEMP_PREFIX + "*"))
