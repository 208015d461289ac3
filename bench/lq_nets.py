"""LQ-Nets on Fashion-MNIST LeNet5 from a float model, and its training-step cost on ResNet-20.

    .venv/bin/python bench/lq_nets.py                              # from the repo root
    .venv/bin/python bench/lq_nets.py --rows W2A2 W1A2 W2/32 step --epochs 3

Accuracy rows (issue 8): W1A2, W2A2, W3A3, W4A4, W2/32, W3/32 (A32 = float activations). Each
row loads the float LeNet5 (``--float-weights``; trained first with ``python -m quantcore train
--arch lenet5 --dataset fashion-mnist --epochs 5`` when the file is missing), runs
``quantcore.get_method("lq_nets").quantize`` with params from ``parse_params`` built on the
method's ``SMALL_DATA_PRESET`` (15 epochs, batch 128, SGD Nesterov lr 0.01, cosine, wd 5e-5,
``basis_init="qem"``), with ``--epochs`` / ``--lr`` overriding the preset's and nothing else.
Columns:

- float / quant top-1: the Fashion-MNIST test split (10,000 images); delta = quant - float (pt).
- avg bits: bits per weight over the quantized layers (conv2, fc1: conv1 and the last FC stay
  float, §6.1), as ``quantcore.size_report`` counts them.
- theory B: ``size_report(...).quantized_bytes`` (codes + bases + every float part);
  file B: the ``.qpack`` written by ``quantcore.save_artifact`` to a temporary folder;
  ratio: float model bytes / file bytes.
- reload: max |logit difference| between the in-memory model and ``load_artifact`` of the file
  on one validation batch (0 = identical).
- wall s: ``method.quantize`` (calibration + training; the shared loop validates every epoch).

Step-time row (``step``): ResNet-20 (``quantcore.build("resnet20")``) at batch ``--batch`` on
random 3x32x32 input. The W2A2 model comes from the same ``quantize`` call, run for one epoch
on one batch of random images (official basis init), then put back in train mode. Float and
W2A2 steps (forward + cross-entropy + backward + SGD step) alternate, ``--warmup`` pairs
first; each round (``--repeats``, default 1) gives the median of ``--steps`` steps of each,
their ratio (target <= 1.5x), and the median of the per-pair ratios (more robust when other
jobs share the CPU); with several rounds a last line gives the median of the rounds' pair
ratios. ``--threads`` sets torch's CPU threads (default: torch's own choice).

The quantizers' sweep runs compiled (``quantcore.fusion``) unless ``QUANTCORE_FUSE=0`` is set;
the warm-up pairs (and the first accuracy row) include the one-time compile. Run once with
``QUANTCORE_FUSE=0`` for the op-by-op numbers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset, TensorDataset

import quantcore
from quantcore.methods.lq_nets import SMALL_DATA_PRESET

try:  # run as `python bench/lq_nets.py` (bench/ on the path) or as `python -m bench.lq_nets`
    import _shared
except ImportError:
    from bench import _shared

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FLOAT = ROOT / "var/bench/lenet5-fashion-mnist.safetensors"
SETTINGS: dict[str, tuple[int, int]] = {  # row name -> (w_bits, a_bits)
    "W1A2": (1, 2),
    "W2A2": (2, 2),
    "W3A3": (3, 3),
    "W4A4": (4, 4),
    "W2/32": (2, 32),
    "W3/32": (3, 32),
}
STEP_ROW = "step"
STEP_TARGET = 1.5
BARS = {"W2A2": 1.5, "W1A2": 3.0, "W2/32": 0.5}  # issue 8: max drop from float, in points


# --- accuracy rows ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AccuracyRow:
    setting: str
    epochs: int
    float_top1: float
    top1: float
    average_bits: float
    theory_bytes: int
    file_bytes: int
    float_bytes: int
    reload_diff: float
    seconds: float

    @property
    def delta(self) -> float:
        return self.top1 - self.float_top1

    def bar(self) -> str:
        limit = BARS.get(self.setting)
        if limit is None:
            return "-"
        return f"{'met' if -self.delta <= limit else 'NOT met'} (<= {limit:g})"


def run_setting(
    setting: str,
    overrides: dict[str, Any],
    weights: Path,
    data: quantcore.DataBundle,
    float_top1: float,
    device: torch.device,
    seed: int,
    out_dir: Path,
) -> AccuracyRow:
    w_bits, a_bits = SETTINGS[setting]
    params = quantcore.parse_params(
        "lq_nets", {**SMALL_DATA_PRESET, **overrides, "w_bits": w_bits, "a_bits": a_bits}
    )
    ctx = quantcore.RunContext(device=device, seed=seed)
    m = _shared.quantize_and_measure(
        "lq_nets",
        params,
        weights=weights,
        data=data,
        ctx=ctx,
        artifact=out_dir / f"lenet5-{setting.replace('/', 'A')}.qpack",
    )
    _, val_loader = data.loaders(256, seed=seed)
    x, _ = next(iter(val_loader))
    with torch.no_grad():
        loaded = quantcore.load_artifact(m.artifact, device)
        diff = float((m.model(x.to(device)) - loaded(x.to(device))).abs().max())
    return AccuracyRow(
        setting=setting,
        epochs=params.epochs,
        float_top1=float_top1,
        top1=m.top1,
        average_bits=m.sizes.average_bits,
        theory_bytes=m.sizes.quantized_bytes,
        file_bytes=m.file_bytes,
        float_bytes=m.sizes.float_bytes,
        reload_diff=diff,
        seconds=m.seconds,
    )


ACC_HEADER = (
    f"{'setting':<7} {'epochs':>6} {'float top-1':>11} {'quant top-1':>11} {'delta pt':>8} "
    f"{'avg bits':>8} {'theory B':>9} {'file B':>9} {'ratio':>6} {'reload':>7} {'wall s':>7}  bar"
)


def format_row(r: AccuracyRow) -> str:
    return (
        f"{r.setting:<7} {r.epochs:>6} {r.float_top1:>11.2f} {r.top1:>11.2f} {r.delta:>+8.2f} "
        f"{r.average_bits:>8.3g} {r.theory_bytes:>9,} {r.file_bytes:>9,} "
        f"{r.float_bytes / r.file_bytes:>5.1f}x {r.reload_diff:>7.1g} {r.seconds:>7.0f}  {r.bar()}"
    )


# --- step-time row ----------------------------------------------------------------------------


class _RandomImages(Dataset):
    """``count`` random 3x32x32 images with labels; exposes ``targets`` like the real splits."""

    def __init__(self, count: int, classes: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.inner = TensorDataset(
            torch.randn(count, 3, 32, 32, generator=gen),
            torch.randint(0, classes, (count,), generator=gen),
        )
        self.targets = self.inner.tensors[1]

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner[i]


def _w2a2_resnet20(batch: int, device: torch.device, seed: int) -> nn.Module:
    """ResNet-20 through the registry at W2A2: one epoch on one batch of random images."""
    images = _RandomImages(batch, 10, seed)
    data = quantcore.DataBundle(
        name="random",
        train=images,
        val=images,
        num_classes=10,
        in_channels=3,
        input_size=(32, 32),
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
    )
    params = quantcore.parse_params(
        "lq_nets", {"w_bits": 2, "a_bits": 2, "epochs": 1, "batch_size": batch}
    )
    model = quantcore.build("resnet20", num_classes=10)
    ctx = quantcore.RunContext(device=device, seed=seed)
    return quantcore.get_method("lq_nets").quantize(model, data, params, ctx)


def _step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> Any:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    return step


def step_time(
    batch: int, steps: int, warmup: int, device: torch.device, seed: int, repeats: int = 1
) -> str:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    float_step = _step_fn(quantcore.build("resnet20", num_classes=10).to(device), x, y, device)
    quant_step = _step_fn(_w2a2_resnet20(batch, device, seed), x, y, device)
    for _ in range(warmup):
        float_step(), quant_step()
    header = (
        f"{'step time':<22} {'round':>5} {'batch':>5} {'steps':>5} {'float ms':>9} "
        f"{'W2A2 ms':>9} {'ratio':>6} {'pair ratio':>10}  target"
    )
    lines, ratios = [header], []
    for r in range(repeats):
        pairs = [(float_step(), quant_step()) for _ in range(steps)]
        f = statistics.median(p[0] for p in pairs)
        q = statistics.median(p[1] for p in pairs)
        pair_ratio = statistics.median(p[1] / p[0] for p in pairs)
        ratios.append(pair_ratio)
        lines.append(
            f"{'ResNet-20 3x32x32':<22} {r + 1:>5} {batch:>5} {steps:>5} {f * 1e3:>9.1f} "
            f"{q * 1e3:>9.1f} {q / f:>5.2f}x {pair_ratio:>9.2f}x  {_met(q / f)}"
        )
    if repeats > 1:
        med = statistics.median(ratios)
        lines.append(
            f"{'median of rounds':<22} {repeats:>5} {batch:>5} {steps:>5} {'':>9} {'':>9} "
            f"{'':>6} {med:>9.2f}x  {_met(med)}"
        )
    return "\n".join(lines)


def _met(ratio: float) -> str:
    return f"{'met' if ratio <= STEP_TARGET else 'NOT met'} (<= {STEP_TARGET:g}x)"


# --- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    choices = [*SETTINGS, STEP_ROW]
    parser.add_argument(
        "--rows",
        nargs="+",
        choices=choices,
        default=choices,
        metavar="ROW",
        help=f"subset of {' '.join(choices)} (default: all, in that order)",
    )
    parser.add_argument("--epochs", type=int, help="override SMALL_DATA_PRESET's epochs (15)")
    parser.add_argument("--lr", type=float, help="override SMALL_DATA_PRESET's lr (0.01)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument("--float-weights", type=Path, default=DEFAULT_FLOAT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=128, help="step-time batch size")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=3, help="untimed step pairs first")
    parser.add_argument(
        "--repeats", type=int, default=1, help="step-time rounds of --steps pairs (one process)"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    overrides = {k: v for k, v in {"epochs": args.epochs, "lr": args.lr}.items() if v is not None}
    preset = {**SMALL_DATA_PRESET, **overrides}
    print(
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC  {_shared.cpu_model()} "
        f"({os.cpu_count()} cpus, "
        f"load {os.getloadavg()[0]:.1f})  device={device} threads={torch.get_num_threads()} "
        f"torch={torch.__version__}"
    )
    print(f"params: SMALL_DATA_PRESET + {overrides or 'nothing'} -> {preset}", flush=True)

    settings = [r for r in args.rows if r in SETTINGS]
    if settings:
        _shared.ensure_float_weights(args.float_weights, args.seed)
        data = quantcore.load_dataset("fashion-mnist")
        model = quantcore.load_model(args.float_weights, "lenet5", num_classes=data.num_classes)
        _, val_loader = data.loaders(256, seed=args.seed)
        ctx = quantcore.RunContext(device=device, seed=args.seed)
        float_top1 = quantcore.evaluate(model.to(device), val_loader, ctx).top1
        print(f"float LeNet5 {args.float_weights}: top-1 {float_top1:.2f}%")
        print(ACC_HEADER, flush=True)
        with tempfile.TemporaryDirectory(prefix="bench-lq-nets-") as tmp:
            for setting in settings:
                row = run_setting(
                    setting,
                    overrides,
                    args.float_weights,
                    data,
                    float_top1,
                    device,
                    args.seed,
                    Path(tmp),
                )
                print(format_row(row), flush=True)
    if STEP_ROW in args.rows:
        row = step_time(args.batch, args.steps, args.warmup, device, args.seed, args.repeats)
        print(row, flush=True)


if __name__ == "__main__":
    main()
