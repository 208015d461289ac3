"""Training utilities: learning, progress, cancellation, checkpoint and exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from quantcore.context import Progress, RunContext
from quantcore.errors import Cancelled
from quantcore.training import evaluate, seed_everything, train


def _problem(seed: int = 0) -> tuple[TensorDataset, nn.Module]:
    """A linearly separable 4-class problem and a small model for it."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(4, 6, generator=gen) * 3
    y = torch.arange(200) % 4
    x = centers[y] + torch.randn(200, 6, generator=gen)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 4))
    return TensorDataset(x, y), model


def _fit(model: nn.Module, ds: TensorDataset, ctx: RunContext, epochs: int = 3) -> list:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    return train(
        model, DataLoader(ds, batch_size=32), epochs=epochs, optimizer=opt, scheduler=sched, ctx=ctx
    )


def test_training_learns_and_evaluate_reports_top1_and_top5() -> None:
    ds, model = _problem()
    loader = DataLoader(ds, batch_size=50)
    before = evaluate(model, loader)
    history = _fit(model, ds, RunContext())
    after = evaluate(model, loader)
    assert [h.epoch for h in history] == [1, 2, 3]
    assert after.top1 > 90 > before.top1
    assert after.top5 == 100.0  # four classes: the true one is always in the top 5
    assert after.count == 200
    assert history[1].lr == pytest.approx(0.05)  # the scheduler stepped once per epoch


def test_evaluate_counts_top1_and_top5_exactly() -> None:
    logits = torch.tensor(
        [
            [9.0, 1, 2, 3, 4, 5, 6],
            [1.0, 9, 2, 3, 4, 5, 6],
            [9.0, 8, 7, 6, 5, 4, 3],
            [0.0, 1, 2, 3, 4, 5, 6],
        ]
    )
    targets = torch.tensor([0, 0, 4, 0])  # right; not in top 5; in top 5; not in top 5

    class Fixed(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return logits[x.long().squeeze(1)]

    result = evaluate(Fixed(), DataLoader(TensorDataset(torch.arange(4.0)[:, None], targets)))
    assert result.top1 == pytest.approx(25.0)
    assert result.top5 == pytest.approx(50.0)


def test_progress_is_reported_with_fractions_up_to_one() -> None:
    ds, model = _problem()
    seen: list[Progress] = []
    _fit(model, ds, RunContext(on_progress=seen.append), epochs=2)
    fractions = [p.fraction for p in seen if p.stage == "train"]
    assert fractions == sorted(fractions)
    assert fractions[-1] == pytest.approx(1.0)
    assert any("train_loss" in p.metrics for p in seen)


def test_cancellation_stops_training_between_batches() -> None:
    ds, model = _problem()
    calls = {"n": 0}

    def should_cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 5

    with pytest.raises(Cancelled):
        _fit(model, ds, RunContext(should_cancel=should_cancel))
    assert calls["n"] == 6


def test_resume_from_checkpoint_gives_the_uninterrupted_result(tmp_path: Path) -> None:
    seed_everything(1)
    ds, reference_model = _problem()
    reference = _fit(reference_model, ds, RunContext(), epochs=3)

    seed_everything(1)
    ds, model = _problem()
    polls = {"n": 0}
    batches_per_epoch = 7

    def cancel_in_epoch_three() -> bool:
        polls["n"] += 1
        return polls["n"] > 2 * batches_per_epoch + 3

    ctx = RunContext(checkpoint_dir=tmp_path, should_cancel=cancel_in_epoch_three)
    with pytest.raises(Cancelled):
        _fit(model, ds, ctx, epochs=3)
    assert (tmp_path / "train.ckpt").exists()

    _, fresh = _problem(seed=5)  # a new process: different initial weights, restored from disk
    resumed = _fit(fresh, ds, RunContext(checkpoint_dir=tmp_path), epochs=3)
    assert [h.epoch for h in resumed] == [1, 2, 3]
    assert resumed == reference
    for a, b in zip(
        fresh.state_dict().values(), reference_model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
