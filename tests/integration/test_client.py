"""The REST client (``api.client``, Python and command line) against the real API served over
HTTP by ``python -m api serve``, with PostgreSQL, Redis and a Celery worker process."""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import httpx
import pytest
from fastapi import FastAPI

from api.client import ApiClientError, Client, ProgressEvent, parse_sse, search_arm, search_target
from api.client.args import parse_arm, parse_arm_param, parse_arm_params
from api.client.cli import ProgressBar, parse_param
from quantcore import evaluate, load_artifact, load_dataset
from tests.integration.conftest import ROOT, Service, signed_in_client

CLIENT_DIR = ROOT / "api" / "client"


@dataclass
class Server:
    url: str
    token: str
    env: dict[str, str]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(production: Service) -> Iterator[Server]:
    """``python -m api serve`` on a free port, with the same settings as the worker."""
    port, log_path = _free_port(), production.settings.data_dir / "api.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "api", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=production.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not _ready(url):
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        app = production.client.app
        assert isinstance(app, FastAPI)
        user = signed_in_client(app, "carol")
        token = user.headers["authorization"].removeprefix("Bearer ")
        yield Server(url, token, {**production.env, "QS_URL": url, "QS_TOKEN": token})
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _cli(
    server: Server, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "api.client", *args],
        cwd=ROOT,
        env=server.env if env is None else env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _digits_top1(path: Path) -> float:
    _, val = load_dataset("digits", image_size=28).loaders(128)
    return evaluate(load_artifact(path), val).top1


@pytest.mark.slow
def test_upload_submit_wait_result_download_from_python(
    server: Server, lenet_weights: Path, tmp_path: Path
) -> None:
    with Client(server.url, server.token) as client:
        model = client.upload_model(lenet_weights, "lenet5", 10, name="client-lenet")
        assert model["sha256"] == _sha256(lenet_weights)
        assert model["num_params"] == 431_080
        job = client.submit(model["id"], "uniform", dataset="digits", params={"bits": 4}, seed=3)
        assert (job["status"], job["params"]["bits"]) == ("queued", 4)

        events: list[ProgressEvent] = []
        done = client.wait(job["id"], on_progress=events.append, timeout=300)
        assert done["status"] == "succeeded", done["error_message"]
        ids = [e.id or 0 for e in events]
        assert 0 not in ids
        assert ids == sorted(set(ids))
        stages = list(dict.fromkeys(e.stage for e in events))
        assert {"evaluate float", "quantize"} <= set(stages), stages
        for stage in stages:  # within a stage the fraction only grows
            fractions = [e.fraction for e in events if e.stage == stage]
            assert fractions == sorted(fractions), (stage, fractions)
            assert stage == "load" or fractions[-1] == 1.0, (stage, fractions)  # then finishes

        result = client.result(job["id"])
        assert result == done["result"]
        qpack = next(a for a in done["artifacts"] if a["kind"] == "qpack")
        path = client.download(qpack["id"], tmp_path)
        assert path == tmp_path / qpack["filename"]
        assert _sha256(path) == qpack["sha256"]
        assert os.listdir(tmp_path) == [path.name]  # no temporary file left behind
        assert _digits_top1(path) == pytest.approx(result["top1"])

        assert job["id"] in [j["id"] for j in client.jobs(status="succeeded")["items"]]
        assert "uniform" in [m["name"] for m in client.methods()]
        assert "digits" in [d["name"] for d in client.datasets()]
        assert "lenet5" in [a["name"] for a in client.architectures()]

        with pytest.raises(ApiClientError) as missing:
            client.result(999_999)
        assert (missing.value.status, missing.value.code) == (404, "not_found")


class _Flaky(httpx.BaseTransport):
    """The real network, except that event streams are refused and the first download of each
    artifact breaks after ``cut`` bytes (what a proxy or a dropped connection does)."""

    def __init__(self, cut: int) -> None:
        self.real, self.cut, self.requests = httpx.HTTPTransport(), cut, list[httpx.Request]()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path.endswith("/events"):
            raise httpx.ConnectError("refused by the test", request=request)
        response = self.real.handle_request(request)
        first = sum(r.url == request.url for r in self.requests) == 1
        if "/artifacts/" in request.url.path and first:
            return httpx.Response(
                response.status_code,
                headers=response.headers,
                stream=_Cut(cast(httpx.SyncByteStream, response.stream), self.cut, request),
            )
        return response


class _Cut(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, cut: int, request: httpx.Request) -> None:
        self.inner, self.cut, self.request = inner, cut, request

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        for chunk in self.inner:
            yield chunk[: self.cut - sent]
            sent += len(chunk)
            if sent >= self.cut:
                raise httpx.ReadError("connection cut by the test", request=self.request)

    def close(self) -> None:
        self.inner.close()


@pytest.mark.slow
def test_wait_polls_when_the_stream_is_down_and_downloads_resume(
    server: Server, lenet_weights: Path, tmp_path: Path
) -> None:
    flaky = _Flaky(cut=1000)
    with Client(server.url, server.token, transport=flaky, poll_interval=0.2) as client:
        model = client.upload_model(lenet_weights, "lenet5", 10)
        job = client.submit(model["id"], "uniform", dataset="digits", params={"bits": 2})
        seen: list[ProgressEvent] = []
        done = client.wait(job["id"], on_progress=seen.append, timeout=300)
        assert done["status"] == "succeeded", done["error_message"]
        assert seen
        assert all(e.id is None for e in seen)
        assert any(r.url.path.endswith("/events") for r in flaky.requests)

        [qpack] = client.download_job(done, tmp_path / "out", kinds=["qpack"])
        expected = next(a for a in done["artifacts"] if a["kind"] == "qpack")
        assert _sha256(qpack) == expected["sha256"]
        assert expected["size_bytes"] > 1000
        ranges = [r.headers.get("range") for r in flaky.requests if "/artifacts/" in r.url.path]
        assert ranges == [None, "bytes=1000-"]
        assert done["result"] is not None
        assert _digits_top1(qpack) == pytest.approx(done["result"]["top1"])


@pytest.mark.slow
def test_cli_submit_wait_download(server: Server, lenet_weights: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in server.env.items() if k not in ("QS_URL", "QS_TOKEN")}
    flags = ("--url", server.url, "--token", server.token)
    uploaded = _cli(
        server,
        *flags,
        "upload-model",
        str(lenet_weights),
        "--arch",
        "lenet5",
        "--num-classes",
        "10",
        "--json",
        env=env,
    )
    assert uploaded.returncode == 0, uploaded.stderr
    model = json.loads(uploaded.stdout)

    out = tmp_path / "artifacts"
    run = _cli(
        server,
        "submit",
        "--model",
        str(model["id"]),
        "--method",
        "uniform",
        "--dataset",
        "digits",
        "--param",
        "bits=3",
        "--wait",
        "--download",
        str(out),
        "--json",
    )
    assert run.returncode == 0, run.stderr
    job = json.loads(run.stdout)
    assert (job["status"], job["params"]["bits"]) == ("succeeded", 3)
    saved = sorted(Path(p) for p in job["downloaded"])
    assert saved == sorted(out / a["filename"] for a in job["artifacts"])
    assert {a["kind"] for a in job["artifacts"]} >= {"qpack", "safetensors", "onnx", "report"}
    for artifact in job["artifacts"]:
        assert _sha256(out / artifact["filename"]) == artifact["sha256"]
    qpack = next(out / a["filename"] for a in job["artifacts"] if a["kind"] == "qpack")
    assert _digits_top1(qpack) == pytest.approx(job["result"]["top1"])
    # Not a terminal: one progress line per update, with stage, percent and metrics.
    bars = [line for line in run.stderr.splitlines() if line.startswith("[")]
    assert any(" 100% quantize" in line for line in bars), run.stderr

    result = _cli(server, "result", str(job["id"]))
    assert result.returncode == 0, result.stderr
    assert f"top1 {job['result']['top1']:.2f}%" in result.stdout
    again = _cli(server, "download", "--job", str(job["id"]), "--kind", "qpack", str(tmp_path))
    assert again.returncode == 0, again.stderr
    assert _sha256(tmp_path / qpack.name) == _sha256(qpack)
    listed = _cli(server, "jobs", "--json")
    assert job["id"] in [j["id"] for j in json.loads(listed.stdout)["items"]]


@pytest.mark.slow
def test_cli_target_search_downloads_the_winner(
    server: Server, lenet_weights: Path, tmp_path: Path
) -> None:
    uploaded = _cli(
        server,
        "upload-model",
        str(lenet_weights),
        "--arch",
        "lenet5",
        "--num-classes",
        "10",
        "--json",
    )
    assert uploaded.returncode == 0, uploaded.stderr
    model_id = json.loads(uploaded.stdout)["id"]
    out = tmp_path / "winner"
    run = _cli(
        server,
        "submit",
        "--model",
        str(model_id),
        "--method",
        "uniform",
        "--dataset",
        "digits",
        "--search",
        "bits=2,4,8",
        "--within",
        "50",
        "--parallel",
        "1",
        "--wait",
        "--download",
        str(out),
        "--kind",
        "qpack",
        "--json",
    )
    assert run.returncode == 0, run.stderr
    search = json.loads(run.stdout)
    outcome = search["target"]["outcome"]
    assert search["status"] == "succeeded"
    assert outcome["winner_job_id"] is not None
    assert outcome["winner_value"] in (2, 4, 8)
    (saved,) = (Path(p) for p in search["downloaded"])
    assert saved.parent == out
    assert saved.name.startswith(f"job-{outcome['winner_job_id']}-")
    text = _cli(server, "jobs")
    assert text.returncode == 0, text.stderr

    both = _cli(
        server,
        "submit",
        "--model",
        str(model_id),
        "--method",
        "uniform",
        "--dataset",
        "digits",
        "--search",
        "bits=2,4",
        "--within",
        "1",
        "--under",
        "9",
    )
    assert both.returncode == 2
    assert "exactly one of --within" in both.stderr


@pytest.mark.slow
def test_cli_target_search_over_two_methods_names_the_winning_method(
    server: Server, lenet_weights: Path
) -> None:
    with Client(server.url, server.token) as client:
        model_id = client.upload_model(lenet_weights, "lenet5", 10)["id"]
    run = _cli(
        server,
        "submit",
        "--model",
        str(model_id),
        "--method",
        "uniform",
        "--dataset",
        "digits",
        "--search",
        "bits=2,8",
        "--within",
        "50",
        "--also-search",
        "lq_nets:w_bits=1",
        "--also-params",
        'lq_nets:{"epochs": 3, "a_bits": 32}',
        "--also-param",
        "lq_nets:epochs=1",  # overrides the JSON's
        "--wait",
        "--quiet",
        "--json",
    )
    assert run.returncode == 0, run.stderr
    search = json.loads(run.stdout)
    assert search["target"]["other_methods"] == [
        {
            "method": "lq_nets",
            "params": {"epochs": 1, "a_bits": 32},
            "param": "w_bits",
            "values": [1],
        }
    ]
    outcome = search["target"]["outcome"]
    # LQ-Nets at 1 bit is smaller than uniform at 2 bits, and far within 50 points of float.
    assert (outcome["winner_method"], outcome["winner_value"]) == ("lq_nets", 1)
    assert [a["method"] for a in outcome["arms"]] == ["uniform", "lq_nets"]
    with Client(server.url, server.token) as client:
        winner = client.job(outcome["winner_job_id"])
    assert (winner["method"], winner["params"]["w_bits"], winner["params"]["epochs"]) == (
        "lq_nets",
        1,
        1,
    )
    shown = _cli(server, "wait", str(search["id"]), "--quiet")
    assert shown.returncode == 0, shown.stderr
    assert "search over uniform bits + lq_nets w_bits: found" in shown.stdout
    assert f"winner job {outcome['winner_job_id']} (lq_nets w_bits=1)" in shown.stdout

    stray = _cli(
        server,
        "submit",
        "--model",
        str(model_id),
        "--method",
        "uniform",
        "--dataset",
        "digits",
        "--search",
        "bits=2,4",
        "--within",
        "1",
        "--also-search",
        "lq_nets:w_bits=1,2",
        "--also-param",
        "alq:i_max=2",
    )
    assert stray.returncode == 2
    assert "alq, which no --also-search names" in stray.stderr


@pytest.mark.slow
def test_errors_carry_the_servers_status_code_and_message(server: Server, tmp_path: Path) -> None:
    with Client(server.url, "qs_not-a-real-token") as client, pytest.raises(ApiClientError) as err:
        client.jobs()
    assert (err.value.status, err.value.code) == (401, "invalid_token")
    assert err.value.message == "the API token is unknown or revoked"

    run = _cli(server, "--token", "qs_not-a-real-token", "methods")
    assert run.returncode == 2
    assert "the API token is unknown or revoked" in run.stderr
    assert run.stdout == ""

    with Client(server.url, server.token) as client:
        not_a_model = tmp_path / "zeros.safetensors"
        with open(not_a_model, "wb") as f:
            f.truncate(6 * 2**20)
        tracemalloc.start()
        with pytest.raises(ApiClientError) as err:
            client.upload_model(not_a_model, "lenet5", 10)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert (err.value.status, err.value.code) == (422, "invalid_model"), err.value
        assert peak < 2**20  # streamed from the file, never held whole
        with open(not_a_model, "r+b") as f:
            f.truncate(9 * 2**20)  # over the server's 8 MiB limit
        with pytest.raises(ApiClientError) as err:
            client.upload_model(not_a_model, "lenet5", 10)
        assert (err.value.status, err.value.code) == (413, "too_large"), err.value

    refused = _cli(server, "submit", "--model", "1", "--method", "uniform")  # no dataset
    assert refused.returncode == 2
    assert "one of the arguments --dataset --dataset-id is required" in refused.stderr


def test_an_unreachable_server_is_a_clear_error() -> None:
    port = _free_port()  # nothing listens there
    with Client(f"http://127.0.0.1:{port}", "t") as client, pytest.raises(ApiClientError) as err:
        client.methods()
    assert err.value.status == 0
    assert err.value.code == "network_error"
    assert f"cannot reach http://127.0.0.1:{port}/api/v1" in err.value.message


@pytest.mark.slow
def test_a_cancelled_job_makes_the_cli_exit_1(
    server: Server, lenet_weights: Path, tmp_path: Path
) -> None:
    with Client(server.url, server.token) as client:
        model = client.upload_model(lenet_weights, "lenet5", 10)
        job = client.submit(
            model["id"], "uniform", dataset="fashion-mnist", params={"bits": 4}, batch_size=1
        )  # three evaluations of 10,000 images one at a time: it runs for tens of seconds
        waiting = subprocess.Popen(
            [sys.executable, "-m", "api.client", "wait", str(job["id"]), "--json"],
            cwd=ROOT,
            env=server.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        while client.job(job["id"])["stage"] in (None, "load"):
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.3)
        client.cancel(job["id"])
        stdout, stderr = waiting.communicate(timeout=120)
    assert waiting.returncode == 1, stderr
    assert json.loads(stdout)["status"] == "cancelled"
    assert f"job {job['id']} cancelled" in stderr
    assert any(line.startswith("[") for line in stderr.splitlines())  # it showed progress

    with Client(server.url, server.token) as client, pytest.raises(ApiClientError) as err:
        client.cancel(job["id"])  # already finished: the server's 409
    assert (err.value.status, err.value.code) == (409, "conflict")
    again = _cli(server, "wait", str(job["id"]), "--download", str(tmp_path))
    assert again.returncode == 1
    assert list(tmp_path.iterdir()) == []


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_shows_stage_percent_and_the_stages_latest_metrics() -> None:
    events = [
        ProgressEvent("evaluate float", 1.0, {}),
        ProgressEvent("train", 0.25, {"loss": 2.3456789, "lr": 0.01}),
        ProgressEvent("train", 0.5, {"loss": 1.5, "epoch": 1, "ok": True, "note": "x"}),
        ProgressEvent("evaluate quantized", 0.5, {"top1": 91.25}),
    ]
    log, terminal = io.StringIO(), _Terminal()
    for stream in (log, terminal):
        bar = ProgressBar(stream, width=10)
        for event in events:
            bar(event)
        bar(events[-1])  # the same again
        bar.close()
    assert log.getvalue().splitlines() == [
        "[##########] 100% evaluate float",
        "[##........]  25% train loss=2.346 lr=0.01",
        "[#####.....]  50% train loss=1.5 lr=0.01 epoch=1",
        "[#####.....]  50% evaluate quantized top1=91.25",
    ]
    drawn = terminal.getvalue()
    assert drawn.count("\r") == 5
    assert drawn.endswith("\r[#####.....]  50% evaluate quantized top1=91.25\x1b[K\n")


def test_server_sent_events_are_parsed_as_the_standard_says() -> None:
    lines = [": keep-alive", "id: 7", "event: progress", 'data: {"a":', "data: 1}", "", "",
             "retry: 5", "data:no space", "", "event: end", "data: {}", ""]  # fmt: skip
    assert list(parse_sse(lines)) == [
        ("progress", '{"a":\n1}', "7"),
        ("message", "no space", None),
        ("end", "{}", None),
    ]


def test_params_from_the_command_line() -> None:
    assert parse_param("bits=4") == ("bits", 4)
    assert parse_param("schedule=cosine") == ("schedule", "cosine")
    assert parse_param("lr=1e-3") == ("lr", 0.001)
    assert parse_param("per_channel=true") == ("per_channel", True)
    assert parse_param("levels=[1, 2]") == ("levels", [1, 2])
    assert parse_param("name=a=b") == ("name", "a=b")
    for bad in ("bits", "=4"):
        with pytest.raises(Exception, match="KEY=VALUE"):
            parse_param(bad)


def test_a_search_over_several_methods_from_python_and_the_command_line() -> None:
    lq_nets = search_arm("lq_nets", "w_bits", range(1, 5), params={"epochs": 15})
    assert search_target("bits", [2, 4], under=9000, parallel=3, also=[lq_nets]) == {
        "goal": "most_accurate_under",
        "limit": 9000,
        "param": "bits",
        "values": [2, 4],
        "parallel": 3,
        "other_methods": [
            {
                "method": "lq_nets",
                "params": {"epochs": 15},
                "param": "w_bits",
                "values": [1, 2, 3, 4],
            }
        ],
    }
    assert "other_methods" not in search_target("bits", [2, 4], within=1)  # as it always was
    with pytest.raises(ValueError, match="exactly one of within"):
        search_target("bits", [2], within=1, under=10)
    assert parse_arm("lq_nets:w_bits=1,2,32") == ("lq_nets", "w_bits", [1, 2, 32])
    assert parse_arm("qnets:weight_levels=binary,pm2") == (
        "qnets",
        "weight_levels",
        ["binary", "pm2"],
    )
    assert parse_arm_param("lq_nets:lr=1e-3") == ("lq_nets", {"lr": 0.001})
    assert parse_arm_params('alq:{"i_max": 2}') == ("alq", {"i_max": 2})
    for bad in ("w_bits=1,2", ":w_bits=1", "lq_nets:", "lq_nets:w_bits"):
        with pytest.raises(Exception, match="METHOD:PARAM=V1,V2"):
            parse_arm(bad)
    with pytest.raises(Exception, match="expected a JSON object"):
        parse_arm_params("alq:[1]")


def test_the_client_runs_from_a_copy_with_httpx_and_the_standard_library(tmp_path: Path) -> None:
    allowed = set(sys.stdlib_module_names) | {"httpx"}
    for source in CLIENT_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            assert {n.split(".")[0] for n in names} <= allowed, (source.name, names)
    shutil.copytree(CLIENT_DIR, tmp_path / "qsclient", ignore=shutil.ignore_patterns("__pycache__"))
    run = subprocess.run(
        [sys.executable, "-E", "-s", "-m", "qsclient", "submit", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert "--params-json" in run.stdout
