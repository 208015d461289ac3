"""Fast primitives equal their loop references on fresh random inputs."""

from __future__ import annotations

import pytest
import torch

from quantcore.primitives import (
    levels_from_bases,
    levels_from_bases_reference,
    nearest_level,
    nearest_level_reference,
)


@pytest.mark.parametrize("seed", range(4))
def test_nearest_level_shared_levels(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    levels = torch.sort(torch.randn(7, generator=gen)).values
    x = torch.randn(5, 40, generator=gen) * 2
    assert torch.equal(nearest_level(x, levels), nearest_level_reference(x, levels))


@pytest.mark.parametrize("seed", range(4))
def test_nearest_level_per_row_levels(seed: int) -> None:
    gen = torch.Generator().manual_seed(100 + seed)
    levels = torch.sort(torch.randn(6, 5, generator=gen), dim=1).values
    x = torch.randn(6, 30, generator=gen)
    assert torch.equal(nearest_level(x, levels), nearest_level_reference(x, levels))


def test_nearest_level_ties_go_to_the_lower_level() -> None:
    levels = torch.tensor([-1.0, 0.0, 2.0])
    x = torch.tensor([-0.5, 1.0, 1.0001, -2.0, 5.0])
    assert nearest_level(x, levels).tolist() == [0, 1, 2, 0, 2]


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_levels_from_bases_matches_reference(k: int, signed: bool) -> None:
    basis = torch.rand(k, generator=torch.Generator().manual_seed(k)).double() + 0.05
    levels, codes = levels_from_bases(basis, signed=signed)
    ref_levels, ref_codes = levels_from_bases_reference(basis, signed=signed)
    torch.testing.assert_close(levels, ref_levels)
    assert torch.equal(codes, ref_codes)


def test_levels_from_bases_is_batched_per_channel() -> None:
    bases = torch.rand(5, 3, dtype=torch.float64)
    levels, codes = levels_from_bases(bases)
    for c in range(5):
        ref_levels, ref_codes = levels_from_bases_reference(bases[c])
        torch.testing.assert_close(levels[c], ref_levels)
        assert torch.equal(codes[c], ref_codes)
