"""``python -m quantcore``: train, quantize, evaluate and inspect on one machine, no server."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from quantcore.errors import InvalidParams, QuantcoreError

# torch and the models are imported inside the commands so that `--help` answers at once.


def _progress_printer(enabled: bool) -> Callable[..., None] | None:
    if not enabled:
        return None
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def on_progress(p: Any) -> None:
        bar = bars.get(p.stage)
        if bar is None:
            for other in bars.values():
                other.close()
            bars.clear()
            bar = bars[p.stage] = tqdm(total=1000, desc=p.stage, leave=False, file=sys.stderr)
        bar.n = round(p.fraction * 1000)
        if p.metrics:
            bar.set_postfix({k: f"{v:.4g}" for k, v in list(p.metrics.items())[:4]}, refresh=False)
        bar.refresh()

    return on_progress


def _context(args: argparse.Namespace) -> Any:
    import torch

    from quantcore.context import RunContext

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidParams(f"device {args.device!r} was asked for but CUDA is not available")
    ckpt = Path(args.checkpoint_dir) if getattr(args, "checkpoint_dir", None) else None
    return RunContext(
        device=device,
        seed=args.seed,
        checkpoint_dir=ckpt,
        on_progress=_progress_printer(not args.quiet),
    )


def _data(args: argparse.Namespace, augment: bool = True) -> Any:
    from quantcore.data import load_dataset

    return load_dataset(
        args.dataset, root=args.data_root, augment=augment, image_size=args.image_size
    )


def _parse_params(pairs: Sequence[str], raw_json: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if raw_json:
        try:
            loaded = json.loads(raw_json)
        except json.JSONDecodeError as exc:
            raise InvalidParams(f"--params is not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise InvalidParams("--params must be a JSON object")
        params.update(loaded)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidParams(f"--param expects KEY=VALUE, got {pair!r}")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def _print_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list | tuple):
        return "x".join(str(x) for x in v)
    return "-" if v is None else str(v)


def cmd_train(args: argparse.Namespace) -> int:
    import torch
    from safetensors.torch import save_file

    from quantcore import zoo
    from quantcore.training import evaluate, seed_everything, train

    ctx = _context(args)
    seed_everything(args.seed)
    data = _data(args)
    model = zoo.build(args.arch, num_classes=data.num_classes, in_channels=data.in_channels)
    train_loader, val_loader = data.loaders(args.batch_size, seed=args.seed)
    if args.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            model.parameters(),
            lr=args.lr,
            momentum=0.9,
            weight_decay=args.weight_decay,
            nesterov=True,
        )
    else:
        opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    t0 = time.perf_counter()
    history = train(
        model,
        train_loader,
        epochs=args.epochs,
        optimizer=opt,
        scheduler=sched,
        ctx=ctx,
        val_loader=val_loader if args.validate_every_epoch else None,
    )
    result = evaluate(model, val_loader, ctx)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
    summary = {
        "arch": args.arch,
        "dataset": args.dataset,
        "epochs": args.epochs,
        "top1": result.top1,
        "top5": result.top5,
        "loss": result.loss,
        "seconds": time.perf_counter() - t0,
        "weights": str(out),
        "history": [asdict(h) for h in history],
    }
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        for h in history:
            print(f"epoch {h.epoch:3d}  loss {h.train_loss:.4f}  train top-1 {h.train_top1:.2f}%")
        print(
            f"{args.arch} on {args.dataset}: top-1 {result.top1:.2f}%  top-5 {result.top5:.2f}%"
            f"  ({summary['seconds']:.0f} s)"
        )
        print(f"weights written to {out}")
    return 0


def _load_float(path: str | Path, arch: str, data: Any) -> Any:
    from quantcore.loading import load_model

    return load_model(path, arch, num_classes=data.num_classes, in_channels=data.in_channels)


def cmd_quantize(args: argparse.Namespace) -> int:
    from quantcore import artifact
    from quantcore.metrics import size_report
    from quantcore.registry import get_method, parse_params
    from quantcore.training import evaluate, seed_everything

    ctx = _context(args)
    seed_everything(args.seed)
    method = get_method(args.method)
    params = parse_params(args.method, _parse_params(args.param, args.params))
    data = _data(args)
    model = _load_float(args.weights, args.arch, data).to(ctx.device)
    _, val_loader = data.loaders(args.batch_size, seed=args.seed)
    t0 = time.perf_counter()
    before = evaluate(model, val_loader, ctx, stage="evaluate float") if args.evaluate else None
    quantized = method.quantize(model, data, params, ctx)
    after = (
        evaluate(quantized, val_loader, ctx, stage="evaluate quantized") if args.evaluate else None
    )
    sizes = size_report(quantized)
    metrics: dict[str, Any] = {"seconds": time.perf_counter() - t0, "device": str(ctx.device)}
    if before and after:
        metrics.update(
            float_top1=before.top1, float_top5=before.top5, top1=after.top1, top5=after.top5
        )
    spec = artifact.ModelSpec(args.arch, data.num_classes, data.in_channels, data.input_size)
    artifact.save_artifact(
        quantized,
        args.out,
        spec=spec,
        method=method.name,
        params=params.model_dump(),
        metrics=metrics,
    )
    file_bytes = Path(args.out).stat().st_size
    summary = {
        **metrics,
        **{k: v for k, v in sizes.to_json().items() if k != "layers"},
        "file_bytes": file_bytes,
        "artifact": str(args.out),
    }
    if args.json:
        print(json.dumps({**summary, "layers": [r.to_json() for r in sizes.layers]}, indent=1))
        return 0
    _print_layer_table([r.to_json() for r in sizes.layers])
    if before and after:
        print(
            f"top-1 {before.top1:.2f}% -> {after.top1:.2f}%   "
            f"top-5 {before.top5:.2f}% -> {after.top5:.2f}%"
        )
    print(
        f"size {sizes.float_bytes:,} B float -> {sizes.quantized_bytes:,} B theoretical, "
        f"{file_bytes:,} B file ({sizes.compression_ratio:.1f}x); "
        f"average {sizes.average_bits:.3g} bits per quantized weight"
    )
    print(f"artifact written to {args.out}")
    return 0


def _print_layer_table(rows: list[dict[str, Any]]) -> None:
    _print_table(
        rows,
        ["name", "shape", "bits", "levels", "codebook", "num_groups", "total_bytes", "rel_error"],
    )


def cmd_evaluate(args: argparse.Namespace) -> int:
    from quantcore import artifact
    from quantcore.metrics import model_bytes, size_report
    from quantcore.training import evaluate

    ctx = _context(args)
    data = _data(args, augment=False)
    path = Path(args.model)
    if path.suffix == ".qpack":
        model = artifact.load_artifact(path, ctx.device)
        sizes: dict[str, Any] = {
            k: v for k, v in size_report(model).to_json().items() if k != "layers"
        }
    else:
        if not args.arch:
            raise InvalidParams("evaluating a float weights file needs --arch")
        model = _load_float(path, args.arch, data).to(ctx.device)
        sizes = {"float_bytes": model_bytes(model)}
    sizes["file_bytes"] = path.stat().st_size
    _, val_loader = data.loaders(args.batch_size, seed=args.seed)
    result = evaluate(model, val_loader, ctx)
    out = {
        "model": str(path),
        "dataset": args.dataset,
        "top1": result.top1,
        "top5": result.top5,
        "loss": result.loss,
        "count": result.count,
        **sizes,
    }
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(
            f"{path.name} on {args.dataset} ({result.count} images): top-1 {result.top1:.2f}%"
            f"  top-5 {result.top5:.2f}%  loss {result.loss:.4f}"
        )
        print(f"file {sizes['file_bytes']:,} B")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from quantcore.artifact import read_manifest

    manifest = read_manifest(args.artifact)
    if args.json:
        print(json.dumps(manifest, indent=1))
        return 0
    m, meth, sizes = manifest["model"], manifest["method"], manifest["sizes"]
    print(
        f"{args.artifact}: qpack v{manifest['format_version']}, {m['arch']} "
        f"({m['num_classes']} classes, {m['in_channels']} input channels)"
    )
    print(f"method {meth['name']} {json.dumps(meth['params'])}")
    _print_layer_table(manifest["layer_table"])
    print(
        f"size {sizes['float_bytes']:,} B float -> {sizes['quantized_bytes']:,} B theoretical "
        f"({sizes['compression_ratio']:.1f}x), average {sizes['average_bits']:.3g} bits"
    )
    for k, v in manifest.get("metrics", {}).items():
        print(f"{k}: {_fmt(v)}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from quantcore import zoo
    from quantcore.data import list_datasets
    from quantcore.registry import list_methods

    listing = {
        "methods": [{"name": m.name, "title": m.title, "paper": m.paper} for m in list_methods()],
        "architectures": [{"name": a.name, "title": a.title} for a in zoo.list_architectures()],
        "datasets": [{"name": d.name, "title": d.title} for d in list_datasets()],
    }
    if args.json:
        print(json.dumps(listing, indent=1))
        return 0
    for section, rows in listing.items():
        print(f"{section}:")
        for r in rows:
            print(f"  {r['name']:<18} {r['title']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m quantcore",
        description="Quantize trained PyTorch models (LQ-Nets, L-DNQ, ALQ, Quantization "
        "Networks, uniform baseline) on one machine.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, data: bool = True) -> None:
        if data:
            p.add_argument(
                "--dataset",
                required=True,
                help="digits, fashion-mnist, mnist, cifar10, imagefolder or npz",
            )
            p.add_argument("--data-root", help="dataset folder or .npz file")
            p.add_argument("--image-size", type=int, help="resize images to this size")
            p.add_argument("--batch-size", type=int, default=128)
        p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("train", help="train a float zoo model (the starting point of a method)")
    p.add_argument("--arch", required=True)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--out", default="model.safetensors", help="where to write the weights")
    p.add_argument("--checkpoint-dir", help="checkpoint every epoch here, and resume from it")
    p.add_argument("--validate-every-epoch", action="store_true")
    common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("quantize", help="quantize a float model into a .qpack artifact")
    p.add_argument("--arch", required=True)
    p.add_argument("--weights", required=True, help="safetensors or torch state dict")
    p.add_argument("--method", required=True)
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--params", help="method params as a JSON object")
    p.add_argument("--out", default="model.qpack")
    p.add_argument("--checkpoint-dir", help="checkpoint here, and resume from it")
    p.add_argument(
        "--no-evaluate",
        dest="evaluate",
        action="store_false",
        help="skip measuring accuracy before and after",
    )
    common(p)
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("evaluate", help="accuracy and size of a .qpack or a float weights file")
    p.add_argument("model", help="a .qpack, or float weights with --arch")
    p.add_argument("--arch", help="architecture of a float weights file")
    common(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("inspect", help="manifest and per-layer table of a .qpack")
    p.add_argument("artifact")
    p.add_argument("--json", action="store_true", help="the manifest as JSON")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("list", help="methods, architectures and datasets")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except QuantcoreError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
