"""Inference speed of a float model and its quantized artifact, measured side by side.

What is measured is what a user runs today: the artifact loaded with ``load_artifact``, whose
layers compute with dequantized float weights. Packed sub-byte weights need dedicated kernels to
be faster; without them the quantized model runs at about the float model's speed (a little
slower where activation quantizers add work), and the numbers say so rather than promise a
speed-up. Both models run on the same device with the same batch, interleaved round by round so
that a noisy neighbour slows both alike; the medians are reported.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn

NOTE = (
    "dequantized weights in float kernels: packed low-bit weights need dedicated kernels "
    "to run faster, so no speed-up is expected here"
)


@dataclass(frozen=True)
class Speed:
    batch_size: int
    latency_ms: float  # median time of one batch
    throughput: float  # inputs per second at that median

    def to_json(self) -> dict[str, float | int]:
        return asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare_speed(
    models: Mapping[str, nn.Module],
    input_shape: tuple[int, ...],
    *,
    batch_size: int,
    device: torch.device | str,
    rounds: int = 20,
    warmup: int = 3,
) -> dict[str, Speed]:
    """Median batch latency and throughput of each model on random input of ``input_shape``
    (without the batch dimension), the models taking turns each round."""
    if batch_size < 1 or rounds < 1 or warmup < 0:
        raise ValueError("batch_size and rounds must be positive, warmup not negative")
    device = torch.device(device)
    x = torch.randn(batch_size, *input_shape, device=device)
    times: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        model.eval().to(device)
    with torch.inference_mode():
        for step in range(warmup + rounds):
            for name, model in models.items():
                _sync(device)
                start = time.perf_counter()
                model(x)
                _sync(device)
                if step >= warmup:
                    times[name].append(time.perf_counter() - start)
    out = {}
    for name, values in times.items():
        median = statistics.median(values)
        out[name] = Speed(batch_size, 1000 * median, batch_size / median)
    return out
