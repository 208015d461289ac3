"""Which device a worker process computes on, and its peak memory."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from quantcore.memory import TensorPeakMeter


def pick_device() -> torch.device:
    """The one CUDA device this process sees (CUDA_VISIBLE_DEVICES pins it), else the CPU."""
    return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")


@dataclass
class Peak:
    """The most bytes of tensors alive at once on the job's device during a measured span."""

    bytes: int | None = None


@contextmanager
def measure_peak(device: torch.device, baseline: int, into: Peak) -> Iterator[None]:
    """Measure the tensor peak of the block into ``into.bytes``: the CUDA allocator's peak on a
    GPU; on the CPU, where PyTorch keeps no such statistic, quantcore's TensorPeakMeter, which
    counts the storages the block's operators create, on top of ``baseline`` bytes that
    already exist (the float model). Both are what ``quantcore.memory.estimate`` predicts."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        yield
        into.bytes = int(torch.cuda.max_memory_allocated(device))
        return
    with TensorPeakMeter(device.type, baseline=baseline) as meter:
        yield
    into.bytes = meter.peak


@contextmanager
def deterministic_algorithms(on: bool) -> Iterator[None]:
    """Within the block, only deterministic kernels (``torch.use_deterministic_algorithms``,
    cuDNN without autotuning) when ``on``; an operation that has none raises. cuBLAS also needs
    ``CUBLAS_WORKSPACE_CONFIG``, which each worker process sets when it starts."""
    if not on:
        yield
        return
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[1:]


def visible_cuda_devices() -> list[str]:
    """Indices of the CUDA devices on this host, without initialising CUDA in this process."""
    import subprocess

    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]
