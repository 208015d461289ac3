"""An image dataset held in memory as one tensor, converted to model input per batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from quantcore.data.transforms import BatchTransform, normalize, resize, to_unit_float


def square_size(image_size: int | None, native: Sequence[int]) -> tuple[int, int]:
    """``(image_size, image_size)`` when a size is asked for, else the native ``(H, W)``."""
    if image_size:
        return image_size, image_size
    height, width = native
    return int(height), int(width)


class TensorImageDataset(Dataset[tuple[Tensor, int]]):
    """Images ``(N, C, H, W)`` (uint8, or float already in model scale) with int64 ``targets``.

    Each item is ``(image, label)``: the stored image converted to float (uint8 divided by 255),
    resized to ``size`` if given, passed through ``augment`` if given, then normalised with
    ``mean``/``std``. ``__getitems__`` does the same for a whole batch at once, which the
    DataLoader uses automatically, so a batch costs a few tensor ops rather than B of them.
    """

    def __init__(
        self,
        images: Tensor,
        targets: Tensor,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        size: tuple[int, int] | None = None,
        augment: BatchTransform | None = None,
    ) -> None:
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        if targets.shape != (images.shape[0],):
            raise ValueError(f"targets shape {tuple(targets.shape)} != ({images.shape[0]},)")
        if len(mean) != images.shape[1] or len(std) != images.shape[1]:
            raise ValueError("mean and std need one value per channel")
        self.images = images
        self.targets = targets.to(torch.int64)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.size = square_size(None, size if size is not None else images.shape[-2:])
        self.augment = augment

    def __len__(self) -> int:
        return self.images.shape[0]

    def _prepare(self, images: Tensor) -> Tensor:
        x = resize(to_unit_float(images), self.size)  # (B, C, H', W')
        if self.augment is not None:
            x = self.augment(x)
        return normalize(x, self.mean, self.std)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = self._prepare(self.images[index].unsqueeze(0))  # (1, C, H', W')
        return image[0], int(self.targets[index])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Tensor, int]]:
        index = torch.as_tensor(indices, dtype=torch.int64)
        images = self._prepare(self.images[index])  # (B, C, H', W')
        return list(zip(images.unbind(0), self.targets[index].tolist(), strict=True))


def repeatable(dataset: Dataset) -> bool:
    """True when reading an item of ``dataset`` twice gives the same tensor: a
    :class:`TensorImageDataset` without augmentation, or a ``Subset`` of one. Unknown dataset
    types count as not repeatable."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return isinstance(dataset, TensorImageDataset) and dataset.augment is None
