"""Memory admission against a real worker that reports a 48 MiB device: a job whose estimate
cannot fit is refused before anything is stored, with a batch size that fits; an admitted job
records its estimate beside the peak its worker measured."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from api.db import make_engine, make_sessionmaker
from api.models import Job, WorkerDevice
from tests.integration.conftest import Service, start_production

pytestmark = pytest.mark.slow

DEVICE = 48 * 2**20


@pytest.fixture(scope="module")
def small_worker(tmp_path_factory: pytest.TempPathFactory, postgres_url: str) -> Iterator[Service]:
    service = start_production(
        tmp_path_factory,
        postgres_url,
        QS_WORKER_MEMORY_BYTES=str(DEVICE),
        QS_WORKER_REPORT_S="1",
    )
    yield service
    service.stop_worker()


def _rows(service: Service, query):  # type: ignore[no-untyped-def]
    factory = make_sessionmaker(make_engine(service.settings))
    with factory() as s:
        return s.execute(query).all()


def _reported(service: Service, timeout: float = 60) -> list[WorkerDevice]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = [r[0] for r in _rows(service, select(WorkerDevice))]
        if rows:
            return rows
        time.sleep(0.5)
    raise AssertionError(f"no worker reported its device\n{service.worker_log()}")


def _job_count(service: Service) -> int:
    return int(_rows(service, select(func.count()).select_from(Job))[0][0])


def test_the_worker_reports_its_device_and_memory(small_worker: Service) -> None:
    (row,) = _reported(small_worker)
    assert row.device == "cpu"
    assert row.memory_bytes == DEVICE  # capped by QS_WORKER_MEMORY_BYTES
    assert row.device_name


def test_a_job_that_cannot_fit_is_refused_before_it_is_queued(
    small_worker: Service, lenet_weights: Path
) -> None:
    _reported(small_worker)
    model_id = small_worker.upload_lenet(lenet_weights)
    before = _job_count(small_worker)
    job = {
        "model_id": model_id,
        "method": "lq_nets",
        "dataset": "digits",
        "batch_size": 1024,
        "params": {"w_bits": 2, "a_bits": 2, "epochs": 1, "batch_size": 4096},
    }
    refused = small_worker.client.post("/api/v1/jobs", json=job)
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["code"] == "insufficient_memory"
    assert "48 MiB" in error["message"]
    assert "batch size of" in error["message"]
    details = error["details"]
    assert details["estimate_bytes"] > details["usable_bytes"] == int(DEVICE * 0.9)
    assert sum(details["estimate_parts"].values()) == details["estimate_bytes"]
    assert _job_count(small_worker) == before  # nothing stored, nothing queued

    # The suggested batch sizes are admitted, and the largest that is.
    suggested = details["suggested"]
    assert 1 <= suggested["batch_size"] < 4096
    smaller = {
        **job,
        "batch_size": suggested["eval_batch_size"],
        "params": {**job["params"], "batch_size": suggested["batch_size"]},
    }
    admitted = small_worker.client.post("/api/v1/jobs", json=smaller)
    assert admitted.status_code == 202, admitted.text
    assert admitted.json()["memory_estimate_bytes"] <= details["usable_bytes"]
    small_worker.client.post(f"/api/v1/jobs/{admitted.json()['id']}/cancel")
    one_more = {
        **smaller,
        "params": {**smaller["params"], "batch_size": suggested["batch_size"] + 1},
    }
    again = small_worker.client.post("/api/v1/jobs", json=one_more)
    assert again.status_code == 422, again.text


def test_a_search_with_a_value_that_cannot_fit_is_refused_whole(
    small_worker: Service, lenet_weights: Path
) -> None:
    _reported(small_worker)
    model_id = small_worker.upload_lenet(lenet_weights)
    before = _job_count(small_worker)
    search = {
        "model_id": model_id,
        "method": "uniform",
        "dataset": "digits",
        "batch_size": 4096,  # the evaluation batch alone is larger than the device
        "target": {"param": "bits", "values": [2, 4], "goal": "smallest_within", "limit": 1},
    }
    refused = small_worker.client.post("/api/v1/jobs", json=search)
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "insufficient_memory"
    assert refused.json()["error"]["message"].startswith("target.values[0]")
    assert _job_count(small_worker) == before


def test_an_admitted_job_records_its_estimate_beside_the_measured_peak(
    small_worker: Service, lenet_weights: Path
) -> None:
    _reported(small_worker)
    model_id = small_worker.upload_lenet(lenet_weights)
    made = small_worker.client.post(
        "/api/v1/jobs",
        json={
            "model_id": model_id,
            "method": "uniform",
            "dataset": "digits",
            "params": {"bits": 4},
            "batch_size": 64,
        },
    )
    assert made.status_code == 202, made.text
    estimate = made.json()["memory_estimate_bytes"]
    assert 0 < estimate <= DEVICE
    done = small_worker.wait_for(made.json()["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done["error_message"]
    assert done["memory_estimate_bytes"] == estimate
    # The worker measured the tensor peak of the same span the estimate covers.
    assert 0.75 <= estimate / done["peak_memory_bytes"] <= 1.25
