"""Memory admission: a job is queued only when its estimated peak fits some worker's device.

The estimate is ``quantcore.memory.estimate`` for the job's model, method, params and batch size
(shape inference on PyTorch's meta device: no data, no compute). Workers report their device and
its memory in ``worker_device`` (``worker.presence``); a report older than a few report intervals
belongs to a stopped worker and is ignored. When no worker has reported, nothing can be judged
and the job is admitted: it waits in the queue like any job before the workers start.

No FastAPI here: the workers use :func:`job_estimate` when a search spawns its children.
"""

from __future__ import annotations

import math
from datetime import timedelta
from functools import lru_cache
from typing import Any

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.models import Model, WorkerDevice, utcnow
from quantcore.memory import Estimate, Footprint, estimate, footprint, largest_batch
from quantcore.registry import get_method, parse_params
from quantcore.zoo import build

STALE_REPORTS = 3  # a worker silent for this many report intervals has stopped


class DoesNotFit(Exception):
    """The job's estimated peak exceeds every live worker's device memory."""

    def __init__(self, message: str, details: dict[str, Any]) -> None:
        super().__init__(message)
        self.message, self.details = message, details


@lru_cache(maxsize=64)
def model_footprint(
    arch: str, num_classes: int, in_channels: int, height: int, width: int
) -> Footprint:
    """The footprint of a zoo model, built on the meta device (no weights are read)."""
    with torch.device("meta"):
        net = build(arch, num_classes=num_classes, in_channels=in_channels)
    return footprint(net, (in_channels, height, width))


def job_estimate(
    model: Model, method: str, params: dict[str, Any], batch_size: int, device_type: str = "cpu"
) -> Estimate:
    fp = model_footprint(
        model.arch, model.num_classes, model.in_channels, model.input_height, model.input_width
    )
    return estimate(fp, get_method(method), parse_params(method, params), batch_size, device_type)


def largest_device(session: Session, report_s: float | None = None) -> WorkerDevice | None:
    """The worker device with the most memory (None when no worker has reported); with
    ``report_s``, among those reported recently enough."""
    query = select(WorkerDevice)
    if report_s is not None:
        query = query.where(
            WorkerDevice.seen_at >= utcnow() - timedelta(seconds=STALE_REPORTS * report_s)
        )
    return session.scalars(query.order_by(WorkerDevice.memory_bytes.desc()).limit(1)).first()


def device_type(device: WorkerDevice | None) -> str:
    """The kind (``cuda`` or ``cpu``) a job is estimated for on ``device`` (``cpu`` for none)."""
    return "cuda" if device is not None and device.device.startswith("cuda") else "cpu"


def admit(
    session: Session,
    model: Model,
    method: str,
    params: dict[str, Any],
    batch_size: int,
    *,
    report_s: float,
    usable_fraction: float,
) -> int:
    """The job's estimated peak in bytes, or :class:`DoesNotFit` with the numbers and a batch
    size that fits."""
    largest = largest_device(session, report_s)
    kind = device_type(largest)
    guess = job_estimate(model, method, params, batch_size, kind)
    if largest is None:
        return guess.total
    usable = int(largest.memory_bytes * usable_fraction)
    if guess.total <= usable:
        return guess.total
    suggestion = _suggest(model, method, params, batch_size, usable, kind)
    parts = ", ".join(
        f"{name} {_gib(size)}" for name, size in sorted(guess.parts.items(), key=lambda kv: -kv[1])
    )
    advice = (
        f" A training batch size of {suggestion['batch_size']} would fit: set params."
        f"batch_size = {suggestion['batch_size']} (and batch_size = "
        f"{suggestion['eval_batch_size']})."
        if suggestion
        else " No batch size makes it fit: choose a smaller model, or add a worker with a "
        "larger device."
    )
    raise DoesNotFit(
        f"this job needs about {_gib(guess.total)} at its peak ({parts}), more than the "
        f"{_gib(usable)} usable on the largest worker device ({largest.device_name}, "
        f"{_gib(largest.memory_bytes)} on {largest.host}).{advice}",
        {
            "estimate_bytes": guess.total,
            "estimate_parts": dict(guess.parts),
            "largest_device_bytes": largest.memory_bytes,
            "usable_bytes": usable,
            "device": largest.device_name,
            "suggested": suggestion,
        },
    )


def _suggest(
    model: Model, method: str, params: dict[str, Any], batch_size: int, usable: int, kind: str
) -> dict[str, int] | None:
    """The largest training batch (the method's ``batch_size`` param, the job's evaluation batch
    capped at it) whose estimate fits ``usable`` bytes."""
    if "batch_size" not in get_method(method).Params.model_fields:
        start, trained = batch_size, False
    else:
        start, trained = int(parse_params(method, params).batch_size), True  # type: ignore[attr-defined]

    def at(batch: int) -> int:
        p = {**params, "batch_size": batch} if trained else params
        return job_estimate(model, method, p, min(batch_size, batch), kind).total

    best = largest_batch(lambda b: at(b) <= usable, start)
    if best is None:
        return None
    return {"batch_size": best, "eval_batch_size": min(batch_size, best)}


def _gib(size: float) -> str:
    if size >= 2**30:
        return f"{size / 2**30:.2f} GiB"
    return f"{math.ceil(size / 2**20)} MiB"
