"""Peak-memory estimate against the measured peak, for every method on LeNet5 and ResNet-20.

Each row runs what a job runs on its device (evaluate the float model, ``method.quantize``,
evaluate the quantized model) under :class:`quantcore.memory.TensorPeakMeter` on the CPU (the
tensor-storage peak, the quantity ``torch.cuda.max_memory_allocated`` reports on a GPU; with
``--device cuda`` the CUDA allocator's own peak is used instead) and prints it beside
``quantcore.memory.estimate`` for the same model, params and batch sizes.

Peak memory does not depend on the weights' values or on how many steps run, so the rows use
freshly initialised zoo models, random images of the right shape (LeNet5 1x28x28, ResNet-20
3x32x32; 256 training and 256 validation images) and each method's schedule cut to one short
epoch per phase (``SHORT``); batch sizes are the methods' defaults unless ``--batch`` is given.

    .venv/bin/python -m bench.memory                 # every method, both models
    .venv/bin/python -m bench.memory --methods alq --archs resnet20 --batch 64
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

import quantcore
from bench._shared import cpu_model, print_table
from quantcore.data import DataBundle
from quantcore.data.tensors import TensorImageDataset
from quantcore.memory import TensorPeakMeter, estimate, footprint, module_bytes
from quantcore.training import evaluate, seed_everything

SHAPES = {"lenet5": (1, 28, 28), "resnet20": (3, 32, 32)}
SHORT: dict[str, dict[str, Any]] = {
    "uniform": {"bits": 4},
    "lq_nets": {"w_bits": 2, "a_bits": 2, "epochs": 1},
    "qnets": {"epochs": 1, "act_epochs": 1, "joint_epochs": 1, "act_bits": 2},
    "alq": {
        "outer_iterations": 1,
        "epochs_basis": 1,
        "epochs_coord": 1,
        "epochs_prune": 1,
        "posttrain_ste_epochs": 1,
        "posttrain_coord_epochs": 1,
    },
    "l_dnq": {"data_ratio": 1.0, "cascade_max_epochs": 2},
}
EVAL_BATCH = 128  # the job's own batch_size (evaluation), the API's default


def random_bundle(shape: tuple[int, ...], n: int, seed: int) -> DataBundle:
    gen = torch.Generator().manual_seed(seed)

    def split() -> TensorImageDataset:
        images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=gen)
        labels = torch.randint(0, 10, (n,), generator=gen)
        return TensorImageDataset(images, labels, mean=(0.5,) * shape[0], std=(0.25,) * shape[0])

    return DataBundle(
        name="random",
        train=split(),
        val=split(),
        num_classes=10,
        in_channels=shape[0],
        input_size=(shape[1], shape[2]),
        mean=(0.5,) * shape[0],
        std=(0.25,) * shape[0],
    )


def measure(method_name: str, arch: str, batch: int | None, device: torch.device) -> dict[str, Any]:
    seed_everything(0)
    shape = SHAPES[arch]
    model = quantcore.build(arch, num_classes=10, in_channels=shape[0]).to(device)
    fp = footprint(model, shape)
    method = quantcore.get_method(method_name)
    overrides = dict(SHORT[method_name])
    if batch is not None and "batch_size" in method.Params.model_fields:
        overrides["batch_size"] = batch
    params = quantcore.parse_params(method_name, overrides)
    guess = estimate(fp, method, params, EVAL_BATCH, device.type)
    data = random_bundle(shape, 256, 0)
    ctx = quantcore.RunContext(device=device, seed=0)
    _, val = data.loaders(EVAL_BATCH, seed=0)
    started = time.monotonic()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        evaluate(model, val, ctx)
        evaluate(method.quantize(model, data, params, ctx), val, ctx)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        with TensorPeakMeter(baseline=module_bytes(model)) as meter:
            evaluate(model, val, ctx)
            evaluate(method.quantize(model, data, params, ctx), val, ctx)
        peak = meter.peak
    wall = time.monotonic() - started
    largest = max(guess.parts.items(), key=lambda kv: kv[1])
    return {
        "method": method_name,
        "model": arch,
        "train batch": getattr(params, "batch_size", "-"),
        "estimate MiB": f"{guess.total / 2**20:.1f}",
        "measured MiB": f"{peak / 2**20:.1f}",
        "est/meas": f"{guess.total / peak:.2f}",
        "largest part (MiB)": f"{largest[0]} ({largest[1] / 2**20:.1f})",
        "wall s": f"{wall:.0f}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(SHORT), choices=list(SHORT))
    parser.add_argument("--archs", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--batch", type=int, help="training batch size (default: the method's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"# {cpu_model()}, torch {torch.__version__}, device {device}", flush=True)
    rows = []
    for arch in args.archs:
        for name in args.methods:
            rows.append(measure(name, arch, args.batch, device))
            print(rows[-1], flush=True)
    print_table(rows, list(rows[0]))


if __name__ == "__main__":
    main()
