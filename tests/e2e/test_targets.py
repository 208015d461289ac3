"""Accuracy-target searches in the web UI, end to end: fill the new-job form's target mode, watch
the search job run its children on the real worker, read its answer, and compare its children."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.e2e.conftest import VIEWPORT, Shots, sign_in
from tests.e2e.test_ui import (
    UNLABELLED,
    assert_fits,
    coloured_pixels,
    upload_model_via_api,
    wait_finished,
)


def test_search_for_the_smallest_model_within_a_point(
    page: Page, shots: Shots, lenet_weights: Path
) -> None:
    sign_in(page)
    model_id = upload_model_via_api(page, lenet_weights, "target lenet5")
    page.goto(f"/jobs/new?model={model_id}")
    page.get_by_label("Dataset").select_option("builtin:digits")
    page.get_by_label("Accuracy target", exact=False).check()
    page.get_by_label("Method", exact=True).select_option("uniform")
    # The knob is offered from the method's schema, its values filled in from the range.
    expect(page.locator("#target-0-param")).to_have_value("bits")
    expect(page.locator("#target-0-values")).to_have_value("1, 2, 3, 4, 5, 6, 7, 8")
    expect(page.locator("#param-uniform-bits")).to_be_disabled()  # the search sets it

    # A size budget is read with its unit and shown in bytes.
    page.get_by_label("Goal").select_option("most_accurate_under")
    page.locator("#target-limit").fill("40 KB")
    expect(page.locator("#target-limit-help")).to_contain_text("= 40,000 bytes")
    page.locator("#target-limit").fill("40 XB")
    expect(page.locator("#target-limit-help")).to_contain_text("unknown unit XB")
    page.get_by_label("Goal").select_option("smallest_within")

    # Another method's row has labelled controls too, and goes away again.
    page.get_by_role("button", name="Add another method").click()
    expect(page.locator('fieldset.arm[data-arm="1"]')).to_be_visible()
    assert page.evaluate(UNLABELLED) == [], "controls without a label in the target form"
    shots.take("new-search-two-methods")
    page.set_viewport_size({"width": 390, "height": 800})
    assert_fits(page, "the target form")
    page.set_viewport_size(VIEWPORT)
    page.locator('fieldset.arm[data-arm="1"]').get_by_role(
        "button", name=re.compile("^Remove")
    ).click()
    expect(page.locator('fieldset.arm[data-arm="1"]')).to_have_count(0)

    # Checked before anything is sent: an empty list of values, a value out of range.
    before = page.request.get("/api/v1/jobs").json()["total"]
    page.locator("#target-0-values").fill(" , ")
    page.get_by_role("button", name="Start search").click()
    expect(page.locator("#target-0-values-error")).to_have_text("enter at least one value")
    expect(page.locator("#target-0-values")).to_have_attribute("aria-invalid", "true")
    page.locator("#target-0-values").fill("2, 4, 9")
    page.get_by_role("button", name="Start search").click()
    expect(page.locator("#target-0-values-error")).to_have_text("9 is out of range")
    # What only the server knows is shown too: every value must make a valid job with the
    # method's other params, and LQ-Nets refuses 32-bit weights with 32-bit activations.
    page.get_by_label("Method", exact=True).select_option("lq_nets")
    expect(page.locator("#target-0-param")).to_have_value("w_bits")
    page.locator("#param-lq_nets-a_bits").select_option("32")
    page.locator("#target-0-values").fill("1, 32")
    page.get_by_role("button", name="Start search").click()
    expect(page.locator('p.error[role="alert"]')).to_contain_text("quantizes nothing")
    assert page.request.get("/api/v1/jobs").json()["total"] == before
    page.get_by_label("Method", exact=True).select_option("uniform")

    # Three values, two at a time: the search runs at most three children.
    page.locator("#target-0-values").fill("2, 4, 8")
    page.locator("#target-limit").fill("1")
    page.locator("#target-parallel").fill("2")
    shots.take("new-search")
    page.get_by_role("button", name="Start search").click()

    expect(page).to_have_url(re.compile(r"/jobs/\d+$"))
    search_id = int(page.url.rsplit("/", 1)[1])
    expect(page.get_by_role("heading", name=re.compile(f"^Search {search_id}"))).to_be_visible()
    expect(page.get_by_test_id("search-spec")).to_contain_text("2, 4, 8")
    expect(page.get_by_test_id("search-goal")).to_contain_text("within 1 point")
    parent = wait_finished(page, search_id, timeout=300)
    assert parent["status"] == "succeeded", parent["error_message"]
    outcome = parent["target"]["outcome"]
    assert outcome["winner_job_id"] is not None, outcome  # 8-bit weights lose well under a point
    children = page.request.get(f"/api/v1/jobs?parent_id={search_id}").json()["items"]

    # The page follows the search to its end: the answer, every child, the Pareto set.
    expect(page.locator("h1 .badge")).to_have_text("succeeded", timeout=30_000)
    winner = page.get_by_test_id("search-winner")
    expect(winner).to_contain_text(f"Winner: job {outcome['winner_job_id']}")
    expect(winner).to_contain_text(f"bits = {outcome['winner_value']}")
    expect(page.get_by_test_id("search-progress")).to_contain_text(f"{outcome['runs']} of 3")
    table = page.get_by_test_id("children-table")
    expect(table.locator("tbody tr[data-job]")).to_have_count(len(children))
    for child in children:
        row = table.locator(f'tr[data-job="{child["id"]}"]')
        expect(row).to_contain_text(f"bits = {child['params']['bits']}")
        expect(row.locator(".badge")).to_have_text("succeeded")
    expect(table.locator("tr.winner")).to_have_attribute("data-job", str(outcome["winner_job_id"]))
    expect(table.locator("tr[data-pareto]")).to_have_count(len(outcome["pareto_job_ids"]))
    # A search has no result of its own: no empty result panels.
    expect(page.get_by_test_id("result-cards")).to_have_count(0)
    expect(page.get_by_role("heading", name="Training curves")).to_have_count(0)
    shots.take("search")
    page.set_viewport_size({"width": 390, "height": 800})
    assert_fits(page, "the search page")
    page.set_viewport_size(VIEWPORT)

    # A child is an ordinary job that links back to its search.
    winner.get_by_role("link", name=f"job {outcome['winner_job_id']}").click()
    expect(
        page.get_by_role("heading", name=re.compile(f"^Job {outcome['winner_job_id']}"))
    ).to_be_visible()
    expect(page.get_by_test_id("result-cards")).to_be_visible()
    expect(page.get_by_test_id("memory")).to_contain_text("measured peak")
    page.get_by_role("link", name=f"search {search_id}").click()
    expect(page.get_by_role("heading", name=re.compile(f"^Search {search_id}"))).to_be_visible()

    # The jobs list tells the search from its children, and a child links to its search.
    page.goto("/jobs")
    listed = page.locator(f'table.jobs tr[data-job="{search_id}"]')
    expect(listed.get_by_role("link", name=f"Search {search_id}")).to_be_visible()
    expect(listed.get_by_test_id("job-search")).to_have_text("over bits")
    for child in children:
        row = page.locator(f'table.jobs tr[data-job="{child["id"]}"]')
        expect(row.get_by_test_id("job-parent")).to_have_text(f"of search {search_id}")
    row.get_by_role("link", name=f"search {search_id}").click()
    expect(page.get_by_role("heading", name=re.compile(f"^Search {search_id}"))).to_be_visible()

    page.get_by_role("link", name="Compare children").click()
    expect(page).to_have_url(re.compile(rf"/compare\?model={model_id}&jobs=[\d,]+$"))
    compare = page.get_by_test_id("compare-table")
    for child in children:
        expect(compare.locator(f'tr[data-job="{child["id"]}"]')).to_contain_text("succeeded")
    chart = page.get_by_test_id("compare-chart")
    assert coloured_pixels(chart) > 30, "the children are not plotted"
    assert coloured_pixels(chart, (21, 128, 61)) > 30, "the Pareto front is not drawn"
    shots.take("compare-children")
