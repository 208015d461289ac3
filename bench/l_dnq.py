"""L-DNQ on Fashion-MNIST LeNet5: accuracy, size and wall time in float-epoch units.

    .venv/bin/python bench/l_dnq.py                                    # from the repo root
    .venv/bin/python bench/l_dnq.py --rows k3 k5 --preset lenet5_fashion_mnist

Every row starts from the same float LeNet5 (``--float-weights``; trained through the CLI's own
command ``python -m quantcore train --arch lenet5 --dataset fashion-mnist --epochs 5`` when the
file is missing) and runs the method through the registry (``quantcore.get_method("l_dnq")``,
``quantcore.parse_params``). By default the Params are the method's defaults, i.e. the official
settings (cascade plateau rule capped at ``cascade_max_epochs`` = 1000). ``--preset
lenet5_fashion_mnist`` applies ``LENET5_FASHION_MNIST`` of ``quantcore/methods/l_dnq.py`` (spec
§13, not from the paper: ``cascade_max_epochs`` = 300) under the row's kbits and data ratio,
``--preset lenet5_fashion_mnist_fast`` its time-bounded twin ``LENET5_FASHION_MNIST_FAST`` (cap
60, from this bench's measurements); ``--cascade-max-epochs N`` sets the cap for a time budget.
The table's "params" column says which settings a row ran with.

The method draws its own subset (``data_ratio``, seeded by ``subset_seed`` = 0, not balanced, as
the official code); the bench hands it the full training split. Top-1 is on the full 10,000-image
test set.

Rows: kbits (number of levels K, 3 = ternary) 3, 5, 7 and 9 on 1 % of the training data (600
images), and kbits 3 on 10 % (6,000). Columns: setting, data fraction, float and quantized top-1
(%), delta (points), average bits per quantized weight, theoretical size (``size_report``), the
``.qpack`` file size (``quantcore.save_artifact`` in a temporary folder), compression ratio
(float / theoretical), wall time of ``method.quantize`` (s) and in float-epoch units, and the
cascade epochs each layer used (``LDNQ.layer_records``), in network order, and the layers
whose cascade ran on a cached front (``LDNQ.cached_fronts``, 1-based).

The float-epoch unit: one epoch of the float LeNet5 through ``quantcore.training.train`` on the
full 60,000-image training set with the CLI's ``train`` settings (batch 128, SGD lr 0.05,
momentum 0.9, Nesterov, weight decay 5e-4), from fresh weights, measured in the same run
before the first row and after every row; a row is divided by the mean of the two epochs
around it (column "float epoch s"), so that a shared machine's load, which drifts over
minutes, weighs on both alike. ``--float-epoch-seconds S`` skips the measurement and uses S.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import quantcore
from quantcore.methods.l_dnq import LENET5_FASHION_MNIST, LENET5_FASHION_MNIST_FAST
from quantcore.training import seed_everything, train

try:  # run as `python bench/l_dnq.py` (bench/ on the path) or as `python -m bench.l_dnq`
    import _shared
except ImportError:
    from bench import _shared

ARCH = _shared.ARCH
DATASET = _shared.DATASET
DEFAULT_WEIGHTS = _shared.DEFAULT_WEIGHTS
PRESETS: dict[str, dict[str, Any]] = {
    "official": {},
    "lenet5_fashion_mnist": {
        k: v for k, v in LENET5_FASHION_MNIST.items() if k not in ("kbits", "data_ratio")
    },
    "lenet5_fashion_mnist_fast": {
        k: v for k, v in LENET5_FASHION_MNIST_FAST.items() if k not in ("kbits", "data_ratio")
    },
}

# row key: (kbits, data ratio)
ROWS: dict[str, tuple[int, float]] = {
    "k3": (3, 0.01),
    "k5": (5, 0.01),
    "k7": (7, 0.01),
    "k9": (9, 0.01),
    "k3-10pct": (3, 0.10),
}
COLUMNS = (
    "setting",
    "data",
    "params",
    "float top-1",
    "quant top-1",
    "delta pt",
    "avg bits",
    "theor. B",
    "qpack B",
    "ratio",
    "wall s",
    "float epoch s",
    "float epochs",
    "cascade epochs/layer",
    "cached fronts",
)


def float_epoch_seconds(data: quantcore.DataBundle, device: torch.device, seed: int) -> float:
    """Wall seconds of one float LeNet5 training epoch on the full train split (CLI settings)."""
    seed_everything(seed)
    model = quantcore.build(ARCH, num_classes=data.num_classes, in_channels=data.in_channels)
    train_loader, _ = data.loaders(128, seed=seed)
    opt = torch.optim.SGD(
        model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True
    )
    ctx = quantcore.RunContext(device=device, seed=seed)
    start = time.perf_counter()
    train(model, train_loader, epochs=1, optimizer=opt, ctx=ctx)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _params(row: str, args: argparse.Namespace) -> tuple[Any, str]:
    kbits, ratio = ROWS[row]
    raw: dict[str, Any] = {**PRESETS[args.preset], "kbits": kbits, "data_ratio": ratio}
    label = args.preset
    if args.cascade_max_epochs is not None:
        raw["cascade_max_epochs"] = args.cascade_max_epochs
        label += f", cap {args.cascade_max_epochs}"
    return quantcore.parse_params("l_dnq", raw), label


def _log_layer(p: quantcore.Progress) -> None:
    """Print one line per finished layer (its record) and every 50th cascade epoch."""
    m = p.metrics
    if p.stage == "l_dnq:cascade" and m.get("cascade_epoch", 1) % 50 == 0:
        print(
            f"  layer {m['layer']:.0f}: cascade epoch {m['cascade_epoch']:.0f}, "
            f"loss {m['cascade_loss']:.4g}",
            flush=True,
        )
    if p.stage == "l_dnq" and "cascade_epochs" in m:
        print(
            f"  layer {m['layer']:.0f}/{m['layers']:.0f}: alpha {m['alpha']:.4g}, ADMM error "
            f"{m['admm_initial_error']:.4g} -> {m['admm_error']:.4g} in "
            f"{m['admm_iterations']:.0f} it, cascade {m['cascade_epochs']:.0f} epochs, "
            f"loss {m['cascade_loss']:.4g}",
            flush=True,
        )


def run_row(
    row: str,
    args: argparse.Namespace,
    data: quantcore.DataBundle,
    float_top1: float,
    tmp: Path,
) -> tuple[dict[str, Any], float]:
    """One row's columns but the float-epoch ones, and the wall seconds of the method."""
    params, label = _params(row, args)
    ctx = quantcore.RunContext(
        device=torch.device(args.device), seed=args.seed, on_progress=_log_layer
    )
    m = _shared.quantize_and_measure(
        "l_dnq",
        params,
        weights=args.float_weights,
        data=data,
        ctx=ctx,
        artifact=tmp / f"l_dnq-{row}.qpack",
        eval_batch=args.eval_batch,
    )
    records = getattr(m.method, "layer_records", [])
    columns = {
        "setting": f"kbits {params.kbits}",
        "data": f"{params.data_ratio:.0%}",
        "params": label,
        **_shared.size_columns(float_top1, m),
        "cascade epochs/layer": "/".join(str(r.cascade_epochs) for r in records),
        # the layers whose cascade ran on a cached front (LDNQ.cached_fronts), 1-based
        "cached fronts": ",".join(
            str(i + 1)
            for i, r in enumerate(records)
            if r.layer in getattr(m.method, "cached_fronts", {})
        )
        or "-",
    }
    return columns, m.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument(
        "--preset",
        choices=list(PRESETS),
        default="official",
        help="official: the Params defaults; lenet5_fashion_mnist: cascade cap 300 (spec §13); "
        "lenet5_fashion_mnist_fast: cap 60",
    )
    parser.add_argument("--cascade-max-epochs", type=int, help="lower cascade cap (time budget)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument("--float-weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument(
        "--float-epoch-seconds", type=float, help="skip measuring the float epoch; use this"
    )
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-batch", type=int, default=1000)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    _shared.ensure_float_weights(args.float_weights, args.seed, args.device)
    data = quantcore.load_dataset(DATASET)
    device = torch.device(args.device)
    print(
        f"l_dnq on {DATASET} {ARCH}: preset {args.preset} {PRESETS[args.preset]}; "
        f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__}",
        flush=True,
    )

    def float_epoch() -> float:
        if args.float_epoch_seconds is not None:
            return float(args.float_epoch_seconds)
        seconds = float_epoch_seconds(data, device, args.seed)
        print(f"float epoch (60,000 images, batch 128): {seconds:.1f} s", flush=True)
        return seconds

    before = float_epoch()
    ctx = quantcore.RunContext(device=device, seed=args.seed)
    float_model = quantcore.load_model(args.float_weights, ARCH, num_classes=data.num_classes)
    _, val_loader = data.loaders(args.eval_batch, seed=args.seed)
    float_top1 = quantcore.evaluate(float_model.to(device), val_loader, ctx).top1

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for row in args.rows:
            columns, seconds = run_row(row, args, data, float_top1, Path(tmp))
            after = float_epoch()
            epoch_s = (before + after) / 2
            columns["float epoch s"] = f"{epoch_s:.1f}"
            columns["float epochs"] = f"{seconds / epoch_s:.2f}"
            rows.append(columns)
            before = after
            print(f"done: {rows[-1]}", flush=True)
    _shared.print_table(rows, COLUMNS)


if __name__ == "__main__":
    main()
