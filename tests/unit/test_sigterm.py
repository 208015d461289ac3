"""A test run stopped with SIGTERM still tears its fixtures down (tests/conftest.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

INNER = """
import time
import pytest

@pytest.fixture
def resource(tmp_path_factory):
    marker = {marker!r}
    open(marker + ".up", "w").close()
    yield
    open(marker + ".down", "w").close()

def test_waits(resource):
    time.sleep(60)
"""


def test_sigterm_runs_the_teardown_of_the_fixtures_in_use(tmp_path: Path) -> None:
    marker = str(tmp_path / "resource")
    inner = tmp_path / "tests" / "test_inner.py"
    inner.parent.mkdir()
    (inner.parent / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    inner.write_text(INNER.format(marker=marker))
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(inner)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while not Path(marker + ".up").exists():
        assert run.poll() is None, "the inner run ended before its test started"
        assert time.monotonic() < deadline, "the inner test never started"
        time.sleep(0.1)
    run.send_signal(signal.SIGTERM)
    out, _ = run.communicate(timeout=60)
    assert Path(marker + ".down").exists(), out.decode(errors="replace")
    assert run.returncode != 0
