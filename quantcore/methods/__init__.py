"""Quantization methods, one file each; importing this package registers them."""

from quantcore.methods import uniform

__all__ = ["uniform"]
