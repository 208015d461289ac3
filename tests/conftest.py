"""Shared test configuration: ``gpu`` tests skip themselves where CUDA is absent, and a SIGTERM
(``timeout``, a CI runner stopping the job) ends the run like Ctrl-C does, with every fixture's
teardown: the worker processes the integration tests start in sessions of their own would
otherwise outlive the run and take messages from a later run's queue.

``QUANTCORE_FUSE`` defaults to 0 here (and so in the worker processes the tests start): compiling
the fused quantizer kernels takes tens of seconds per process and kind of call, more than the
short trainings of most tests. tests/unit/test_fusion.py turns it on and holds the compiled code
to the op-by-op code it replaces."""

from __future__ import annotations

import os
import signal
from types import FrameType

import pytest
import torch

os.environ.setdefault("QUANTCORE_FUSE", "0")


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
