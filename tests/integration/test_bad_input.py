"""Every endpoint's bad input gets a 4xx in the one error shape, and nothing stored changes."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import pytest
import torch

from tests.integration.conftest import Service

pytestmark = pytest.mark.slow


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _post_model(service: Service, content: bytes, **form: str):
    data = {"arch": "lenet5", "num_classes": "10", **form}
    return service.client.post(
        "/api/v1/models", data=data, files={"file": ("m.pt", io.BytesIO(content))}
    )


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert {"code", "message", "details"} <= set(body["error"])
    return body["error"]


def _snapshot(service: Service) -> tuple[list, list, list]:
    blobs = sorted(p.name for p in service.settings.resolved_blob_dir.rglob("*") if p.is_file())
    return (
        service.client.get("/api/v1/models").json()["items"],
        service.client.get("/api/v1/jobs").json()["items"],
        blobs,
    )


def test_bad_uploads_are_refused_and_store_nothing(
    production: Service, lenet_weights: Path, tmp_path: Path
) -> None:
    before = _snapshot(production)
    marker = tmp_path / "pwned"
    hostile = pickle.dumps(_Payload(marker))
    err = _error(_post_model(production, hostile), 422)
    assert err["code"] == "unsafe_model_file"
    assert not marker.exists()

    err = _error(_post_model(production, b"\x00garbage" * 100), 422)
    assert "not a readable model file" in err["message"]

    err = _error(_post_model(production, lenet_weights.read_bytes(), arch="resnet20"), 422)
    assert err["code"] == "invalid_model"
    assert err["details"]["missing"]
    assert err["details"]["unexpected"]

    err = _error(_post_model(production, lenet_weights.read_bytes(), num_classes="7"), 422)
    assert err["details"]["mismatched"]

    err = _error(_post_model(production, lenet_weights.read_bytes(), arch="no_such_net"), 422)
    assert "lenet5" in err["message"]

    err = _error(_post_model(production, lenet_weights.read_bytes(), num_classes="1"), 422)
    assert "num_classes" in err["message"]

    big = bytes(9 * 2**20)  # the test service's limit is 8 MiB
    err = _error(_post_model(production, big), 413)
    assert err["details"]["limit"] == 8 * 2**20

    assert _snapshot(production) == before


def test_bad_job_requests_name_the_problem(production: Service, lenet_weights: Path) -> None:
    with open(lenet_weights, "rb") as f:
        model = production.client.post(
            "/api/v1/models",
            data={"arch": "lenet5", "num_classes": "10"},
            files={"file": ("m.safetensors", f)},
        ).json()
    before = _snapshot(production)
    base = {"model_id": model["id"], "method": "uniform", "dataset": "digits"}
    cases = [
        ({**base, "params": {"bits": 12}}, 422, "bits"),
        ({**base, "params": {"bitz": 2}}, 422, "bitz"),
        ({**base, "params": {"bits": "two"}}, 422, "bits"),
        ({**base, "method": "magic"}, 422, "uniform"),
        ({**base, "dataset": "imagenet"}, 422, "digits"),
        ({**base, "model_id": 987654}, 404, "987654"),
        ({**base, "batch_size": 0}, 422, "batch_size"),
        ({**base, "unknown_field": 1}, 422, "unknown_field"),
    ]
    for body, status, needle in cases:
        err = _error(production.client.post("/api/v1/jobs", json=body), status)
        assert needle in err["message"], (body, err)
    not_json = production.client.post(
        "/api/v1/jobs", content=b"{nope", headers={"content-type": "application/json"}
    )
    _error(not_json, 422)
    nan = production.client.post(
        "/api/v1/jobs", content=b'{"model_id": NaN}', headers={"content-type": "application/json"}
    )
    _error(nan, 422)
    assert _snapshot(production) == before


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/jobs/424242",
        "/api/v1/models/424242",
        "/api/v1/artifacts/424242",
        "/api/v1/jobs/424242/result",
        "/api/v1/jobs/424242/events",
        "/api/v1/methods/nope",
    ],
)
def test_unknown_ids_are_404(production: Service, path: str) -> None:
    _error(production.client.get(path), 404)


@pytest.mark.parametrize(
    "path", ["/api/v1/jobs/abc", "/api/v1/models/-1", "/api/v1/artifacts/99999999999999999999999"]
)
def test_malformed_ids_are_422(production: Service, path: str) -> None:
    _error(production.client.get(path), 422)


def test_readiness_reports_database_and_broker(production: Service) -> None:
    body = production.client.get("/readyz").json()
    assert body == {"status": "ok", "database": "ok", "broker": "ok"}


def test_state_dict_with_nan_weights_is_refused(production: Service, tmp_path: Path) -> None:
    from quantcore import build

    model = build("lenet5")
    state = model.state_dict()
    state["features.0.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(state, path)
    err = _error(_post_model(production, path.read_bytes()), 422)
    assert "features.0.weight" in err["message"] or "features.0.weight" in str(err["details"])
