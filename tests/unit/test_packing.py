"""Bit packing: the bit order of quantcore/packing.py's docstring, exact round trips, layouts."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantcore import packing
from quantcore.packing import (
    pack_codes,
    pack_groups,
    packed_groups_nbytes,
    packed_nbytes,
    unpack_codes,
    unpack_groups,
)

LENGTHS = st.one_of(st.sampled_from([0, 1, 7, 8, 9, 15, 16, 17]), st.integers(0, 300))


def reference_pack(codes: list[int], bits: int) -> bytes:
    """The docstring's bit order, one bit at a time: code i's bit t is stream bit i*bits + t,
    stream bit j is bit j % 8 of byte j // 8, zero-padded to a whole byte."""
    out = bytearray((len(codes) * bits + 7) // 8)
    for i, code in enumerate(codes):
        for t in range(bits):
            j = i * bits + t
            out[j // 8] |= ((code >> t) & 1) << (j % 8)
    return bytes(out)


def random_codes(bits: int, count: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 1 << bits, (count,), generator=gen)  # (count,) int64


@st.composite
def code_streams(draw: st.DrawFn) -> tuple[int, list[int]]:
    bits = draw(st.integers(1, 8))
    count = draw(LENGTHS)
    codes = draw(st.lists(st.integers(0, (1 << bits) - 1), min_size=count, max_size=count))
    return bits, codes


@st.composite
def group_matrices(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    groups = draw(st.integers(0, 12))
    n = draw(st.sampled_from([0, 1, 3, 7, 8, 9, 16, 33]))
    bits = torch.tensor(draw(st.lists(st.integers(0, 8), min_size=groups, max_size=groups)))
    seed = draw(st.integers(0, 2**32 - 1))
    return codes_for(bits.to(torch.int64), n, seed), bits.to(torch.int64)


def codes_for(bits: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Uniform random codes of ``bits[g]`` bits in row g (zeros for 0-bit groups)."""
    octets = random_codes(8, len(bits) * n, seed).view(len(bits), n)  # (G, n)
    return octets % (1 << bits).view(-1, 1)  # (G, n); 2**b divides 256, so still uniform


def test_worked_example_from_docstring() -> None:
    """3-bit [5, 3, 7]: stream 0x1DD little-endian, bytes 0b11_011_101 = 0xDD, then 0x01."""
    packed = pack_codes(torch.tensor([5, 3, 7]), 3)
    assert packed.tolist() == [0xDD, 0x01]
    assert unpack_codes(packed, 3, 3).tolist() == [5, 3, 7]


@settings(max_examples=300, deadline=None)
@given(code_streams())
def test_round_trip_is_exact_and_sized(stream: tuple[int, list[int]]) -> None:
    bits, codes = stream
    packed = pack_codes(torch.tensor(codes, dtype=torch.int64), bits)
    assert packed.dtype == torch.uint8
    assert packed.shape == (packed_nbytes(len(codes), bits),)
    unpacked = unpack_codes(packed, bits, len(codes))
    assert unpacked.dtype == torch.uint8
    assert unpacked.tolist() == codes


@settings(max_examples=200, deadline=None)
@given(code_streams())
def test_bytes_equal_bit_by_bit_reference(stream: tuple[int, list[int]]) -> None:
    """Reference: ``reference_pack``, the docstring's bit order built one bit at a time."""
    bits, codes = stream
    packed = pack_codes(torch.tensor(codes, dtype=torch.int64), bits)
    assert bytes(packed.tolist()) == reference_pack(codes, bits)


@pytest.mark.parametrize("bits", range(1, 9))
def test_bytes_equal_reference_on_random_codes(bits: int) -> None:
    codes = random_codes(bits, 1001, seed=bits)
    assert bytes(pack_codes(codes, bits).tolist()) == reference_pack(codes.tolist(), bits)


@pytest.mark.parametrize("bits", [1, 3, 5, 8])
def test_chunk_boundaries_do_not_change_bytes(bits: int, monkeypatch: pytest.MonkeyPatch) -> None:
    codes = random_codes(bits, 8 * 10 + 5, seed=7)
    expected = pack_codes(codes, bits)
    monkeypatch.setattr(packing, "_CHUNK_ROWS", 3)
    packed = pack_codes(codes, bits)
    assert torch.equal(packed, expected)
    assert torch.equal(unpack_codes(packed, bits, codes.numel()), codes.to(torch.uint8))


@pytest.mark.parametrize(
    "dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint32]
)
def test_every_integer_dtype_packs_the_same_bytes(dtype: torch.dtype) -> None:
    codes = random_codes(7, 100, seed=1)
    assert torch.equal(pack_codes(codes.to(dtype), 7), pack_codes(codes, 7))


def test_two_dimensional_codes_flatten_row_major() -> None:
    codes = random_codes(5, 6 * 7, seed=2).view(6, 7)  # (6, 7)
    assert torch.equal(pack_codes(codes, 5), pack_codes(codes.reshape(-1), 5))
    transposed = codes.t()  # (7, 6), not contiguous
    assert torch.equal(pack_codes(transposed, 5), pack_codes(transposed.contiguous().view(-1), 5))


def test_pack_does_not_alias_its_input() -> None:
    codes = torch.tensor([1, 2, 3], dtype=torch.uint8)
    packed = pack_codes(codes, 8)
    packed[0] = 99
    assert codes.tolist() == [1, 2, 3]


@pytest.mark.parametrize(("bits", "bad"), [(1, 2), (3, 8), (3, -1), (8, 256), (8, -3)])
def test_out_of_range_code_raises_naming_it(bits: int, bad: int) -> None:
    codes = torch.tensor([0, 1, bad, 0])
    with pytest.raises(ValueError, match=rf"got {bad}\b"):
        pack_codes(codes, bits)


@pytest.mark.parametrize("bits", [0, 9, -1, True, 3.0])
def test_bits_outside_one_to_eight_raise(bits: object) -> None:
    with pytest.raises(ValueError, match=r"bits must be an integer in 1\.\.8"):
        pack_codes(torch.zeros(4, dtype=torch.int64), bits)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"bits must be an integer in 1\.\.8"):
        unpack_codes(torch.zeros(4, dtype=torch.uint8), bits, 4)  # type: ignore[arg-type]


def test_float_codes_raise() -> None:
    with pytest.raises(ValueError, match="integer dtype"):
        pack_codes(torch.zeros(4), 2)


def test_unpack_from_too_few_bytes_raises() -> None:
    packed = pack_codes(random_codes(3, 9, seed=3), 3)  # 27 bits: 4 bytes
    with pytest.raises(ValueError, match="holds 3 bytes, 4 needed"):
        unpack_codes(packed[:3], 3, 9)


def test_unpack_ignores_bytes_past_the_stream() -> None:
    codes = random_codes(6, 5, seed=4)
    padded = torch.cat([pack_codes(codes, 6), torch.full((3,), 0xFF, dtype=torch.uint8)])
    assert torch.equal(unpack_codes(padded, 6, 5), codes.to(torch.uint8))


@settings(max_examples=200, deadline=None)
@given(group_matrices())
def test_group_round_trip_is_exact_and_sized(matrix: tuple[torch.Tensor, torch.Tensor]) -> None:
    codes, bits = matrix
    n = codes.shape[1]
    packed = pack_groups(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.shape == (packed_groups_nbytes(bits, n),)
    assert torch.equal(unpack_groups(packed, bits, n), codes.to(torch.uint8))


def test_groups_are_packed_class_by_class_in_increasing_bitwidth() -> None:
    bits = torch.tensor([3, 0, 1, 3, 8, 1])
    codes = codes_for(bits, 5, seed=5)  # (6, 5)
    expected = torch.cat(
        [
            pack_codes(codes[[2, 5]], 1),  # 10 codes: 2 bytes
            pack_codes(codes[[0, 3]], 3),  # 30 bits: 4 bytes, the next class starts byte-aligned
            pack_codes(codes[[4]], 8),
        ]
    )
    assert torch.equal(pack_groups(codes, bits), expected)


def test_zero_bit_group_with_nonzero_code_raises() -> None:
    codes = torch.zeros(3, 4, dtype=torch.int64)
    codes[2, 1] = 1
    with pytest.raises(ValueError, match="group 2 has bitwidth 0"):
        pack_groups(codes, torch.tensor([1, 0, 0]))


@pytest.mark.parametrize("bad", [9, -1])
def test_group_bitwidth_outside_zero_to_eight_raises(bad: int) -> None:
    with pytest.raises(ValueError, match=rf"0..8, got {bad}\b"):
        pack_groups(torch.zeros(2, 3, dtype=torch.int64), torch.tensor([1, bad]))


def test_unpack_groups_from_too_few_bytes_raises() -> None:
    bits = torch.tensor([2, 5])
    packed = pack_groups(torch.ones(2, 4, dtype=torch.int64), bits)
    with pytest.raises(ValueError, match="needed"):
        unpack_groups(packed[:-1], bits, 4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("bits", range(1, 9))
def test_cuda_round_trip_matches_cpu_bytes(bits: int) -> None:
    codes = random_codes(bits, 10_007, seed=bits)
    packed = pack_codes(codes.cuda(), bits)
    assert packed.device.type == "cuda"
    assert torch.equal(packed.cpu(), pack_codes(codes, bits))
    assert torch.equal(unpack_codes(packed, bits, codes.numel()).cpu(), codes.to(torch.uint8))
