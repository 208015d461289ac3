"""torchvision's ImageNet ResNet-18/34/50 and AlexNet, randomly initialised, never downloaded.

Source: torchvision (0.29) ``torchvision.models.resnet`` and ``torchvision.models.alexnet``, built
with ``weights=None``; the ALQ spec (../methods/alq.md §8 "ResNet18 / ResNet34") fixes the same v1
design: BasicBlock with the stride on the first 3x3 conv, 1x1-conv + BN downsample in the first
block of layers 2-4, no conv biases, ``zero_init_residual`` off; ResNet-50 is torchvision's
Bottleneck with the stride on its 3x3 conv. Parameter names, shapes, initialisation and random
draws are torchvision's, so torchvision state dicts load as they are.

Two changes, neither touching a parameter:

- Every ReLU is a separate ``nn.ReLU(inplace=False)`` module called at exactly one place.
  torchvision's residual blocks call one in-place ``relu`` module twice (three times in a
  Bottleneck); here the blocks have ``relu1``, ``relu2`` (and ``relu3``) instead, so an
  activation quantizer placed after a ReLU quantizes exactly one site (e.g. the 17 sites of
  Quantization Networks' ResNet-18, ../methods/quantization-networks.md §5.2).
- ``in_channels != 3`` replaces the first conv with one of the same configuration reading
  ``in_channels`` channels, initialised as torchvision initialises that conv (Kaiming-normal
  fan-out for the ResNets, PyTorch's default for AlexNet).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models import AlexNet
from torchvision.models import resnet as tv_resnet

from quantcore.zoo.registry import register


class BasicBlock(tv_resnet.BasicBlock):
    """torchvision's BasicBlock with one ReLU module per call site."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        del self.relu
        self.relu1 = nn.ReLU(inplace=False)
        self.relu2 = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + identity)


class Bottleneck(tv_resnet.Bottleneck):
    """torchvision's Bottleneck (stride on the 3x3 conv) with one ReLU module per call site."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        del self.relu
        self.relu1 = nn.ReLU(inplace=False)
        self.relu2 = nn.ReLU(inplace=False)
        self.relu3 = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu3(out + identity)


def _resnet(
    block: type[BasicBlock | Bottleneck], layers: list[int], num_classes: int, in_channels: int
) -> nn.Module:
    # What torchvision.models.resnetXX(weights=None, num_classes=...) builds, with our blocks.
    model = tv_resnet.ResNet(block, layers, num_classes=num_classes)
    model.relu = nn.ReLU(inplace=False)
    if in_channels != model.conv1.in_channels:
        model.conv1 = _conv_reading(model.conv1, in_channels)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


def _conv_reading(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A fresh conv configured as ``conv`` but reading ``in_channels`` channels."""
    return nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        dilation=conv.dilation,  # type: ignore[arg-type]
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )


_SOURCE = "torchvision 0.29 torchvision.models.{}(weights=None)"


@register(
    "resnet18",
    title="ResNet-18 (torchvision)",
    source=_SOURCE.format("resnet18") + " (alq.md §8)",
    default_input_size=(224, 224),
)
def resnet18(*, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """torchvision's ResNet-18 for ImageNet 224x224 images: basic blocks [2, 2, 2, 2].

    11,689,512 parameters for 1000 classes.
    """
    return _resnet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels)


@register(
    "resnet34",
    title="ResNet-34 (torchvision)",
    source=_SOURCE.format("resnet34") + " (alq.md §8)",
    default_input_size=(224, 224),
)
def resnet34(*, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """torchvision's ResNet-34 for ImageNet 224x224 images: basic blocks [3, 4, 6, 3].

    21,797,672 parameters for 1000 classes.
    """
    return _resnet(BasicBlock, [3, 4, 6, 3], num_classes, in_channels)


@register(
    "resnet50",
    title="ResNet-50 (torchvision)",
    source=_SOURCE.format("resnet50"),
    default_input_size=(224, 224),
)
def resnet50(*, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """torchvision's ResNet-50 for ImageNet 224x224 images: bottleneck blocks [3, 4, 6, 3].

    25,557,032 parameters for 1000 classes.
    """
    return _resnet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels)


@register(
    "alexnet",
    title="AlexNet (torchvision)",
    source=_SOURCE.format("alexnet"),
    default_input_size=(224, 224),
)
def alexnet(*, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """torchvision's AlexNet for ImageNet 224x224 images: five convs, three FC layers, dropout.

    The one-tower variant without BN (Krizhevsky 2014, "One weird trick"), as torchvision has it.
    """
    model = AlexNet(num_classes=num_classes)
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    first = model.features[0]
    if in_channels != first.in_channels:
        model.features[0] = _conv_reading(first, in_channels)
    return model
