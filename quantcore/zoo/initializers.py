"""Weight initialisers the zoo's sources use that PyTorch does not name directly.

TensorFlow 1.x ``tf.contrib.layers.variance_scaling_initializer`` with ``uniform=False`` (the
LQ-Nets code, directly and through tensorpack's defaults) draws from a normal truncated at two
standard deviations, with the standard deviation raised by the factor 1.3 so that the truncated
draw keeps roughly the variance ``factor / n``: ``std = sqrt(1.3 * factor / n)``, ``n`` the
fan-in or the fan-out.
"""

from __future__ import annotations

import math
from typing import Literal

import torch


def tf_variance_scaling_(
    weight: torch.Tensor, mode: Literal["fan_in", "fan_out"], factor: float = 2.0
) -> torch.Tensor:
    """Fill ``weight`` (in place) as TF 1.x's truncated-normal variance scaling does."""
    receptive_field = math.prod(weight.shape[2:])  # kh·kw for a conv, 1 for a linear layer
    n = (weight.shape[1] if mode == "fan_in" else weight.shape[0]) * receptive_field
    return truncated_normal_(weight, std=math.sqrt(1.3 * factor / n))


@torch.no_grad()
def truncated_normal_(weight: torch.Tensor, std: float) -> torch.Tensor:
    """Fill ``weight`` with N(0, std²) draws, redrawing those beyond two std (as TF does).

    Rejection sampling: about 4.6% of the draws are redrawn per round, so a few rounds finish any
    tensor; several times faster on CPU than ``nn.init.trunc_normal_``'s inverse-CDF method.
    """
    flat = weight.view(-1)  # parameters are contiguous
    flat.normal_(0.0, std)
    outside = (flat.abs() > 2.0 * std).nonzero().squeeze(1)  # indices to redraw
    while outside.numel():
        redraw = torch.empty(outside.numel(), dtype=flat.dtype, device=flat.device).normal_(
            0.0, std
        )
        flat[outside] = redraw
        outside = outside[redraw.abs() > 2.0 * std]
    return weight
