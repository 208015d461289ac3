"""scikit-learn's handwritten digits: 1,797 grayscale 8x8 images of 0-9, shipped with sklearn.

The images stay 8x8 unless ``image_size`` asks otherwise: ``image_size=28`` upsamples them
bilinearly (per batch, in the dataset) so MNIST-shaped models such as LeNet5 run on them.
The 80/20 split is stratified and seeded (seed 0), so every run sees the same split; mean and std
are computed from the train split. No augmentation, like the MNIST family.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits as _sklearn_digits
from sklearn.model_selection import train_test_split

from quantcore.data.bundle import DataBundle
from quantcore.data.tensors import TensorImageDataset, square_size

SPLIT_SEED = 0
VAL_FRACTION = 0.2
_PIXEL_MAX = 16.0  # sklearn's digits are counts 0..16 per pixel


def load_digits(
    root: Path | None = None, *, augment: bool = True, image_size: int | None = None
) -> DataBundle:
    """Load the digits bundle; ``root`` and ``augment`` are accepted and ignored."""
    del root, augment
    raw = _sklearn_digits()
    images = (raw.images.astype(np.float32) / _PIXEL_MAX)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    labels = raw.target.astype(np.int64)  # (1797,)
    train_idx, val_idx = train_test_split(
        np.arange(len(labels)), test_size=VAL_FRACTION, stratify=labels, random_state=SPLIT_SEED
    )
    x_train = torch.from_numpy(images[np.sort(train_idx)])
    x_val = torch.from_numpy(images[np.sort(val_idx)])
    y_train = torch.from_numpy(labels[np.sort(train_idx)])
    y_val = torch.from_numpy(labels[np.sort(val_idx)])
    mean = (float(x_train.mean()),)
    std = (float(x_train.std()),)
    size = square_size(image_size, x_train.shape[2:])
    return DataBundle(
        name="digits",
        train=TensorImageDataset(x_train, y_train, mean=mean, std=std, size=size),
        val=TensorImageDataset(x_val, y_val, mean=mean, std=std, size=size),
        num_classes=10,
        in_channels=1,
        input_size=size,
        mean=mean,
        std=std,
        classes=tuple(str(d) for d in range(10)),
    )
