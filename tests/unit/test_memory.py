"""quantcore.memory: the meta-device footprint equals what really runs, the CPU peak meter
counts what is alive, and each method's estimate is within 25 % of the peak it really reaches."""

from __future__ import annotations

import random

import pytest
import torch

import quantcore
from bench.memory import SHORT as BENCH_SHORT
from bench.memory import random_bundle
from quantcore.memory import (
    CUDA_WORKSPACES,
    TensorPeakMeter,
    estimate,
    footprint,
    largest_batch,
    module_bytes,
)
from quantcore.training import evaluate

SHAPES = {"lenet5": (1, 28, 28), "resnet20": (3, 32, 32), "vgg_small": (3, 32, 32)}


def _made(n: int) -> torch.Tensor:
    t = torch.ones(n)
    t.mul_(2)  # in place: no new storage
    t.view(-1)[: n // 2 + 1].fill_(3)  # in place on a view: none either
    return t


def test_the_meter_follows_storages_through_views_in_place_ops_and_frees() -> None:
    rng = random.Random()
    live: dict[int, torch.Tensor] = {}
    expected_live = expected_peak = 0
    with TensorPeakMeter() as meter:
        for step in range(60):
            if live and rng.random() < 0.4:
                key = rng.choice(list(live))
                expected_live -= live.pop(key).numel() * 4
            else:
                n = rng.randint(1, 5000)
                live[step] = _made(n)
                expected_live += n * 4
            expected_peak = max(expected_peak, expected_live)
            assert meter.live == expected_live
    assert meter.peak == expected_peak
    live.clear()
    assert meter.live == 0


@pytest.mark.parametrize("arch", sorted(SHAPES))
def test_the_footprint_on_the_meta_device_equals_the_cpu_peak(arch: str) -> None:
    shape = SHAPES[arch]
    model = quantcore.build(arch, num_classes=10, in_channels=shape[0])
    fp = footprint(model, shape)
    assert fp.params == sum(p.numel() for p in model.parameters())
    assert fp.weights == sum(
        m.weight.numel()
        for m in model.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    )
    batch = random.randint(2, 40)
    x = torch.randn(batch, *shape)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    with TensorPeakMeter() as meter:
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    assert meter.peak == pytest.approx(fp.train_step(batch), rel=0.01)
    model.eval()
    with TensorPeakMeter() as meter, torch.no_grad():
        model(x)
    assert meter.peak == pytest.approx(fp.evaluation(batch), rel=0.01)


def test_largest_batch_finds_the_threshold() -> None:
    for _ in range(50):
        start = random.randint(1, 5000)
        threshold = random.randint(0, start + 10)
        found = largest_batch(lambda b, t=threshold: b <= t, start)
        assert found == (None if threshold == 0 else min(threshold, start))


# bench/memory.py's one-short-epoch schedules, with a shorter L-DNQ Hessian pass.
SHORT = {**BENCH_SHORT, "l_dnq": {**BENCH_SHORT["l_dnq"], "hessian_num_batches": 11}}


@pytest.mark.parametrize("name", sorted(SHORT))
def test_each_methods_estimate_is_within_a_quarter_of_its_measured_peak(name: str) -> None:
    """What the job runs on its device (evaluate, quantize, evaluate) on LeNet5, at a random
    training batch: the estimate admission uses against the tensor peak the worker records."""
    shape = SHAPES["lenet5"]
    model = quantcore.build("lenet5", num_classes=10, in_channels=1)
    method = quantcore.get_method(name)
    overrides = dict(SHORT[name])
    batch = random.choice([32, 64, 96, 128, 200, 256])
    if "batch_size" in method.Params.model_fields:
        overrides["batch_size"] = batch
    params = quantcore.parse_params(name, overrides)
    guess = estimate(footprint(model, shape), method, params, 128)
    assert guess.total == sum(guess.parts.values())
    data = random_bundle(shape, 256, random.randrange(1000))
    _, val = data.loaders(128)
    ctx = quantcore.RunContext(seed=0)
    with TensorPeakMeter(baseline=module_bytes(model)) as meter:
        evaluate(model, val, ctx)
        evaluate(method.quantize(model, data, params, ctx), val, ctx)
    assert 0.75 <= guess.total / meter.peak <= 1.25, (batch, guess.parts, meter.peak)


@pytest.mark.parametrize("name", ["uniform", "lq_nets", "qnets", "alq", "l_dnq"])
def test_estimates_grow_with_the_batch(name: str) -> None:
    model = quantcore.build("resnet20", num_classes=10)
    fp = footprint(model, SHAPES["resnet20"])
    method = quantcore.get_method(name)
    small, large = sorted(random.sample(range(1, 512), 2))

    def at(batch: int) -> int:
        overrides = dict(SHORT[name])
        if "batch_size" in method.Params.model_fields:
            overrides["batch_size"] = batch
        return estimate(fp, method, quantcore.parse_params(name, overrides), batch).total

    assert at(small) <= at(large)


def test_a_cuda_estimate_adds_the_library_workspaces_to_the_cpu_one() -> None:
    fp = footprint(quantcore.build("lenet5", num_classes=10, in_channels=1), SHAPES["lenet5"])
    for name in SHORT:
        method = quantcore.get_method(name)
        params = quantcore.parse_params(name, SHORT[name])
        cpu, cuda = estimate(fp, method, params, 128), estimate(fp, method, params, 128, "cuda")
        assert "CUDA library workspaces" not in cpu.parts
        assert cuda.parts == {**cpu.parts, "CUDA library workspaces": CUDA_WORKSPACES}


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(SHORT))
def test_on_cuda_the_estimate_bounds_the_allocator_peak(name: str) -> None:
    """On a GPU the job's peak is the caching allocator's (library workspaces included): the
    estimate is never below it, and above it by no more than the workspace allowance and 25 %."""
    device = torch.device("cuda")
    shape = SHAPES["lenet5"]
    model = quantcore.build("lenet5", num_classes=10, in_channels=1).to(device)
    method = quantcore.get_method(name)
    params = quantcore.parse_params(name, SHORT[name])
    guess = estimate(footprint(model, shape), method, params, 128, "cuda")
    data = random_bundle(shape, 256, random.randrange(1000))
    _, val = data.loaders(128)
    ctx = quantcore.RunContext(device=device, seed=0)
    torch.cuda.reset_peak_memory_stats(device)
    evaluate(model, val, ctx)
    evaluate(method.quantize(model, data, params, ctx), val, ctx)
    peak = torch.cuda.max_memory_allocated(device)
    assert peak <= guess.total <= 1.25 * peak + CUDA_WORKSPACES, (guess.parts, peak)
