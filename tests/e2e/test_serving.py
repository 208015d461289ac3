"""How the API serves the built UI: pages fall back to index.html, files are served as built,
API paths are never swallowed by the page, and an unbuilt UI says how to build it."""

from __future__ import annotations

from pathlib import Path

import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api import errors
from api.frontend import mount_frontend
from tests.e2e.conftest import DIST, Product


def test_pages_files_and_api_paths(product: Product) -> None:
    index = (DIST / "index.html").read_text()
    with httpx.Client(base_url=product.url) as http:
        for page in ("/", "/jobs", "/jobs/12", "/compare?model=1&jobs=2,3", "/no/such/page"):
            r = http.get(page)
            assert r.status_code == 200, page
            assert r.text == index
            assert "default-src 'self'" in r.headers["content-security-policy"]
        asset = next((DIST / "assets").glob("*.js"))
        r = http.get(f"/assets/{asset.name}")
        assert r.status_code == 200
        assert r.content == asset.read_bytes()
        assert "immutable" in r.headers["cache-control"]

        for path in ("/api/v1/nothing-here", "/api", "/api/v2/jobs"):
            r = http.get(path)
            assert r.status_code == 404, path
            assert r.json()["error"]["code"] == "not_found"
        assert http.post("/api/v1/nothing-here").status_code == 404
        assert http.get("/api/v1/jobs").status_code == 401  # the API still answers for itself
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/openapi.json").json()["paths"]
        assert "swagger" in http.get("/docs").text.lower()
        # A path that climbs out of the build folder gets the page, never the file.
        r = http.get("/assets/..%2F..%2F..%2Fpyproject.toml")
        assert "[project]" not in r.text


def test_an_unbuilt_ui_answers_how_to_build_it(tmp_path: Path) -> None:
    app = FastAPI()
    errors.install(app)
    mount_frontend(app, tmp_path / "dist")
    client = TestClient(app)
    for path in ("/", "/jobs/3"):
        r = client.get(path)
        assert r.status_code == 503
        assert "npm ci" in r.text
        assert "make setup" in r.text
    assert client.get("/api/v1/jobs").status_code == 404
