"""Shared test configuration: ``gpu`` tests skip themselves where CUDA is absent, and a SIGTERM
(``timeout``, a CI runner stopping the job) ends the run like Ctrl-C does, with every fixture's
teardown: the worker processes the integration tests start in sessions of their own would
otherwise outlive the run and take messages from a later run's queue."""

from __future__ import annotations

import signal
from types import FrameType

import pytest
import torch


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
