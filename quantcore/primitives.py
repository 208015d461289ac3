"""Stateless quantization math shared by the methods.

Each fast function has a plain reference next to it (a loop in float64) and a test holds the two
equal on fresh random inputs.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor


def nearest_level(x: Tensor, levels: Tensor) -> Tensor:
    """Index of the nearest of the sorted ``levels`` for every entry of ``x``; ties go down.

    ``levels`` is 1-D ascending ``(L,)`` shared by all of ``x``, or ``(G, L)`` with ``x`` of shape
    ``(G, n)`` (one level set per row). The thresholds are the midpoints between neighbouring
    levels; an entry exactly on a midpoint takes the lower level. Cost O(numel * log L), never a
    ``(numel, L)`` tensor.
    """
    mids = (levels[..., 1:] + levels[..., :-1]) / 2  # (L-1,) or (G, L-1)
    if levels.dim() == 1:
        return torch.bucketize(x, mids, right=False)
    # bucketize takes one boundary vector: searchsorted takes one per row.
    return torch.searchsorted(mids.contiguous(), x.contiguous(), right=False)


def nearest_level_reference(x: Tensor, levels: Tensor) -> Tensor:
    """Loop reference of :func:`nearest_level` (float64, first minimum = lower level on ties)."""
    x64, lv = x.double().reshape(x.shape[0] if levels.dim() == 2 else 1, -1), levels.double()
    lv = lv if lv.dim() == 2 else lv.unsqueeze(0)
    out = torch.empty(x64.shape, dtype=torch.long)
    for g in range(x64.shape[0]):
        row = lv[g] if lv.shape[0] > 1 else lv[0]
        for j in range(x64.shape[1]):
            mids = [(row[i] + row[i + 1]) / 2 for i in range(len(row) - 1)]
            out[g, j] = sum(1 for m in mids if x64[g, j] > m)
    return out.reshape(x.shape)


def levels_from_bases(bases: Tensor, signed: bool = True) -> tuple[Tensor, Tensor]:
    """All ``2**K`` values ``v . b`` of a basis ``(..., K)``, sorted, with the code of each.

    ``b`` ranges over {-1, +1}^K (``signed``) or {0, 1}^K; bit k of a code is b_k (LSB first,
    +1 / 1 ↔ bit set). Returns ``(levels, codes)``, both ``(..., 2**K)``, levels ascending;
    equal levels keep code order.
    """
    k = bases.shape[-1]
    codes = torch.arange(2**k, device=bases.device)  # (2^K,)
    bits = ((codes.unsqueeze(-1) >> torch.arange(k, device=bases.device)) & 1).to(bases.dtype)
    b = bits * 2 - 1 if signed else bits  # (2^K, K)
    values = bases @ b.T  # (..., 2^K)
    levels, order = torch.sort(values, dim=-1, stable=True)
    return levels, codes[order]


def levels_from_bases_reference(bases: Tensor, signed: bool = True) -> tuple[Tensor, Tensor]:
    """Loop reference of :func:`levels_from_bases` for a 1-D basis."""
    k = bases.shape[-1]
    pairs = []
    for code, bits in enumerate(itertools.product((0, 1), repeat=k)):
        bits = bits[::-1]  # itertools counts with the last position fastest: make bit 0 first
        code_bits = [(code >> i) & 1 for i in range(k)]
        assert list(bits) == code_bits
        b = [(2 * v - 1) if signed else v for v in code_bits]
        pairs.append((sum(float(bases[i]) * b[i] for i in range(k)), code))
    pairs.sort(key=lambda p: p[0])  # stable: equal values keep code order
    return (
        torch.tensor([p[0] for p in pairs], dtype=torch.float64),
        torch.tensor([p[1] for p in pairs]),
    )
