"""Memory admission estimates a job for the kind of device that would run it: the largest live
worker's. On a GPU the CUDA libraries' workspaces count; on the CPU they do not."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import delete
from sqlalchemy.orm import Session

from api.admission import DoesNotFit, admit, job_estimate
from api.models import Model, WorkerDevice, utcnow
from quantcore.memory import CUDA_WORKSPACES
from tests.rows import user_and_model

PARAMS = {"w_bits": 2, "a_bits": 2, "batch_size": 64}


@pytest.fixture
def model(session: Session) -> Model:
    session.execute(delete(WorkerDevice))  # PostgreSQL's database outlives the test
    _, row = user_and_model(session)
    session.commit()
    return row


def _worker(session: Session, pid: int, device: str, memory: int, age_s: float = 0) -> None:
    seen = utcnow() - timedelta(seconds=age_s)
    session.add(
        WorkerDevice(
            host="h",
            pid=pid,
            device=device,
            device_name=device,
            memory_bytes=memory,
            started_at=seen,
            seen_at=seen,
        )
    )
    session.commit()


def _admit(session: Session, model: Model) -> int:
    return admit(session, model, "lq_nets", PARAMS, 128, report_s=5, usable_fraction=0.9)


def test_the_largest_live_device_decides_the_kind_of_estimate(
    session: Session, model: Model
) -> None:
    on_cpu = job_estimate(model, "lq_nets", PARAMS, 128).total
    assert _admit(session, model) == on_cpu  # no worker yet: admitted, as estimated on a CPU
    _worker(session, 1, "cpu", 2**34)
    assert _admit(session, model) == on_cpu
    _worker(session, 2, "cuda:0", 2**35)
    assert _admit(session, model) == on_cpu + CUDA_WORKSPACES
    _worker(session, 3, "cpu", 2**36, age_s=3600)  # stopped long ago: not counted
    assert _admit(session, model) == on_cpu + CUDA_WORKSPACES


def test_a_gpu_too_small_for_the_workspaces_refuses_and_names_them(
    session: Session, model: Model
) -> None:
    on_cpu = job_estimate(model, "lq_nets", PARAMS, 128).total
    # Room for the tensors alone, not for the libraries' workspaces beside them.
    _worker(session, 1, "cuda:0", int((on_cpu + CUDA_WORKSPACES // 2) / 0.9))
    with pytest.raises(DoesNotFit, match="CUDA library workspaces") as refused:
        _admit(session, model)
    assert refused.value.details["estimate_bytes"] == on_cpu + CUDA_WORKSPACES
