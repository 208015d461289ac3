"""Quantization Networks on Fashion-MNIST LeNet5: accuracy, size and training-step cost.

    .venv/bin/python bench/qnets.py                                    # from the repo root
    .venv/bin/python bench/qnets.py --rows ternary pm4 w3a3 --train-fraction 0.1 --threads 1
    .venv/bin/python bench/qnets.py --rows          # the step-time line only

Every row starts from the same float LeNet5 (``--float-weights``; when the file is missing it is
trained by running ``python -m quantcore train --arch lenet5 --dataset fashion-mnist --epochs 5``
in a subprocess, the CLI's own code path) and runs the method through the registry
(``quantcore.get_method("qnets")``, ``parse_params``) with the ``fashion_lenet5`` preset of
``quantcore/methods/qnets.py``; ``--epochs``, ``--act-epochs`` and ``--joint-epochs`` override its
per-phase epoch counts, everything else (lr 1e-3, T0 20, scale_lr_mult 0.01, batch 128,
milestone 7) stays the preset's. ``--train-fraction`` trains on a seeded class-balanced part of
the 60,000 training images; the method's per-epoch validation (monitoring only, no model
selection) runs on ``--monitor-fraction`` of the test set, and the reported top-1 is always on
the full 10,000-image test set.

Rows (one per setting): weights only binary, ternary, 3(+-4); weights and activations W3(+-4)/A3
and W1/A2. Columns: epochs per phase (weights[/activations/joint]), float and quantized top-1 (%),
delta (points), average bits per quantized weight, theoretical size (``size_report``), the
``.qpack`` file size (written to a temporary folder with ``quantcore.save_artifact``), the
compression ratio float / theoretical, and the wall time of ``method.quantize``.

The step-time row: one training step (zero_grad, forward, cross-entropy, backward, optimizer
step) of LeNet5 quantized W 3(+-4) / A3 in the method's joint phase (soft weights through the
``ClippedChainSGD`` clip-then-chain step, soft activations) against the float LeNet5's SGD step, on
the same fixed batch of ``--step-batch`` images, interleaved in one loop; medians after warm-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

import quantcore
from quantcore.layers import quant_layers
from quantcore.methods.qnets import (
    PRESETS,
    ClippedChainSGD,
    QNetsActQuantizer,
    QNetsWeightQuantizer,
)

try:  # run as `python bench/qnets.py` (bench/ on the path) or as `python -m bench.qnets`
    import _shared
except ImportError:
    from bench import _shared

ARCH = _shared.ARCH
DATASET = _shared.DATASET
DEFAULT_WEIGHTS = _shared.DEFAULT_WEIGHTS
PRESET = "fashion_lenet5"

# setting label, params over the preset
ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "binary": ("W1 binary", {"weight_levels": "binary", "act_bits": 0}),
    "ternary": ("W2 ternary", {"weight_levels": "ternary", "act_bits": 0}),
    "pm4": ("W3(+-4)", {"weight_levels": "pm4", "act_bits": 0}),
    "w3a3": ("W3(+-4)/A3", {"weight_levels": "pm4", "act_bits": 3}),
    "w1a2": ("W1/A2", {"weight_levels": "binary", "act_bits": 2}),
}
COLUMNS = (
    "setting",
    "epochs W/A/J",
    "float top-1",
    "quant top-1",
    "delta pt",
    "avg bits",
    "theor. B",
    "qpack B",
    "ratio",
    "wall s",
)


def _bench_bundle(
    data: quantcore.DataBundle, train_fraction: float, monitor_fraction: float, seed: int
) -> quantcore.DataBundle:
    """The bundle the method sees: a train subset and a small monitoring split."""
    train = data.train
    if train_fraction < 1.0:
        train = quantcore.subset(data.train, train_fraction, seed=seed)
    val = (
        quantcore.subset(data.val, monitor_fraction, seed=seed)
        if monitor_fraction < 1
        else data.val
    )
    return dataclasses.replace(data, train=train, val=val)


def _params(row: str, args: argparse.Namespace) -> Any:
    raw = {**PRESETS[PRESET], **ROWS[row][1]}
    for key in ("epochs", "act_epochs", "joint_epochs"):
        if getattr(args, key) is not None:
            raw[key] = getattr(args, key)
    return quantcore.parse_params("qnets", raw)


def run_row(
    row: str,
    args: argparse.Namespace,
    data: quantcore.DataBundle,
    bundle: quantcore.DataBundle,
    float_top1: float,
    tmp: Path,
) -> dict[str, Any]:
    params = _params(row, args)
    ctx = quantcore.RunContext(device=torch.device(args.device), seed=args.seed)
    m = _shared.quantize_and_measure(
        "qnets",
        params,
        weights=args.float_weights,
        data=data,
        method_data=bundle,
        ctx=ctx,
        artifact=tmp / f"qnets-{row}.qpack",
        eval_batch=args.eval_batch,
    )
    phases = [params.epochs] + ([params.act_epochs, params.joint_epochs] if params.act_bits else [])
    return {
        "setting": ROWS[row][0],
        "epochs W/A/J": "/".join(map(str, phases)),
        **_shared.size_columns(float_top1, m),
    }


def step_times(args: argparse.Namespace, data: quantcore.DataBundle) -> tuple[float, float, int]:
    """Median seconds of the float and the W3(+-4)/A3 training step, interleaved; and the count."""
    device = torch.device(args.device)
    ctx = quantcore.RunContext(device=device, seed=args.seed)
    # A quantized model set up by the method itself (thresholds, calibrated activations), from
    # one short epoch per phase on 512 images.
    tiny = _bench_bundle(data, 512 / len(data.train), 256 / len(data.val), args.seed)
    raw = {**PRESETS[PRESET], **ROWS["w3a3"][1], "epochs": 1, "act_epochs": 1, "joint_epochs": 1}
    params = quantcore.parse_params("qnets", raw)
    load = quantcore.load_model
    qmodel = quantcore.get_method("qnets").quantize(
        load(args.float_weights, ARCH, num_classes=data.num_classes), tiny, params, ctx
    )
    fmodel = load(args.float_weights, ARCH, num_classes=data.num_classes).to(device)

    # The joint phase's step: soft weights in leaf mode, clip, chain rule, SGD (qnets._run_phase).
    wqs = [
        q
        for _, layer in quant_layers(qmodel)
        if isinstance(q := layer.weight_quantizer, QNetsWeightQuantizer)
    ]
    aqs = [m for m in qmodel.modules() if isinstance(m, QNetsActQuantizer)]
    scale_ids = {id(t) for q in (*wqs, *aqs) for t in q.parameters()}
    latent = {id(layer.weight) for _, layer in quant_layers(qmodel)}
    network = [t for t in qmodel.parameters() if id(t) not in scale_ids]
    scales = [t for t in qmodel.parameters() if id(t) in scale_ids]
    for wq in wqs:
        wq.mode, wq.leaf = "soft", True
    qopt = ClippedChainSGD(
        [
            {"params": network, "weight_decay": params.weight_decay},
            {"params": scales, "weight_decay": 0.0, "lr": params.lr * params.scale_lr_mult},
        ],
        lr=params.lr,
        momentum=params.momentum,
        weight_quantizers=wqs,
        clip_params=[t for t in network if id(t) not in latent]
        + [t for q in aqs for t in q.parameters()],
        max_norm=params.max_grad_norm,
    )
    fopt = torch.optim.SGD(
        fmodel.parameters(),
        lr=params.lr,
        momentum=params.momentum,
        weight_decay=params.weight_decay,
    )
    qmodel.train()
    fmodel.train()
    train_loader, _ = data.loaders(args.step_batch, seed=args.seed)
    x, y = next(iter(train_loader))
    x, y = x.to(device), y.to(device)

    def one(model: torch.nn.Module, opt: torch.optim.Optimizer) -> float:
        _shared.sync(device)
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        _shared.sync(device)
        return time.perf_counter() - start

    ft, qt = [], []
    for i in range(args.warmup + args.steps):
        pair = [(fmodel, fopt, ft), (qmodel, qopt, qt)]
        for model, opt, out in pair if i % 2 == 0 else pair[::-1]:  # alternate who goes first
            t = one(model, opt)
            if i >= args.warmup:
                out.append(t)
    return statistics.median(ft), statistics.median(qt), len(ft)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", nargs="*", choices=list(ROWS), default=list(ROWS), help="none: step time only"
    )
    parser.add_argument("--epochs", type=int, help="phase 1 (weights) epochs; preset: 10")
    parser.add_argument("--act-epochs", type=int, help="phase 2 (activations) epochs; preset: 3")
    parser.add_argument("--joint-epochs", type=int, help="phase 3 (joint) epochs; preset: 5")
    parser.add_argument("--train-fraction", type=float, default=1.0, help="of the 60k train images")
    parser.add_argument("--monitor-fraction", type=float, default=0.1, help="per-epoch val share")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument("--float-weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-batch", type=int, default=1000)
    parser.add_argument("--step-batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="timed steps of each model")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-step-time", dest="step_time", action="store_false")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    _shared.ensure_float_weights(args.float_weights, args.seed, args.device)
    data = quantcore.load_dataset(DATASET)
    bundle = _bench_bundle(data, args.train_fraction, args.monitor_fraction, args.seed)
    print(
        f"qnets on {DATASET} {ARCH}: preset {PRESET} {PRESETS[PRESET]}; train images "
        f"{len(bundle.train):,}; device={args.device} threads={torch.get_num_threads()} "
        f"torch={torch.__version__}",
        flush=True,
    )
    device = torch.device(args.device)
    ctx = quantcore.RunContext(device=device, seed=args.seed)
    float_model = quantcore.load_model(args.float_weights, ARCH, num_classes=data.num_classes)
    _, val_loader = data.loaders(args.eval_batch, seed=args.seed)
    float_top1 = quantcore.evaluate(float_model.to(device), val_loader, ctx).top1

    if args.step_time:
        f_s, q_s, n = step_times(args, data)
        print(
            f"step time (batch {args.step_batch}, median of {n} interleaved after {args.warmup} "
            f"warm-up): float {f_s * 1e3:.1f} ms, W3(+-4)/A3 {q_s * 1e3:.1f} ms, "
            f"ratio {q_s / f_s:.2f}x",
            flush=True,
        )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for row in args.rows:
            rows.append(run_row(row, args, data, bundle, float_top1, Path(tmp)))
            print(f"done: {rows[-1]}", flush=True)
    if rows:
        _shared.print_table(rows, COLUMNS)


if __name__ == "__main__":
    main()
