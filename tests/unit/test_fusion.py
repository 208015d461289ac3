"""quantcore.fusion: compile on first use, fall back to the plain function for good on failure."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
import torch

from quantcore import fusion
from quantcore.memory import TensorPeakMeter


def _scale_shift(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, x * a, x - a)


@pytest.mark.slow
def test_compiled_function_gives_the_plain_functions_result(fusing: None) -> None:
    """Fresh shapes each call (dynamic shapes: no failure, no fallback), from another thread
    too, as a worker runs its job."""
    f = fusion.Fused(_scale_shift)
    results: list[tuple[torch.Tensor, torch.Tensor]] = []

    def run(n: int) -> None:
        x, a = torch.randn(n), torch.rand(())
        results.append((f(x, a), _scale_shift(x, a)))

    for n in torch.randint(5, 5000, (3,)).tolist():
        run(n)
    worker = threading.Thread(target=run, args=(777,))
    worker.start()
    worker.join()
    assert len(results) == 4
    for got, want in results:
        assert torch.equal(got, want)
    assert not f.failed


@pytest.mark.slow
def test_compiled_code_runs_under_the_workers_memory_meter(fusing: None) -> None:
    """A CPU worker measures a job's peak with TensorPeakMeter, a dispatch mode under which
    torch.compile compiles nothing: the compiled code still runs, and the meter counts its
    outputs."""
    f = fusion.Fused(_scale_shift)
    x, a = torch.randn(1 << 20), torch.rand(())
    with TensorPeakMeter() as meter:
        y = f(x, a)
        assert meter.live >= y.numel() * y.element_size()
    assert torch.equal(y, _scale_shift(x, a))
    assert not f.failed
    assert meter.peak >= y.numel() * y.element_size()


def test_a_failing_compile_falls_back_once_and_for_good(
    fusing: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls = {"compile": 0, "compiled": 0}

    def broken_compile(fn: Any, **_kw: Any) -> Any:
        calls["compile"] += 1

        def run(*_a: Any) -> Any:
            calls["compiled"] += 1
            raise RuntimeError("no C++ compiler found\nmore detail")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    f = fusion.Fused(_scale_shift)
    x, a = torch.randn(50), torch.tensor(0.5)
    with caplog.at_level(logging.WARNING, logger="quantcore.fusion"):
        first = f(x, a)
        second = f(x, a)
    assert torch.equal(first, _scale_shift(x, a))
    assert torch.equal(second, first)
    assert f.failed
    assert calls == {"compile": 1, "compiled": 1}
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "_scale_shift" in warnings[0]
    assert "no C++ compiler found" in warnings[0]
    assert "more detail" not in warnings[0]


def test_disabled_fusion_never_compiles(monkeypatch: pytest.MonkeyPatch) -> None:
    previous = fusion.set_enabled(False)
    try:

        def no_compile(*_a: Any, **_kw: Any) -> Any:
            raise AssertionError("compiled while disabled")

        monkeypatch.setattr(torch, "compile", no_compile)
        f = fusion.Fused(_scale_shift)
        x, a = torch.randn(10), torch.tensor(2.0)
        assert torch.equal(f(x, a), _scale_shift(x, a))
        assert not f.failed
    finally:
        fusion.set_enabled(previous)
