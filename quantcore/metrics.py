"""Size accounting and the per-layer table, read from the quantized-weight contract only.

Theoretical size of a quantized model = for each quantized layer, its packed codes
(``sum_g bits[g] * n`` bits, byte-aligned per bitwidth class as :mod:`quantcore.packing` lays them)
+ its codebook (float32; of a per-group bases codebook only the live scales, ``k < bits[g]``)
+ a table of per-group bitwidths when groups differ (4 bits per group)
+ every state entry kept in float (biases, BatchNorm, float layers, input quantizers) at its
dtype. These are exactly the tensors the artifact writes, so the file size can be checked
against this number.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from quantcore.layers import QuantConv2d, QuantLinear, float_state, quant_layers
from quantcore.packing import packed_groups_nbytes
from quantcore.qweight import QuantizedWeight, dequantize, live_bases_mask

CODEBOOK_DTYPE = torch.float32
BITS_TABLE_BITS = 4  # per group, only when a layer's groups have different bitwidths


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def stored_codebook_entries(qw: QuantizedWeight) -> int:
    live = live_bases_mask(qw)
    return qw.codebook.numel() if live is None else int(live.sum())


def bits_table_nbytes(qw: QuantizedWeight) -> int:
    return 0 if qw.uniform_bits is not None else math.ceil(qw.num_groups * BITS_TABLE_BITS / 8)


@dataclass(frozen=True)
class LayerReport:
    name: str
    shape: tuple[int, ...]
    num_weights: int
    bits: float  # average bits per weight
    levels: int  # distinct values a weight can take (largest group)
    codebook: str
    num_groups: int
    group_size: int
    payload_bytes: int
    codebook_bytes: int
    bits_table_bytes: int
    rel_error: float | None  # ||W - Q(W)|| / ||W|| against the latent float weight

    @property
    def total_bytes(self) -> int:
        return self.payload_bytes + self.codebook_bytes + self.bits_table_bytes

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "shape": list(self.shape), "total_bytes": self.total_bytes}


@dataclass(frozen=True)
class SizeReport:
    float_bytes: int  # the model with every weight in float
    quantized_bytes: int  # theoretical: quantized layers + float parts
    float_parts_bytes: int
    quantized_weights: int
    average_bits: float  # over the quantized layers' weights
    layers: list[LayerReport]

    @property
    def compression_ratio(self) -> float:
        return self.float_bytes / self.quantized_bytes if self.quantized_bytes else math.inf

    def to_json(self) -> dict[str, Any]:
        return {
            "float_bytes": self.float_bytes,
            "quantized_bytes": self.quantized_bytes,
            "float_parts_bytes": self.float_parts_bytes,
            "quantized_weights": self.quantized_weights,
            "average_bits": self.average_bits,
            "compression_ratio": self.compression_ratio,
            "layers": [r.to_json() for r in self.layers],
        }


def layer_report(name: str, qw: QuantizedWeight, latent: torch.Tensor | None = None) -> LayerReport:
    rel_error = None
    if latent is not None:
        w = latent.detach().float()
        norm = float(w.norm())
        diff = float((w - dequantize(qw.to(w.device))).norm())
        rel_error = diff / norm if norm > 0 else 0.0
    return LayerReport(
        name=name,
        shape=qw.shape,
        num_weights=qw.numel,
        bits=qw.average_bits(),
        levels=qw.num_levels(),
        codebook=str(qw.kind),
        num_groups=qw.num_groups,
        group_size=qw.group_size,
        payload_bytes=packed_groups_nbytes(qw.bits, qw.group_size),
        codebook_bytes=stored_codebook_entries(qw) * CODEBOOK_DTYPE.itemsize,
        bits_table_bytes=bits_table_nbytes(qw),
        rel_error=rel_error,
    )


def _latent(layer: QuantConv2d | QuantLinear) -> torch.Tensor | None:
    # A model loaded from an artifact has no latent weight: its weight is the dequantized one.
    from quantcore.layers import FrozenWeight

    return None if isinstance(layer.weight_quantizer, FrozenWeight) else layer.weight


def size_report(model: nn.Module) -> SizeReport:
    """Float size, theoretical quantized size and the per-layer table of ``model``."""
    layers = [
        layer_report(name, layer.export_weight(), _latent(layer))
        for name, layer in quant_layers(model)
    ]
    float_parts = sum(tensor_bytes(t) for t in float_state(model).values())
    latent_bytes = sum(tensor_bytes(layer.weight) for _, layer in quant_layers(model))
    qweights = sum(r.num_weights for r in layers)
    payload_bits = sum(r.bits * r.num_weights for r in layers)
    return SizeReport(
        float_bytes=float_parts + latent_bytes,
        quantized_bytes=float_parts + sum(r.total_bytes for r in layers),
        float_parts_bytes=float_parts,
        quantized_weights=qweights,
        average_bits=payload_bits / qweights if qweights else 32.0,
        layers=layers,
    )


def model_bytes(model: nn.Module) -> int:
    """Bytes of a float model's state (parameters and buffers at their dtypes)."""
    return sum(tensor_bytes(t) for t in model.state_dict().values())
