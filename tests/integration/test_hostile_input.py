"""Hostile input, each case a test that fails if its protection is removed (issue 4, item 2).

Uploads that would run code (a ``torch.export`` ``.pt2`` with a malicious pickle inside), broken
files, hostile file names and content types; job params at and past every bound of every
method's JSON schema; ids of another user, of deleted rows, and malformed ids on every ``{id}``
route of the app (enumerated from its OpenAPI document, so a new route is covered automatically).
Nothing stored before a bad request changes. The worker runs one real job for the artifacts, then
is stopped: accepted jobs stay queued and are cancelled and deleted.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import random
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from tests.integration.conftest import Service, signed_in_client

pytestmark = pytest.mark.slow
V1 = "/api/v1"


@dataclass
class World:
    service: Service
    model: dict[str, Any]
    job: dict[str, Any]  # finished, with artifacts
    dataset: dict[str, Any]

    @property
    def client(self) -> TestClient:
        return self.service.client


class _Payload:
    """Unpickling this creates ``marker``: what a hostile file would do, harmlessly."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def _error(response, status: int) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    assert response.status_code == status, (response.request.url, response.text)
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    return body["error"]


def _snapshot(world: World) -> tuple[Any, ...]:
    root = world.service.settings.resolved_blob_dir
    blobs = sorted(
        (str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*") if p.is_file()
    )
    models, jobs = (world.client.get(f"{V1}/{w}?limit=500").json() for w in ("models", "jobs"))
    return models, jobs, world.client.get(f"{V1}/datasets").json(), blobs


def _post_model(client: TestClient, content: bytes, filename: str = "m.pt", **form: str):  # type: ignore[no-untyped-def]
    data = {"arch": "lenet5", "num_classes": "10", **form}
    return client.post(f"{V1}/models", data=data, files={"file": (filename, io.BytesIO(content))})


def _npz_bytes() -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        x_train=rng.random((8, 1, 8, 8), dtype="float32"),
        y_train=np.arange(8) % 2,
        x_val=rng.random((4, 1, 8, 8), dtype="float32"),
        y_val=np.arange(4) % 2,
    )
    return buffer.getvalue()


@pytest.fixture(scope="module")
def world(production: Service, lenet_weights: Path) -> World:
    client = production.client
    made = _post_model(client, lenet_weights.read_bytes(), "lenet5.safetensors")
    assert made.status_code == 201, made.text
    model = made.json()
    body = {"model_id": model["id"], "method": "uniform", "dataset": "digits"}
    job = client.post(f"{V1}/jobs", json=body).json()
    done = production.wait_for(job["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", (done["error_code"], done["error_message"])
    assert done["artifacts"], done
    production.stop_worker()  # from here on, accepted jobs stay queued
    files = {"file": ("tiny.npz", io.BytesIO(_npz_bytes()))}
    dataset = client.post(f"{V1}/datasets", files=files)
    assert dataset.status_code == 201, dataset.text
    return World(production, model, done, dataset.json())


# --- uploads ---------------------------------------------------------------------------------


def _pt2(
    marker: Path, *, drop: tuple[str, ...] = (), extra: dict[str, bytes] | None = None
) -> bytes:
    """A real ``torch.export.save`` archive whose pickled parts would create ``marker``.

    The weights config marks ``weight_0`` as pickled and that member, like the sample inputs, is
    replaced by a ``torch.save`` of the payload: ``torch.export.load`` unpickles both in full.
    """
    program = torch.export.export(torch.nn.Linear(3, 2), (torch.zeros(1, 3),))
    original = io.BytesIO()
    torch.export.save(program, original)
    hostile = io.BytesIO()
    torch.save(_Payload(marker), hostile)
    out = io.BytesIO()
    with zipfile.ZipFile(original) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            name = info.filename
            data = src.read(info)
            if name.rsplit("/", 1)[-1] in drop:
                continue
            if name.endswith("data/weights/model_weights_config.json"):
                config = json.loads(data)
                for entry in config["config"].values():
                    entry["use_pickle"] = True
                data = json.dumps(config).encode()
            elif name.endswith(("data/weights/weight_0", "sample_inputs/model.pt")):
                data = hostile.getvalue()
            dst.writestr(name, data)
        for name, data in (extra or {}).items():
            dst.writestr(name, data)
    return out.getvalue()


def test_a_pt2_with_a_malicious_pickle_is_refused_and_never_run(
    world: World, tmp_path: Path
) -> None:
    probe = tmp_path / "probe"
    probe_file = tmp_path / "probe.pt2"
    probe_file.write_bytes(_pt2(probe))
    try:  # the archive really is hostile: a naive loader runs it
        torch.export.load(probe_file)
    except Exception:
        pass
    assert probe.exists(), "the test archive should run its payload under torch.export.load"

    marker = tmp_path / "pwned"
    before = _snapshot(world)
    for filename in ("net.pt2", "weights.safetensors", "model.pt"):  # content decides, not name
        err = _error(_post_model(world.client, _pt2(marker), filename), 422)
        assert err["code"] == "invalid_model", err
        assert err["details"]["format"] == "pt2", err
        assert ".pt2" in err["message"]

    # Without the member that names the format, and with a torch.save-like data.pkl inside
    # (which torch.load without weights_only would run): refused by the weights-only reader.
    def disguised(target: Path) -> bytes:
        payload = pickle.dumps(_Payload(target), protocol=2)
        return _pt2(target, drop=("archive_format",), extra={"archive/data.pkl": payload})

    second_probe = tmp_path / "probe2"
    try:
        torch.load(io.BytesIO(disguised(second_probe)), weights_only=False)
    except Exception:
        pass
    assert second_probe.exists(), "the disguised archive should run under a full unpickler"
    err = _error(_post_model(world.client, disguised(marker)), 422)
    assert err["code"] in {"unsafe_model_file", "invalid_model"}, err
    assert not marker.exists()
    assert _snapshot(world) == before


def test_truncated_and_random_files_are_refused(
    world: World, lenet_weights: Path, tmp_path: Path
) -> None:
    weights = lenet_weights.read_bytes()
    saved = io.BytesIO()
    torch.save(torch.nn.Linear(3, 2).state_dict(), saved)
    pt2 = _pt2(tmp_path / "unused")
    rng = random.Random(4)
    cases = {
        "empty": b"",
        "safetensors cut in half": weights[: len(weights) // 2],
        "safetensors header only": weights[:64],
        "torch.save zip cut": saved.getvalue()[: len(saved.getvalue()) - 40],
        "pt2 cut": pt2[: len(pt2) // 2],
        "random bytes": rng.randbytes(50_000),
        "random after a zip magic": b"PK\x03\x04" + rng.randbytes(4096),
        "random after a pickle PROTO": b"\x80\x04" + rng.randbytes(4096),
    }
    before = _snapshot(world)
    for what, content in cases.items():
        err = _error(_post_model(world.client, content), 422)
        assert err["code"] in {"invalid_model", "unsafe_model_file"}, (what, err)
        assert "Traceback" not in err["message"]
    assert _snapshot(world) == before


def _multipart(
    fields: dict[str, str], filename: bytes, content: bytes, part_type: bytes
) -> tuple[bytes, str]:
    """A multipart body written by hand, so the file name's bytes reach the server unescaped."""
    boundary = b"hostile-boundary-7d1f"
    parts = [
        b'Content-Disposition: form-data; name="%s"\r\n\r\n%s' % (k.encode(), v.encode())
        for k, v in fields.items()
    ]
    parts.append(
        b'Content-Disposition: form-data; name="file"; filename="%s"\r\n'
        b"Content-Type: %s\r\n\r\n%s" % (filename, part_type, content)
    )
    body = b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts)
    return body + b"--" + boundary + b"--\r\n", f"multipart/form-data; boundary={boundary.decode()}"


@pytest.mark.parametrize(
    ("filename", "shown"),
    [
        (b"../../x.pt", "x.pt"),
        (b"a/b.pt", "b.pt"),
        (b"C:\\x.pt", "x.pt"),
        (b"/etc/passwd", "passwd"),
        (b"..", "model"),
        (b"a\x00b.pt", "ab.pt"),
        (b"ev\x1b[31mil\x7f.pt", "ev[31mil.pt"),
        ("\u202ecod.exe".encode(), "cod.exe"),
        (b"n" * 500 + b".pt", "n" * 197 + ".pt"),
    ],
)
def test_a_hostile_file_name_is_only_a_sanitised_label(
    world: World, lenet_weights: Path, filename: bytes, shown: str
) -> None:
    """Decision (api/uploads.py ``display_name``): such names are cleaned, not refused."""
    data_dir = world.service.settings.data_dir
    outside = {p for p in data_dir.parent.rglob("*") if not p.is_relative_to(data_dir)}
    before = _snapshot(world)
    body, content_type = _multipart(
        {"arch": "lenet5", "num_classes": "10"},
        filename,
        lenet_weights.read_bytes(),
        b"application/octet-stream",
    )
    made = world.client.post(f"{V1}/models", content=body, headers={"content-type": content_type})
    assert made.status_code == 201, made.text
    model = made.json()
    assert model["name"] == shown
    assert {p for p in data_dir.parent.rglob("*") if not p.is_relative_to(data_dir)} == outside
    root = world.service.settings.resolved_blob_dir
    new = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    for key in new - {k for k, _ in before[-1]}:  # the blob's name is the server's own
        assert key.startswith("models/"), key
        assert key.endswith(".bin"), key
        assert shown not in key.removeprefix("models/"), key
    assert world.client.delete(f"{V1}/models/{model['id']}").status_code == 204
    assert _snapshot(world) == before


def test_wrong_content_types_are_a_clear_4xx(world: World, lenet_weights: Path) -> None:
    client = world.client
    before = _snapshot(world)
    form = {"arch": "lenet5", "num_classes": "10"}
    err = _error(client.post(f"{V1}/models", json={**form, "file": "AAAA"}), 422)
    assert "file" in err["message"]
    html = b"<!doctype html><script>alert(1)</script>" * 50
    body, content_type = _multipart(form, b"page.html", html, b"text/html")
    err = _error(
        client.post(f"{V1}/models", content=body, headers={"content-type": content_type}), 422
    )
    assert err["code"] == "invalid_model"
    # real weights sent as text/html are judged by content as well (and accepted)
    body, content_type = _multipart(form, b"w.pt", lenet_weights.read_bytes(), b"text/html")
    ok = client.post(f"{V1}/models", content=body, headers={"content-type": content_type})
    assert ok.status_code == 201, ok.text
    assert client.delete(f"{V1}/models/{ok.json()['id']}").status_code == 204
    job = {"model_id": world.model["id"], "method": "uniform", "dataset": "digits"}
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "text/html"):
        response = client.post(
            f"{V1}/jobs", content=json.dumps(job), headers={"content-type": content_type}
        )
        assert 400 <= response.status_code < 500, (content_type, response.text)
        _error(response, response.status_code)
    err = _error(client.post(f"{V1}/jobs", files={"file": ("j.json", json.dumps(job))}), 422)
    assert _snapshot(world) == before


def test_names_with_nul_or_control_characters_are_422(world: World, lenet_weights: Path) -> None:
    """Typed names (not file names) are refused: PostgreSQL cannot store NUL (it was a 500)."""
    client = world.client
    before = _snapshot(world)
    tokens = client.get(f"{V1}/tokens").json()
    for bad in ("a\x00b", "line\nbreak", "esc\x1b[2J"):
        err = _error(_post_model(client, lenet_weights.read_bytes(), name=bad), 422)
        assert "name" in err["message"]
        assert "name" in _error(client.post(f"{V1}/tokens", json={"name": bad}), 422)["message"]
        err = _error(client.get(f"{V1}/jobs", params={"method": bad}), 422)
        assert "method" in err["message"]
        login = {"username": bad, "password": "whatever"}
        assert "username" in _error(client.post(f"{V1}/auth/login", json=login), 422)["message"]
        files = {"file": ("d.npz", io.BytesIO(_npz_bytes()))}
        err = _error(client.post(f"{V1}/datasets", data={"name": bad}, files=files), 422)
        assert "name" in err["message"]
    assert client.get(f"{V1}/tokens").json() == tokens
    assert _snapshot(world) == before


# --- params at and past every bound ------------------------------------------------------------

_WRONG_TYPES: dict[str, list[Any]] = {
    "integer": ["not-a-number", 1.5, [1], {"v": 1}],
    "number": ["not-a-number", [0.5], {"v": 0.5}],
    "boolean": ["maybe", [True], {"v": True}],
    "string": [5, ["x"], {"v": "x"}],
    "array": ["x", {"v": 1}, 5],
}


def _branches(schema: dict[str, Any]) -> list[dict[str, Any]]:
    return [b for b in schema.get("anyOf", [schema]) if b.get("type") != "null"]


def _bound_cases(schema: dict[str, Any]) -> Iterator[tuple[Any, bool]]:
    """(value, accepted) at and just past each numeric bound of ``schema``."""
    integer = schema.get("type") == "integer"
    for key, outward in (
        ("minimum", -math.inf),
        ("maximum", math.inf),
        ("exclusiveMinimum", -math.inf),
        ("exclusiveMaximum", math.inf),
    ):
        if key not in schema:
            continue
        bound = schema[key]
        yield bound, not key.startswith("exclusive")
        if integer:
            yield int(bound) + (1 if outward > 0 else -1), False
        else:
            yield math.nextafter(float(bound), outward), False


def _cases(schema: dict[str, Any]) -> Iterator[tuple[str, Any, bool]]:
    """(what, value, accepted) for one property: bounds, wrong types, NaN/inf, huge, enums."""
    nullable = any(b.get("type") == "null" for b in schema.get("anyOf", []))
    for branch in _branches(schema):
        kind = branch.get("type", "")
        if kind == "array" and "items" in branch:
            for value, ok in _bound_cases(branch["items"]):
                yield "item bound", [value], ok
        for value, ok in _bound_cases(branch):
            yield "bound", value, ok
        if kind in ("integer", "number"):
            for value in (math.nan, math.inf, -math.inf, 2**70, -(2**70)):
                yield "non-finite or huge", value, False
        if "enum" in branch:
            outside = max(branch["enum"]) + 1 if kind == "integer" else "no-such-choice"
            yield "outside the enum", outside, False
        if "maxLength" in branch:
            yield "too long", "x" * (branch["maxLength"] + 1), False
        for value in _WRONG_TYPES.get(kind, []):
            yield f"wrong type {type(value).__name__}", value, False
    if not nullable and "default" in schema:
        yield "null", None, False


def _post_raw(client: TestClient, body: dict[str, Any]):  # type: ignore[no-untyped-def]
    """JSON as Python writes it: NaN, Infinity and -Infinity as bare tokens, big ints exact."""
    text = json.dumps(body)  # allow_nan=True: the non-standard tokens a hostile client sends
    return client.post(f"{V1}/jobs", content=text, headers={"content-type": "application/json"})


def _discard_jobs(client: TestClient, ids: list[int]) -> None:
    for job_id in ids:
        assert client.post(f"{V1}/jobs/{job_id}/cancel").json()["status"] == "cancelled"
        assert client.delete(f"{V1}/jobs/{job_id}").status_code == 204


def _check(client: TestClient, body: dict[str, Any], field: str, what: str, ok: bool) -> int | None:
    response = _post_raw(client, body)
    if ok:
        assert response.status_code in (202, 404), (what, body, response.text)
        if response.status_code == 404:  # a valid id that names no row of this user
            assert field.endswith("_id"), (body, response.text)
            return None
        return int(response.json()["id"])
    err = _error(response, 422)
    assert field in err["message"], (what, body, err)
    return None


def test_every_method_param_at_and_past_its_bounds(world: World) -> None:
    client = world.client
    before = _snapshot(world)
    base = {"model_id": world.model["id"], "dataset": "digits"}
    methods = client.get(f"{V1}/methods").json()
    assert {m["name"] for m in methods} >= {"uniform", "alq", "l_dnq", "lq_nets", "qnets"}
    checked = 0
    for method in methods:
        accepted: list[int] = []
        schema = method["params_schema"]
        for field, prop in schema["properties"].items():
            for what, value, ok in _cases(prop):
                body = {**base, "method": method["name"], "params": {field: value}}
                job_id = _check(client, body, field, f"{method['name']}.{field} {what}", ok)
                accepted += [job_id] if job_id is not None else []
                checked += 1
        body = {**base, "method": method["name"], "params": {"no_such_param": 1}}
        assert "no_such_param" in _error(_post_raw(client, body), 422)["message"]
        _discard_jobs(client, accepted)
    assert checked > 300  # every method has bounded numeric params
    assert _snapshot(world) == before


def test_job_fields_at_and_past_their_bounds(world: World) -> None:
    """The top-level JobCreate fields, from the app's own OpenAPI schema."""
    client = world.client
    schema = client.app.openapi()["components"]["schemas"]["JobCreate"]  # type: ignore[attr-defined]
    before = _snapshot(world)
    base = {"model_id": world.model["id"], "method": "uniform", "dataset": "digits"}
    accepted: list[int] = []
    for field in ("model_id", "dataset_id", "batch_size", "seed", "method", "dataset"):
        for what, value, ok in _cases(schema["properties"][field]):
            body = {**base, field: value}
            if field == "dataset_id":
                body.pop("dataset")
            job_id = _check(client, body, field, f"{field} {what}", ok)
            accepted += [job_id] if job_id is not None else []
    _discard_jobs(client, accepted)
    assert _snapshot(world) == before


# --- ids ---------------------------------------------------------------------------------------


def _id_routes(world: World) -> list[tuple[str, str, str, int]]:
    """(method, path, id parameter, largest id it accepts) for every operation with an integer
    path parameter, from the app's own OpenAPI document (which FastAPI builds from every route
    it has; FastAPI 0.165 nests included routers, so ``app.routes`` is not flat). A new route is
    covered automatically. The largest id is well-formed but names no row: a plain 404."""
    schema = world.client.app.openapi()  # type: ignore[attr-defined]
    routes = []
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            for param in operation.get("parameters", []):
                if param["in"] != "path" or param["schema"].get("type") != "integer":
                    continue
                largest = param["schema"].get("maximum")
                assert largest is not None, f"{path}: {param['name']} has no upper bound"
                routes.append((method.upper(), path, param["name"], int(largest)))
    assert any(r[0] == "DELETE" and "{token_id}" in r[1] for r in routes)
    assert len({r[1] for r in routes}) >= 8  # models, datasets, jobs (4), artifacts, tokens
    return routes


def _call(client: TestClient, method: str, path: str, param: str, value: object):  # type: ignore[no-untyped-def]
    return client.request(method, path.replace("{" + param + "}", str(value)))


def _shape(response, ident: object) -> tuple[int, str, str, str]:  # type: ignore[no-untyped-def]
    err = response.json()["error"]
    text = json.dumps(err["details"]).replace(str(ident), "ID")
    return response.status_code, err["code"], err["message"].replace(str(ident), "ID"), text


@pytest.mark.parametrize("bad", ["abc", "-1", "0", "1.5", str(2**63), str(10**30), "%00"])
def test_malformed_ids_are_422_on_every_id_route(world: World, bad: str) -> None:
    before = _snapshot(world)
    for method, path, param, largest in _id_routes(world):
        for value in (bad, largest + 1):
            err = _error(_call(world.client, method, path, param, value), 422)
            assert param in err["message"], (method, path, err)
    assert _snapshot(world) == before


def _ids(world: World) -> dict[str, int]:
    tokens = world.client.get(f"{V1}/tokens").json()
    return {
        "model_id": world.model["id"],
        "job_id": world.job["id"],
        "dataset_id": world.dataset["id"],
        "artifact_id": world.job["artifacts"][0]["id"],
        "token_id": tokens[0]["id"],
    }


def test_another_users_ids_are_404_exactly_like_missing_ones(world: World) -> None:
    mallory = signed_in_client(world.client.app, "mallory")  # type: ignore[arg-type]
    ids = _ids(world)
    before = _snapshot(world)
    for method, path, param, missing_id in _id_routes(world):
        assert param in ids, f"new id route {method} {path}: add its resource to _ids"
        theirs = _call(mallory, method, path, param, ids[param])
        missing = _call(mallory, method, path, param, missing_id)
        assert theirs.status_code == 404, (method, path, theirs.text)
        assert _shape(theirs, ids[param]) == _shape(missing, missing_id), (method, path)
    assert _snapshot(world) == before
    assert world.client.get(f"{V1}/auth/me").status_code == 200  # alice's token still works


def test_a_malformed_last_event_id_is_ignored(world: World) -> None:
    """The SSE resume header is the client's: too big or not ASCII digits, it is ignored."""
    path = f"{V1}/jobs/{world.job['id']}/events"
    everything = world.client.get(path).text
    assert "event: end" in everything
    for header in (str(2**40).encode(), "\u00b2".encode("latin-1"), b"-1", b"1e3"):  # ² isdigit
        response = world.client.get(path, headers={"Last-Event-ID": header})
        assert response.status_code == 200, response.text
        assert response.text == everything, header


def test_deleted_rows_are_404_on_every_route(world: World, lenet_weights: Path) -> None:
    """Last in this module: it deletes the finished job and its artifacts."""
    client = world.client
    model = _post_model(client, lenet_weights.read_bytes()).json()
    job = client.post(
        f"{V1}/jobs", json={"model_id": model["id"], "method": "uniform", "dataset": "digits"}
    ).json()
    dataset = client.post(
        f"{V1}/datasets", files={"file": ("d.npz", io.BytesIO(_npz_bytes()))}
    ).json()
    _discard_jobs(client, [job["id"]])
    assert client.delete(f"{V1}/models/{model['id']}").status_code == 204
    assert client.delete(f"{V1}/datasets/{dataset['id']}").status_code == 204
    assert client.delete(f"{V1}/jobs/{world.job['id']}").status_code == 204
    gone = {
        "model_id": [model["id"]],
        "job_id": [job["id"], world.job["id"]],
        "dataset_id": [dataset["id"]],
        "artifact_id": [a["id"] for a in world.job["artifacts"]],
    }
    before = _snapshot(world)
    for method, path, param, missing_id in _id_routes(world):
        for ident in gone.get(param, []):
            response = _call(client, method, path, param, ident)
            assert response.status_code == 404, (method, path, response.text)
            assert _shape(response, ident) == _shape(
                _call(client, method, path, param, missing_id), missing_id
            )
    assert _snapshot(world) == before
