"""What a 201 or 202 reports is committed before the client can read the answer.

FastAPI ends a ``yield`` dependency after the response is sent unless told otherwise; a session
committed there would let a fast client act on a row that does not exist yet (a job on a model
just uploaded: 404). This records, for real requests, whether the database commit came before
the response started.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from tests.integration.conftest import Service


class _Order:
    """An ASGI wrapper that notes when the response starts; the engine notes each commit."""

    def __init__(self, app: Any) -> None:
        self.app, self.events = app, []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def noting(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.events.append("response")
            await send(message)

        await self.app(scope, receive, noting)


@pytest.fixture
def order(production: Service) -> Iterator[tuple[TestClient, list[str]]]:
    app = production.client.app
    wrapper = _Order(app)

    def commit(_conn: object) -> None:
        wrapper.events.append("commit")

    event.listen(app.state.engine, "commit", commit)
    client = TestClient(wrapper, headers=dict(production.client.headers))
    yield client, wrapper.events
    event.remove(app.state.engine, "commit", commit)


def test_rows_are_committed_before_the_answer_starts(
    order: tuple[TestClient, list[str]], lenet_weights: Path
) -> None:
    client, events = order
    with open(lenet_weights, "rb") as f:
        made = client.post(
            "/api/v1/models",
            data={"arch": "lenet5", "num_classes": "10"},
            files={"file": ("lenet5.safetensors", f)},
        )
    assert made.status_code == 201, made.text
    assert "commit" in events
    assert events.index("response") > max(i for i, e in enumerate(events) if e == "commit")

    events.clear()
    body = {"model_id": made.json()["id"], "method": "uniform", "dataset": "digits"}
    job = client.post("/api/v1/jobs", json=body)
    assert job.status_code == 202, job.text
    assert events[-1] == "response", events
    events.clear()
    assert client.post(f"/api/v1/jobs/{job.json()['id']}/cancel").status_code == 200
    assert events[-1] == "response", events
