"""Tensor-only image transforms for the in-memory datasets.

Every transform here takes a batch shaped ``(B, C, H, W)`` and returns one, so the same code serves
one sample (a batch of one, in ``__getitem__``) and a whole batch (``__getitems__``, which the
DataLoader calls when it exists). Nothing round-trips through PIL. Random choices are drawn from
torch's global RNG, which the DataLoader seeds in each worker, and are made per sample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

BatchTransform = Callable[[Tensor], Tensor]
"""A function from a float batch ``(B, C, H, W)`` to a float batch."""


def to_unit_float(images: Tensor) -> Tensor:
    """Convert stored images to float32: uint8 is scaled to [0, 1], floats are kept as they are."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)
    return images.to(torch.float32)


def resize(images: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinearly resize a float batch ``(B, C, H, W)`` to ``size`` = (H', W'); no-op if equal."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Return ``(images - mean) / std`` with one mean and std per channel."""
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    return (images - mean_t) / std_t


class Compose:
    """Apply batch transforms in order."""

    def __init__(self, transforms: Sequence[BatchTransform]) -> None:
        self.transforms = tuple(transforms)

    def __call__(self, images: Tensor) -> Tensor:
        for transform in self.transforms:
            images = transform(images)
        return images

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


class RandomCrop:
    """Zero-pad each side by ``padding``, then crop a ``size`` window at a random place per sample.

    The padding is applied to the [0, 1] images before normalisation, i.e. it is black, as
    torchvision's ``RandomCrop(32, padding=4)`` on a PIL image is in the usual CIFAR pipeline.
    """

    def __init__(self, size: int | tuple[int, int], padding: int = 0) -> None:
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.padding = padding

    def __call__(self, images: Tensor) -> Tensor:
        batch, channels, height, width = images.shape
        crop_h, crop_w = self.size
        pad = self.padding
        padded = F.pad(images, (pad, pad, pad, pad)) if pad else images  # (B, C, H+2p, W+2p)
        room_h = height + 2 * pad - crop_h
        room_w = width + 2 * pad - crop_w
        if room_h < 0 or room_w < 0:
            raise ValueError(
                f"crop {self.size} is larger than the padded image {padded.shape[-2:]}"
            )
        device = images.device
        top = torch.randint(0, room_h + 1, (batch,)).to(device)  # (B,)
        left = torch.randint(0, room_w + 1, (batch,)).to(device)  # (B,)
        rows = top[:, None] + torch.arange(crop_h, device=device)  # (B, crop_h)
        cols = left[:, None] + torch.arange(crop_w, device=device)  # (B, crop_w)
        b_idx = torch.arange(batch, device=device).view(batch, 1, 1, 1)
        c_idx = torch.arange(channels, device=device).view(1, channels, 1, 1)
        return padded[b_idx, c_idx, rows[:, None, :, None], cols[:, None, None, :]]

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror each sample left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, images: Tensor) -> Tensor:
        flip = torch.rand(images.shape[0]).to(images.device) < self.p  # (B,)
        return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"
