"""docker-compose.yml and the Dockerfile, checked against the settings the code reads.

No Docker engine runs here, so the files are parsed: the services and their order of start, the
GPU reservation, the shared blob volume, the published port, the health checks, and every QS_*
variable (it must be a setting, and the settings must accept the values given).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from api.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?[-?][^}]*)?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _env_example() -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    return {k.strip(): v.strip() for k, v in pairs}


def _interpolate(value: str, env: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in env:
            return env[name]
        default = re.match(r"\$\{\w+:-([^}]*)\}", match.group(0))
        if default is None:
            raise AssertionError(f"{match.group(0)} has no value in .env.example and no default")
        return default.group(1)

    return INTERPOLATION.sub(one, value)


def _settings_of(service: dict[str, Any]) -> Settings:
    env = {**_env_example(), **{k: str(v) for k, v in service["environment"].items()}}
    qs = {k: _interpolate(v, env) for k, v in env.items() if k.startswith("QS_")}
    names = {f"QS_{name.upper()}" for name in Settings.model_fields}
    assert set(qs) <= names, f"not settings: {sorted(set(qs) - names)}"
    return Settings(_env_file=None, **{k[3:].lower(): v for k, v in qs.items()})  # type: ignore[call-arg]


def test_the_deployment_has_its_services_in_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "migrate", "api", "worker"}
    assert services["migrate"]["command"] == ["python", "-m", "api", "migrate"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["redis"]["condition"] == "service_healthy"
    assert services["worker"]["command"] == ["python", "-m", "worker"]
    for name in ("postgres", "redis", "api"):
        assert services[name]["healthcheck"]["test"], name
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])


def test_workers_reserve_the_gpus(compose: dict[str, Any]) -> None:
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]


def test_api_and_workers_share_database_broker_and_blobs(compose: dict[str, Any]) -> None:
    services = compose["services"]
    api, worker, migrate = (_settings_of(services[n]) for n in ("api", "worker", "migrate"))
    for settings in (worker, migrate):
        assert settings.resolved_database_url == api.resolved_database_url
        assert settings.resolved_broker_url == api.resolved_broker_url
        assert settings.data_dir == api.data_dir
    assert api.resolved_database_url.startswith("postgresql+psycopg://quant:")
    assert "@postgres:5432/quant" in api.resolved_database_url
    assert api.resolved_broker_url == "redis://redis:6379/0"
    mounts = {n: services[n]["volumes"] for n in ("api", "worker", "migrate")}
    blob_mount = f"blobs:{api.data_dir}"
    assert all(blob_mount in v for v in mounts.values()), mounts
    assert {"pgdata", "redisdata", "blobs"} <= set(compose["volumes"])


def test_secrets_come_from_the_env_file(compose: dict[str, Any]) -> None:
    services = compose["services"]
    text = (ROOT / "docker-compose.yml").read_text()
    assert "POSTGRES_PASSWORD: quant" not in text  # no password in the committed file
    needed = {m.group(1) for m in INTERPOLATION.finditer(text)}
    defaults = {m.group(1) for m in re.finditer(r"\$\{(\w+):-", text)}
    assert needed - defaults <= set(_env_example()), "documented in .env.example"
    for name in ("api", "worker", "migrate"):
        assert services[name]["env_file"] == ".env"
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()


def test_the_api_port_is_published_where_it_listens(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    port = api["command"][api["command"].index("--port") + 1]
    published = [_interpolate(p, _env_example()) for p in api["ports"]]
    assert any(p.endswith(f":{port}") for p in published)
    assert "0.0.0.0" in api["command"]  # reachable from outside the container


def test_the_image_builds_the_ui_in_a_node_stage() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)\s+AS\s+(\w+)", text, flags=re.MULTILINE)
    names = [name for _, name in stages]
    assert names[-1] == "runtime"
    images = {name: image for image, name in stages}
    assert images["ui"] == "${NODE_IMAGE}"
    assert re.search(r"^ARG NODE_IMAGE=node:\S+", text, flags=re.MULTILINE)
    assert "npm ci" in text
    assert "npm run build" in text
    assert "COPY --from=ui /app/frontend/dist /app/frontend/dist" in text
    runtime = text.split("AS runtime", 1)[1]
    assert "npm" not in runtime  # no Node in the runtime image
    assert "USER " in runtime  # not root
    for folder in ("quantcore", "api", "worker", "migrations"):
        assert f"COPY {folder} {folder}" in text
