"""Peak memory of a quantization job: an estimate made before it runs, and a meter while it runs.

The quantity both sides talk about is the **tensor peak on the job's device**: the most bytes of
tensor storage alive at once while the job runs (what ``torch.cuda.max_memory_allocated`` reports
on a GPU). The float model's weights count; host-side data sets, Python objects and the CUDA
context do not.

- :func:`footprint` reads a model's shapes from one forward pass on the ``meta`` device (no
  memory, no compute): parameter count, every leaf module's output size per sample, and each
  conv/linear layer's sizes.
- :func:`estimate` adds up what a job keeps alive at its peak: the float weights, the method's
  working copy, gradients, optimizer state, the activations a training step saves for backward,
  and the method's own extras (each method's ``memory_parts``), from the footprint, the method's
  params and the batch size. It returns the parts, so a refusal can say where the memory goes,
  and :func:`largest_batch` inverts it to suggest a batch that fits.
- :class:`TensorPeakMeter` measures the same quantity on the CPU, where PyTorch keeps no
  allocator statistics: a dispatch mode that sees every tensor an operator creates and follows
  its storage until it is freed.
"""

from __future__ import annotations

import copy
import functools
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

FLOAT = 4  # bytes of a float32 element
MIB = 2**20
# What a CUDA device holds for a job beyond its tensors, measured with ``bench/memory.py
# --device cuda`` on an H200 (torch 2.11, CUDA 13): cuBLAS keeps one workspace per handle and
# there is a handle per thread that multiplies matrices (the job's own thread and autograd's
# backward thread), 32 MiB each under the workers' ``CUBLAS_WORKSPACE_CONFIG=:4096:8``; cuDNN's
# convolution workspaces added up to 75 MiB more (ResNet-20 training at batch 128 and 256). Both
# come from PyTorch's caching allocator, so ``torch.cuda.max_memory_allocated`` counts them. The
# CPU has neither.
CUDA_WORKSPACES = 2 * 32 * MIB + 80 * MIB


@dataclass(frozen=True)
class LayerShape:
    """A conv or linear layer's weight shape, as the methods' extras need it."""

    name: str
    weight: int  # elements of the weight
    fan_in: int  # inputs of one output unit (C·k·k for a conv), bias row not counted
    outputs: int  # output channels / features


@dataclass(frozen=True)
class Footprint:
    """A model's sizes, read from passes on a meta copy of it (shapes without data).

    :meth:`train_step` and :meth:`evaluation` give the tensor peak of one float training step
    (forward, cross-entropy, backward, an SGD-with-momentum step: gradients and momentum
    included) and of one evaluation forward at a batch size, measured on the meta copy at that
    batch (the peak is not linear in the batch: small batches peak in the optimizer step,
    large ones in backward)."""

    params: int
    buffers: int
    relu_outputs: int  # Σ over ReLU outputs (where activation quantizers sit), one sample
    layers: tuple[LayerShape, ...]
    meta: nn.Module = field(repr=False, compare=False)
    input_shape: tuple[int, ...] = ()

    @property
    def weights(self) -> int:
        return sum(layer.weight for layer in self.layers)

    def train_step(self, batch: int) -> int:
        return _meta_peak(self.meta, self.input_shape, batch, train=True)

    def evaluation(self, batch: int) -> int:
        return _meta_peak(self.meta, self.input_shape, batch, train=False)


def footprint(model: nn.Module, input_shape: tuple[int, ...]) -> Footprint:
    """Sizes of ``model`` for inputs of ``input_shape`` (C, H, W) or (features,).

    Everything runs on a ``meta`` copy: shapes and storages without data, so nothing is computed
    and no memory is used; :class:`TensorPeakMeter` counts the meta storages."""
    meta = copy.deepcopy(model).to("meta")
    ran: set[str] = set()  # the conv/linear layers the forward pass reaches
    relus = 0

    def hook(name: str) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        def record(module: nn.Module, _args: tuple[Any, ...], out: Any) -> None:
            nonlocal relus
            ran.add(name)
            if isinstance(module, nn.ReLU) and isinstance(out, torch.Tensor):
                relus += out.numel()

        return record

    handles = [
        m.register_forward_hook(hook(name))
        for name, m in meta.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.ReLU))
    ]
    try:
        with torch.no_grad():
            meta.eval()(torch.empty(1, *input_shape, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    layers = tuple(
        LayerShape(
            name=name,
            weight=m.weight.numel(),
            fan_in=m.weight[0].numel(),
            outputs=m.out_channels if isinstance(m, nn.Conv2d) else m.out_features,
        )
        for name, m in meta.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and name in ran
    )
    return Footprint(
        params=sum(p.numel() for p in meta.parameters()),
        buffers=sum(b.numel() for b in meta.buffers() if b.is_floating_point()),
        relu_outputs=relus,
        layers=layers,
        meta=meta,
        input_shape=tuple(input_shape),
    )


def meta_train_step(model: nn.Module, input_shape: tuple[int, ...], batch: int) -> int:
    """Tensor peak of one float training step (as :meth:`Footprint.train_step`) of ``model``,
    a module on the ``meta`` device taking inputs of ``input_shape`` (without the batch)."""
    return _meta_peak(model, tuple(input_shape), batch, train=True)


@lru_cache(maxsize=256)
def _meta_peak(model: nn.Module, input_shape: tuple[int, ...], batch: int, *, train: bool) -> int:
    """Tensor peak of one float training step (or evaluation forward) of a meta model."""
    x = torch.empty(batch, *input_shape, device="meta")
    with TensorPeakMeter(device_type="meta") as meter:
        if train:
            model.train()
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            logits = model(x)
            target = torch.zeros(logits.shape[0], dtype=torch.long, device="meta")
            nn.functional.cross_entropy(logits, target).backward()
            opt.step()
            del opt, logits
        else:
            model.eval()
            with torch.no_grad():
                model(x)
    model.zero_grad(set_to_none=True)
    return meter.peak


@dataclass(frozen=True)
class Estimate:
    """Bytes a job needs at its peak on its device, by part."""

    parts: Mapping[str, int]

    @property
    def total(self) -> int:
        return sum(self.parts.values())


def training_parts(fp: Footprint, batch: int, *, extra_per_sample: int = 0) -> dict[str, int]:
    """The parts of a training step of the model at ``batch``: the float step measured on the
    meta device (gradients, one momentum buffer, what backward keeps), plus
    ``extra_per_sample`` bytes a method's own modules keep per sample (activation quantizers,
    say)."""
    return {
        "training step": fp.train_step(batch),
        "method activations": extra_per_sample * batch,
    }


def estimate(
    fp: Footprint, method: Any, params: Any, batch_size: int, device_type: str = "cpu"
) -> Estimate:
    """The peak of a whole job: the float model (kept for the before/after comparison) plus the
    larger of the method's peak (``method.memory_parts``) and an evaluation at the job's batch
    size with a second copy of the model (the quantized one, or the reloaded artifact); on a
    ``cuda`` device also the libraries' workspaces (:data:`CUDA_WORKSPACES`)."""
    model = (fp.params + fp.buffers) * FLOAT
    work = {k: int(v) for k, v in method.memory_parts(fp, params).items() if v}
    evaluation = {"quantized model": model, "evaluation": fp.evaluation(batch_size)}
    peak = work if sum(work.values()) >= sum(evaluation.values()) else evaluation
    parts = {"float model": model, **peak}
    if device_type == "cuda":
        parts["CUDA library workspaces"] = CUDA_WORKSPACES
    return Estimate(parts)


def largest_batch(fits: Callable[[int], bool], start: int) -> int | None:
    """The largest batch size ≤ ``start`` for which ``fits(batch)`` holds, by bisection (``fits``
    must be monotone), or None when even 1 does not fit."""
    if not fits(1):
        return None
    low, high = 1, start
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low


class TensorPeakMeter(TorchDispatchMode):
    """The most bytes of tensor storage alive at once while the mode is active, on one device
    type, counting only storages created inside it plus ``baseline`` bytes given by the caller.

    Each tensor an operator returns is followed through its storage (views share one; an
    in-place op creates none); the bytes are subtracted when the storage is freed. Tensors
    created outside operators (``torch.from_numpy``, loaded files) are not seen: pass what
    already exists as ``baseline``. Use as a context manager; thread-safe counters."""

    def __init__(self, device_type: str = "cpu", baseline: int = 0) -> None:
        super().__init__()
        self.device_type = device_type
        self.live = baseline
        self.peak = baseline
        # id of each live storage seen -> a weak reference whose callback frees its bytes (the
        # id is that storage's while it lives; PyTorch keeps a storage's Python object alive as
        # long as the storage itself)
        self._refs: dict[int, weakref.ref[Any]] = {}
        self._lock = threading.Lock()

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor):
            self._follow(out)
        elif isinstance(out, (list, tuple)):
            for t in _tensors(out):
                self._follow(t)
        return out

    def _follow(self, t: torch.Tensor) -> None:
        if t.device.type != self.device_type:
            return
        storage = t.untyped_storage()
        key = id(storage)
        if key in self._refs:  # a view or an in-place result: nothing new
            return
        size = storage.nbytes()
        if size == 0:
            return
        with self._lock:
            self._refs[key] = weakref.ref(storage, functools.partial(self._free, key, size))
            self.live += size
            if self.live > self.peak:
                self.peak = self.live

    def _free(self, key: int, size: int, _ref: object) -> None:
        with self._lock:
            self._refs.pop(key, None)
            self.live -= size


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def module_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers (what exists before a job's operators run)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)
