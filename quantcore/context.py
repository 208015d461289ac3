"""The run context a method receives: device, progress, cancellation, checkpoints, seed."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from quantcore.errors import Cancelled

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    """One progress report: a stage name, the fraction of the whole run done, and metrics."""

    stage: str
    fraction: float
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class RunContext:
    """What a method may use from its caller, and nothing else.

    - ``device``: where to compute; methods follow it and never call ``.cuda()`` themselves.
    - ``on_progress``: called with a :class:`Progress` (the worker throttles and stores them).
    - ``should_cancel``: polled between steps; :meth:`check_cancelled` raises :class:`Cancelled`.
    - ``checkpoint_dir``: where :meth:`save_checkpoint` writes, so a redelivered job resumes.
    - ``seed``: every random choice of a run derives from it.
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    on_progress: Callable[[Progress], None] | None = None
    should_cancel: Callable[[], bool] | None = None
    checkpoint_dir: Path | None = None

    def report(self, stage: str, fraction: float, **metrics: float) -> None:
        if self.on_progress is not None:
            fraction = min(max(float(fraction), 0.0), 1.0)
            self.on_progress(Progress(stage, fraction, {k: float(v) for k, v in metrics.items()}))

    def check_cancelled(self) -> None:
        if self.should_cancel is not None and self.should_cancel():
            raise Cancelled("the run was cancelled")

    def generator(self, offset: int = 0) -> torch.Generator:
        """A fresh CPU generator seeded from ``seed + offset`` (runs stay replayable)."""
        return torch.Generator().manual_seed(self.seed + offset)

    def _checkpoint_path(self, name: str) -> Path | None:
        if self.checkpoint_dir is None:
            return None
        if not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"checkpoint name {name!r} must be alphanumeric")
        return self.checkpoint_dir / f"{name}.ckpt"

    def save_checkpoint(self, name: str, state: dict[str, Any]) -> None:
        """Write ``state`` (tensors, numbers, strings, nested dicts/lists) atomically."""
        path = self._checkpoint_path(name)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        torch.save(state, tmp)
        os.replace(tmp, path)

    def load_checkpoint(self, name: str) -> dict[str, Any] | None:
        """The last state saved under ``name``, or None. Read with ``weights_only=True``."""
        path = self._checkpoint_path(name)
        if path is None or not path.exists():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            log.warning("ignoring unreadable checkpoint %s", path, exc_info=True)
            return None
