"""The web UI in a real browser against the real product: Debian's headless Chromium driven by
Playwright, the API served by uvicorn (``python -m api serve``) and one Celery worker, on the
embedded defaults (SQLite and the filesystem broker) in a scratch data directory, as `make run`.

Nothing here skips: without /usr/bin/chromium or a built UI (frontend/dist) the tests fail and
say what to install or build. Every test's screenshots go to its own output directory
(``tmp_path``); a failing test also saves the page as it was when it failed.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from PIL import Image
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Page,
    Playwright,
    ViewportSize,
    sync_playwright,
)

from tests.integration.conftest import lenet_weights  # noqa: F401 (a fixture, used by name)
from worker.__main__ import worker_command

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("QS_E2E_CHROMIUM", "/usr/bin/chromium"))
DIST = ROOT / "frontend" / "dist"
USER, PASSWORD = "e2e-user", "e2e-" + secrets.token_urlsafe(12)
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}


@dataclass
class Product:
    url: str
    data_dir: Path
    env: dict[str, str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def log(self, name: str) -> str:
        path = self.data_dir / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def start(self, name: str, argv: list[str]) -> None:
        out = open(self.data_dir / f"{name}.log", "ab")
        self.procs.append(
            subprocess.Popen(
                argv,
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _api(env: dict[str, str], *args: str, stdin: str | None = None) -> None:
    subprocess.run(
        [sys.executable, "-m", "api", *args],
        cwd=ROOT,
        env=env,
        input=stdin,
        text=True,
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="session")
def product(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Product]:
    """The API (serving the built UI) and one worker, with one user who signs in."""
    if not (DIST / "index.html").is_file():
        pytest.fail(
            f"{DIST}/index.html is missing: build the UI (make setup, or "
            "cd frontend && npm ci && npm run build)"
        )
    data_dir = tmp_path_factory.mktemp("e2e")
    env = {
        **os.environ,
        "QS_DATA_DIR": str(data_dir),
        "CUDA_VISIBLE_DEVICES": "",
        "QS_MAX_UPLOAD_BYTES": str(8 * 2**20),
    }
    for key in ("QS_DATABASE_URL", "QS_BROKER_URL", "QS_BLOB_DIR"):
        env.pop(key, None)
    _api(env, "migrate")
    _api(env, "users", "create", USER, "--password-stdin", stdin=PASSWORD + "\n")
    port = _free_port()
    product = Product(f"http://127.0.0.1:{port}", data_dir, env)
    product.start("api", [sys.executable, "-m", "api", "serve", "--port", str(port)])
    product.start("worker", worker_command(f"e2e-{secrets.token_hex(3)}"))
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{product.url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            product.stop()
            raise AssertionError(f"the API did not start:\n{product.log('api')}")
        time.sleep(0.3)
    yield product
    product.stop()


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (make debs)")
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
    yield browser
    browser.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


class Shots:
    """Screenshots of the pages a test visits, numbered in order, in the test's tmp_path."""

    def __init__(self, page: Page, folder: Path) -> None:
        self.page, self.folder, self.count = page, folder, 0

    def take(self, name: str, full_page: bool = True) -> Path:
        self.count += 1
        path = self.folder / f"{self.count:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path


@pytest.fixture
def page(
    browser: Browser, product: Product, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Page]:
    """A fresh browser context at 1280x800; page errors and console errors fail the test (a
    Content-Security-Policy violation shows up there too)."""
    context = browser.new_context(viewport=VIEWPORT, base_url=product.url, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(20_000)
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))

    def console(msg: ConsoleMessage) -> None:
        # The app's own 401s (signed out) and the 4xx a test provokes are answers, not faults.
        if msg.type == "error" and "Failed to load resource" not in msg.text:
            problems.append(f"console error: {msg.text}")

    page.on("console", console)
    yield page
    failed = getattr(request.node, "report_call", None)
    if failed is not None and failed.failed:
        shot = tmp_path / "failure.png"
        page.screenshot(path=str(shot), full_page=True)
        request.node.add_report_section("teardown", "screenshot", f"the page on failure: {shot}")
    context.close()
    assert not problems, "\n".join(problems)


@pytest.fixture
def shots(page: Page, tmp_path: Path) -> Shots:
    return Shots(page, tmp_path)


def sign_in(page: Page) -> None:
    page.goto("/")
    page.get_by_label("User name").fill(USER)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("navigation", name="Main").wait_for()


@pytest.fixture
def signed_in(page: Page) -> Page:
    sign_in(page)
    return page


def publish(shot: Path, name: str) -> None:
    """Copies a screenshot for the README when QS_E2E_DOCS_IMG names a folder (docs/img), as a
    small 128-colour PNG."""
    target = os.environ.get("QS_E2E_DOCS_IMG")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        with Image.open(shot) as image:
            small = image.convert("RGB").quantize(colors=128)
            small.save(Path(target) / name, optimize=True)
