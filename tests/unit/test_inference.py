"""Side-by-side inference timing of a float model and its artifact."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from quantcore.inference import compare_speed


class _Sleepy(nn.Module):
    """Takes a known time per batch, so the measurement can be checked against it."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        time.sleep(self.seconds)
        return x


def test_each_model_is_timed_for_itself_with_the_stated_batch() -> None:
    fast, slow = _Sleepy(0.002), _Sleepy(0.02)
    speeds = compare_speed(
        {"float": fast, "quantized": slow}, (3, 4), batch_size=8, device="cpu", rounds=5, warmup=2
    )
    assert fast.calls == slow.calls == 7
    assert speeds["float"].batch_size == speeds["quantized"].batch_size == 8
    # A sleep never ends early: each median is at least its model's own time per batch.
    assert speeds["float"].latency_ms >= 2
    assert speeds["quantized"].latency_ms >= 20
    assert speeds["quantized"].throughput == pytest.approx(
        8 / (speeds["quantized"].latency_ms / 1000)
    )


def test_real_models_run_in_eval_mode_without_gradients() -> None:
    seen: list[tuple[bool, bool]] = []
    model = nn.Sequential(nn.Linear(6, 4), nn.Dropout(0.5))
    model.register_forward_hook(lambda m, i, o: seen.append((m.training, o.requires_grad)))
    model.train()
    compare_speed({"m": model}, (6,), batch_size=2, device="cpu", rounds=2, warmup=0)
    assert seen == [(False, False), (False, False)]


def test_absurd_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        compare_speed({"m": nn.Identity()}, (1,), batch_size=0, device="cpu")
