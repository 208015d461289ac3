"""Throughput of quantcore.packing: pack and unpack random codes at each bitwidth.

    .venv/bin/python -m bench.packing --count 100000000 --device cpu   # from the repo root

Prints one row per bitwidth: packed size (MB = 10**6 bytes), pack and unpack throughput in
millions of codes per second (best of --repeat runs), and whether the round trip was exact.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from quantcore.packing import pack_codes, packed_nbytes, unpack_codes

DTYPES = {"uint8": torch.uint8, "int64": torch.int64}


def best_seconds(fn: Callable[[], torch.Tensor], device: torch.device, repeat: int) -> float:
    """Fastest of ``repeat`` timed calls of ``fn``, synchronising the device around each."""
    best = float("inf")
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def bench_bits(
    bits: int, count: int, device: torch.device, dtype: torch.dtype, repeat: int, seed: int
) -> tuple[float, float, float, bool]:
    gen = torch.Generator(device=device).manual_seed(seed + bits)
    codes = torch.randint(0, 1 << bits, (count,), generator=gen, device=device, dtype=dtype)
    pack_codes(codes[:4096], bits)  # warm-up: first-call overheads out of the timing
    pack_s = best_seconds(lambda: pack_codes(codes, bits), device, repeat)
    packed = pack_codes(codes, bits)  # (ceil(count*bits/8),) uint8
    unpack_s = best_seconds(lambda: unpack_codes(packed, bits, count), device, repeat)
    exact = torch.equal(unpack_codes(packed, bits, count), codes.to(torch.uint8))
    exact = exact and packed.numel() == packed_nbytes(count, bits)
    return packed.numel() / 1e6, count / pack_s / 1e6, count / unpack_s / 1e6, exact


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10**8, help="codes per bitwidth")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument("--bits", type=int, nargs="+", default=list(range(1, 9)))
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="uint8", help="codes' dtype")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs; the best is reported")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    print(
        f"count={args.count:,} device={device} dtype={args.dtype} "
        f"threads={torch.get_num_threads()} torch={torch.__version__}"
    )
    print(
        f"{'bits':>4} {'MB packed':>10} {'pack Mcodes/s':>14} {'unpack Mcodes/s':>16} {'exact':>6}"
    )
    all_exact = True
    for bits in args.bits:
        mb, pack_rate, unpack_rate, exact = bench_bits(
            bits, args.count, device, dtype, args.repeat, args.seed
        )
        all_exact &= exact
        print(f"{bits:>4} {mb:>10.1f} {pack_rate:>14.0f} {unpack_rate:>16.0f} {exact!s:>6}")
    if not all_exact:
        raise SystemExit("round trip was not exact")


if __name__ == "__main__":
    main()
