"""Pre-activation ResNet-18 as LQ-Nets quantizes it for ImageNet (mode ``preact``).

Source: LQ-Nets (Zhang et al., ECCV 2018), github.com/microsoft/LQ-Nets ``resnet_model.py`` at
``86b9b75`` (``preresnet_group``, ``preresnet_basicblock``, ``resnet_backbone``); spec
../methods/lq-nets.md §6.2 and §10 P6. This is *not* the standard pre-activation design:

- stem: conv 7x7/2 (64, no bias) → BN → ReLU → max-pool 3x3/2;
- four stages (64, 128, 256, 512 channels; 2 blocks each; strides 1, 2, 2, 2);
- a block's residual branch is [BN → ReLU →] conv3x3 (stride s) → BN → ReLU → conv3x3 → **BN**,
  and the block returns branch + shortcut with **no ReLU after the addition**; the leading
  BN → ReLU (``preact``) exists only in the non-first blocks of a stage, because the first block
  of every stage reads a tensor that is already BN-ReLU'd (the stem output, or the previous
  stage's end);
- the shortcut always takes the block input; where the shape changes (first block of stages 1-3)
  it is a 1x1 conv with the block stride followed by BN (projection "type B"), else identity;
- every stage ends with BN → ReLU (``bn_last``, ``relu_last``);
- head: global average pool of the last stage's BN-ReLU output → FC 512→classes with bias.

Every ReLU is its own module, so an activation quantizer can sit after any of them; LQ-Nets
quantizes the input of every conv but the stem (§6.2). Module registration order is forward order
(in a first block: conv1, conv2, then the projection). Initialisation as the official code:
convs TF 1.x variance scaling, fan-out, factor 2 (truncated normal); the FC the tensorpack
default (the same, fan-in); biases zero; BN gamma = 1, beta = 0. Padding is PyTorch's symmetric
padding (torchvision style); TensorFlow's ``SAME`` pads one pixel more at the bottom/right of
strided layers instead, which changes no shape.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from quantcore.zoo.initializers import tf_variance_scaling_
from quantcore.zoo.registry import register


class PreActBasicBlock(nn.Module):
    """LQ-Nets' pre-activation basic block; see the module docstring for its exact structure."""

    def __init__(self, in_channels: int, channels: int, stride: int, preact: bool) -> None:
        super().__init__()
        self.preact: nn.Module
        if preact:
            self.preact = nn.Sequential(
                OrderedDict([("bn", nn.BatchNorm2d(in_channels)), ("relu", nn.ReLU())])
            )
        else:
            self.preact = nn.Identity()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample: nn.Module
        if stride == 1 and in_channels == channels:
            self.downsample = nn.Identity()
        else:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(self.preact(x))))
        out = self.bn2(self.conv2(out))
        return out + self.downsample(x)  # no ReLU after the addition


class PreActResNet(nn.Module):
    """LQ-Nets' pre-activation ResNet with basic blocks, for ImageNet-sized inputs."""

    def __init__(
        self,
        blocks_per_stage: tuple[int, int, int, int] = (2, 2, 2, 2),
        num_classes: int = 1000,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)  # 224 → 112
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=False)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)  # 112 → 56
        widths = (64, 128, 256, 512)
        strides = (1, 2, 2, 2)
        in_widths = (64, *widths[:-1])
        stages = [
            _stage(c_in, c, n, s)
            for c_in, c, n, s in zip(in_widths, widths, blocks_per_stage, strides, strict=True)
        ]
        self.layer1, self.layer2, self.layer3, self.layer4 = stages  # 56, 28, 14, 7
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                tf_variance_scaling_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                tf_variance_scaling_(m.weight, mode="fan_in")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.avgpool(x)))


def _stage(in_channels: int, channels: int, blocks: int, stride: int) -> nn.Sequential:
    """Blocks ``"0"``…``"n-1"`` (only the first strided, only the later ones pre-activated),
    then the stage-end BN → ReLU."""
    layers: list[tuple[str, nn.Module]] = [
        ("0", PreActBasicBlock(in_channels, channels, stride, preact=False))
    ]
    layers += [
        (str(i), PreActBasicBlock(channels, channels, 1, preact=True)) for i in range(1, blocks)
    ]
    layers += [("bn_last", nn.BatchNorm2d(channels)), ("relu_last", nn.ReLU(inplace=False))]
    return nn.Sequential(OrderedDict(layers))


@register(
    "preact_resnet18",
    title="Pre-activation ResNet-18 (LQ-Nets)",
    source=(
        "LQ-Nets official code, github.com/microsoft/LQ-Nets resnet_model.py @ 86b9b75, "
        "mode preact (lq-nets.md §6.2)"
    ),
    default_input_size=(224, 224),
)
def preact_resnet18(*, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Pre-activation ResNet-18 for ImageNet 224x224 images, as LQ-Nets builds it.

    Basic blocks [2, 2, 2, 2]; each residual branch ends in BN with no ReLU after the addition, and
    every stage ends with BN → ReLU.
    """
    return PreActResNet((2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels)
