"""Sustained load end to end: many tiny jobs from many clients, none lost, none run twice.

    .venv/bin/python -m bench.load --jobs 1000 --clients 50 --workers 2

Sets up the production shape on this machine (a scratch PostgreSQL database, an empty Redis
database number, a temporary data directory, the real API as one uvicorn process on a free
port) and starts ``--workers`` CPU worker processes (the command ``python -m worker`` runs per
device). It uploads a LeNet5 with random weights, then ``--clients`` concurrent asyncio clients
share ``--jobs`` submissions (``POST /api/v1/jobs``: method uniform, 4 bits, on ``digits``);
each client polls its own jobs (``GET /api/v1/jobs/{id}``, every ``--poll`` seconds) until they
end. Every request is timed. At the end the database itself is read: a job is *lost* when it did
not succeed, *duplicated* when it was attempted more than once or has more than one result
artifact of a kind.

The clients, the API, the workers, PostgreSQL and Redis share this machine's cores: the numbers
measure the whole stack on one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
_here = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]  # bench/api.py ≠ api
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.api import (  # noqa: E402
    JOB_BODY,
    api_process,
    bench_token,
    cpu_model,
    free_port,
    percentile,
    scratch_postgres,
    scratch_redis,
    upload_lenet,
)


async def _client_loop(
    client: httpx.AsyncClient,
    queue: asyncio.Queue[int],
    body: dict[str, object],
    poll_s: float,
    timings: dict[str, list[float]],
    answers: Counter[str],
    submitted: list[int],
) -> None:
    """Take submission tickets until none are left; poll each own job until it ends."""
    mine: list[int] = []
    while True:
        try:
            queue.get_nowait()
        except asyncio.QueueEmpty:
            break
        t0 = time.perf_counter()
        try:
            resp = await client.post("/api/v1/jobs", json=body)
            answers[f"POST {resp.status_code}"] += 1
            if resp.status_code == 202:
                timings["POST /jobs"].append(time.perf_counter() - t0)
                mine.append(int(resp.json()["id"]))
        except httpx.HTTPError as exc:
            answers[f"POST {type(exc).__name__}"] += 1
    submitted.extend(mine)
    pending = set(mine)
    while pending:
        await asyncio.sleep(poll_s)
        for job_id in sorted(pending):
            t0 = time.perf_counter()
            try:
                resp = await client.get(f"/api/v1/jobs/{job_id}")
            except httpx.HTTPError as exc:
                answers[f"GET {type(exc).__name__}"] += 1
                continue
            answers[f"GET {resp.status_code}"] += 1
            if resp.status_code == 200:
                timings["GET /jobs/{id}"].append(time.perf_counter() - t0)
                if resp.json()["status"] in ("succeeded", "failed", "cancelled"):
                    pending.discard(job_id)


async def _load(
    base: str, token: str, model_id: int, jobs: int, clients: int, poll_s: float, limit_s: float
) -> tuple[dict[str, list[float]], Counter[str], list[int], float, bool]:
    body = {"model_id": model_id, **JOB_BODY}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(jobs):
        queue.put_nowait(i)
    timings: dict[str, list[float]] = {"POST /jobs": [], "GET /jobs/{id}": []}
    answers: Counter[str] = Counter()
    submitted: list[int] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(
        base_url=base, limits=limits, timeout=httpx.Timeout(60.0), headers=headers
    ) as client:
        start = time.perf_counter()
        loops = [
            _client_loop(client, queue, body, poll_s, timings, answers, submitted)
            for _ in range(clients)
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*loops), timeout=limit_s)
            finished = True
        except TimeoutError:
            finished = False
        wall = time.perf_counter() - start
    return timings, answers, submitted, wall, finished


def _audit(db_url: str, submitted: list[int]) -> dict[str, int]:
    """What the database says happened to each submitted job."""
    from sqlalchemy import create_engine, func, select

    from api.models import Artifact, Job, Result

    engine = create_engine(db_url)
    with engine.connect() as conn:
        jobs = {
            row.id: row
            for row in conn.execute(
                select(Job.id, Job.status, Job.attempts).where(Job.id.in_(submitted))
            )
        }
        results = Counter(
            r for (r,) in conn.execute(select(Result.job_id).where(Result.job_id.in_(submitted)))
        )
        artifacts = conn.execute(
            select(Artifact.job_id, Artifact.kind, func.count())
            .where(Artifact.job_id.in_(submitted))
            .group_by(Artifact.job_id, Artifact.kind)
        ).all()
    engine.dispose()
    doubled = {job_id for job_id, _, n in artifacts if n > 1}
    doubled |= {job_id for job_id, n in results.items() if n > 1}
    doubled |= {job_id for job_id, row in jobs.items() if row.attempts > 1}
    return {
        "submitted": len(submitted),
        "succeeded": sum(row.status == "succeeded" for row in jobs.values()),
        "lost": sum(row.status != "succeeded" for row in jobs.values())
        + len(submitted)
        - len(jobs),
        "duplicated": len(doubled),
    }


def _workers(env: dict[str, str], count: int, log_dir: Path) -> list[subprocess.Popen[bytes]]:
    from worker.__main__ import worker_command

    procs = []
    for i in range(count):
        with open(log_dir / f"worker{i}.log", "wb") as out:
            procs.append(
                subprocess.Popen(
                    worker_command(f"load{i}-{secrets.token_hex(2)}", loglevel="WARNING"),
                    cwd=ROOT,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    return procs


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2, help="CPU worker processes")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between a job's polls")
    parser.add_argument("--time-limit", type=float, default=4 * 3600.0)
    parser.add_argument(
        "--pg-admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379")
    parser.add_argument("--redis-db", type=int, default=None)
    args = parser.parse_args()
    if min(args.jobs, args.clients, args.workers) < 1 or args.poll <= 0:
        parser.error("--jobs, --clients, --workers and --poll must be positive")

    from api.db import upgrade_to_head
    from api.settings import Settings

    started = dt.datetime.now(dt.UTC)
    load = os.getloadavg()
    with (
        tempfile.TemporaryDirectory(prefix="qs-load-") as tmp,
        scratch_postgres(args.pg_admin_url) as (db_url, pg_version),
        scratch_redis(args.redis_url.rstrip("/"), args.redis_db) as (broker_url, redis_version),
    ):
        workdir = Path(tmp)
        data_dir = workdir / "data"
        settings = Settings(data_dir=data_dir, database_url=db_url, broker_url=broker_url)
        upgrade_to_head(settings)
        token = bench_token(settings)
        env = {
            **os.environ,
            "QS_DATA_DIR": str(data_dir),
            "QS_DATABASE_URL": db_url,
            "QS_BROKER_URL": broker_url,
            "CUDA_VISIBLE_DEVICES": "",
        }
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        with api_process(env, port, workdir / "api.log"):
            model_id = upload_lenet(base, workdir, {"Authorization": f"Bearer {token}"})
            workers = _workers(env, args.workers, workdir)
            try:
                timings, answers, submitted, wall, finished = asyncio.run(
                    _load(
                        base, token, model_id, args.jobs, args.clients, args.poll, args.time_limit
                    )
                )
            finally:
                _stop(workers)
        audit = _audit(db_url, submitted)

    print(
        f"bench/load.py  {started:%Y-%m-%d %H:%M} UTC  {os.cpu_count()} cores, {cpu_model()}  "
        f"load avg {load[0]:.2f} at start"
    )
    print(
        f"{pg_version}, {redis_version}; {args.workers} CPU worker process(es); one API process; "
        f"{args.clients} clients; job body {JOB_BODY}"
    )
    print()
    print(f"{'jobs submitted':<24} {audit['submitted']:>8}")
    print(f"{'jobs succeeded':<24} {audit['succeeded']:>8}")
    print(f"{'lost':<24} {audit['lost']:>8}")
    print(f"{'duplicated':<24} {audit['duplicated']:>8}")
    print(f"{'wall time s':<24} {wall:>8.1f}" + ("" if finished else "  (time limit hit)"))
    print(f"{'jobs per minute':<24} {60 * audit['succeeded'] / wall:>8.1f}")
    print()
    print(f"{'request':<16} {'count':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, values in timings.items():
        if values:
            ms = [v * 1000 for v in values]
            print(
                f"{name:<16} {len(ms):>7} {percentile(ms, 50):>8.1f} {percentile(ms, 99):>8.1f} "
                f"{max(ms):>8.1f}"
            )
    print("answers: " + ", ".join(f"{k} x{v}" for k, v in sorted(answers.items())))


if __name__ == "__main__":
    main()
