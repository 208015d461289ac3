"""Training and evaluation loops shared by the methods and the CLI.

Both loops follow the run context: they compute on ``ctx.device``, report progress, poll the
cancellation check between batches, and :func:`train` checkpoints after every epoch and resumes
from the last checkpoint when one exists (a redelivered job continues where it stopped).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from quantcore.context import RunContext

LossFn = Callable[[Tensor, Tensor], Tensor]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class EvalResult:
    top1: float  # percent
    top5: float  # percent (equals 100 when there are at most 5 classes)
    loss: float
    count: int


@dataclass(frozen=True)
class EpochRecord:
    epoch: int  # 1-based
    train_loss: float
    train_top1: float
    lr: float
    val_loss: float | None = None
    val_top1: float | None = None
    val_top5: float | None = None


def _topk_correct(logits: Tensor, target: Tensor, ks: tuple[int, ...]) -> list[int]:
    k_max = min(max(ks), logits.shape[1])
    top = logits.topk(k_max, dim=1).indices  # (B, k_max)
    hit = top.eq(target.unsqueeze(1))  # (B, k_max)
    return [int(hit[:, : min(k, k_max)].any(dim=1).sum()) for k in ks]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    ctx: RunContext | None = None,
    *,
    stage: str = "evaluate",
    loss_fn: LossFn = F.cross_entropy,
) -> EvalResult:
    """Top-1 and top-5 accuracy (percent) and mean loss of ``model`` over ``loader``."""
    ctx = ctx or RunContext()
    was_training = model.training
    model.eval()
    correct1 = correct5 = count = 0
    loss_sum = 0.0
    total = len(loader)
    for i, (x, y) in enumerate(loader):
        ctx.check_cancelled()
        x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
        logits = model(x)
        loss_sum += float(loss_fn(logits, y)) * len(y)
        c1, c5 = _topk_correct(logits, y, (1, 5))
        correct1, correct5, count = correct1 + c1, correct5 + c5, count + len(y)
        ctx.report(stage, (i + 1) / total)
    model.train(was_training)
    if count == 0:
        return EvalResult(0.0, 0.0, float("nan"), 0)
    return EvalResult(100 * correct1 / count, 100 * correct5 / count, loss_sum / count, count)


def train(
    model: nn.Module,
    train_loader: DataLoader,
    *,
    epochs: int,
    optimizer: torch.optim.Optimizer,
    ctx: RunContext | None = None,
    scheduler: Any = None,
    val_loader: DataLoader | None = None,
    loss_fn: LossFn = F.cross_entropy,
    stage: str = "train",
    after_step: Callable[[], None] | None = None,
) -> list[EpochRecord]:
    """Train ``model`` for ``epochs`` epochs; returns one record per epoch (the training curve).

    The scheduler (if any) steps once per epoch. After each epoch the model, optimizer, scheduler,
    RNG states and history are saved as checkpoint ``stage``; a later call with the same context
    and stage resumes after the last finished epoch. ``after_step`` runs after every optimizer step
    (methods use it for projections or basis refits).
    """
    ctx = ctx or RunContext()
    model.to(ctx.device)
    history: list[EpochRecord] = []
    start = 0
    state = ctx.load_checkpoint(stage)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        history = [EpochRecord(**r) for r in state["history"]]
        start = int(state["epoch"])
    batches = len(train_loader)
    set_epoch = getattr(train_loader.sampler, "set_epoch", None)
    for epoch in range(start, epochs):
        if set_epoch is not None:  # the data order of an epoch depends on (seed, epoch) only
            set_epoch(epoch)
        model.train()
        loss_sum, correct, count = 0.0, 0, 0
        for i, (x, y) in enumerate(train_loader):
            ctx.check_cancelled()
            x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
            logits = model(x)
            loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step()
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.detach().argmax(1) == y).sum())
            count += len(y)
            ctx.report(stage, (epoch + (i + 1) / batches) / epochs, loss=float(loss.detach()))
        lr = float(optimizer.param_groups[0]["lr"])
        if scheduler is not None:
            scheduler.step()
        record = EpochRecord(epoch + 1, loss_sum / max(count, 1), 100 * correct / max(count, 1), lr)
        if val_loader is not None:
            ev = evaluate(model, val_loader, ctx, stage=f"{stage}:validate", loss_fn=loss_fn)
            record = EpochRecord(
                **{**asdict(record), "val_loss": ev.loss, "val_top1": ev.top1, "val_top5": ev.top5}
            )
        history.append(record)
        ctx.report(
            stage,
            (epoch + 1) / epochs,
            **{k: v for k, v in asdict(record).items() if v is not None},
        )
        ctx.save_checkpoint(
            stage,
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "rng": torch.get_rng_state(),
                "history": [asdict(r) for r in history],
                "epoch": epoch + 1,
            },
        )
    return history
