"""The quantized-weight contract: one data type every method exports.

A quantized layer reports its weight as a :class:`QuantizedWeight`: integer ``codes`` per group,
a ``codebook`` that turns codes back into values, and a ``bitwidth`` per group. Packing, size
accounting, the artifact and the metrics read only this type, and :func:`dequantize` is the single
way back to a float tensor, so the weight a layer computes with in eval mode is, exactly, the one
written to disk.

Groups. A weight of shape ``shape`` is cut into ``G`` groups of ``n`` weights by a
:class:`Grouping`: permute the axes with ``perm``, flatten row-major, reshape to ``(G, n)``.
Examples for a conv weight ``[O, C, KH, KW]``::

    per tensor      perm (0, 1, 2, 3), n = O*C*KH*KW     G = 1
    per channel     perm (0, 1, 2, 3), n = C*KH*KW       G = O
    kernelwise      perm (0, 1, 2, 3), n = KH*KW         G = O*C        (ALQ)
    pixelwise       perm (0, 2, 3, 1), n = C             G = O*KH*KW    (ALQ)

and for a linear weight ``[O, In]`` cut into S sub-rows: perm (0, 1), n = In / S.

Codebooks. ``codebook`` has one row per group, or a single row shared by all groups:

``levels``  value = codebook[g, code]                          (L-DNQ, Quantization Networks)
``bases``   value = sum_k codebook[g, k] * (2 * bit_k(code) - 1) over k < bits[g]
            (bit_k = bit k of the code, LSB first: LQ-Nets' weight bases, ALQ's multi-bit alphas)
``affine``  value = codebook[g, 0] * (code - codebook[g, 1])   (uniform scale and zero point)

A group with 0 bits has no payload and dequantizes to zeros (ALQ prunes groups to 0 bits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch
from torch import Tensor

MAX_BITS = 8


class CodebookKind(StrEnum):
    LEVELS = "levels"
    BASES = "bases"
    AFFINE = "affine"


@dataclass(frozen=True)
class Grouping:
    """How a weight tensor is cut into equal groups: permute by ``perm``, then rows of ``size``."""

    perm: tuple[int, ...]
    size: int

    @staticmethod
    def per_tensor(shape: tuple[int, ...]) -> Grouping:
        return Grouping(tuple(range(len(shape))), math.prod(shape))

    @staticmethod
    def per_channel(shape: tuple[int, ...]) -> Grouping:
        """One group per output channel (axis 0), as PyTorch lays out Conv2d and Linear weights."""
        return Grouping(tuple(range(len(shape))), math.prod(shape[1:]))

    def num_groups(self, shape: tuple[int, ...]) -> int:
        return math.prod(shape) // self.size

    def check(self, shape: tuple[int, ...]) -> None:
        if sorted(self.perm) != list(range(len(shape))):
            raise ValueError(f"grouping perm {self.perm} is not a permutation of {len(shape)} axes")
        if self.size < 1 or math.prod(shape) % self.size:
            raise ValueError(f"group size {self.size} does not divide {math.prod(shape)} weights")

    def split(self, w: Tensor) -> Tensor:
        """``w`` with ``shape`` → ``(G, n)``."""
        return w.permute(self.perm).reshape(-1, self.size)

    def merge(self, groups: Tensor, shape: tuple[int, ...]) -> Tensor:
        """Inverse of :meth:`split`: ``(G, n)`` → a tensor of ``shape``."""
        permuted_shape = [shape[a] for a in self.perm]
        inverse = [0] * len(self.perm)
        for i, axis in enumerate(self.perm):
            inverse[axis] = i
        return groups.reshape(permuted_shape).permute(inverse).contiguous()

    def to_json(self) -> dict[str, Any]:
        return {"perm": list(self.perm), "size": self.size}

    @staticmethod
    def from_json(data: dict[str, Any]) -> Grouping:
        return Grouping(tuple(int(a) for a in data["perm"]), int(data["size"]))


@dataclass(frozen=True, eq=False)
class QuantizedWeight:
    """A quantized weight: codes ``(G, n)``, bits ``(G,)``, codebook ``(G or 1, L)``.

    ``codes`` are integers in ``[0, 2**bits[g])`` (uint8 or int64), ``bits`` an int tensor in
    ``0..8``, ``codebook`` float32. All three live on the same device.
    """

    shape: tuple[int, ...]
    grouping: Grouping
    codes: Tensor
    bits: Tensor
    codebook: Tensor
    kind: CodebookKind

    def __post_init__(self) -> None:
        self.grouping.check(self.shape)
        g = self.grouping.num_groups(self.shape)
        n = self.grouping.size
        if tuple(self.codes.shape) != (g, n):
            raise ValueError(f"codes have shape {tuple(self.codes.shape)}, expected {(g, n)}")
        if tuple(self.bits.shape) != (g,):
            raise ValueError(f"bits have shape {tuple(self.bits.shape)}, expected {(g,)}")
        if self.codebook.dim() != 2 or self.codebook.shape[0] not in (1, g):
            raise ValueError(f"codebook shape {tuple(self.codebook.shape)} needs (1|{g}, L)")
        if self.codes.dtype.is_floating_point or self.bits.dtype.is_floating_point:
            raise ValueError("codes and bits must be integer tensors")
        if g and (int(self.bits.min()) < 0 or int(self.bits.max()) > MAX_BITS):
            raise ValueError(f"bits must lie in 0..{MAX_BITS}")
        if self.kind is CodebookKind.AFFINE and self.codebook.shape[1] != 2:
            raise ValueError("an affine codebook has two columns: scale and zero point")
        if self.kind is CodebookKind.BASES and g and self.codebook.shape[1] < int(self.bits.max()):
            raise ValueError("a bases codebook needs one column per bit")

    @property
    def num_groups(self) -> int:
        return self.codes.shape[0]

    @property
    def group_size(self) -> int:
        return self.grouping.size

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def uniform_bits(self) -> int | None:
        """The bitwidth shared by every group, or None when groups differ."""
        if self.num_groups == 0:
            return 0
        lo, hi = int(self.bits.min()), int(self.bits.max())
        return lo if lo == hi else None

    def payload_bits(self) -> int:
        """Bits of the codes themselves: sum over groups of bits[g] * n."""
        return int(self.bits.sum()) * self.group_size

    def average_bits(self) -> float:
        return self.payload_bits() / self.numel if self.numel else 0.0

    def num_levels(self) -> int:
        """The number of distinct values a weight of this layer can take (largest group)."""
        if self.kind is CodebookKind.LEVELS:
            return int(self.codebook.shape[1])
        return 2 ** int(self.bits.max()) if self.num_groups else 0

    def to(self, device: torch.device | str) -> QuantizedWeight:
        return QuantizedWeight(
            self.shape,
            self.grouping,
            self.codes.to(device),
            self.bits.to(device),
            self.codebook.to(device),
            self.kind,
        )


def dequantize(qw: QuantizedWeight) -> Tensor:
    """The float32 weight, of ``qw.shape``, that ``qw`` stands for."""
    codes = qw.codes.long()  # (G, n)
    book = qw.codebook.float()  # (G|1, L)
    g = qw.num_groups
    if g == 0:
        return torch.zeros(qw.shape, dtype=torch.float32, device=book.device)
    if qw.kind is CodebookKind.LEVELS:
        values = book.expand(g, -1).gather(1, codes)  # (G, n)
    elif qw.kind is CodebookKind.AFFINE:
        values = book[:, :1] * (codes.float() - book[:, 1:2])  # (G, n)
    else:
        k = book.shape[1]
        shifts = torch.arange(k, device=codes.device)  # (K,)
        signs = ((codes.unsqueeze(-1) >> shifts) & 1).float() * 2 - 1  # (G, n, K)
        live = (shifts < qw.bits.to(codes.device).unsqueeze(-1)).float()  # (G, K)
        scaled = (book.expand(g, -1) * live).unsqueeze(1)  # (G, 1, K)
        values = (signs * scaled).sum(-1)  # (G, n)
    values = torch.where(qw.bits.to(values.device).unsqueeze(-1) > 0, values, 0.0)
    return qw.grouping.merge(values, qw.shape)


def live_bases_mask(qw: QuantizedWeight) -> Tensor | None:
    """Which entries of a per-group ``bases`` codebook are used: ``k < bits[g]``, ``(G, K)``.

    Only those are stored (a group pruned to I bits keeps I scales, not the layer's widest
    count); None for the other codebooks, which are stored whole.
    """
    if qw.kind is not CodebookKind.BASES or qw.codebook.shape[0] != qw.num_groups:
        return None
    k = qw.codebook.shape[1]
    return torch.arange(k, device=qw.bits.device) < qw.bits.long().unsqueeze(1)
