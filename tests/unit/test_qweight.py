"""The quantized-weight contract: groupings and ``dequantize`` against plain loop references."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantcore.qweight import CodebookKind, Grouping, QuantizedWeight, dequantize


def _reference_value(kind: CodebookKind, row: list[float], code: int, bits: int) -> float:
    """One weight's value, straight from the formula in quantcore/qweight.py's docstring."""
    if bits == 0:
        return 0.0
    if kind is CodebookKind.LEVELS:
        return row[code]
    if kind is CodebookKind.AFFINE:
        return row[0] * (code - row[1])
    return sum(row[k] * (2 * ((code >> k) & 1) - 1) for k in range(bits))


def _reference_dequantize(qw: QuantizedWeight) -> torch.Tensor:
    out = torch.zeros(qw.codes.shape, dtype=torch.float64)
    for g in range(qw.num_groups):
        row = qw.codebook[g if qw.codebook.shape[0] > 1 else 0].double().tolist()
        for j in range(qw.group_size):
            out[g, j] = _reference_value(qw.kind, row, int(qw.codes[g, j]), int(qw.bits[g]))
    # Ungroup by explicit index arithmetic rather than Grouping.merge.
    permuted = [qw.shape[a] for a in qw.grouping.perm]
    w = torch.zeros(qw.shape, dtype=torch.float64)
    flat = out.reshape(-1)
    for i, idx in enumerate(itertools.product(*(range(s) for s in permuted))):
        original = [0] * len(qw.shape)
        for pos, axis in enumerate(qw.grouping.perm):
            original[axis] = idx[pos]
        w[tuple(original)] = flat[i]
    return w


def _random_qw(kind: CodebookKind, shared: bool, seed: int) -> QuantizedWeight:
    gen = torch.Generator().manual_seed(seed)
    shape = (3, 4, 2, 3)
    grouping = Grouping((0, 2, 3, 1), 4)  # ALQ's pixelwise grouping: n = C
    g = grouping.num_groups(shape)
    if kind is CodebookKind.LEVELS:
        bits = torch.full((g,), 3, dtype=torch.uint8)
        book = torch.randn(1 if shared else g, 8, generator=gen)
    elif kind is CodebookKind.AFFINE:
        bits = torch.full((g,), 4, dtype=torch.uint8)
        book = torch.stack(
            [torch.rand(g, generator=gen) + 0.1, torch.randint(0, 16, (g,), generator=gen).float()],
            1,
        )
    else:
        bits = torch.randint(0, 5, (g,), generator=gen, dtype=torch.uint8)
        book = torch.randn(g, 4, generator=gen)
    high = (2 ** bits.long()).unsqueeze(1)
    codes = (torch.rand(g, grouping.size, generator=gen) * high).long().clamp(max=high - 1)
    return QuantizedWeight(shape, grouping, codes.to(torch.uint8), bits, book, kind)


@pytest.mark.parametrize("kind", list(CodebookKind))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dequantize_matches_the_formula(kind: CodebookKind, seed: int) -> None:
    qw = _random_qw(kind, shared=seed == 0, seed=seed)
    expected = _reference_dequantize(qw)
    torch.testing.assert_close(dequantize(qw).double(), expected, rtol=1e-6, atol=1e-6)


def test_zero_bit_groups_dequantize_to_zero() -> None:
    qw = _random_qw(CodebookKind.BASES, shared=False, seed=3)
    bits = torch.zeros_like(qw.bits)
    zero = QuantizedWeight(
        qw.shape, qw.grouping, torch.zeros_like(qw.codes), bits, qw.codebook, qw.kind
    )
    assert torch.count_nonzero(dequantize(zero)) == 0
    assert zero.average_bits() == 0.0


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=4),
    data=st.data(),
)
def test_grouping_split_then_merge_is_identity(shape: list[int], data: st.DataObject) -> None:
    perm = tuple(data.draw(st.permutations(range(len(shape)))))
    permuted = [shape[a] for a in perm]
    tail = data.draw(st.integers(0, len(shape)))
    size = math.prod(permuted[tail:])  # a group is the trailing axes after permuting
    grouping = Grouping(perm, size)
    w = torch.randn(shape)
    groups = grouping.split(w)
    assert groups.shape == (math.prod(shape) // size, size)
    assert torch.equal(grouping.merge(groups, tuple(shape)), w)


def test_average_bits_weights_groups_by_size() -> None:
    qw = _random_qw(CodebookKind.BASES, shared=False, seed=4)
    expected = float(qw.bits.double().mean())  # all groups have the same size
    assert qw.average_bits() == pytest.approx(expected)
    assert qw.payload_bits() == int(qw.bits.sum()) * qw.group_size


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"codes": torch.zeros(5, 4, dtype=torch.uint8)}, "codes have shape"),
        ({"bits": torch.full((18,), 9, dtype=torch.uint8)}, "bits must lie"),
        ({"codebook": torch.zeros(3, 2)}, "codebook shape"),
        ({"grouping": Grouping((0, 1, 2, 3), 5)}, "does not divide"),
        ({"codes": torch.zeros(18, 4)}, "integer"),
    ],
)
def test_inconsistent_contract_is_rejected(change: dict, message: str) -> None:
    qw = _random_qw(CodebookKind.AFFINE, shared=False, seed=5)
    fields = {
        "shape": qw.shape,
        "grouping": qw.grouping,
        "codes": qw.codes,
        "bits": qw.bits,
        "codebook": qw.codebook,
        "kind": qw.kind,
        **change,
    }
    with pytest.raises(ValueError, match=message):
        QuantizedWeight(**fields)
