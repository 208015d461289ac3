"""Uniform min-max k-bit weight rounding: the baseline, not one of the four research methods.

Post-training, data-free: each output channel (or the whole tensor) gets ``2**bits`` evenly spaced
levels spanning ``[min(w, 0), max(w, 0)]``; every weight is rounded to the nearest level. The
range always contains 0 so that zero is exactly representable (as PyTorch's observers do); a
channel that is all zeros stays all zeros. Codebook kind ``affine``: value = scale * (code - zero).

It exists so the whole path (surgery, contract, packing, artifact, metrics, service) runs before
the research methods land, and as the reference row in the benchmarks.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn

from quantcore.context import RunContext
from quantcore.data import DataBundle
from quantcore.layers import WeightQuantizer
from quantcore.memory import FLOAT, Footprint
from quantcore.methods.base import Method, MethodParams
from quantcore.qweight import CodebookKind, Grouping, QuantizedWeight
from quantcore.surgery import quantize_model


class UniformParams(MethodParams):
    bits: int = Field(4, ge=1, le=8, description="Bits per weight (2**bits levels per group).")
    per_channel: bool = Field(
        True, description="One scale and zero point per output channel; off: one per layer."
    )
    keep_first_last: bool = Field(
        True, description="Keep the first and last Conv2d/Linear layers in float."
    )


def minmax_affine(groups: Tensor, bits: int) -> tuple[Tensor, Tensor, Tensor]:
    """Codes, scales and zero points of ``groups`` ``(G, n)`` on a ``bits``-bit affine grid."""
    qmax = 2**bits - 1
    lo = groups.min(dim=1).values.clamp(max=0)  # (G,)
    hi = groups.max(dim=1).values.clamp(min=0)  # (G,)
    scale = (hi - lo) / qmax  # (G,)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.round(-lo / scale).clamp(0, qmax)  # (G,)
    codes = torch.round(groups / scale[:, None] + zero[:, None]).clamp(0, qmax)  # (G, n)
    return codes.to(torch.uint8), scale, zero


class MinMaxQuantizer(WeightQuantizer):
    """Rounds to the min-max affine grid; straight-through gradient in training."""

    def __init__(self, bits: int, per_channel: bool) -> None:
        super().__init__()
        self.bits = bits
        self.per_channel = per_channel

    def export(self, w: Tensor) -> QuantizedWeight:
        shape = tuple(w.shape)
        grouping = Grouping.per_channel(shape) if self.per_channel else Grouping.per_tensor(shape)
        groups = grouping.split(w.detach().float())  # (G, n)
        codes, scale, zero = minmax_affine(groups, self.bits)
        g = groups.shape[0]
        return QuantizedWeight(
            shape=shape,
            grouping=grouping,
            codes=codes,
            bits=torch.full((g,), self.bits, dtype=torch.uint8, device=w.device),
            codebook=torch.stack([scale, zero], dim=1),  # (G, 2)
            kind=CodebookKind.AFFINE,
        )

    def forward(self, w: Tensor) -> Tensor:
        q = super().forward(w)
        return w + (q - w).detach()


class Uniform(Method):
    name = "uniform"
    title = "Uniform min-max rounding (baseline)"
    paper = "Baseline: per-channel asymmetric min-max rounding, no training"
    summary = "Rounds each weight to 2^bits evenly spaced levels per output channel."
    Params = UniformParams

    @classmethod
    def memory_parts(cls, fp: Footprint, params: Any) -> dict[str, int]:
        """No training: the quantized copy of the model (the evaluation after it peaks)."""
        return {"quantized model": (fp.params + fp.buffers) * FLOAT}

    def quantize(
        self, model: nn.Module, data: DataBundle, params: UniformParams, ctx: RunContext
    ) -> nn.Module:
        ctx.report("quantize", 0.0)
        quantize_model(
            model,
            lambda _name, _layer: MinMaxQuantizer(params.bits, params.per_channel),
            keep_first_last=params.keep_first_last,
        )
        ctx.report("quantize", 1.0)
        return model.to(ctx.device).eval()
