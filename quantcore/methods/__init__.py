"""Quantization methods, one file each; importing this package registers them."""

from quantcore.methods import alq, l_dnq, lq_nets, qnets, uniform

__all__ = ["alq", "l_dnq", "lq_nets", "qnets", "uniform"]
