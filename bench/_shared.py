"""What the method benchmarks share: the float starting point, one measured quantization run,
a Markdown table, and the machine's CPU name. Not a benchmark itself."""

from __future__ import annotations

import contextlib
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import quantcore
from quantcore.metrics import SizeReport
from quantcore.training import seed_everything

ROOT = Path(__file__).resolve().parent.parent
ARCH = "lenet5"
DATASET = "fashion-mnist"
DEFAULT_WEIGHTS = ROOT / "var/bench/lenet5-fashion-mnist.safetensors"


def ensure_float_weights(path: Path, seed: int, device: str = "cpu") -> Path:
    """Train the float LeNet5 with the CLI's own command (5 epochs) when ``path`` is missing."""
    if not path.exists():
        cmd = [sys.executable, "-m", "quantcore", "train", "--arch", ARCH, "--dataset", DATASET]
        cmd += ["--epochs", "5", "--seed", str(seed), "--device", device, "--out", str(path)]
        print("training the float model:", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)
    return path


@dataclass(frozen=True)
class Measured:
    """One quantization run: the model, its accuracy, sizes, artifact and wall time."""

    method: Any  # the Method instance that ran (some record per-layer facts on it)
    model: nn.Module
    params: Any
    top1: float
    sizes: SizeReport
    artifact: Path
    seconds: float

    @property
    def file_bytes(self) -> int:
        return self.artifact.stat().st_size


def quantize_and_measure(
    method_name: str,
    params: Any,
    *,
    weights: Path,
    data: quantcore.DataBundle,
    ctx: quantcore.RunContext,
    artifact: Path,
    method_data: quantcore.DataBundle | None = None,
    eval_batch: int = 256,
) -> Measured:
    """Load the float model, quantize it with the registered method and its parsed ``params``
    (timed), evaluate the result
    on ``data``'s validation split and write its ``.qpack`` to ``artifact``.

    ``method_data`` is what the method trains on (e.g. a subset); ``data`` by default.
    """
    method = quantcore.get_method(method_name)
    seed_everything(ctx.seed)
    model = quantcore.load_model(weights, ARCH, num_classes=data.num_classes).to(ctx.device)
    start = time.perf_counter()
    qmodel = method.quantize(model, method_data or data, params, ctx)
    seconds = time.perf_counter() - start
    _, val_loader = data.loaders(eval_batch, seed=ctx.seed)
    top1 = quantcore.evaluate(qmodel, val_loader, ctx).top1
    spec = quantcore.ModelSpec(ARCH, data.num_classes, data.in_channels, data.input_size)
    quantcore.save_artifact(
        qmodel, artifact, spec=spec, method=method_name, params=params.model_dump()
    )
    return Measured(method, qmodel, params, top1, quantcore.size_report(qmodel), artifact, seconds)


def size_columns(float_top1: float, m: Measured) -> dict[str, str]:
    """The accuracy and size columns every method table has."""
    return {
        "float top-1": f"{float_top1:.2f}",
        "quant top-1": f"{m.top1:.2f}",
        "delta pt": f"{m.top1 - float_top1:+.2f}",
        "avg bits": f"{m.sizes.average_bits:.3g}",
        "theor. B": f"{m.sizes.quantized_bytes:,}",
        "qpack B": f"{m.file_bytes:,}",
        "ratio": f"{m.sizes.compression_ratio:.1f}x",
        "wall s": f"{m.seconds:.0f}",
    }


def print_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    """A Markdown table of ``rows`` (dicts keyed by ``columns``)."""
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |")
    print("| " + " | ".join("-" * w for w in widths) + " |")
    for r in rows:
        cells = (str(r[c]).ljust(w) for c, w in zip(columns, widths, strict=True))
        print("| " + " | ".join(cells) + " |", flush=True)


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"
