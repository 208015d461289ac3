"""What an operator watches: Prometheus metrics from the database and the broker, and logs in
which every line a job writes carries its id."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Service, start_production

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, postgres_url: str) -> Iterator[Service]:
    service = start_production(tmp_path_factory, postgres_url, QS_LOG_FORMAT="json")
    yield service
    service.stop_worker()


def _metrics(service: Service) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = service.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_count_jobs_by_state_queue_depth_and_durations(
    service: Service, lenet_weights: Path
) -> None:
    model_id = service.upload_lenet(lenet_weights)
    service.stop_worker()  # nothing takes the messages: they wait in Redis
    body = {"model_id": model_id, "method": "uniform", "dataset": "digits", "params": {"bits": 4}}
    ids = [service.client.post("/api/v1/jobs", json=body).json()["id"] for _ in range(3)]
    waiting = _metrics(service)
    assert waiting[("qs_jobs", (("state", "queued"),))] == 3
    assert waiting[("qs_jobs", (("state", "succeeded"),))] == 0
    assert waiting[("qs_queue_depth", ())] == 3

    service.start_worker()
    jobs = [service.wait_for(i, {"succeeded", "failed"}) for i in ids]
    assert all(j["status"] == "succeeded" for j in jobs)
    done = _metrics(service)
    assert done[("qs_jobs", (("state", "queued"),))] == 0
    assert done[("qs_jobs", (("state", "succeeded"),))] == 3
    assert done[("qs_queue_depth", ())] == 0
    labels = (("method", "uniform"), ("state", "succeeded"))
    assert done[("qs_job_duration_seconds_count", labels)] == 3
    assert done[("qs_job_duration_seconds_sum", labels)] == pytest.approx(
        sum(j["wall_time_s"] for j in jobs)
    )
    slowest = max(j["wall_time_s"] for j in jobs)
    plus_inf = tuple(sorted((*labels, ("le", "+Inf"))))
    assert done[("qs_job_duration_seconds_bucket", plus_inf)] == 3
    under_a_second = tuple(sorted((*labels, ("le", "1.0"))))
    assert done[("qs_job_duration_seconds_bucket", under_a_second)] == sum(
        j["wall_time_s"] <= 1.0 for j in jobs
    )
    assert slowest > 0

    # Every line the worker wrote while running a job is JSON and names that job.
    lines = [
        json.loads(line)
        for line in (service.settings.data_dir / "worker.log").read_text().splitlines()
        if line.startswith("{")
    ]
    assert lines, service.worker_log()
    claimed = [r for r in lines if "claimed" in r["message"]]
    assert sorted(r["job_id"] for r in claimed) == sorted(ids)
    for record in claimed:
        assert f"job {record['job_id']}:" in record["message"]
