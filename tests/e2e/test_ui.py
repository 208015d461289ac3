"""The web UI end to end: sign in, upload, launch, watch, compare, download, and the errors a
user sees. Each test drives the real browser against the real API and worker (see conftest)."""

from __future__ import annotations

import base64
import hashlib
import io
import re
import time
from pathlib import Path

import numpy as np
from playwright.sync_api import Locator, Page, expect

from tests.e2e.conftest import PASSWORD, USER, VIEWPORT, Shots, publish, sign_in

HEADERS = {"X-Requested-With": "e2e-test"}
OVERFLOW = "document.documentElement.scrollWidth - window.innerWidth"
BLUE = (31, 95, 191)  # the colour of the charts' data (bars, curve, quantized points)

# How many canvas pixels have ``rgb`` (within a small tolerance for anti-aliasing).
_COUNT_COLOUR = """([canvas, rgb]) => {
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let n = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i + 3] > 200 && Math.abs(data[i] - rgb[0]) < 24 && Math.abs(data[i + 1] - rgb[1]) < 24
        && Math.abs(data[i + 2] - rgb[2]) < 24) n++;
  }
  return n;
}"""


def coloured_pixels(canvas: Locator, rgb: tuple[int, int, int] = BLUE) -> int:
    expect(canvas).to_be_visible()
    return int(canvas.evaluate(f"(c) => ({_COUNT_COLOUR})([c, {list(rgb)}])"))


def drop_file(page: Page, zone: Locator, name: str, content: bytes) -> None:
    """Drops a file on ``zone`` the way a file dragged from the desktop arrives."""
    zone.evaluate(
        """(zone, [name, b64]) => {
          const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
          const dt = new DataTransfer();
          dt.items.add(new File([bytes], name));
          const init = {dataTransfer: dt, bubbles: true, cancelable: true};
          zone.dispatchEvent(new DragEvent('drop', init));
        }""",
        [name, base64.b64encode(content).decode()],
    )


def assert_fits(page: Page, what: str) -> None:
    """Nothing is wider than the window (tables scroll inside their own box). Charts redraw at
    a new width a moment after the window changes, hence the wait."""
    deadline = time.monotonic() + 5
    while (overflow := page.evaluate(OVERFLOW)) > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert overflow <= 0, f"{what} is {overflow}px wider than a {page.viewport_size} window"


def method_boxes(page: Page) -> list[Locator]:
    """The "Compare methods" checkboxes, once the method list has arrived (they render together)."""
    boxes = page.locator('input[name="methods"]')
    expect(boxes.first).to_be_visible()
    return boxes.all()


def upload_model_via_api(page: Page, weights: Path, name: str) -> int:
    response = page.request.post(
        "/api/v1/models",
        headers=HEADERS,
        multipart={
            "file": {
                "name": "lenet5.safetensors",
                "mimeType": "application/octet-stream",
                "buffer": weights.read_bytes(),
            },
            "arch": "lenet5",
            "num_classes": "10",
            "name": name,
        },
    )
    assert response.status == 201, response.text()
    return int(response.json()["id"])


def wait_finished(page: Page, job_id: int, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = page.request.get(f"/api/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish")


def test_sign_in_rejects_a_wrong_password_then_signs_in_and_out(page: Page, shots: Shots) -> None:
    page.goto("/jobs")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("User name").fill(USER)
    page.get_by_label("Password").fill(PASSWORD + "x")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("Wrong user name or password")
    shots.take("login-error")

    page.get_by_label("Password").fill(PASSWORD)
    page.keyboard.press("Enter")  # the form submits from the keyboard
    expect(page.get_by_role("heading", name="Jobs", exact=True)).to_be_visible()
    expect(page.get_by_text(USER)).to_be_visible()
    shots.take("jobs-empty")

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert page.request.get("/api/v1/jobs").status == 401  # the cookie is gone

    # Guessing: after a few failures for one name the server refuses for a while, and says so.
    page.get_by_label("User name").fill("nobody")
    page.get_by_label("Password").fill("not-the-password")
    alert = page.get_by_role("alert")
    for _ in range(10):
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("button", name="Sign in")).to_be_enabled()
        if "try again" in alert.inner_text():
            break
    expect(alert).to_contain_text(re.compile(r"too many failed logins; try again in \d+ s"))
    shots.take("login-rate-limited")


def test_bad_uploads_show_the_servers_error_next_to_the_field(
    page: Page, shots: Shots, lenet_weights: Path
) -> None:
    sign_in(page)
    stored = page.request.get("/api/v1/models").json()["items"]  # earlier tests' uploads
    page.get_by_role("link", name="Models").click()
    page.get_by_label("Weights (.safetensors or a torch state dict)").set_input_files(
        {
            "name": "notes.safetensors",
            "mimeType": "application/octet-stream",
            "buffer": b"this is not a tensor file" * 10,
        }
    )
    page.get_by_label("Architecture").select_option("lenet5")
    page.get_by_role("button", name="Upload model").click()
    error = page.locator("#model-file-error")
    expect(error).to_be_visible()
    expect(error).not_to_be_empty()
    expect(page.locator("#model-file")).to_have_attribute("aria-invalid", "true")
    shots.take("models-bad-file")

    # Real weights with the wrong number of classes: the server names the mis-shaped keys.
    page.get_by_label("Weights (.safetensors or a torch state dict)").set_input_files(
        str(lenet_weights)
    )
    page.get_by_label("Number of classes").fill("7")
    page.get_by_role("button", name="Upload model").click()
    expect(error).to_contain_text(re.compile("shape|size|7", re.I))
    assert page.request.get("/api/v1/models").json()["items"] == stored  # nothing was stored

    page.get_by_role("link", name="Datasets").click()
    expect(page.get_by_role("cell", name="digits", exact=True)).to_be_visible()
    buffer = io.BytesIO()
    np.savez(buffer, x_train=np.zeros((4, 8, 8), np.float32))  # no labels, no validation split
    page.get_by_label(re.compile("^Dataset file")).set_input_files(
        {"name": "broken.npz", "mimeType": "application/octet-stream", "buffer": buffer.getvalue()}
    )
    page.get_by_role("button", name="Upload dataset").click()
    expect(page.locator("#dataset-error")).to_contain_text("y_train")
    shots.take("datasets-bad-file")


def test_upload_launch_watch_and_download(
    page: Page, shots: Shots, lenet_weights: Path, tmp_path: Path
) -> None:
    sign_in(page)
    page.get_by_role("link", name="Models").click()
    drop_file(
        page,
        page.get_by_test_id("model-file-zone"),
        "lenet5.safetensors",
        lenet_weights.read_bytes(),
    )
    page.get_by_label("Architecture").select_option("lenet5")
    page.get_by_label("Number of classes").fill("10")
    page.get_by_label("Name (optional)").fill("digits lenet5")
    page.get_by_role("button", name="Upload model").click()
    expect(page.get_by_role("status")).to_contain_text("accepted")
    row = page.get_by_role("row").filter(has_text="digits lenet5")
    expect(row).to_contain_text(hashlib.sha256(lenet_weights.read_bytes()).hexdigest()[:12])
    shots.take("models")

    row.get_by_role("link", name="Quantize").click()
    expect(page.get_by_role("heading", name="New job")).to_be_visible()
    page.get_by_label("Dataset").select_option("builtin:digits")
    page.get_by_label("Method", exact=True).select_option("lq_nets")
    # The form is drawn from the method's schema: fill a short run on `digits`.
    # The method's own presets come from the server beside the paper presets.
    expect(page.get_by_role("button", name="small data", exact=True)).to_be_visible()
    page.get_by_role("button", name="LQ-Nets W2A2").click()
    expect(page.locator("#param-lq_nets-w_bits")).to_have_value("2")
    page.locator("#param-lq_nets-epochs").fill("3")
    page.locator("#param-lq_nets-batch_size").fill("64")
    page.locator("#param-lq_nets-lr").fill("0.01")
    page.locator("#param-lq_nets-lr_schedule").select_option("cosine")
    page.locator("#param-lq_nets-basis_init").select_option("qem")
    shots.take("new-job")
    page.get_by_role("button", name="Start job").click()

    expect(page).to_have_url(re.compile(r"/jobs/\d+$"))
    job_id = int(page.url.rsplit("/", 1)[1])
    bar = page.get_by_label("Job progress (current stage)")
    seen: list[float] = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        seen.append(float(bar.get_attribute("value") or 0))
        if page.locator(".badge-succeeded, .badge-failed").count():
            break
        if len(seen) == 20:
            shots.take("job-running", full_page=False)
        time.sleep(0.1)
    expect(page.locator("h1 .badge")).to_have_text("succeeded")
    moving = sorted({v for v in seen if 0 < v < 100})
    assert len(moving) >= 2, f"the progress bar never moved: {seen[:50]}"

    curves = page.get_by_test_id("curves-chart")
    assert coloured_pixels(curves) > 100, "the training curve is not drawn"
    bits = page.get_by_test_id("bits-chart")
    assert coloured_pixels(bits) > 100, "the bits-per-layer bars are not drawn"
    layers = page.get_by_test_id("layers-table").locator("tbody tr")
    assert layers.count() >= 2
    expect(page.get_by_test_id("result-cards")).to_contain_text("Compression")
    job_shot = shots.take("job")
    publish(job_shot, "job.png")
    page.set_viewport_size({"width": 390, "height": 800})
    assert_fits(page, "the job page")
    shots.take("job-narrow")
    page.set_viewport_size(VIEWPORT)

    job = page.request.get(f"/api/v1/jobs/{job_id}").json()
    qpack = next(a for a in job["artifacts"] if a["kind"] == "qpack")
    with page.expect_download() as info:
        page.locator('a[data-kind="qpack"]').click()
    saved = tmp_path / info.value.suggested_filename
    info.value.save_as(saved)
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == qpack["sha256"]
    assert saved.stat().st_size == qpack["size_bytes"]

    # Inference is measured side by side and labelled for what it is; the provenance is shown.
    speeds = page.get_by_test_id("inference-table")
    expect(speeds).to_contain_text("float model")
    expect(speeds).to_contain_text("artifact")
    expect(page.get_by_text("no speed-up is expected")).to_be_visible()
    expect(page.get_by_test_id("provenance")).to_contain_text(
        hashlib.sha256(lenet_weights.read_bytes()).hexdigest()
    )
    # Re-run submits the same job again and opens it.
    page.get_by_role("button", name="Re-run").click()
    expect(page).not_to_have_url(re.compile(rf"/jobs/{job_id}$"))
    expect(page).to_have_url(re.compile(r"/jobs/\d+$"))
    rerun = page.request.get(f"/api/v1/jobs/{page.url.rsplit('/', 1)[1]}").json()
    assert (rerun["params"], rerun["seed"], rerun["model_id"]) == (
        job["params"],
        job["seed"],
        job["model_id"],
    )
    page.request.post(
        f"/api/v1/jobs/{rerun['id']}/cancel", headers={"X-Requested-With": "quantserve"}
    )


def test_compare_methods_on_one_model(page: Page, shots: Shots, lenet_weights: Path) -> None:
    sign_in(page)
    model_id = upload_model_via_api(page, lenet_weights, "compare lenet5")
    # "Compare methods": one job per chosen method, on the same model, data and seed.
    page.goto(f"/jobs/new?model={model_id}")
    page.get_by_label("Dataset").select_option("builtin:digits")
    page.get_by_label("Compare methods", exact=False).check()
    for box in method_boxes(page):
        box.uncheck()
    page.get_by_role("checkbox", name="Uniform", exact=False).check()
    page.get_by_role("checkbox", name="LQ-Nets", exact=False).check()
    page.get_by_role("button", name="Uniform 2-bit").click()
    page.locator("#param-lq_nets-epochs").fill("1")
    page.locator("#param-lq_nets-batch_size").fill("64")
    page.locator("#param-lq_nets-lr").fill("0.01")
    page.locator("#param-lq_nets-basis_init").select_option("qem")
    page.get_by_role("button", name="Start 2 jobs").click()

    expect(page).to_have_url(re.compile(r"/compare\?model=\d+&jobs=\d+,\d+$"))
    ids = [int(i) for i in page.url.rsplit("=", 1)[1].split(",")]
    jobs = [page.request.get(f"/api/v1/jobs/{i}").json() for i in ids]
    assert sorted(j["method"] for j in jobs) == ["lq_nets", "uniform"]
    assert {(j["model_id"], j["dataset"], j["seed"]) for j in jobs} == {(model_id, "digits", 0)}
    for job_id in ids:
        assert wait_finished(page, job_id)["status"] == "succeeded"

    # The same comparison from the jobs list.
    page.get_by_role("link", name="Jobs", exact=True).click()
    page.get_by_label("Model").select_option(str(model_id))
    for job_id in ids:
        page.get_by_label(f"Select job {job_id}").check()
    shots.take("jobs")
    page.get_by_role("button", name="Compare selected (2)").click()
    expect(page).to_have_url(re.compile(r"/compare\?"))

    table = page.get_by_test_id("compare-table")
    for job_id in ids:
        expect(table.locator(f'tr[data-job="{job_id}"]')).to_contain_text("succeeded")
    expect(table.locator(".float-row")).to_be_visible()
    chart = page.get_by_test_id("compare-chart")
    assert coloured_pixels(chart) > 30, "the quantized jobs are not plotted"
    assert coloured_pixels(chart, (194, 65, 12)) > 30, "the float model is not plotted"
    compare_shot = shots.take("compare")
    publish(compare_shot, "compare.png")

    # Readable on a narrow window: nothing wider than the screen except scrollable tables.
    page.set_viewport_size({"width": 390, "height": 800})
    assert_fits(page, "/compare")
    shots.take("compare-narrow")


UNLABELLED = """() => [...document.querySelectorAll('input, select, textarea, button')]
  .filter((el) => !((el.labels && el.labels.length) || el.getAttribute('aria-label')
                    || (el.tagName === 'BUTTON' && el.textContent.trim())))
  .map((el) => el.outerHTML.slice(0, 120))"""


def test_every_control_is_labelled_and_the_keyboard_reaches_the_pages(
    page: Page, shots: Shots
) -> None:
    sign_in(page)
    for path, heading in (
        ("/jobs", "Jobs"),
        ("/jobs/new", "New job"),
        ("/models", "Models"),
        ("/datasets", "Datasets"),
        ("/compare", "Compare"),
    ):
        page.goto(path)
        expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
        if path == "/jobs/new":  # draw every method's generated form at once
            page.get_by_label("Compare methods", exact=False).check()
            boxes = method_boxes(page)
            for box in boxes:
                box.check()
            expect(page.locator("fieldset.method-params")).to_have_count(len(boxes))
            # The papers' presets name fields of the server's schemas (else they are hidden).
            for preset in ("LQ-Nets W2A2", "ALQ 0.7 bits", "L-DNQ kbits 5", "QNets 3-bit weights"):
                expect(page.get_by_role("button", name=preset)).to_be_visible()
        assert page.evaluate(UNLABELLED) == [], f"controls without a label on {path}"
        shots.take(path.strip("/").replace("/", "-"))
        page.set_viewport_size({"width": 390, "height": 800})
        assert_fits(page, path)
        page.set_viewport_size(VIEWPORT)

    # From the address bar: the first Tab reaches "Skip to content", and the navigation follows.
    page.goto("/jobs")
    expect(page.get_by_role("heading", name="Jobs", exact=True)).to_be_visible()
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Tab")  # the brand link
    page.keyboard.press("Tab")
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Jobs", exact=True)).to_be_focused()
    page.keyboard.press("Tab")
    expect(nav.get_by_role("link", name="New job", exact=True)).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="New job")).to_be_visible()


def test_cancel_a_running_job(page: Page, shots: Shots, lenet_weights: Path) -> None:
    sign_in(page)
    model_id = upload_model_via_api(page, lenet_weights, "cancel lenet5")
    long_run = {"epochs": 500, "batch_size": 4, "lr_schedule": "cosine"}
    response = page.request.post(
        "/api/v1/jobs",
        headers=HEADERS,
        data={"model_id": model_id, "method": "lq_nets", "dataset": "digits", "params": long_run},
    )
    assert response.status == 202, response.text()
    job_id = int(response.json()["id"])
    page.goto("/jobs")  # the list follows the job live
    row = page.locator(f'tr[data-job="{job_id}"]')
    expect(row.locator(".badge")).to_have_text("running", timeout=120_000)
    expect(row.get_by_label(f"Job {job_id} progress")).not_to_have_attribute("value", "0")
    shots.take("jobs-live")
    row.get_by_role("link", name=f"Job {job_id}").click()
    expect(page.locator("h1 .badge")).to_have_text("running", timeout=120_000)
    expect(page.get_by_test_id("stage")).to_contain_text("lq_nets", timeout=120_000)
    shots.take("job-running")
    page.get_by_role("button", name="Cancel job").click()
    expect(page.locator("h1 .badge")).to_have_text("cancelled", timeout=60_000)
    expect(page.get_by_role("status")).to_contain_text("cancelled")
    shots.take("job-cancelled")

    # A model goes with its finished jobs, after the user confirms.
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("link", name="Models").click()
    page.get_by_role("row").filter(has_text="cancel lenet5").get_by_role(
        "button", name="Delete"
    ).click()
    expect(page.get_by_role("row").filter(has_text="cancel lenet5")).to_have_count(0)
    assert page.request.get(f"/api/v1/models/{model_id}").status == 404
    assert page.request.get(f"/api/v1/jobs/{job_id}").status == 404
