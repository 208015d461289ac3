"""The API under load: job submission throughput and latency, and memory during a big upload.

    .venv/bin/python -m bench.api                     # from the repo root (or bench/api.py)

Sets up the production shape on this machine and tears it down again: a scratch PostgreSQL
database (created, migrated to head, dropped at the end), an empty Redis database number
(flushed at the end), a temporary data directory, and the real API (`python -m api serve`, one
uvicorn process) on a free loopback port. No worker runs: submitted jobs only queue in Redis.

It uploads a LeNet5 with random weights, then for each client count (default 1, 10, 100)
submits `--requests` jobs (`POST /api/v1/jobs`, method `uniform`) from that many concurrent
asyncio clients, each request timed on its own: throughput is successful requests per second
of wall time, p50/p99 the latency of the successful ones. Then it streams a `--upload-mib`
upload (multipart built by hand, generated chunk by chunk, never held by the client) to
`POST /api/v1/models` while reading the API process's RSS every 50 ms. The body is zeros, not
a model, so 422 is the expected answer once the server has taken it all in; 413 means the limit
was too low. RSS is VmRSS from /proc, and each scenario's peak also VmHWM after resetting it.

The clients run in this process, on the same cores as the API, PostgreSQL and Redis: the
numbers measure the whole stack on one machine, not the API alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import platform
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from api.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379"
MIB = 2**20
SAMPLE_S = 0.05
JOB_BODY = {"method": "uniform", "dataset": "digits", "params": {"bits": 4}}


# --- the machine and the process under test --------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _status_kib(pid: int, key: str) -> int:
    """A ``kB`` line of /proc/<pid>/status (VmRSS, VmHWM), in KiB; 0 once the process is gone."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def rss_mib(pid: int) -> float:
    return _status_kib(pid, "VmRSS") / 1024


def hwm_mib(pid: int) -> float:
    return _status_kib(pid, "VmHWM") / 1024


def reset_hwm(pid: int) -> bool:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux: clear_refs 5)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def open_bytes_under(pid: int, folder: Path) -> int:
    """Bytes in the files ``pid`` holds open under ``folder`` (unlinked temp files included)."""
    total, prefix = 0, str(folder) + os.sep
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(prefix):
                    total += os.stat(f"/proc/{pid}/fd/{fd}").st_size
    return total


@dataclass
class Sampler:
    """Reads the API's RSS (and the bytes of its open temp files) every 50 ms in a thread."""

    pid: int
    spool_dir: Path
    rss_start: float = 0.0
    rss_peak: float = 0.0
    spool_peak: int = 0
    samples: int = 0
    _hwm_reset: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self.rss_start = self.rss_peak = rss_mib(self.pid)
        self._hwm_reset = reset_hwm(self.pid)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.rss_peak = max(self.rss_peak, rss_mib(self.pid))
            self.spool_peak = max(self.spool_peak, open_bytes_under(self.pid, self.spool_dir))
            self.samples += 1

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._hwm_reset:  # catches a peak between two samples
            self.rss_peak = max(self.rss_peak, hwm_mib(self.pid))


# --- scratch services ------------------------------------------------------------------------


@contextlib.contextmanager
def scratch_postgres(admin_url: str) -> Iterator[tuple[str, str]]:
    """A new database (its URL and the server's version), dropped on the way out."""
    from sqlalchemy import create_engine, text

    name = f"qs_bench_{secrets.token_hex(4)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            version = conn.execute(text("SHOW server_version")).scalar_one()
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield admin_url.rsplit("/", 1)[0] + f"/{name}", f"PostgreSQL {version}"
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@contextlib.contextmanager
def scratch_redis(base_url: str, number: int | None) -> Iterator[tuple[str, str]]:
    """An empty Redis database number (the tests use 1-14, so 15 first), flushed at the end."""
    import redis

    candidates = [number] if number is not None else [15, *range(14, 0, -1)]
    for db in candidates:
        conn = redis.Redis.from_url(f"{base_url}/{db}")
        if conn.dbsize() == 0:
            break
        conn.close()
    else:
        raise SystemExit(f"no empty Redis database among {candidates}: pass --redis-db")
    version = conn.info("server")["redis_version"]
    try:
        yield f"{base_url}/{db}", f"Redis {version}"
    finally:
        conn.flushdb()
        conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def api_process(env: dict[str, str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m api serve` on 127.0.0.1:port, up once /readyz answers 200."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "api", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:]
                raise SystemExit(f"the API did not become ready; its log:\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# --- scenarios -------------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    requests: int
    answers: str
    wall_s: float
    rate: str
    p50_ms: float | None
    p99_ms: float | None
    rss_start: float
    rss_peak: float


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n q / 100), at least 1
    return ordered[int(rank) - 1]


def bench_token(settings: Settings) -> str:
    """A user and a bearer token for the clients, made directly in the scratch database."""
    from api import auth
    from api.db import make_engine, make_sessionmaker

    engine = make_engine(settings)
    with make_sessionmaker(engine)() as session, session.begin():
        user = auth.create_user(session, "bench", None)
        _, token = auth.issue_token(session, user, "bench")
    engine.dispose()
    return token


def upload_lenet(base: str, workdir: Path, auth: dict[str, str]) -> int:
    """Upload a LeNet5 with random weights; returns its model id."""
    import torch
    from safetensors.torch import save_file

    import quantcore

    torch.manual_seed(0)
    model = quantcore.build("lenet5", num_classes=10, in_channels=1)
    path = workdir / "lenet5.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    with open(path, "rb") as f:
        resp = httpx.post(
            f"{base}/api/v1/models",
            files={"file": ("lenet5.safetensors", f, "application/octet-stream")},
            data={"arch": "lenet5", "num_classes": "10"},
            headers=auth,
            timeout=120,
        )
    if resp.status_code != 201:
        raise SystemExit(f"uploading LeNet5 failed: {resp.status_code} {resp.text[:500]}")
    return int(resp.json()["id"])


async def _submit_jobs(
    base: str,
    auth: dict[str, str],
    model_id: int,
    clients: int,
    total: int,
    time_limit_s: float,
) -> tuple[list[float], dict[str, int], float]:
    """``clients`` concurrent loops share ``total`` requests; none starts after the time limit.

    Returns the latencies of the 202 answers (s), a count per answer, and the wall time (s).
    """
    body = {"model_id": model_id, **JOB_BODY}
    latencies: list[float] = []
    answers: dict[str, int] = {}
    issued = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    timeout = httpx.Timeout(60.0, connect=10.0)
    async with httpx.AsyncClient(
        base_url=base, limits=limits, timeout=timeout, headers=auth
    ) as client:
        start = time.perf_counter()
        deadline = start + time_limit_s

        async def loop() -> None:
            nonlocal issued
            while issued < total and time.perf_counter() < deadline:
                issued += 1
                t0 = time.perf_counter()
                try:
                    resp = await client.post("/api/v1/jobs", json=body)
                    key = str(resp.status_code)
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                if key == "202":
                    latencies.append(time.perf_counter() - t0)
                answers[key] = answers.get(key, 0) + 1

        await asyncio.gather(*(loop() for _ in range(clients)))
        wall = time.perf_counter() - start
    return latencies, answers, wall


def bench_jobs(
    base: str,
    auth: dict[str, str],
    pid: int,
    spool: Path,
    model_id: int,
    clients: int,
    total: int,
    limit_s: float,
) -> Row:
    with Sampler(pid, spool) as sampler:
        latencies, answers, wall = asyncio.run(
            _submit_jobs(base, auth, model_id, clients, total, limit_s)
        )
    done = sum(answers.values())
    return Row(
        scenario=f"POST /jobs, {clients} client{'s' if clients > 1 else ''}",
        requests=done,
        answers=" ".join(f"{k}x{v}" for k, v in sorted(answers.items())),
        wall_s=wall,
        rate=f"{len(latencies) / wall:.1f} req/s",
        p50_ms=percentile(latencies, 50) * 1000 if latencies else None,
        p99_ms=percentile(latencies, 99) * 1000 if latencies else None,
        rss_start=sampler.rss_start,
        rss_peak=sampler.rss_peak,
    )


def _multipart(size: int, boundary: str) -> tuple[int, Callable[[], Iterator[bytes]]]:
    """A multipart/form-data body whose file part is ``size`` zero bytes, made chunk by chunk."""
    fields = {"arch": "lenet5", "num_classes": "10", "name": "bench-upload"}
    head = "".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
        for k, v in fields.items()
    )
    head += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    tail = f"\r\n--{boundary}--\r\n".encode()
    head_bytes = head.encode()
    chunk = bytes(MIB)

    def body() -> Iterator[bytes]:
        yield head_bytes
        left = size
        while left > 0:
            n = min(left, MIB)
            yield chunk if n == MIB else chunk[:n]
            left -= n
        yield tail

    return len(head_bytes) + size + len(tail), body


def bench_upload(
    base: str, auth: dict[str, str], pid: int, spool: Path, size: int
) -> tuple[Row, str]:
    boundary = f"bench-{secrets.token_hex(12)}"
    length, body = _multipart(size, boundary)
    headers = {
        **auth,
        "content-type": f"multipart/form-data; boundary={boundary}",
        "content-length": str(length),
    }
    timeout = httpx.Timeout(600.0, connect=10.0)
    with Sampler(pid, spool) as sampler:
        start = time.perf_counter()
        try:
            resp = httpx.post(
                f"{base}/api/v1/models", content=body(), headers=headers, timeout=timeout
            )
            status = str(resp.status_code)
            try:
                code = resp.json()["error"]["code"]
            except (ValueError, KeyError, TypeError):
                code = resp.text[:80]
            outcome = f"{status} {code}"
        except httpx.HTTPError as exc:
            status, outcome = type(exc).__name__, f"{type(exc).__name__}: {exc}"
        wall = time.perf_counter() - start
    expected = {
        "422": "expected: the whole body was taken in, then refused as not a model",
        "413": "the upload limit is below the upload size: raise QS_MAX_UPLOAD_BYTES",
    }.get(status, "unexpected")
    note = (
        f"upload {size / MIB:.0f} MiB -> {outcome} ({expected}); the API spooled up to "
        f"{sampler.spool_peak / MIB:.0f} MiB to temp files on disk; {sampler.samples} RSS samples"
    )
    row = Row(
        scenario=f"POST /models, {size / MIB:.0f} MiB",
        requests=1,
        answers=f"{status}x1",
        wall_s=wall,
        rate=f"{size / MIB / wall:.0f} MiB/s",
        p50_ms=None,
        p99_ms=None,
        rss_start=sampler.rss_start,
        rss_peak=sampler.rss_peak,
    )
    return row, note


# --- the table -------------------------------------------------------------------------------


def print_table(rows: list[Row]) -> None:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    width = max(len("answers"), *(len(r.answers) for r in rows))
    header = (
        f"{'scenario':<26} {'reqs':>5} {'answers':<{width}} {'wall s':>7} {'throughput':>12} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'RSS MiB':>8} {'peak MiB':>9} {'growth':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.scenario:<26} {r.requests:>5} {r.answers:<{width}} {r.wall_s:>7.2f} "
            f"{r.rate:>12} {ms(r.p50_ms):>8} {ms(r.p99_ms):>8} {r.rss_start:>8.0f} "
            f"{r.rss_peak:>9.0f} {r.rss_peak - r.rss_start:>+7.0f}"
        )


def _unshadow_api_package() -> None:
    """Run as ``python bench/api.py``, this file's folder is first on sys.path and its name
    would shadow the ``api`` package: take that entry out."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--requests", type=int, default=300, help="job submissions per level")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=60.0,
        help="seconds per level after which no new request starts (one in flight may "
        "take up to 60 s more)",
    )
    parser.add_argument("--upload-mib", type=int, default=1024, help="0 skips the upload")
    parser.add_argument("--pg-admin-url", default=PG_ADMIN_URL)
    parser.add_argument("--redis-url", default=REDIS_URL, help="without a database number")
    parser.add_argument("--redis-db", type=int, default=None, help="default: an empty one")
    parser.add_argument(
        "--api-log", type=Path, default=None, help="keep the API's log here (default: deleted)"
    )
    args = parser.parse_args()
    if min(args.clients) < 1 or args.requests < 1 or args.time_limit <= 0:
        parser.error("--clients, --requests and --time-limit must be positive")

    _unshadow_api_package()
    from api.db import upgrade_to_head
    from api.settings import Settings

    started = dt.datetime.now(dt.UTC)
    load = os.getloadavg()
    rows: list[Row] = []
    notes: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="qs-bench-") as tmp,
        scratch_postgres(args.pg_admin_url) as (db_url, pg_version),
        scratch_redis(args.redis_url.rstrip("/"), args.redis_db) as (broker_url, redis_version),
    ):
        workdir = Path(tmp)
        data_dir, spool = workdir / "data", workdir / "tmp"
        spool.mkdir()
        settings = Settings(data_dir=data_dir, database_url=db_url, broker_url=broker_url)
        upgrade_to_head(settings)
        auth = {"Authorization": f"Bearer {bench_token(settings)}"}
        max_upload = max(2 * 2**30, args.upload_mib * MIB * 2)
        env = {
            **os.environ,
            "QS_DATA_DIR": str(data_dir),
            "QS_DATABASE_URL": db_url,
            "QS_BROKER_URL": broker_url,
            "QS_MAX_UPLOAD_BYTES": str(max_upload),
            "TMPDIR": str(spool),  # where the API spools uploads: inside the scratch directory
            "CUDA_VISIBLE_DEVICES": "",
        }
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        with api_process(env, port, args.api_log or workdir / "api.log") as proc:
            model_id = upload_lenet(base, workdir, auth)
            asyncio.run(_submit_jobs(base, auth, model_id, 1, 10, 30))  # warm-up, not reported
            for clients in args.clients:
                rows.append(
                    bench_jobs(
                        base,
                        auth,
                        proc.pid,
                        spool,
                        model_id,
                        clients,
                        args.requests,
                        args.time_limit,
                    )
                )
            if args.upload_mib > 0:
                peak_before = hwm_mib(proc.pid)
                row, note = bench_upload(base, auth, proc.pid, spool, args.upload_mib * MIB)
                rows.append(row)
                notes.append(
                    f"API peak RSS before the upload (VmHWM since start, before the reset): "
                    f"{peak_before:.0f} MiB"
                )
                notes.append(note)
            alive = proc.poll() is None

    print(
        f"bench/api.py  {started:%Y-%m-%d %H:%M} UTC  {os.cpu_count()} cores, {cpu_model()}  "
        f"load avg {load[0]:.2f} at start"
    )
    print(
        f"Python {platform.python_version()}, {pg_version}, {redis_version}, one uvicorn "
        f"process; clients (asyncio + httpx) on the same machine; job body {JOB_BODY}"
    )
    print()
    print_table(rows)
    print()
    for note in notes:
        print(note)
    print(
        "throughput, p50 and p99 count the 202 answers only; answers = status (or error) x count."
    )
    print(
        "RSS MiB = the API's VmRSS when the scenario started; peak = its highest VmRSS "
        f"sampled every {SAMPLE_S * 1000:.0f} ms (and VmHWM) during it."
    )
    if not alive:
        raise SystemExit("the API process died during the benchmark")


if __name__ == "__main__":
    main()
