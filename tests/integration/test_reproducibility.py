"""Every result says what produced it, and a re-run on the CPU reproduces it exactly."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
import torch

from quantcore import read_manifest
from tests.integration.conftest import Service, signed_in_client

pytestmark = pytest.mark.slow


def _qpack(service: Service, job: dict, tmp_path: Path) -> tuple[dict, bytes]:
    artifact = next(a for a in job["artifacts"] if a["kind"] == "qpack")
    content = service.client.get(f"/api/v1/artifacts/{artifact['id']}").content
    path = tmp_path / f"job-{job['id']}.qpack"
    path.write_bytes(content)
    with zipfile.ZipFile(io.BytesIO(content)) as zf:
        tensors = zf.read("tensors.safetensors")
    return read_manifest(path), tensors


def test_a_rerun_reproduces_the_result_and_the_artifact(
    production: Service, lenet_weights: Path, tmp_path: Path
) -> None:
    with open(lenet_weights, "rb") as f:
        model = production.client.post(
            "/api/v1/models",
            data={"arch": "lenet5", "num_classes": "10"},
            files={"file": ("lenet5.safetensors", f)},
        ).json()
    body = {
        "model_id": model["id"],
        "method": "uniform",
        "dataset": "digits",
        "params": {"bits": 3},
        "seed": 11,
        "batch_size": 32,
    }
    first = production.client.post("/api/v1/jobs", json=body).json()
    first = production.wait_for(first["id"], {"succeeded", "failed"})
    assert first["status"] == "succeeded", first["error_message"]

    again = production.client.post(f"/api/v1/jobs/{first['id']}/rerun")
    assert again.status_code == 202, again.text
    for key in ("model_id", "method", "params", "dataset", "batch_size", "seed"):
        assert again.json()[key] == first[key], key
    second = production.wait_for(again.json()["id"], {"succeeded", "failed"})
    assert second["status"] == "succeeded", second["error_message"]

    a = production.client.get(f"/api/v1/jobs/{first['id']}/result").json()
    b = production.client.get(f"/api/v1/jobs/{second['id']}/result").json()
    for key in ("float_top1", "top1", "top5", "artifact_top1", "quantized_bytes", "layers"):
        assert a[key] == b[key], key
    assert a["provenance"] == b["provenance"]
    manifest_a, tensors_a = _qpack(production, first, tmp_path)
    manifest_b, tensors_b = _qpack(production, second, tmp_path)
    assert manifest_a == manifest_b
    assert tensors_a == tensors_b  # the same codes, codebooks and float parts, byte for byte

    run = a["provenance"]
    assert run == manifest_a["provenance"]
    assert (run["method"], run["seed"], run["batch_size"]) == ("uniform", 11, 32)
    assert run["params"]["bits"] == 3
    assert run["model_sha256"] == model["sha256"]
    assert run["dataset"]["name"] == "digits"
    assert run["dataset"]["source"].startswith("scikit-learn ")
    assert run["environment"]["torch"] == torch.__version__
    assert run["environment"]["device"] == "cpu"
    assert run["code"]["version"]

    speed = a["inference"]
    assert speed["device"] == "cpu"
    assert "dequantized" in speed["note"]
    for name in ("float", "artifact"):
        assert speed[name]["batch_size"] == 32
        assert speed[name]["latency_ms"] > 0
        assert speed[name]["throughput"] == pytest.approx(32 / (speed[name]["latency_ms"] / 1000))
    assert a["onnx_status"] == "written"

    other = signed_in_client(production.client.app, "repro-mallory")
    refused = other.post(f"/api/v1/jobs/{first['id']}/rerun")
    assert refused.status_code == 404


def test_a_job_can_ask_for_deterministic_algorithms_and_its_rerun_keeps_them(
    production: Service, lenet_weights: Path
) -> None:
    """A training method under torch.use_deterministic_algorithms: it runs (every kernel it
    uses has a deterministic version), says so in its provenance, and its re-run, deterministic
    too, gives the same numbers."""
    with open(lenet_weights, "rb") as f:
        model = production.client.post(
            "/api/v1/models",
            data={"arch": "lenet5", "num_classes": "10"},
            files={"file": ("lenet5.safetensors", f)},
        ).json()
    body = {
        "model_id": model["id"],
        "method": "lq_nets",
        "dataset": "digits",
        "params": {"w_bits": 2, "a_bits": 2, "epochs": 1, "batch_size": 64},
        "seed": 5,
        "deterministic": True,
    }
    made = production.client.post("/api/v1/jobs", json=body)
    assert made.status_code == 202, made.text
    assert made.json()["deterministic"] is True
    first = production.wait_for(made.json()["id"], {"succeeded", "failed"})
    assert first["status"] == "succeeded", first["error_message"]
    again = production.client.post(f"/api/v1/jobs/{first['id']}/rerun").json()
    assert again["deterministic"] is True
    second = production.wait_for(again["id"], {"succeeded", "failed"})
    assert second["status"] == "succeeded", second["error_message"]
    a = production.client.get(f"/api/v1/jobs/{first['id']}/result").json()
    b = production.client.get(f"/api/v1/jobs/{second['id']}/result").json()
    assert a["provenance"]["deterministic"] is True
    for key in ("top1", "top5", "artifact_top1", "layers"):
        assert a[key] == b[key], key
