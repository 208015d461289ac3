"""CIFAR ResNet-20/32/56 (He et al., "Deep Residual Learning", CVPR 2016, §4.2).

Shapes and shortcuts follow the Quantization Networks CIFAR fork
(github.com/haoyz/quantization-networks-cifar10 ``models/resnet.py`` at ``4ac51f3``;
../methods/quantization-networks.md §5.1 and §8): stem conv 3x3 (16) → BN → ReLU, no max-pool;
three stages of n basic blocks (6n + 2 weight layers in all) with 16, 32, 64 channels (strides
1, 2, 2); global average pool; FC 64→classes with bias. Convs have no bias. A basic block is
conv3x3 → BN → ReLU → conv3x3 → BN, plus the shortcut, then ReLU. Where the shape changes the
shortcut is option A by default: subsample with stride 2 and zero-pad the new channels, half on
each side (no parameters). ResNet-20 has 269,722 parameters for 10 classes (BN affine parameters
and the FC bias included). Option B (1x1 conv with the block stride + BN) is available through the
``shortcut`` keyword of the factories.

The module names (``conv1``, ``bn1``, ``layerK.i.conv1``, ``downsample``, ``fc``) are the fork's,
so its option-A checkpoints load as they are. Initialisation as the fork: every conv and linear
weight Kaiming-normal, fan-in; biases zero; BN gamma = 1, beta = 0.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from quantcore.errors import InvalidParams
from quantcore.zoo.registry import register

Shortcut = Literal["A", "B"]
_SHORTCUTS = ("A", "B")


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: keep every ``stride``-th pixel, zero-pad the extra channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"cannot zero-pad {in_channels} channels down to {out_channels}")
        self.stride = stride
        extra = out_channels - in_channels
        self.pad_front = extra // 2
        self.pad_back = extra - self.pad_front

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]  # (N, C_in, H/s, W/s)
        # pad spec runs from the last dim backwards: (W, W, H, H, C, C)
        return nn.functional.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))


class BasicBlock(nn.Module):
    """Post-activation basic block: conv-BN-ReLU-conv-BN, add the shortcut, ReLU."""

    def __init__(
        self, in_channels: int, channels: int, stride: int = 1, shortcut: Shortcut = "A"
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample: nn.Module
        if stride == 1 and in_channels == channels:
            self.downsample = nn.Identity()
        elif shortcut == "A":
            self.downsample = ZeroPadShortcut(in_channels, channels, stride)
        else:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )
        self.relu2 = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.downsample(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs, ``n`` basic blocks per stage."""

    def __init__(
        self,
        blocks_per_stage: int,
        num_classes: int = 10,
        in_channels: int = 3,
        shortcut: Shortcut = "A",
    ) -> None:
        super().__init__()
        if shortcut not in _SHORTCUTS:
            raise InvalidParams(
                f"shortcut must be one of {', '.join(_SHORTCUTS)}, got {shortcut!r}",
                {"param": "shortcut", "value": repr(shortcut), "allowed": list(_SHORTCUTS)},
            )
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=False)
        self.layer1 = _stage(16, 16, blocks_per_stage, 1, shortcut)  # 32x32
        self.layer2 = _stage(16, 32, blocks_per_stage, 2, shortcut)  # 16x16
        self.layer3 = _stage(32, 64, blocks_per_stage, 2, shortcut)  # 8x8
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))


def _stage(
    in_channels: int, channels: int, blocks: int, stride: int, shortcut: Shortcut
) -> nn.Sequential:
    first = BasicBlock(in_channels, channels, stride, shortcut)
    return nn.Sequential(first, *(BasicBlock(channels, channels) for _ in range(blocks - 1)))


_SOURCE = (
    "He et al. 2016 §4.2; Quantization Networks CIFAR fork, "
    "github.com/haoyz/quantization-networks-cifar10 models/resnet.py @ 4ac51f3 "
    "(quantization-networks.md §5.1)"
)


@register("resnet20", title="ResNet-20 (CIFAR)", source=_SOURCE)
def resnet20(*, num_classes: int = 10, in_channels: int = 3, shortcut: Shortcut = "A") -> nn.Module:
    """ResNet-20 for CIFAR-10 32x32 images: 3 stages x 3 basic blocks, option-A shortcuts.

    269,722 parameters for 10 classes.
    """
    return CifarResNet(3, num_classes=num_classes, in_channels=in_channels, shortcut=shortcut)


@register("resnet32", title="ResNet-32 (CIFAR)", source=_SOURCE)
def resnet32(*, num_classes: int = 10, in_channels: int = 3, shortcut: Shortcut = "A") -> nn.Module:
    """ResNet-32 for CIFAR-10 32x32 images: 3 stages x 5 basic blocks, option-A shortcuts.

    464,154 parameters for 10 classes.
    """
    return CifarResNet(5, num_classes=num_classes, in_channels=in_channels, shortcut=shortcut)


@register("resnet56", title="ResNet-56 (CIFAR)", source=_SOURCE)
def resnet56(*, num_classes: int = 10, in_channels: int = 3, shortcut: Shortcut = "A") -> nn.Module:
    """ResNet-56 for CIFAR-10 32x32 images: 3 stages x 9 basic blocks, option-A shortcuts.

    853,018 parameters for 10 classes.
    """
    return CifarResNet(9, num_classes=num_classes, in_channels=in_channels, shortcut=shortcut)


@register("resnet20b", title="ResNet-20 (CIFAR, 1x1-conv shortcuts)", source=_SOURCE)
def resnet20b(*, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ResNet-20 for CIFAR-10 with option-B shortcuts (1x1 conv + BN where the shape changes).

    The network L-DNQ's official code quantizes: 22 weight layers, the two downsample convs
    included (see ../shared/refvectors/l-dnq/layer_order_and_trainable.json).
    """
    return CifarResNet(3, num_classes=num_classes, in_channels=in_channels, shortcut="B")
