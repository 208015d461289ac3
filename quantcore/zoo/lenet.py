"""LeNet5, Caffe variant, exactly as the ALQ official code builds it.

Source: ALQ (Qu et al., CVPR 2020), github.com/zqu1992/ALQ ``lenet5.py`` at ``ae2391e``; spec
../methods/alq.md §8 "LeNet5 (Caffe variant)" and §2.3 (layer shapes). Order of operations:
conv 1→20 5x5, max-pool 2, ReLU, conv 20→50 5x5, max-pool 2, ReLU, flatten to 800, FC 800→500,
ReLU, FC 500→classes. Every layer has a bias; no BN, no dropout; 431,080 parameters for 10 classes
and 1 input channel. The module tree (``features.N``, ``classifier.N``) mirrors the official code,
so its checkpoints load as they are. Initialisation: PyTorch's defaults, as the official code
(which sets none). The input must be 28x28.
"""

from __future__ import annotations

import torch
from torch import nn

from quantcore.zoo.registry import register


class LeNet5(nn.Module):
    """LeNet5 (Caffe variant) for 28x28 inputs."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 20, kernel_size=5),  # 28 → 24
            nn.MaxPool2d(2, 2),  # 24 → 12
            nn.ReLU(inplace=False),
            nn.Conv2d(20, 50, kernel_size=5),  # 12 → 8
            nn.MaxPool2d(2, 2),  # 8 → 4
            nn.ReLU(inplace=False),
        )
        self.flatten = nn.Flatten()  # (N, 50, 4, 4) → (N, 800)
        self.classifier = nn.Sequential(
            nn.Linear(50 * 4 * 4, 500),
            nn.ReLU(inplace=False),
            nn.Linear(500, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))


@register(
    "lenet5",
    title="LeNet5 (Caffe variant)",
    source="ALQ official code, github.com/zqu1992/ALQ lenet5.py @ ae2391e (alq.md §8)",
    default_in_channels=1,
    default_input_size=(28, 28),
)
def lenet5(*, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """LeNet5 for MNIST-family 28x28 images: two 5x5 convs (20, 50), two FC layers (500, classes).

    431,080 parameters for 10 classes; the exact layer order of the ALQ official code.
    """
    return LeNet5(num_classes=num_classes, in_channels=in_channels)
