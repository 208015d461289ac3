"""The round-trip check: every job reloads its own artifact as a user would and compares."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

import worker.pipeline
import worker.runner
from api.db import make_engine, make_sessionmaker
from api.storage import LocalBlobStore
from tests.integration.conftest import Service

pytestmark = pytest.mark.slow


def _upload_and_submit(service: Service, weights: Path) -> dict:
    with open(weights, "rb") as f:
        model = service.client.post(
            "/api/v1/models",
            data={"arch": "lenet5", "num_classes": "10"},
            files={"file": ("lenet5.safetensors", f)},
        ).json()
    body = {
        "model_id": model["id"],
        "method": "uniform",
        "dataset": "digits",
        "params": {"bits": 4},
    }
    return service.client.post("/api/v1/jobs", json=body).json()


def test_each_layers_bytes_in_the_file_match_the_theory(
    production: Service, lenet_weights: Path
) -> None:
    job = production.wait_for(_upload_and_submit(production, lenet_weights)["id"], {"succeeded"})
    result = production.client.get(f"/api/v1/jobs/{job['id']}/result").json()
    assert result["layers"]
    for layer in result["layers"]:
        assert layer["file_bytes"] == layer["total_bytes"], layer["name"]
    assert result["artifact_top1"] == result["top1"]


def _corrupting(save: Any) -> Any:
    """save_artifact, then every packed code of every layer inverted: a file that loads but
    no longer holds the model."""

    def save_then_corrupt(model: Any, path: Path, **kwargs: Any) -> Any:
        manifest = save(model, path, **kwargs)
        with zipfile.ZipFile(path) as zf:
            members = {name: zf.read(name) for name in zf.namelist()}
        tensors = st_load(members["tensors.safetensors"])
        for key in tensors:
            if key.endswith("/codes"):
                tensors[key] = torch.bitwise_not(tensors[key])
        members["tensors.safetensors"] = st_save(tensors)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)
        Path(path).write_bytes(buffer.getvalue())
        return manifest

    return save_then_corrupt


def test_a_corrupted_artifact_fails_its_job(
    production: Service, lenet_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    production.stop_worker()  # this job runs here, in-process, with the writer corrupted
    try:
        job = _upload_and_submit(production, lenet_weights)
        monkeypatch.setattr(
            worker.pipeline, "save_artifact", _corrupting(worker.pipeline.save_artifact)
        )
        settings = production.settings
        engine = make_engine(settings)
        status = worker.runner.run_job(
            job["id"],
            settings=settings,
            factory=make_sessionmaker(engine),
            storage=LocalBlobStore(settings.resolved_blob_dir),
            device=torch.device("cpu"),
        )
        engine.dispose()
    finally:
        production.start_worker()
    assert status == "failed"
    done = production.client.get(f"/api/v1/jobs/{job['id']}").json()
    assert done["error_code"] == "invalid_artifact"
    assert "does not reproduce the model" in done["error_message"]
    assert done["artifacts"] == []
    assert production.client.get(f"/api/v1/jobs/{job['id']}/result").status_code == 404
