"""Shared test configuration: ``gpu`` tests skip themselves where CUDA is absent, and a SIGTERM
(``timeout``, a CI runner stopping the job) ends the run like Ctrl-C does, with every fixture's
teardown: the worker processes the integration tests start in sessions of their own would
otherwise outlive the run and take messages from a later run's queue.

``QUANTCORE_FUSE`` defaults to 0 here (and so in the worker processes the tests start): compiling
the fused quantizer kernels takes tens of seconds per process and kind of call, more than the
short trainings of most tests. The tests of the compiled code (tests/unit/test_fusion.py, the
fused tests of tests/unit/methods/test_lq_nets.py) turn it on with the ``fusing`` fixture."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from types import FrameType

import pytest
import torch

os.environ.setdefault("QUANTCORE_FUSE", "0")

from quantcore import fusion  # after the default above: fusion reads it at import


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt("SIGTERM")


def pytest_configure(config: pytest.Config) -> None:
    signal.signal(signal.SIGTERM, _interrupt)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def fusing() -> Iterator[None]:
    """Compiling on for one test; afterwards torch.compile forgets its graphs, so each test's
    kinds of call count alone toward its limit per function."""
    previous = fusion.set_enabled(True)
    yield
    fusion.set_enabled(previous)
    torch.compiler.reset()
