"""The service end to end against real PostgreSQL, Redis and a Celery worker process, and on the
embedded default (SQLite + filesystem broker)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from api.db import make_engine, make_sessionmaker
from api.storage import LocalBlobStore
from quantcore import evaluate, load_artifact, load_dataset
from tests.integration.conftest import Service, signed_in_client
from worker.runner import run_job

pytestmark = pytest.mark.slow

# Three evaluations of 10,000 Fashion-MNIST test images two at a time: over ten seconds on any
# CPU, so the job is surely still running when a test cancels it or kills its worker.
SLOW_JOB = {"dataset": "fashion-mnist", "batch_size": 2}


def _upload(service: Service, weights: Path, **form: str) -> dict:
    data = {"arch": "lenet5", "num_classes": "10", "name": "digits-lenet5", **form}
    with open(weights, "rb") as f:
        response = service.client.post(
            "/api/v1/models", data=data, files={"file": ("lenet5.safetensors", f)}
        )
    assert response.status_code == 201, response.text
    return response.json()


def _job_body(model_id: int, **extra: object) -> dict:
    return {
        "model_id": model_id,
        "method": "uniform",
        "dataset": "digits",
        "params": {"bits": 4},
        **extra,
    }


def _submit(service: Service, model_id: int, **extra: object) -> dict:
    response = service.client.post("/api/v1/jobs", json=_job_body(model_id, **extra))
    assert response.status_code == 202, response.text
    return response.json()


def _sse(service: Service, job_id: int) -> list[tuple[str, dict]]:
    response = service.client.get(f"/api/v1/jobs/{job_id}/events")
    assert response.headers["content-type"].startswith("text/event-stream")
    events = []
    for block in response.text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def _full_path(service: Service, weights: Path, tmp_path: Path) -> None:
    model = _upload(service, weights)
    assert model["num_params"] == 431_080
    assert model["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    job = _submit(service, model["id"])
    assert job["status"] == "queued"
    done = service.wait_for(job["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done["error_message"]
    assert done["attempts"] == 1
    assert done["device"] == "cpu"
    assert done["wall_time_s"] > 0
    assert done["peak_memory_bytes"] > 0

    events = _sse(service, job["id"])
    stages = [e["stage"] for kind, e in events if kind == "progress"]
    assert "evaluate float" in stages
    assert "quantize" in stages
    assert events[-1] == ("end", {"status": "succeeded"})

    result = service.client.get(f"/api/v1/jobs/{job['id']}/result").json()
    assert result["average_bits"] == 4.0
    assert result["quantized_bytes"] < result["float_bytes"]
    assert result["artifact_top1"] == result["top1"]

    qpack = next(a for a in done["artifacts"] if a["kind"] == "qpack")
    assert {a["kind"] for a in done["artifacts"]} == {"qpack", "safetensors", "onnx", "report"}
    download = service.client.get(f"/api/v1/artifacts/{qpack['id']}")
    assert download.status_code == 200
    assert int(download.headers["content-length"]) == qpack["size_bytes"]
    assert download.headers["etag"] == f'"{qpack["sha256"]}"'
    assert hashlib.sha256(download.content).hexdigest() == qpack["sha256"]
    path = tmp_path / "downloaded.qpack"
    path.write_bytes(download.content)

    data = load_dataset("digits", image_size=28)
    _, val = data.loaders(128)
    loaded = load_artifact(path)
    assert evaluate(loaded, val).top1 == pytest.approx(result["top1"])

    import onnxruntime

    onnx_artifact = next(a for a in done["artifacts"] if a["kind"] == "onnx")
    onnx_bytes = service.client.get(f"/api/v1/artifacts/{onnx_artifact['id']}").content
    x, _ = next(iter(val))
    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        expected = loaded(x).numpy()
    assert abs(logits - expected).max() < 1e-3

    part = service.client.get(f"/api/v1/artifacts/{qpack['id']}", headers={"Range": "bytes=10-19"})
    assert part.status_code == 206
    assert part.content == download.content[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{qpack['size_bytes']}"
    cached = service.client.get(
        f"/api/v1/artifacts/{qpack['id']}", headers={"If-None-Match": download.headers["etag"]}
    )
    assert cached.status_code == 304

    # Another user sees none of it: each id answers exactly as a missing one does.
    other = signed_in_client(service.client.app, f"mallory-{job['id']}")
    for template, ident in (
        ("/api/v1/models/{}", model["id"]),
        ("/api/v1/jobs/{}", job["id"]),
        ("/api/v1/jobs/{}/result", job["id"]),
        ("/api/v1/jobs/{}/events", job["id"]),
        ("/api/v1/artifacts/{}", qpack["id"]),
    ):
        theirs, missing = other.get(template.format(ident)), other.get(template.format(999_999))
        assert theirs.status_code == missing.status_code == 404, template
        assert theirs.json()["error"]["code"] == missing.json()["error"]["code"] == "not_found"
    assert other.delete(f"/api/v1/models/{model['id']}").status_code == 404
    assert other.post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 404
    assert other.get("/api/v1/models").json()["items"] == []
    assert other.get("/api/v1/jobs").json()["items"] == []
    refused = other.post("/api/v1/jobs", json={**_job_body(model["id"])})
    assert refused.status_code == 404, refused.text
    assert service.client.get(f"/api/v1/models/{model['id']}").status_code == 200


def test_upload_job_events_result_download_on_postgres_and_redis(
    production: Service, lenet_weights: Path, tmp_path: Path
) -> None:
    _full_path(production, lenet_weights, tmp_path)


def test_upload_job_events_result_download_on_the_embedded_default(
    embedded: Service, lenet_weights: Path, tmp_path: Path
) -> None:
    _full_path(embedded, lenet_weights, tmp_path)


def test_a_finished_job_is_never_run_again(production: Service, lenet_weights: Path) -> None:
    """A duplicate or redelivered message for a finished job claims nothing, changes nothing."""
    model = _upload(production, lenet_weights)
    job = _submit(production, model["id"], params={"bits": 3})
    done = production.wait_for(job["id"], {"succeeded"})
    settings = production.settings
    status = run_job(
        job["id"],
        settings=settings,
        factory=make_sessionmaker(make_engine(settings)),
        storage=LocalBlobStore(settings.resolved_blob_dir),
        device=torch.device("cpu"),
    )
    assert status is None
    assert production.client.get(f"/api/v1/jobs/{job['id']}").json() == done


def test_a_job_cancelled_while_queued_never_runs(production: Service, lenet_weights: Path) -> None:
    model = _upload(production, lenet_weights)
    production.stop_worker()
    try:
        job = _submit(production, model["id"])
        cancelled = production.client.post(f"/api/v1/jobs/{job['id']}/cancel")
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] == "cancelled"
    finally:
        production.start_worker()
    # A later job goes through, so the worker has consumed the queue by the time it finishes.
    later = _submit(production, model["id"])
    assert production.wait_for(later["id"], {"succeeded"})["status"] == "succeeded"
    after = production.client.get(f"/api/v1/jobs/{job['id']}").json()
    assert after["status"] == "cancelled"
    assert after["attempts"] == 0
    assert after["started_at"] is None
    assert production.client.get(f"/api/v1/jobs/{job['id']}/result").status_code == 404
    again = production.client.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409


def test_a_running_job_can_be_cancelled(production: Service, lenet_weights: Path) -> None:
    model = _upload(production, lenet_weights)
    job = _submit(production, model["id"], **SLOW_JOB)
    production.wait_for(job["id"], {"running"})
    production.client.post(f"/api/v1/jobs/{job['id']}/cancel")
    done = production.wait_for(job["id"], {"cancelled", "succeeded", "failed"}, timeout=60)
    assert done["status"] == "cancelled"
    assert done["result"] is None


def test_a_job_whose_worker_is_killed_runs_again_and_succeeds_once(
    production: Service, lenet_weights: Path
) -> None:
    """kill -9 of the process running a job: the message comes back, the new attempt takes the
    job over once its lease has gone stale, and the job ends succeeded exactly once."""
    import os
    import signal
    import subprocess
    import time

    model = _upload(production, lenet_weights)
    job = _submit(production, model["id"], **SLOW_JOB)
    production.wait_for(job["id"], {"running"})
    time.sleep(1.0)
    assert production.worker is not None
    children = subprocess.run(
        ["pgrep", "-P", str(production.worker.pid)], capture_output=True, text=True
    ).stdout.split()
    assert children, "the worker has no pool process"
    for pid in children:
        os.kill(int(pid), signal.SIGKILL)
    done = production.wait_for(job["id"], {"succeeded", "failed", "cancelled"}, timeout=240)
    assert done["status"] == "succeeded", done["error_message"]
    assert done["attempts"] == 2
    result = production.client.get(f"/api/v1/jobs/{job['id']}/result")
    assert result.status_code == 200
    assert len([a for a in done["artifacts"] if a["kind"] == "qpack"]) == 1


def _epochs_reported(service: Service, job_id: int, stage: str) -> list[int]:
    """The epoch numbers of ``stage``'s end-of-epoch events, in the order they were written."""
    from sqlalchemy import select

    from api.models import JobEvent

    with service.client.app.state.sessionmaker() as session:
        rows = session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        ).all()
    return [int(e.metrics["epoch"]) for e in rows if e.stage == stage and "epoch" in e.metrics]


def test_a_killed_training_job_resumes_from_its_last_epoch(
    production: Service, lenet_weights: Path
) -> None:
    """kill -9 in the middle of an LQ-Nets training run: the new attempt starts after the last
    checkpointed epoch, so no finished epoch is trained (or reported) twice."""
    import os
    import signal
    import subprocess
    import time

    model = _upload(production, lenet_weights)
    epochs = 6
    params = {"w_bits": 2, "a_bits": 32, "epochs": epochs, "batch_size": 16, "lr": 0.01}
    job = _submit(production, model["id"], method="lq_nets", params=params)
    deadline = time.monotonic() + 180
    while not any(e >= 2 for e in _epochs_reported(production, job["id"], "lq_nets")):
        assert time.monotonic() < deadline, production.worker_log()
        time.sleep(0.2)
    assert production.worker is not None
    children = subprocess.run(
        ["pgrep", "-P", str(production.worker.pid)], capture_output=True, text=True
    ).stdout.split()
    for pid in children:
        os.kill(int(pid), signal.SIGKILL)
    seen_at_kill = _epochs_reported(production, job["id"], "lq_nets")
    assert seen_at_kill[-1] < epochs, "the run ended before the kill; make it longer"

    done = production.wait_for(job["id"], {"succeeded", "failed", "cancelled"}, timeout=300)
    assert done["status"] == "succeeded", done["error_message"]
    assert done["attempts"] == 2
    reported = _epochs_reported(production, job["id"], "lq_nets")
    assert sorted(set(reported)) == list(range(1, epochs + 1))
    assert reported.count(1) == 1, f"the second attempt started over: {reported}"
    assert reported[: len(seen_at_kill)] == seen_at_kill


def test_deleting_a_model_removes_its_jobs_and_files(
    production: Service, lenet_weights: Path
) -> None:
    model = _upload(production, lenet_weights)
    job = _submit(production, model["id"], params={"bits": 2})
    done = production.wait_for(job["id"], {"succeeded"})
    blobs = production.settings.resolved_blob_dir
    before = {p for p in blobs.rglob("*") if p.is_file()}
    assert production.client.delete(f"/api/v1/models/{model['id']}").status_code == 204
    after = {p for p in blobs.rglob("*") if p.is_file()}
    assert len(before - after) == 1 + len(done["artifacts"])  # the weights and every artifact
    assert production.client.get(f"/api/v1/models/{model['id']}").status_code == 404
    assert production.client.get(f"/api/v1/jobs/{job['id']}").status_code == 404
    for artifact in done["artifacts"]:
        assert production.client.get(f"/api/v1/artifacts/{artifact['id']}").status_code == 404


def _npz(path: Path, *, n_train: int = 96, n_val: int = 40, seed: int = 0) -> Path:
    """A small uploaded dataset: digits images upsampled to 28x28, as uint8."""
    import numpy as np

    data = load_dataset("digits", image_size=28, augment=False)
    rng = np.random.default_rng(seed)

    def take(split, n):
        idx = rng.choice(len(split.targets), n, replace=False)
        x = torch.stack([split[int(i)][0] for i in idx]).numpy()  # normalised floats
        return x.astype("float32"), np.asarray(split.targets)[idx].astype("int64")

    x_train, y_train = take(data.train, n_train)
    x_val, y_val = take(data.val, n_val)
    np.savez(path, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)
    return path


def test_a_job_on_an_uploaded_npz_dataset(
    production: Service, lenet_weights: Path, tmp_path: Path
) -> None:
    model = _upload(production, lenet_weights)
    with open(_npz(tmp_path / "mine.npz"), "rb") as f:
        created = production.client.post(
            "/api/v1/datasets", data={"name": "my digits"}, files={"file": ("mine.npz", f)}
        )
    assert created.status_code == 201, created.text
    dataset = created.json()
    assert (dataset["kind"], dataset["num_train"], dataset["num_val"]) == ("npz", 96, 40)
    assert (dataset["in_channels"], dataset["input_height"]) == (1, 28)
    listed = production.client.get("/api/v1/datasets").json()
    assert dataset["id"] in [d["id"] for d in listed]
    assert any(d["kind"] == "builtin" and d["name"] == "digits" for d in listed)

    job = production.client.post(
        "/api/v1/jobs",
        json={
            "model_id": model["id"],
            "method": "uniform",
            "dataset_id": dataset["id"],
            "params": {"bits": 4},
        },
    ).json()
    assert job["dataset"] == "upload"
    in_use = production.client.delete(f"/api/v1/datasets/{dataset['id']}")
    done = production.wait_for(job["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done["error_message"]
    assert in_use.status_code in (204, 409)  # refused while the job was queued or running

    both = production.client.post(
        "/api/v1/jobs",
        json={
            "model_id": model["id"],
            "method": "uniform",
            "dataset_id": dataset["id"],
            "dataset": "digits",
        },
    )
    assert both.status_code == 422
    assert "exactly one" in both.json()["error"]["message"]


def test_bad_dataset_uploads_are_refused(production: Service, tmp_path: Path) -> None:
    import pickle

    import numpy as np

    before = production.client.get("/api/v1/datasets").json()
    missing = tmp_path / "missing.npz"
    np.savez(missing, x_train=np.zeros((4, 28, 28), "uint8"), y_train=np.zeros(4, "int64"))
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    hostile = tmp_path / "hostile.npz"
    np.savez(
        hostile,
        x_train=np.array([Payload()], dtype=object),
        y_train=np.zeros(1),
        x_val=np.zeros(1),
        y_val=np.zeros(1),
    )
    assert pickle  # the object array above is stored as a pickle inside the .npz
    for path, needle in [(missing, "x_val"), (hostile, "x_train")]:
        with open(path, "rb") as f:
            r = production.client.post("/api/v1/datasets", files={"file": (path.name, f)})
        assert r.status_code == 422, r.text
        assert needle in r.json()["error"]["message"]
        assert str(production.settings.resolved_blob_dir) not in r.text  # no server paths
    assert not marker.exists()
    assert production.client.get("/api/v1/datasets").json() == before


def test_builtin_datasets_list_their_sizes(production: Service) -> None:
    listed = {d["name"]: d for d in production.client.get("/api/v1/datasets").json()}
    digits = listed["digits"]
    assert digits["kind"] == "builtin"
    assert digits["available"] is True
    shape = ("num_classes", "in_channels", "input_height", "input_width", "num_train", "num_val")
    assert [digits[k] for k in shape] == [10, 1, 8, 8, 1437, 360]
