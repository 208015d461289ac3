"""The architecture zoo: build a fresh, randomly initialised model by name.

One file per family, each registering its factories with :func:`~quantcore.zoo.registry.register`:
``lenet`` (LeNet5, ALQ), ``vgg`` (VGG-Small, ALQ and LQ-Nets variants), ``resnet_cifar``
(ResNet-20/32/56, option-A shortcuts), ``preact_resnet`` (LQ-Nets' pre-activation ResNet-18) and
``torchvision_models`` (torchvision's ResNet-18/34/50 and AlexNet). Every model uses one
``nn.ReLU(inplace=False)`` module per activation site, so an activation quantizer can be placed
after any of them, and registers its Conv2d/Linear layers in forward order.
"""

# Importing a family module registers its architectures.
from quantcore.zoo import lenet, preact_resnet, resnet_cifar, torchvision_models, vgg  # noqa: F401
from quantcore.zoo.registry import ArchInfo, build, list_architectures, register

__all__ = ["ArchInfo", "build", "list_architectures", "register"]
