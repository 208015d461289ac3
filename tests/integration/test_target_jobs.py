"""Accuracy-target jobs: a search over a method's size knob through child jobs on the queue,
checked against an exhaustive sweep of ordinary jobs."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.targets import Outcome, Target, exhaustive, exhaustive_arms
from tests.integration.conftest import Service

pytestmark = pytest.mark.slow

BITS = [1, 2, 3, 4, 5, 6, 7, 8]


def _search(model_id: int, **target: object) -> dict:
    return {
        "model_id": model_id,
        "method": "uniform",
        "dataset": "digits",
        "seed": 3,
        "target": {"param": "bits", "values": BITS, "parallel": 2, **target},
    }


def _outcome(service: Service, job_id: int) -> Outcome:
    r = service.client.get(f"/api/v1/jobs/{job_id}/result").json()
    return Outcome(r["top1"], r["float_top1"], r["quantized_bytes"])


def test_the_search_finds_what_an_exhaustive_sweep_finds(
    production: Service, lenet_weights: Path
) -> None:
    model_id = production.upload_lenet(lenet_weights)
    made = production.client.post(
        "/api/v1/jobs", json=_search(model_id, goal="smallest_within", limit=1.0)
    )
    assert made.status_code == 202, made.text
    parent = production.wait_for(made.json()["id"], {"succeeded", "failed", "cancelled"}, 400)
    assert parent["status"] == "succeeded", parent["error_message"]
    outcome = parent["target"]["outcome"]

    children = production.client.get(f"/api/v1/jobs?parent_id={parent['id']}").json()["items"]
    assert all(c["status"] == "succeeded" and c["parent_id"] == parent["id"] for c in children)
    assert outcome["runs"] == len(children) < len(BITS)  # stopped early
    tried = {c["params"]["bits"]: c["id"] for c in children}
    assert set(outcome["pareto_job_ids"]) <= set(tried.values())

    # Every value, as ordinary jobs with the same seed: the children's numbers are reproduced.
    sweep: list[Outcome] = []
    for bits in BITS:
        body = {"model_id": model_id, "method": "uniform", "dataset": "digits", "seed": 3}
        job = production.client.post("/api/v1/jobs", json={**body, "params": {"bits": bits}})
        done = production.wait_for(job.json()["id"], {"succeeded", "failed"})
        assert done["status"] == "succeeded", done["error_message"]
        sweep.append(_outcome(production, done["id"]))
        if bits in tried:
            assert sweep[-1] == _outcome(production, tried[bits])
    best = exhaustive(Target("smallest_within", 1.0), sweep)
    assert best is not None
    assert outcome["winner_value"] == BITS[best]
    assert outcome["winner_job_id"] == tried[BITS[best]]


def test_a_bad_search_is_refused_before_anything_runs(
    production: Service, lenet_weights: Path
) -> None:
    model_id = production.upload_lenet(lenet_weights)
    before = production.client.get("/api/v1/jobs").json()["total"]
    no_such = _search(model_id, goal="smallest_within", limit=1.0)
    no_such["target"]["param"] = "bitz"
    err = production.client.post("/api/v1/jobs", json=no_such)
    assert err.status_code == 422
    assert "bitz" in err.json()["error"]["message"]
    too_many_bits = _search(model_id, goal="most_accurate_under", limit=10_000)
    too_many_bits["target"]["values"] = [2, 4, 99]
    err = production.client.post("/api/v1/jobs", json=too_many_bits)
    assert err.status_code == 422
    assert "bits" in err.json()["error"]["message"]
    assert production.client.get("/api/v1/jobs").json()["total"] == before


def test_cancelling_the_search_cancels_its_children(
    production: Service, lenet_weights: Path
) -> None:
    model_id = production.upload_lenet(lenet_weights)
    production.stop_worker()  # the first round waits in the queue
    try:
        made = production.client.post(
            "/api/v1/jobs", json=_search(model_id, goal="smallest_within", limit=1.0, parallel=3)
        ).json()
        children = production.client.get(f"/api/v1/jobs?parent_id={made['id']}").json()["items"]
        assert len(children) == 3
        cancelled = production.client.post(f"/api/v1/jobs/{made['id']}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
    finally:
        production.start_worker()
    for child in children:
        assert production.client.get(f"/api/v1/jobs/{child['id']}").json()["status"] == "cancelled"
    assert production.client.delete(f"/api/v1/jobs/{made['id']}").status_code == 204
    for child in children:
        assert production.client.get(f"/api/v1/jobs/{child['id']}").status_code == 404


# --- several methods at once -----------------------------------------------------------------

# A short LQ-Nets run (one epoch, float activations): seconds per child on digits.
LQ_PARAMS = {"a_bits": 32, "epochs": 1, "batch_size": 64, "lr": 0.01}
# Few values, since the exhaustive sweep runs every one: six jobs in all.
ARMS = [("uniform", "bits", [2, 3, 4], {}), ("lq_nets", "w_bits", [1, 2, 3], LQ_PARAMS)]
BUDGET = 200_000  # bytes: between uniform's 3 and 4 bits, above LQ-Nets' 3 bits


def _two_methods(model_id: int, **target: object) -> dict:
    body = _search(model_id, **target)
    body["target"]["values"] = ARMS[0][2]
    _, knob, values, params = ARMS[1]
    arm = {"method": "lq_nets", "params": params, "param": knob, "values": values}
    body["target"]["other_methods"] = [arm]
    return body


def test_a_search_over_two_methods_finds_what_sweeping_both_finds(
    production: Service, lenet_weights: Path
) -> None:
    model_id = production.upload_lenet(lenet_weights)
    made = production.client.post(
        "/api/v1/jobs",
        json=_two_methods(model_id, goal="most_accurate_under", limit=BUDGET, parallel=2),
    )
    assert made.status_code == 202, made.text
    parent = production.wait_for(made.json()["id"], {"succeeded", "failed", "cancelled"}, 400)
    assert parent["status"] == "succeeded", parent["error_message"]
    outcome = parent["target"]["outcome"]

    children = production.client.get(f"/api/v1/jobs?parent_id={parent['id']}").json()["items"]
    assert all(c["status"] == "succeeded" for c in children)
    knob_of = {method: knob for method, knob, _, _ in ARMS}
    tried = {(c["method"], c["params"][knob_of[c["method"]]]): c["id"] for c in children}
    assert len(tried) == len(children) == outcome["runs"] < sum(len(v) for _, _, v, _ in ARMS)
    lq_nets = next(c for c in children if c["method"] == "lq_nets")
    assert {k: lq_nets["params"][k] for k in LQ_PARAMS} == LQ_PARAMS
    assert [(a["method"], a["param"]) for a in outcome["arms"]] == [(m, k) for m, k, _, _ in ARMS]
    assert [a["runs"] for a in outcome["arms"]] == [
        sum(c["method"] == m for c in children) for m, _, _, _ in ARMS
    ]
    assert set(outcome["pareto_job_ids"]) <= set(tried.values())

    # Every value of both methods: the children's numbers, and ordinary jobs (same seed, hence
    # the same numbers, as the single-method test shows) for the values the search skipped.
    ran = dict(tried)
    for method, knob, values, params in ARMS:
        for value in values:
            if (method, value) not in ran:
                body = {"model_id": model_id, "method": method, "dataset": "digits", "seed": 3}
                job = production.client.post(
                    "/api/v1/jobs", json={**body, "params": {**params, knob: value}}
                )
                assert job.status_code == 202, job.text
                ran[(method, value)] = job.json()["id"]
    for key, job_id in ran.items():
        if key not in tried:
            done = production.wait_for(job_id, {"succeeded", "failed"})
            assert done["status"] == "succeeded", done["error_message"]
    sweep = [[_outcome(production, ran[(m, v)]) for v in values] for m, _, values, _ in ARMS]
    target = Target("most_accurate_under", BUDGET)
    best = exhaustive_arms(target, sweep)
    assert best is not None
    method, _, values, _ = ARMS[best[0]]
    assert (outcome["winner_method"], outcome["winner_value"]) == (method, values[best[1]])
    assert outcome["winner_job_id"] == tried[(method, values[best[1]])]
    for arm, (method, _, values, _), outcomes in zip(outcome["arms"], ARMS, sweep, strict=True):
        own = exhaustive(target, outcomes)  # each method's own answer is reported too
        assert arm["winner_value"] == (None if own is None else values[own])
        assert arm["winner_job_id"] == (None if own is None else tried[(method, values[own])])


def test_a_bad_method_in_a_search_is_refused_before_anything_runs(
    production: Service, lenet_weights: Path
) -> None:
    model_id = production.upload_lenet(lenet_weights)
    before = production.client.get("/api/v1/jobs").json()["total"]
    cases = [
        ("method", "nope", "target.other_methods[0].method", "nope"),
        ("param", "w_bitz", "target.other_methods[0].param", "w_bitz"),
        ("values", [1, 2, 5], "target.other_methods[0].values[2]", "w_bits"),
        ("params", {"epochz": 1}, "target.other_methods[0].params", "epochz"),
    ]
    for key, bad, field, named in cases:
        body = _two_methods(model_id, goal="smallest_within", limit=1.0)
        body["target"]["other_methods"][0][key] = bad
        err = production.client.post("/api/v1/jobs", json=body)
        assert err.status_code == 422, (key, err.text)
        error = err.json()["error"]
        assert error["details"]["field"] == field
        assert field in error["message"]
        assert named in error["message"]
    assert production.client.get("/api/v1/jobs").json()["total"] == before


def test_cancelling_a_two_method_search_cancels_the_children_of_both(
    production: Service, lenet_weights: Path
) -> None:
    model_id = production.upload_lenet(lenet_weights)
    production.stop_worker()  # the first round waits in the queue
    try:
        made = production.client.post(
            "/api/v1/jobs",
            json=_two_methods(model_id, goal="smallest_within", limit=1.0, parallel=4),
        ).json()
        children = production.client.get(f"/api/v1/jobs?parent_id={made['id']}").json()["items"]
        assert sorted(c["method"] for c in children) == ["lq_nets", "lq_nets", "uniform", "uniform"]
        cancelled = production.client.post(f"/api/v1/jobs/{made['id']}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
    finally:
        production.start_worker()
    for child in children:
        assert production.client.get(f"/api/v1/jobs/{child['id']}").json()["status"] == "cancelled"
    assert production.client.delete(f"/api/v1/jobs/{made['id']}").status_code == 204
    for child in children:
        assert production.client.get(f"/api/v1/jobs/{child['id']}").status_code == 404
