"""Seeded, optionally class-balanced subsets (L-DNQ, for one, calibrates on 1% of the train set)."""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Real

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from quantcore.errors import InvalidDataset, InvalidParams


class LabelledSubset(Subset):
    """A ``Subset`` that also carries the int64 ``targets`` of its indices (None without them)."""

    def __init__(self, dataset: Dataset, indices: Sequence[int], targets: Tensor | None) -> None:
        super().__init__(dataset, indices)
        self.targets = targets


def _targets_of(dataset: Dataset) -> Tensor | None:
    targets = getattr(dataset, "targets", None)
    if targets is None:
        return None
    return torch.as_tensor(targets, dtype=torch.int64).reshape(-1)


def _balanced_indices(targets: Tensor, fraction: float, generator: torch.Generator) -> Tensor:
    """Up to ``round(fraction * N / K)`` (at least 1) random indices from each present class."""
    n = targets.numel()
    classes, counts = torch.unique(targets, return_counts=True)  # (K,), (K,)
    per_class = max(1, round(fraction * n / len(classes)))
    perm = torch.randperm(n, generator=generator)  # (N,) random order
    order = torch.argsort(targets[perm], stable=True)  # group by class, random within a class
    shuffled = perm[order]  # (N,) indices grouped by class
    starts = torch.cumsum(counts, 0) - counts  # (K,) first position of each class in `shuffled`
    rank = torch.arange(n) - torch.repeat_interleave(starts, counts)  # (N,) position in its class
    return shuffled[rank < per_class]


def subset(
    dataset: Dataset, fraction: float, *, seed: int, balanced: bool = True
) -> LabelledSubset:
    """Return a seeded subset holding ``fraction`` of ``dataset``, sorted by index.

    ``balanced``: every class present gets ``round(fraction * N / K)`` samples (at least 1, at
    most what the class has). Otherwise a uniform sample of ``round(fraction * N)`` (at least 1).
    The same seed gives the same indices. ``dataset`` needs ``targets`` when ``balanced``.
    """
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, Real)
        or not (0.0 < float(fraction) <= 1.0)
    ):
        raise InvalidParams(
            f"fraction must be a number in (0, 1], got {fraction!r}",
            {"fraction": repr(fraction), "allowed": "0 < fraction <= 1"},
        )
    fraction = float(fraction)
    targets = _targets_of(dataset)
    n = len(dataset)
    if n == 0:
        raise InvalidDataset("cannot take a subset of an empty dataset")
    if targets is not None and targets.numel() != n:
        raise InvalidDataset(f"dataset has {n} samples but {targets.numel()} targets")
    generator = torch.Generator()
    generator.manual_seed(seed)
    if balanced:
        if targets is None:
            raise InvalidDataset(
                "a balanced subset needs a dataset with `targets`; pass balanced=False"
            )
        indices = _balanced_indices(targets, fraction, generator)
    else:
        size = max(1, round(fraction * n))
        indices = torch.randperm(n, generator=generator)[:size]
    indices = torch.sort(indices).values
    picked = targets[indices] if targets is not None else None
    return LabelledSubset(dataset, indices.tolist(), picked)
