"""VGG-Small for CIFAR-10, in the two variants the specs describe.

``vgg_small`` (the default) is the ALQ official code's ``VGG_small`` (github.com/zqu1992/ALQ
``vgg.py`` at ``ae2391e``; ../methods/alq.md §8 "VGG-small" and §2.3): six 3x3 convs with bias
(128, 128, 256, 256, 512, 512), each followed by BN and ReLU, with a 2x2 max-pool placed *between*
the conv and its BN in the pooled stages (conv → pool → BN → ReLU); then flatten to 8192 and
FC 8192→1024, BN1d, ReLU, FC 1024→1024, BN1d, ReLU, FC 1024→classes. BN is affine, momentum 0.1.
The module tree (``features.N``, ``classifier.N``) mirrors the official code, so its checkpoints
load as they are. Initialisation: PyTorch's defaults, as the official code (which sets none).

``vgg_small_lqnets`` is LQ-Nets' VGG-Small (github.com/microsoft/LQ-Nets ``cifar10-vgg-small.py``
at ``86b9b75``; ../methods/lq-nets.md §6.4). Same six convs and the same conv → pool → BN → ReLU
order, but the convs have **no bias** and the head is a single FC 8192→classes (with bias): no
hidden FC layers, no BN1d. Initialisation as the official TensorFlow code: convs and the FC with
TF 1.x variance scaling, fan-in, factor 2 (truncated normal), biases zero. The official script
also divides the mean-subtracted image by 128 inside the model; that is input preprocessing and is
left to the data pipeline here.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from quantcore.zoo.initializers import tf_variance_scaling_
from quantcore.zoo.registry import register

# (output channels, max-pool after the conv) for conv1..conv6 of both variants.
_CONV_PLAN: tuple[tuple[int, bool], ...] = (
    (128, False),
    (128, True),  # 32 → 16
    (256, False),
    (256, True),  # 16 → 8
    (512, False),
    (512, True),  # 8 → 4
)
_FLAT_FEATURES = 512 * 4 * 4  # 8192 for a 32x32 input


class VGGSmall(nn.Module):
    """ALQ's VGG-Small: six conv-BN-ReLU stages, then a three-layer FC head with BN1d."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for out_channels, pooled in _CONV_PLAN:
            layers.append(nn.Conv2d(channels, out_channels, kernel_size=3, padding=1))
            if pooled:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            layers += [nn.BatchNorm2d(out_channels, momentum=0.1), nn.ReLU(inplace=False)]
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()  # (N, 512, 4, 4) → (N, 8192)
        self.classifier = nn.Sequential(
            nn.Linear(_FLAT_FEATURES, 1024),
            nn.BatchNorm1d(1024, momentum=0.1),
            nn.ReLU(inplace=False),
            nn.Linear(1024, 1024),
            nn.BatchNorm1d(1024, momentum=0.1),
            nn.ReLU(inplace=False),
            nn.Linear(1024, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))


class VGGSmallLQNets(nn.Module):
    """LQ-Nets' VGG-Small: six bias-free conv stages, then one FC layer."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[tuple[str, nn.Module]] = []
        channels = in_channels
        for i, (out_channels, pooled) in enumerate(_CONV_PLAN):
            conv = nn.Conv2d(channels, out_channels, kernel_size=3, padding=1, bias=False)
            layers.append((f"conv{i}", conv))
            if pooled:
                layers.append((f"pool{i}", nn.MaxPool2d(kernel_size=2, stride=2)))
            layers += [(f"bn{i}", nn.BatchNorm2d(out_channels)), (f"relu{i}", nn.ReLU())]
            channels = out_channels
        self.features = nn.Sequential(OrderedDict(layers))
        self.flatten = nn.Flatten()  # (N, 512, 4, 4) → (N, 8192)
        self.fc = nn.Linear(_FLAT_FEATURES, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                tf_variance_scaling_(m.weight, mode="fan_in")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.features(x)))


@register(
    "vgg_small",
    title="VGG-Small (ALQ)",
    source="ALQ official code, github.com/zqu1992/ALQ vgg.py @ ae2391e (alq.md §8)",
)
def vgg_small(*, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """VGG-Small for CIFAR-10 32x32 images as ALQ builds it: six 3x3 convs, BN, and three FC layers.

    Convs 128-128-256-256-512-512 with bias, conv → pool → BN → ReLU in the pooled stages, then
    FC 8192→1024→1024→classes with BN1d and ReLU between.
    """
    return VGGSmall(num_classes=num_classes, in_channels=in_channels)


@register(
    "vgg_small_lqnets",
    title="VGG-Small (LQ-Nets)",
    source=(
        "LQ-Nets official code, github.com/microsoft/LQ-Nets cifar10-vgg-small.py @ 86b9b75 "
        "(lq-nets.md §6.4)"
    ),
)
def vgg_small_lqnets(*, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """VGG-Small for CIFAR-10 32x32 images as LQ-Nets builds it: six bias-free 3x3 convs, one FC.

    Convs 128-128-256-256-512-512, conv → pool → BN → ReLU in the pooled stages, then a single
    FC 8192→classes.
    """
    return VGGSmallLQNets(num_classes=num_classes, in_channels=in_channels)
