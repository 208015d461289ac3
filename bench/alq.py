# ruff: noqa: RUF001, RUF002, RUF003  (the spec's notation: α, β, ×)
"""ALQ on Fashion-MNIST LeNet5: accuracy, bits, size and the cost of its three step kinds.

    .venv/bin/python bench/alq.py                                      # from the repo root
    .venv/bin/python bench/alq.py --rows 1.0 0.7 --train-fraction 0.1 --threads 1

Every row starts from the same float LeNet5 (``--float-weights``; trained through the CLI's own
command ``python -m quantcore train --arch lenet5 --dataset fashion-mnist --epochs 5`` when the
file is missing) and runs the method through the registry (``quantcore.get_method("alq")``,
``parse_params``) with the bench preset ``BENCH_PRESET`` below: the module's
``SMALL_DATA_PRESET`` (R = 2 outer iterations of 2 basis / 1 coordinate / 1 pruning epoch, then
POSTTRAIN 2 STE / 1 coordinate epoch; top_k 0.05, batch 64, lr 1e-3) with one change,
``prune_ratio`` 0.8 → 1.6. With pr = 0.8 two pruning epochs keep about e^{-1.6} ≈ 20% of the
6-bit start (≈ 1.2 bits, spec §6.2), so 0.7 and 0.4 bit would be out of reach in R = 2; with
pr = 1.6 they are reachable and the row's ``target_bitwidth`` (the §6.3 extension) stops pruning
as soon as the weighted average is at or below it. Every other field keeps its paper default.
``--outer``, ``--epochs`` (basis epochs per outer iteration), ``--coord-epochs``,
``--ste-epochs``, ``--post-coord-epochs`` and ``--prune-ratio`` override the preset.
``--train-fraction`` trains on a seeded class-balanced part of the 60,000 training images
(``quantcore.subset``); M_p follows the loader length, so a pruning epoch removes the same share
of slots on a subset. The method does no per-epoch validation; the reported top-1 is always on
the full 10,000-image test set.

Rows (``--rows``): target average bitwidth 2.0, 1.0, 0.7 and 0.4. Columns: epochs
(R×(basis/coord/prune) + STE/coord), float and quantized top-1 (%), delta (points), average bits
(``size_report``), bits per layer (conv1/conv2/fc1/fc2), theoretical size (``size_report``), the
§9 storage of the spec (bases + float32 α + float32 biases, ``alq.storage_bytes``) and its
"bases only" figure (the paper's column), the ``.qpack`` file size (written to a temporary folder
with ``quantcore.save_artifact``), the compression ratio float / theoretical, and the wall time of
``method.quantize``.

The step-time rows: one training step of LeNet5 at ``--step-batch`` (zero_grad, forward,
cross-entropy, backward, the FP Adam step on biases, then the ALQ update of every layer and the
write-back of ŵ) in each of the three modes (basis §5.2, coordinate §5.1, pruning §6.1 with the
paper's defaults pr 0.8, top_k 0.005 and T = 469) against the float LeNet5's Adam step, on one
fixed batch, the four interleaved in one loop (order rotated every round); medians after warm-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

import quantcore
from quantcore.layers import quant_layers
from quantcore.methods import alq

try:  # run as `python bench/alq.py` (bench/ on the path) or as `python -m bench.alq`
    import _shared
except ImportError:
    from bench import _shared

ARCH = _shared.ARCH
DATASET = _shared.DATASET
DEFAULT_WEIGHTS = _shared.DEFAULT_WEIGHTS
BENCH_PRESET: dict[str, Any] = {**alq.SMALL_DATA_PRESET, "prune_ratio": 1.6}
ROWS = ("2.0", "1.0", "0.7", "0.4")
COLUMNS = (
    "target bits",
    "epochs R×(B/C/P)+S/C",
    "float top-1",
    "quant top-1",
    "delta pt",
    "avg bits",
    "bits conv1/conv2/fc1/fc2",
    "theor. B",
    "§9 B",
    "bases B",
    "qpack B",
    "ratio",
    "wall s",
)
OVERRIDES = {  # flag dest → Params field
    "outer": "outer_iterations",
    "epochs": "epochs_basis",
    "coord_epochs": "epochs_coord",
    "ste_epochs": "posttrain_ste_epochs",
    "post_coord_epochs": "posttrain_coord_epochs",
    "prune_ratio": "prune_ratio",
}


def _params(row: str | None, args: argparse.Namespace) -> alq.ALQParams:
    raw = dict(BENCH_PRESET)
    for flag, field in OVERRIDES.items():
        if getattr(args, flag) is not None:
            raw[field] = getattr(args, flag)
    if row is not None:
        raw["target_bitwidth"] = float(row)
    return quantcore.parse_params("alq", raw)  # type: ignore[return-value]


def _epochs_label(p: alq.ALQParams) -> str:
    post = f"+{p.posttrain_ste_epochs}/{p.posttrain_coord_epochs}" if p.posttrain else ""
    return f"{p.outer_iterations}×({p.epochs_basis}/{p.epochs_coord}/{p.epochs_prune}){post}"


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
        "alq",
        params,
        weights=args.float_weights,
        data=data,
        method_data=bundle,
        ctx=ctx,
        artifact=tmp / f"alq-{row}.qpack",
        eval_batch=args.eval_batch,
    )
    storage = alq.storage_bytes(m.model)
    return {
        "target bits": row,
        "epochs R×(B/C/P)+S/C": _epochs_label(params),
        **_shared.size_columns(float_top1, m),
        "avg bits": f"{m.sizes.average_bits:.3f}",
        "bits conv1/conv2/fc1/fc2": "/".join(f"{r.bits:.2f}" for r in m.sizes.layers),
        "§9 B": f"{storage['storage_bytes']:,.0f}",
        "bases B": f"{storage['bases_only_bytes']:,.0f}",
    }


def step_times(
    args: argparse.Namespace, data: quantcore.DataBundle
) -> tuple[dict[str, float], int]:
    """Median seconds of the float step and the ALQ basis/coordinate/pruning steps, interleaved."""
    device = torch.device(args.device)
    ctx = quantcore.RunContext(device=device, seed=args.seed)
    load = quantcore.load_model
    # The method's own set-up (surgery, the §2.3 LeNet5 structures, §3 init) and no epoch: a
    # schedule of 1 outer iteration with 0 epochs of every kind and no POSTTRAIN.
    zero = {"outer_iterations": 1, "epochs_basis": 0, "epochs_coord": 0, "epochs_prune": 0}
    params = quantcore.parse_params("alq", {**zero, "posttrain": False})
    assert isinstance(params, alq.ALQParams)
    qmodel = quantcore.get_method("alq").quantize(
        load(args.float_weights, ARCH, num_classes=data.num_classes), data, params, ctx
    )
    fmodel = load(args.float_weights, ARCH, num_classes=data.num_classes).to(device)
    layers = [(layer, layer.weight_quantizer) for _, layer in quant_layers(qmodel)]
    quantizers = [q for _, q in layers]
    assert all(isinstance(q, alq.MultiBitQuantizer) for q in quantizers)
    weight_ids = {id(layer.weight) for layer, _ in layers}
    qadam = torch.optim.Adam([t for t in qmodel.parameters() if id(t) not in weight_ids], lr=1e-3)
    fadam = torch.optim.Adam(fmodel.parameters(), lr=1e-3)
    paper = alq.ALQParams()
    train_loader, _ = data.loaders(args.step_batch, seed=args.seed)
    m_p = alq.pruning_rate_per_step(
        paper.prune_ratio, paper.top_k, paper.epochs_prune, len(train_loader)
    )
    gen = ctx.generator(offset=9)
    qmodel.train()
    fmodel.train()
    x, y = next(iter(train_loader))
    x, y = x.to(device), y.to(device)

    def float_step() -> None:
        fadam.zero_grad(set_to_none=True)
        F.cross_entropy(fmodel(x), y).backward()
        fadam.step()

    def alq_step(mode: str) -> Callable[[], None]:
        def step() -> None:  # alq._run_epoch's body for one minibatch
            qmodel.zero_grad(set_to_none=True)
            F.cross_entropy(qmodel(x), y).backward()
            qadam.step()
            grads = [layer.weight.grad for layer, _ in layers]
            if mode == "prune":
                alq.prune_step(quantizers, grads, 1e-3, paper.top_k, m_p, gen)  # type: ignore[arg-type]
            else:
                for q, g in zip(quantizers, grads, strict=True):
                    if mode == "basis":
                        q.basis_step(g, 1e-3)  # type: ignore[operator]
                    else:
                        q.coordinate_step(g, 1e-3)  # type: ignore[operator]
            with torch.no_grad():
                for layer, q in layers:
                    layer.weight.copy_(q.w_hat)

        return step

    kinds: dict[str, Callable[[], None]] = {
        "float": float_step,
        "basis": alq_step("basis"),
        "coordinate": alq_step("coordinate"),
        "prune": alq_step("prune"),
    }
    times: dict[str, list[float]] = {k: [] for k in kinds}
    names = list(kinds)
    for i in range(args.warmup + args.steps):
        for name in names[i % 4 :] + names[: i % 4]:  # rotate who goes first
            _shared.sync(device)
            start = time.perf_counter()
            kinds[name]()
            _shared.sync(device)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}, args.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", nargs="*", choices=ROWS, default=list(ROWS), help="target bits; none: steps only"
    )
    parser.add_argument("--outer", type=int, help="outer iterations R; preset: 2")
    parser.add_argument("--epochs", type=int, help="basis epochs per outer iteration; preset: 2")
    parser.add_argument("--coord-epochs", type=int, help="coordinate epochs per iteration; 1")
    parser.add_argument("--ste-epochs", type=int, help="POSTTRAIN STE epochs; preset: 2")
    parser.add_argument("--post-coord-epochs", type=int, help="POSTTRAIN coord epochs; preset: 1")
    parser.add_argument("--prune-ratio", type=float, help="pr per outer iteration; preset: 1.6")
    parser.add_argument("--train-fraction", type=float, default=1.0, help="of the 60k train images")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument("--float-weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-batch", type=int, default=1000)
    parser.add_argument("--step-batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="timed steps of each kind")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-step-time", dest="step_time", action="store_false")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    _shared.ensure_float_weights(args.float_weights, args.seed, args.device)
    data = quantcore.load_dataset(DATASET)
    bundle = data
    if args.train_fraction < 1.0:
        train = quantcore.subset(data.train, args.train_fraction, seed=args.seed)
        bundle = dataclasses.replace(data, train=train)
    print(
        f"alq on {DATASET} {ARCH}: params {_params(None, args).model_dump(exclude_defaults=True)} "
        f"(+ target_bitwidth per row); train images {len(bundle.train):,}; device={args.device} "
        f"threads={torch.get_num_threads()} torch={torch.__version__}",
        flush=True,
    )
    device = torch.device(args.device)
    ctx = quantcore.RunContext(device=device, seed=args.seed)
    float_model = quantcore.load_model(args.float_weights, ARCH, num_classes=data.num_classes)
    _, val_loader = data.loaders(args.eval_batch, seed=args.seed)
    float_top1 = quantcore.evaluate(float_model.to(device), val_loader, ctx).top1

    if args.step_time:
        med, n = step_times(args, data)
        f_s = med["float"]
        parts = ", ".join(
            f"{k} {med[k] * 1e3:.1f} ms ({med[k] / f_s:.2f}x)"
            for k in ("basis", "coordinate", "prune")
        )
        print(
            f"step time (batch {args.step_batch}, median of {n} interleaved after {args.warmup} "
            f"warm-up): float {f_s * 1e3:.1f} ms; {parts}",
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
