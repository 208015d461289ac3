"""Bit packing of integer codes of 1..8 bits into bytes, and back, exactly.

Bit order
---------
Codes are laid in one little-endian bitstream. Code ``i`` of a ``b``-bit stream occupies stream
bits ``[i*b, (i+1)*b)``, its least significant bit first. Stream bit ``j`` is bit ``j % 8`` of
byte ``j // 8`` (least significant bit first). The stream is zero-padded to a whole byte, so
``count`` codes take ``packed_nbytes(count, b) = ceil(count * b / 8)`` bytes.

Worked example, 3-bit codes ``[5, 3, 7]``::

    code       5 = 0b101   3 = 0b011   7 = 0b111
    stream     bit 0..2    bit 3..5    bit 6..8
    LSB first  1 0 1       1 1 0       1 1 | 1   (then 7 zero bits of padding)

    byte 0 = stream bits 0..7 = 0b11_011_101 = 0xDD   (low two bits of 7, then 3, then 5)
    byte 1 = stream bits 8..15 = 0b0000000_1 = 0x01   (high bit of 7, then padding)

Equivalently the stream is the integer ``5 | 3 << 3 | 7 << 6 = 0x1DD`` written little-endian.

How it is computed
------------------
Eight ``b``-bit codes fill exactly ``b`` bytes, so codes are viewed as rows of 8 and each output
byte of a row is the OR of the (at most three) codes that overlap it, each shifted into place.
That is at most ``8 + b`` column operations on ``uint8`` tensors per chunk of rows, whatever the
number of codes; the loops below run over bit positions, never over elements. A final partial row
is zero-padded and the output trimmed to ``packed_nbytes``. Unpacking inverts the same plan.

Per-group bitwidths
-------------------
``pack_groups`` packs a ``(G, n)`` code matrix whose group ``g`` has ``bits[g]`` bits (0..8).
Groups are packed class by class in increasing bitwidth: for each bitwidth ``b`` present, that
class's groups in their original order are concatenated and packed as one ``b``-bit stream with
``pack_codes``; the class streams are concatenated, each starting on a byte boundary. A 0-bit
group has no payload and all its codes are zero.

Unpacked codes are returned as ``uint8`` (every code fits in 8 bits). The functions raise
``ValueError`` on bad arguments: they are internal and callers validate user input first.
"""

from __future__ import annotations

import functools

import torch

__all__ = [
    "pack_codes",
    "pack_groups",
    "packed_groups_nbytes",
    "packed_nbytes",
    "unpack_codes",
    "unpack_groups",
]

_MAX_BITS = 8
_CHUNK_ROWS = 2**19  # rows of 8 codes per chunk: 2**22 codes, bounds temporaries for 10**8 codes
# Integer dtypes whose min/max torch computes directly; other integer dtypes go through int64.
_NATIVE_DTYPES = frozenset({torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64})
_WIDE_UNSIGNED = frozenset({torch.uint16, torch.uint32, torch.uint64})


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes that ``count`` codes of ``bits`` bits take: ``ceil(count * bits / 8)``."""
    _check_bits(bits)
    _check_count(count)
    return (count * bits + 7) // 8


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer ``codes`` (any shape, flattened row-major) of ``bits`` bits into bytes.

    Every code must lie in ``[0, 2**bits)``. Returns a 1-D ``uint8`` tensor of
    ``packed_nbytes(codes.numel(), bits)`` bytes on ``codes.device``, in the bit order of the
    module docstring.
    """
    _check_bits(bits)
    flat = _checked_codes(codes, bits)  # (N,)
    count = flat.numel()
    if bits == _MAX_BITS:
        return flat.to(torch.uint8, copy=True)  # (N,)

    full_rows, tail = divmod(count, 8)
    out = torch.empty((count + 7) // 8, bits, dtype=torch.uint8, device=flat.device)  # (R, b)
    body = flat[: full_rows * 8].view(full_rows, 8)  # (M, 8), M = R or R - 1
    for start in range(0, full_rows, _CHUNK_ROWS):
        stop = min(start + _CHUNK_ROWS, full_rows)
        _pack_rows(body[start:stop].to(torch.uint8), bits, out[start:stop])
    if tail:
        last = torch.zeros(1, 8, dtype=torch.uint8, device=flat.device)  # (1, 8), zero-padded
        last[0, :tail] = flat[full_rows * 8 :]
        _pack_rows(last, bits, out[full_rows:])
    return out.view(-1)[: packed_nbytes(count, bits)]  # (ceil(N*b/8),)


def unpack_codes(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: the first ``count`` codes of a ``bits``-bit stream.

    ``packed`` is a 1-D ``uint8`` tensor of at least ``packed_nbytes(count, bits)`` bytes; bytes
    past those are ignored. Returns a 1-D ``uint8`` tensor of ``count`` codes on
    ``packed.device``.
    """
    nbytes = packed_nbytes(count, bits)
    _check_packed(packed, nbytes)
    if bits == _MAX_BITS:
        return packed[:count].clone()  # (N,)

    full_rows, tail = divmod(count, 8)
    codes = torch.empty((count + 7) // 8, 8, dtype=torch.uint8, device=packed.device)  # (R, 8)
    body = packed[: full_rows * bits].view(full_rows, bits)  # (M, b), M = R or R - 1
    for start in range(0, full_rows, _CHUNK_ROWS):
        stop = min(start + _CHUNK_ROWS, full_rows)
        _unpack_rows(body[start:stop], bits, codes[start:stop])
    if tail:
        last = torch.zeros(1, bits, dtype=torch.uint8, device=packed.device)  # (1, b), padded
        last[0, : nbytes - full_rows * bits] = packed[full_rows * bits : nbytes]
        _unpack_rows(last, bits, codes[full_rows:])
    return codes.view(-1)[:count]  # (N,)


def packed_groups_nbytes(bits: torch.Tensor, n: int) -> int:
    """Bytes that :func:`pack_groups` writes for groups of ``n`` codes with bitwidths ``bits``."""
    _check_count(n)
    counts = _class_counts(bits)
    return sum(packed_nbytes(c * n, b) for b, c in enumerate(counts) if b > 0)


def pack_groups(codes: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Pack a ``(G, n)`` code matrix whose group ``g`` has ``bits[g]`` bits (0..8).

    Layout in the module docstring: one stream per bitwidth class, in increasing bitwidth, each
    byte-aligned. A 0-bit group stores nothing and its codes must all be zero. Returns a 1-D
    ``uint8`` tensor of ``packed_groups_nbytes(bits, n)`` bytes on ``codes.device``.
    """
    if codes.dim() != 2:
        raise ValueError(f"codes must be a (G, n) matrix, got shape {tuple(codes.shape)}")
    _check_code_dtype(codes)
    counts = _class_counts(bits)
    if len(bits) != codes.shape[0]:
        raise ValueError(f"bits has {len(bits)} entries for {codes.shape[0]} groups")
    bits = bits.to(codes.device)  # (G,)

    streams = []
    for b, c in enumerate(counts):
        if c == 0:
            continue
        members = codes[bits == b]  # (c, n)
        if b == 0:
            nonzero = members.ne(0).any(dim=1)  # (c,)
            if bool(nonzero.any()):
                group = int(torch.nonzero(bits == 0).view(-1)[nonzero][0])
                raise ValueError(f"group {group} has bitwidth 0 but nonzero codes")
            continue
        streams.append(pack_codes(members, b))  # (ceil(c*n*b/8),)
    if not streams:
        return torch.empty(0, dtype=torch.uint8, device=codes.device)
    return torch.cat(streams)  # (packed_groups_nbytes,)


def unpack_groups(packed: torch.Tensor, bits: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_groups`: the ``(G, n)`` ``uint8`` code matrix.

    ``packed`` is a 1-D ``uint8`` tensor of at least ``packed_groups_nbytes(bits, n)`` bytes;
    bytes past those are ignored. 0-bit groups come back as zeros.
    """
    _check_count(n)
    counts = _class_counts(bits)
    _check_packed(packed, packed_groups_nbytes(bits, n))
    bits = bits.to(packed.device)  # (G,)

    codes = torch.zeros(len(bits), n, dtype=torch.uint8, device=packed.device)  # (G, n)
    offset = 0
    for b, c in enumerate(counts):
        if b == 0 or c == 0:
            continue
        nbytes = packed_nbytes(c * n, b)
        stream = packed[offset : offset + nbytes]  # (nbytes,)
        codes[bits == b] = unpack_codes(stream, b, c * n).view(c, n)
        offset += nbytes
    return codes


# --- the byte plan ----------------------------------------------------------------------------


@functools.cache
def _byte_plan(bits: int) -> tuple[tuple[tuple[int, int], ...], ...]:
    """For each of the ``bits`` bytes of a row of 8 codes: the codes overlapping it.

    Entry ``(i, s)`` of byte ``k`` means code ``i`` starts ``s = i*bits - 8*k`` bits into byte
    ``k``: it contributes ``code << s`` (``s >= 0``) or ``code >> -s`` (``s < 0``, its low bits
    lie in the previous byte), truncated to 8 bits.
    """
    plan = []
    for k in range(bits):
        plan.append(
            tuple(
                (i, i * bits - 8 * k)
                for i in range(8)
                if i * bits < 8 * (k + 1) and (i + 1) * bits > 8 * k
            )
        )
    return tuple(plan)


@functools.cache
def _code_plan(bits: int) -> tuple[tuple[tuple[int, int], ...], ...]:
    """For each of the 8 codes of a row: the bytes holding it, as ``(k, s)`` with ``s`` the shift
    that moves byte ``k``'s bits to their place in the code (the negation of the byte plan's)."""
    by_code: list[list[tuple[int, int]]] = [[] for _ in range(8)]
    for k, overlaps in enumerate(_byte_plan(bits)):
        for i, s in overlaps:
            by_code[i].append((k, -s))
    return tuple(tuple(pieces) for pieces in by_code)


def _shift(x: torch.Tensor, s: int) -> torch.Tensor:
    """``x << s`` for ``s >= 0``, else ``x >> -s``; on ``uint8`` the left shift truncates."""
    return x << s if s >= 0 else x >> -s


def _combine(pieces: list[tuple[torch.Tensor, int]], out: torch.Tensor, mask: int | None) -> None:
    """``out = OR of _shift(column, s) over pieces``, then ``& mask`` if given.

    The last operation writes into ``out`` (a strided column) directly: one pass fewer than
    building the value in ``out`` and or-ing into it.
    """
    (column, s), *rest = pieces
    acc = _shift(column, s)  # (R,) fresh tensor
    for column, s in rest[:-1]:
        acc |= _shift(column, s)
    if rest:
        last = _shift(*rest[-1])  # (R,)
        if mask is None:
            torch.bitwise_or(acc, last, out=out)
            return
        acc |= last
    if mask is None:
        out.copy_(acc)
    else:
        torch.bitwise_and(acc, mask, out=out)


def _pack_rows(rows: torch.Tensor, bits: int, out: torch.Tensor) -> None:
    """Write the ``bits`` bytes of each row of 8 ``uint8`` codes into ``out``."""
    # rows: (R, 8) uint8, out: (R, b) uint8
    for k, overlaps in enumerate(_byte_plan(bits)):
        _combine([(rows[:, i], s) for i, s in overlaps], out[:, k], mask=None)


def _unpack_rows(rows: torch.Tensor, bits: int, out: torch.Tensor) -> None:
    """Write the 8 codes held by each row of ``bits`` bytes into ``out``."""
    # rows: (R, b) uint8, out: (R, 8) uint8
    for i, pieces in enumerate(_code_plan(bits)):
        # A code ending inside a byte shares that byte with the next code: mask those bits off.
        ends_mid_byte = (i + 1) * bits % 8 != 0
        mask = (1 << bits) - 1 if ends_mid_byte else None
        _combine([(rows[:, k], s) for k, s in pieces], out[:, i], mask)


# --- checks -----------------------------------------------------------------------------------


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= _MAX_BITS:
        raise ValueError(f"bits must be an integer in 1..{_MAX_BITS}, got {bits!r}")


def _check_count(count: int) -> None:
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be a non-negative integer, got {count!r}")


def _check_packed(packed: torch.Tensor, nbytes: int) -> None:
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ValueError(
            f"packed must be a 1-D uint8 tensor, got {packed.dtype} of shape {tuple(packed.shape)}"
        )
    if packed.numel() < nbytes:
        raise ValueError(f"packed holds {packed.numel()} bytes, {nbytes} needed")


def _checked_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """``codes`` flattened row-major, after checking each lies in [0, 2**bits)."""
    _check_code_dtype(codes)
    if codes.dtype in _WIDE_UNSIGNED:
        codes = codes.to(torch.int64)  # min/max are not implemented for these dtypes
    flat = codes.reshape(-1)  # (N,)
    if flat.numel():
        lo, hi = (int(v) for v in torch.aminmax(flat))
        if lo < 0 or hi >= 1 << bits:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{bits}-bit codes must lie in [0, {1 << bits}), got {bad}")
    return flat


def _check_code_dtype(codes: torch.Tensor) -> None:
    if codes.dtype not in _NATIVE_DTYPES | _WIDE_UNSIGNED:
        raise ValueError(f"codes must have an integer dtype, got {codes.dtype}")


def _class_counts(bits: torch.Tensor) -> list[int]:
    """Number of groups of each bitwidth 0..8, after checking ``bits`` is 1-D, integer, in range."""
    if bits.dim() != 1 or bits.dtype not in _NATIVE_DTYPES:
        raise ValueError(
            f"bits must be a 1-D integer tensor, got {bits.dtype} of shape {tuple(bits.shape)}"
        )
    if bits.numel():
        lo, hi = (int(v) for v in torch.aminmax(bits))
        if lo < 0 or hi > _MAX_BITS:
            bad = lo if lo < 0 else hi
            raise ValueError(f"group bitwidths must lie in 0..{_MAX_BITS}, got {bad}")
    return torch.bincount(bits.to(torch.int64), minlength=_MAX_BITS + 1).tolist()
