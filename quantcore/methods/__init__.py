"""Quantization methods, one file each; importing this package registers them."""

from quantcore.methods import alq, l_dnq, lq_nets, uniform

__all__ = ["alq", "l_dnq", "lq_nets", "uniform"]
