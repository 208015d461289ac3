"""A device out-of-memory error during a job: one retry with half the batch (recorded on the job
row), then a failure that gives the numbers. The job's run is replaced by one that runs out of
memory on purpose (no GPU here); the database is a real SQLite file at the current schema."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from api.db import make_engine, make_sessionmaker, upgrade_to_head
from api.models import Job, JobStatus
from api.settings import Settings
from quantcore import ModelSpec, RunContext
from tests.rows import user_and_model
from worker.devices import Peak
from worker.pipeline import JobSpec
from worker.runner import OutOfMemory, halved, run_with_oom_retry


@pytest.fixture
def job(tmp_path: Path) -> tuple[Any, JobSpec]:
    settings = Settings(data_dir=tmp_path)
    upgrade_to_head(settings)
    factory = make_sessionmaker(make_engine(settings))
    with factory() as s:
        user, model = user_and_model(s)
        row = Job(
            owner_id=user.id,
            model_id=model.id,
            method="lq_nets",
            params={"batch_size": 256, "w_bits": 2},
            dataset="digits",
            batch_size=100,
            status=JobStatus.RUNNING,
        )
        s.add(row)
        s.commit()
        job_id = row.id
    spec = JobSpec(
        job_id,
        "lq_nets",
        {"batch_size": 256, "w_bits": 2},
        "digits",
        100,
        0,
        tmp_path / "model",
        ModelSpec("lenet5", 10, 1, (28, 28)),
        None,
        None,
        None,
        None,
        "0" * 64,
    )
    return factory, spec


def test_halving_keeps_every_batch_at_least_one() -> None:
    spec = JobSpec(
        1, "m", {"batch_size": 3}, "d", 1, 0, Path("x"), None, None, None, None, None, ""
    )  # type: ignore[arg-type]
    smaller = halved(spec)
    assert smaller is not None
    assert smaller.batch_size == 1
    assert smaller.params["batch_size"] == 1
    assert halved(smaller) is None
    assert halved(dataclasses.replace(spec, params={}, batch_size=9)).batch_size == 4  # type: ignore[union-attr]


def test_one_out_of_memory_retries_with_half_the_batch(tmp_path: Path, job: Any) -> None:
    factory, spec = job
    seen: list[JobSpec] = []

    def run(s: JobSpec, ctx: RunContext, out: Path, peak: Peak) -> tuple[dict, dict]:
        seen.append(s)
        if len(seen) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"ok": True}, {}

    result = run_with_oom_retry(spec, RunContext(), tmp_path, Peak(), factory=factory, run=run)
    assert result == ({"ok": True}, {})
    assert [s.batch_size for s in seen] == [100, 50]
    assert [s.params["batch_size"] for s in seen] == [256, 128]
    assert seen[1].params["w_bits"] == 2  # nothing else changes
    with factory() as s:
        row = s.get(Job, spec.id)
        assert (row.batch_size, row.params["batch_size"]) == (50, 128)  # what really ran


def test_a_second_out_of_memory_fails_the_job_with_the_numbers(tmp_path: Path, job: Any) -> None:
    factory, spec = job
    calls = 0

    def run(s: JobSpec, ctx: RunContext, out: Path, peak: Peak) -> tuple[dict, dict]:
        nonlocal calls
        calls += 1
        raise torch.OutOfMemoryError(f"CUDA out of memory (try {calls})")

    with pytest.raises(OutOfMemory) as failed:
        run_with_oom_retry(spec, RunContext(), tmp_path, Peak(), factory=factory, run=run)
    assert calls == 2
    message = failed.value.message
    assert "batch size 100 and again at 50" in message
    assert "try 2" in message
    assert failed.value.code == "out_of_memory"
