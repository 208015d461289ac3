# ruff: noqa: RUF001, RUF002, RUF003  (the spec's notation: α, β, −, ×)
"""ALQ: adaptive loss-aware quantization for multi-bit networks (Qu et al., CVPR 2020).

Paper: arXiv:1912.08883 (v4). Official code: github.com/zqu1992/ALQ at
``7fbc9cefe5094171433f273eb64d204b93caadda`` (``binarynet.py``, ``myoptimizer.py``, ``train.py``).
Spec: ../shared/methods/alq.md (section numbers below refer to it).

Every conv/linear weight (first and last layers included, as in the official code) is cut into
groups (§2.2); each group is ``w_g ≈ Σ_i mask[g,i] α[g,i] β[g,i]`` with ``β ∈ {−1,+1}^n``, so the
number of live slots of a group is its bitwidth (§2.1). Initialisation is a greedy residual
binarisation with a least-squares refit of every α after each new term (§3). Training then uses
AMSGrad moments as a diagonal quadratic model of the loss (§4) and alternates basis steps (nearest
representable value per weight, then a curvature-weighted refit of α, §5.2), coordinate steps
(AMSGrad on α, §5.1) and pruning steps that remove the (group, slot) pairs whose removal the
model says costs least (§6). POSTTRAIN (optional) runs STE steps against latent weights (§5.3)
and coordinate steps again (§7). Weights only: activations, biases and BN stay float (§7, D5).

Where this implementation and the official code differ (default = the official behaviour unless
the code has a bug):

- B1 (§11): the official global pruning sort reads each candidate's importance from the wrong
  slot once anything is pruned. Fixed by default; ``legacy_importance_bug=True`` reproduces it.
- B2 (§11): the official refit flips negative α to positive but not its β row. Fixed by default;
  ``legacy_sign_bug=True`` reproduces it.
- P1: an all-zero group crashes the official init; here it gets 0 slots.
- P2: an empty pruning pool crashes the official code; here the call prunes nothing.
- P5: the official stochastic rounding of the per-layer pool size uses the unseeded global
  ``random``; here a generator seeded from the run context.
- P7: official coordinate steps let α drift in pruned slots (hidden by the mask); here they stay 0.
  Outputs are identical; only ``legacy_importance_bug`` could read those drifted values, and it
  then reads 0 instead.
- P8: the pruning epoch runs with BN in eval mode and still takes the FP Adam step (reproduced).
- §5.4: the basis search goes through the sorted 2^I levels of each group (bucketize), never
  the official ``[groups, 2^I, n]`` tensor. Ties between two distinct levels exactly at their
  midpoint go to the lower level (the code takes the lower code index); a measure-zero event.
- §2.2: layers are detected by module type, not by parameter name; ``subchannels`` that do not
  divide ``In`` raise ``InvalidParams`` (the code silently breaks).
- §2.3: the official per-layer structures are used for LeNet5 (recognised by its layer shapes)
  and the ImageNet ResNets (7x7 stem, FC 512 → S = 2); VGG-small's table coincides with the default
  rule for other models (first conv channelwise, convs pixelwise, FC sub-rows of at most
  ``fc_group_size`` weights), which is an extrapolation of the scripts, not from the paper.
- D1: M_p is proportional to the current pool (the code's rule, which produced the published
  numbers), not the fixed count the code comment attributes to the paper.
- D2: POSTTRAIN (STE with latent float weights, then coordinate epochs) is on by default, as in
  the scripts whose README numbers likely include it; ``posttrain=False`` gives pure ALQ.
- D3, D4 reproduced: the first basis step targets the pretrained weights; after basis/STE steps
  the α-domain curvature is the projection Σ_j v_j (not of sqrt(v)).
- P3: everything (β, α, masks, w_ref, both AMSGrad moment sets, counters) lives in the
  quantizers' buffers, so the per-epoch checkpoint resumes inside and between the phases.
- Defaults are the LeNet5/MNIST script (§7.1); VGG-small uses pr 0.4, top_k 0.002, R 5; the
  ResNets I_max 8, lr 2e-4, pr 0.15, top_k 0.0005. ``SMALL_DATA_PRESET`` is a documented short
  schedule for tiny data sets (e.g. ``digits``), not the paper's.
- §6.3 extension: ``target_bitwidth`` stops pruning as soon as the weighted average bitwidth is at
  or below it (the official code has no target).
- The refit (§5.2) solves its small I×I systems in float64. The init (§3) keeps the code's
  float32 inverse-then-multiply: where the greedy pass reaches a residual entry that is 0 in exact
  arithmetic (e.g. n = 4, I_max = 3), its rounding decides sign(0) = +1, and only the code's own
  formula reproduces the code's bases (the reference vectors contain such a layer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from quantcore.context import RunContext
from quantcore.data import DataBundle
from quantcore.errors import InvalidParams
from quantcore.layers import (
    QUANT_LAYER_TYPES,
    QuantConv2d,
    QuantLinear,
    WeightQuantizer,
    quant_layers,
)
from quantcore.memory import FLOAT, Footprint, training_parts
from quantcore.methods.base import Method, MethodParams
from quantcore.primitives import levels_from_bases, nearest_level
from quantcore.qweight import CodebookKind, Grouping, QuantizedWeight, dequantize
from quantcore.surgery import find_layers, quantize_model

BETA1, BETA2, EPS = 0.9, 0.999, 1e-8  # §4.1 (AMSGrad)
INIT_STOP = 1e-6  # §3 relative residual stop
REFIT_RIDGE = 1e-6  # §5.2


class ALQParams(MethodParams):
    """Defaults: the official LeNet5/MNIST script (§7.1). See SMALL_DATA_PRESET for `digits`."""

    i_max: int = Field(6, ge=1, le=8, description="Initial binary bases per group (I_max).")
    fc_group_size: int = Field(
        512,
        ge=1,
        le=65536,
        description="Largest FC sub-row (S = smallest divisor of In giving n ≤ this).",
    )
    lr: float = Field(1e-3, gt=0, le=1.0, description="ALQ (and FP Adam) learning rate.")
    outer_iterations: int = Field(4, ge=1, le=100, description="Outer iterations R.")
    epochs_basis: int = Field(20, ge=0, le=1000, description="Basis epochs per outer iteration.")
    decay_basis: float = Field(0.8, gt=0, le=1, description="lr factor before each basis epoch.")
    epochs_coord: int = Field(10, ge=0, le=1000, description="Coordinate epochs per iteration.")
    decay_coord: float = Field(0.8, gt=0, le=1, description="lr factor before each coord epoch.")
    epochs_prune: int = Field(1, ge=0, le=100, description="Pruning epochs per iteration.")
    prune_ratio: float = Field(0.8, ge=0, le=20, description="Pruning rate pr per outer iteration.")
    top_k: float = Field(
        0.005, gt=0, le=1, description="Fraction of each layer's slots preselected per step."
    )
    target_bitwidth: float | None = Field(
        None, ge=0, le=8, description="Stop pruning once the average bitwidth is at most this."
    )
    posttrain: bool = Field(True, description="Run POSTTRAIN (STE then coordinate epochs).")
    posttrain_ste_epochs: int = Field(50, ge=0, le=1000, description="POSTTRAIN STE epochs.")
    posttrain_ste_decay: float = Field(0.95, gt=0, le=1, description="lr factor per STE epoch.")
    posttrain_coord_epochs: int = Field(20, ge=0, le=1000, description="POSTTRAIN coord epochs.")
    posttrain_coord_decay: float = Field(0.9, gt=0, le=1, description="lr factor per coord epoch.")
    weight_decay: float = Field(0.0, ge=0, le=1, description="L2 on α in coordinate steps.")
    batch_size: int = Field(128, ge=1, le=4096, description="Minibatch size.")
    legacy_importance_bug: bool = Field(False, description="Reproduce official bug B1.")
    legacy_sign_bug: bool = Field(False, description="Reproduce official bug B2.")


# A short schedule for small data sets such as `digits` (not the paper's; documented preset).
SMALL_DATA_PRESET: dict[str, Any] = {
    "outer_iterations": 2,
    "epochs_basis": 2,
    "epochs_coord": 1,
    "epochs_prune": 1,
    "prune_ratio": 0.8,
    "top_k": 0.05,
    "posttrain_ste_epochs": 2,
    "posttrain_coord_epochs": 1,
    "batch_size": 64,
}


# ---------------------------------------------------------------------------------------------
# §2.2 groupings and §2.3 structure rules


class Structure(StrEnum):
    KERNELWISE = "kernelwise"
    PIXELWISE = "pixelwise"
    CHANNELWISE = "channelwise"
    SUBCHANNELWISE = "subchannelwise"


def structure_grouping(
    shape: tuple[int, ...], structure: Structure, subchannels: int = 1
) -> Grouping:
    """The §2.2 grouping as a ``Grouping``; group index order equals the code's [O, G/O] layout."""
    if structure is Structure.SUBCHANNELWISE:
        if len(shape) != 2:
            raise InvalidParams(f"subchannelwise needs a linear weight, got shape {shape}")
        if subchannels < 1 or shape[1] % subchannels:
            raise InvalidParams(
                f"subchannels={subchannels} must divide the {shape[1]} inputs of the layer",
                {"subchannels": subchannels, "in_features": shape[1]},
            )
        return Grouping((0, 1), shape[1] // subchannels)
    if len(shape) != 4:
        raise InvalidParams(f"{structure} needs a conv weight [O, C, KH, KW], got shape {shape}")
    _, c, kh, kw = shape
    if structure is Structure.KERNELWISE:
        return Grouping((0, 1, 2, 3), kh * kw)
    if structure is Structure.PIXELWISE:
        return Grouping((0, 2, 3, 1), c)
    return Grouping((0, 1, 2, 3), c * kh * kw)


def fc_subchannels(in_features: int, group_size: int) -> int:
    """The smallest S dividing ``in_features`` with ``in_features / S <= group_size``."""
    divisors = (s for s in range(1, in_features + 1) if in_features % s == 0)
    return next(s for s in divisors if in_features // s <= group_size)


def pruning_rate_per_step(prune_ratio: float, top_k: float, epochs_prune: int, steps: int) -> float:
    """§6.2: M_p = (pr / top_k) / (E_prune · T), the fraction of the pool pruned per call."""
    return (prune_ratio / top_k) / (max(epochs_prune, 1) * steps)


def layer_structures(
    shapes: list[tuple[int, ...]], i_max: int, fc_group_size: int
) -> list[tuple[Structure, int]]:
    """(structure, subchannels) per layer: the official table where it applies, else the rule."""
    convs = [s for s in shapes if len(s) == 4]
    linears = [s for s in shapes if len(s) == 2]
    is_lenet5 = (
        len(shapes) == 4
        and len(convs) == 2
        and [(s[0], *s[2:]) for s in convs] == [(20, 5, 5), (50, 5, 5)]
        and [s[1] for s in linears] == [800, 500]
        and linears[0][0] == 500
    )
    if is_lenet5:  # §2.3: LeNet5
        return [
            (Structure.KERNELWISE, 1),
            (Structure.KERNELWISE, 1),
            (Structure.SUBCHANNELWISE, 2),
            (Structure.SUBCHANNELWISE, 1),
        ]
    # §2.3: the ImageNet ResNets (7x7 stem on RGB) split their 512-input FC in two sub-rows.
    is_imagenet_resnet = bool(convs) and convs[0][1:] == (3, 7, 7) and shapes[-1][1:] == (512,)
    out: list[tuple[Structure, int]] = []
    for i, shape in enumerate(shapes):
        if len(shape) == 2:
            s = 2 if is_imagenet_resnet and i == len(shapes) - 1 else None
            out.append((Structure.SUBCHANNELWISE, s or fc_subchannels(shape[1], fc_group_size)))
        elif i == 0:
            out.append((Structure.CHANNELWISE, 1))
        elif shape[1] > i_max:
            out.append((Structure.PIXELWISE, 1))
        elif shape[2] * shape[3] > i_max:  # depthwise-like: pixelwise groups would be too small
            out.append((Structure.KERNELWISE, 1))
        else:
            out.append((Structure.CHANNELWISE, 1))
    return out


# ---------------------------------------------------------------------------------------------
# §3 initialisation: greedy residual binarisation, batched over groups


def _sign(x: Tensor) -> Tensor:
    """sign with sign(0) = +1 (§3)."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def greedy_init(groups: Tensor, i_max: int) -> tuple[Tensor, Tensor, Tensor]:
    """§3 on every row of ``groups`` (G, n) at once → alpha (G, I), beta (G, I, n) int8, mask.

    Slots are sorted by ascending α, live ones first; an all-zero group gets no slot (P1).
    """
    w = groups.float()  # (G, n)
    g, n = w.shape
    k = min(i_max, n)
    ww = (w**2).sum(1)  # (G,)
    beta = torch.zeros(g, i_max, n, dtype=w.dtype, device=w.device)  # (G, I, n)
    alpha = torch.zeros(g, i_max, dtype=w.dtype, device=w.device)  # (G, I)
    filled = torch.zeros(g, i_max, dtype=torch.bool, device=w.device)  # (G, I)
    active = ww > 0  # (G,)  P1: an all-zero group never starts
    r = w.clone()  # (G, n)
    for i in range(k):  # slots, not groups: at most 8 iterations
        rr = (r**2).sum(1)  # (G,)
        active = active & ~(rr / torch.where(active, ww, 1.0) < INIT_STOP)  # stop test first
        beta[:, i] = torch.where(active[:, None], _sign(r), 0.0)  # (G, n)
        filled[:, i] = active
        b = beta[:, : i + 1]  # (G, i+1, n)
        gram = b @ b.transpose(1, 2)  # (G, i+1, i+1)
        eye = torch.eye(i + 1, dtype=gram.dtype, device=w.device)
        gram = torch.where(active[:, None, None], gram, eye)
        bw = (b @ w.unsqueeze(-1)).squeeze(-1)  # (G, i+1)
        rhs = torch.where(active[:, None], bw, alpha[:, : i + 1])  # stopped groups keep α
        # float32 inverse-then-multiply as the code: exact fits (a residual entry that is 0 in
        # exact arithmetic) then round, and take sign(0)=+1, the way the official init does.
        new = (torch.linalg.inv(gram) @ rhs.unsqueeze(-1)).squeeze(-1)  # (G, i+1)
        alpha[:, : i + 1] = torch.where(active[:, None], new, alpha[:, : i + 1])
        fit = (b.transpose(1, 2) @ alpha[:, : i + 1].unsqueeze(-1)).squeeze(-1)  # (G, n)
        r = torch.where(active[:, None], w - fit, r)
    keep = filled & (alpha != 0)  # (G, I): drop slots never filled (or exactly 0)
    neg = alpha < 0
    alpha = torch.where(neg, -alpha, alpha)
    beta = torch.where(neg[..., None], -beta, beta)
    key = torch.where(keep, alpha, torch.full_like(alpha, math.inf))  # (G, I)
    order = torch.argsort(key, dim=1, stable=True)  # (G, I)
    alpha = alpha.gather(1, order)
    keep = keep.gather(1, order)
    beta = beta.gather(1, order[..., None].expand_as(beta))
    alpha = alpha * keep
    beta = beta * keep[..., None]
    return alpha, beta.to(torch.int8), keep


def greedy_init_reference(w: Tensor, i_max: int) -> tuple[Tensor, Tensor]:
    """Plain loop of §3 for one group, the code's float32 formulas: alpha (I_g,), beta (I_g, n)."""
    w = w.float()
    n = w.shape[0]
    ww = float((w**2).sum())
    if ww == 0:
        return torch.zeros(0), torch.zeros(0, n)
    bases: list[Tensor] = []
    alpha = torch.zeros(0)
    r = w.clone()
    for _ in range(min(i_max, n)):
        if float((r**2).sum()) / ww < INIT_STOP:
            break
        bases.append(torch.where(r >= 0, 1.0, -1.0))
        b = torch.stack(bases, dim=1)  # (n, i) as the code's B_
        alpha = (torch.inverse(b.T @ b) @ (b.T @ w.unsqueeze(1))).squeeze(1)
        r = w - (b @ alpha.unsqueeze(1)).squeeze(1)
    a = alpha.float()
    b = torch.stack(bases) if bases else torch.zeros(0, n)
    sign = torch.where(a < 0, -1.0, 1.0)
    a, b = a * sign, b * sign[:, None]
    keep = a != 0
    a, b = a[keep], b[keep]
    order = torch.argsort(a, stable=True)
    return a[order], b[order]


# ---------------------------------------------------------------------------------------------
# §4 quadratic model, §5.2 basis search + refit


def amsgrad_update(m: Tensor, v: Tensor, v_max: Tensor, g: Tensor) -> None:
    """One AMSGrad moment update in place (§5.1 step 1)."""
    m.mul_(BETA1).add_(g, alpha=1 - BETA1)
    v.mul_(BETA2).addcmul_(g, g, value=1 - BETA2)
    torch.maximum(v_max, v, out=v_max)


def pseudo_model(m: Tensor, v_max: Tensor, t: int, lr: float) -> tuple[Tensor, Tensor]:
    """§4.1: P = lr/(1−β1^t)·m, H = (sqrt(v̂)+ε)/sqrt(1−β2^t) (the code's ε placement)."""
    p = (lr / (1 - BETA1**t)) * m
    h = (v_max.sqrt() + EPS) / math.sqrt(1 - BETA2**t)
    return p, h


def search_basis(target: Tensor, alpha: Tensor, mask: Tensor) -> Tensor:
    """§5.2 step 4: β (G, I, n) int8 of the nearest of the 2^I levels Σ c_i mask α_i, per weight.

    Through sorted levels and bucketize: O(G·2^I + G·n·log 2^I), never (G, 2^I, n).
    """
    a = alpha * mask  # (G, I)
    levels, codes = levels_from_bases(a)  # (G, 2^I) each
    idx = nearest_level(target, levels)  # (G, n)
    code = codes.to(torch.int16).gather(1, idx)  # (G, n), codes < 2^8
    shifts = torch.arange(alpha.shape[1], device=alpha.device, dtype=torch.int16)  # (I,)
    bits = ((code.unsqueeze(1) >> shifts[None, :, None]) & 1).to(torch.int8)  # (G, I, n)
    return (bits * 2 - 1) * mask[..., None].to(torch.int8)


def search_basis_reference(target: Tensor, alpha: Tensor, mask: Tensor) -> Tensor:
    """Loop reference: every code k, first minimum of |w* − Σ c_i mask α_i| wins (§5.2)."""
    g, n = target.shape
    i = alpha.shape[1]
    out = torch.zeros(g, i, n, dtype=torch.int8)
    for gi in range(g):
        a = (alpha[gi] * mask[gi]).double()
        vals = [
            sum((1 if (k >> s) & 1 else -1) * float(a[s]) for s in range(i)) for k in range(2**i)
        ]
        for j in range(n):
            dist = [abs(float(target[gi, j]) - v) for v in vals]
            k = dist.index(min(dist))
            for s in range(i):
                out[gi, s, j] = (1 if (k >> s) & 1 else -1) * int(mask[gi, s])
    return out


def refit_alpha(beta: Tensor, h: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """§5.2 step 5: α = (B H Bᵀ + diag(1e-6 + 1 − mask))⁻¹ B H w*, times mask (before signs)."""
    b = beta.double()  # (G, I, n)
    hb = b * h.double().unsqueeze(1)  # (G, I, n)
    a = hb @ b.transpose(1, 2)  # (G, I, I)
    a = a + torch.diag_embed(REFIT_RIDGE + 1 - mask.double())  # (G, I, I)
    rhs = (hb @ target.double().unsqueeze(-1)).squeeze(-1)  # (G, I)
    return torch.linalg.solve(a, rhs).float() * mask  # (G, I)


def normalise_signs(
    alpha: Tensor, beta: Tensor, legacy_sign_bug: bool = False
) -> tuple[Tensor, Tensor]:
    """§5.2 step 6: negate α < 0 and its β row; the official code forgets β (bug B2)."""
    neg = alpha < 0  # (G, I)
    alpha = torch.where(neg, -alpha, alpha)
    if not legacy_sign_bug:
        beta = torch.where(neg[..., None], -beta, beta)
    return alpha, beta


def pruning_importance(alpha: Tensor, p_alpha: Tensor, h_alpha: Tensor) -> Tensor:
    """§6.1 step 2: D = −P_α α + ½ α² H_α, the modelled loss increase of α → 0."""
    return -p_alpha * alpha + 0.5 * alpha.pow(2) * h_alpha


# ---------------------------------------------------------------------------------------------
# The multi-bit weight quantizer: state (§2.1, §4.2) and the per-minibatch steps (§5, §6)


class MultiBitQuantizer(WeightQuantizer):
    """ALQ multi-bit weight: α, β, mask per group plus the AMSGrad states of both domains.

    All state is in buffers, so ``model.state_dict()`` is a complete checkpoint. The network's
    weight holds ŵ; ``forward(w)`` returns ŵ with an identity gradient to ``w`` (g = ∂L/∂ŵ).
    """

    shape: tuple[int, ...]
    alpha: Tensor  # (G, I) float32
    beta: Tensor  # (G, I, n) int8 in {-1, 0, +1}
    mask: Tensor  # (G, I) bool
    w_ref: Tensor  # (G, n) the reference point (§5.2 step 3) or STE latent weights (§5.3)
    w_hat: Tensor  # weight shape: ŵ = dequantize(export())
    m: Tensor  # (G, n) w-domain moments (§4.2)
    v: Tensor
    v_max: Tensor
    m_alpha: Tensor  # (G, I) α-domain moments
    v_alpha: Tensor
    v_max_alpha: Tensor
    step: Tensor  # () long: t
    step_alpha: Tensor  # () long: t_α

    def __init__(
        self, weight: Tensor, structure: Structure | str, subchannels: int, i_max: int
    ) -> None:
        super().__init__()
        self.structure = Structure(structure)
        self.subchannels = subchannels
        self.i_max = i_max
        self.shape = tuple(weight.shape)
        self.grouping = structure_grouping(self.shape, self.structure, subchannels)
        w = self.grouping.split(weight.detach().float())  # (G, n)
        alpha, beta, mask = greedy_init(w, i_max)
        zeros_g = torch.zeros_like(alpha)  # (G, I)
        self.register_buffer("alpha", alpha)
        self.register_buffer("beta", beta)
        self.register_buffer("mask", mask)
        self.register_buffer("w_ref", w.clone())  # D3: the pretrained weights, not ŵ
        self.register_buffer("w_hat", torch.zeros(self.shape, device=w.device))
        for name in ("m", "v", "v_max"):
            self.register_buffer(name, torch.zeros_like(w))
        for name in ("m_alpha", "v_alpha", "v_max_alpha"):
            self.register_buffer(name, zeros_g.clone())
        self.register_buffer("step", torch.zeros((), dtype=torch.long, device=w.device))
        self.register_buffer("step_alpha", torch.zeros((), dtype=torch.long, device=w.device))
        self.refresh()

    # -- the contract --------------------------------------------------------------------------

    def export(self, w: Tensor | None = None) -> QuantizedWeight:
        """Live slots compacted in slot order: bit k of a code is the sign of the k-th live slot."""
        live = self.mask  # (G, I)
        pos = live.long().cumsum(1) - 1  # (G, I)
        bits = live.sum(1)  # (G,)
        width = max(int(bits.max()) if bits.numel() else 0, 1)
        g = live.shape[0]
        book = torch.zeros(g, width + 1, dtype=torch.float32, device=live.device)  # (G, K+1)
        book.scatter_(1, torch.where(live, pos, width), self.alpha.float() * live)
        plus = ((self.beta > 0) & live[..., None]).to(torch.int16)  # (G, I, n)
        shift = pos.clamp_min(0).to(torch.int16)[..., None]  # (G, I, 1)
        codes = (plus << shift).sum(1, dtype=torch.int16)  # (G, n): distinct bits, < 2^8
        return QuantizedWeight(
            shape=self.shape,
            grouping=self.grouping,
            codes=codes.to(torch.uint8),
            bits=bits.to(torch.uint8),
            codebook=book[:, :width].contiguous(),
            kind=CodebookKind.BASES,
        )

    def forward(self, w: Tensor) -> Tensor:
        return self.w_hat.to(w.dtype) + (w - w.detach())

    def refresh(self) -> None:
        """Recompute ŵ from (α, β, mask) through the contract itself (exact eval = train)."""
        self.w_hat.copy_(dequantize(self.export()))

    # -- helpers -------------------------------------------------------------------------------

    def groups(self, t: Tensor) -> Tensor:
        return self.grouping.split(t)

    def bitwidth_terms(self) -> tuple[int, int]:
        """(Σ_g I_g n_g, number of weights) of this layer (§2.1)."""
        return int(self.mask.sum()) * self.grouping.size, math.prod(self.shape)

    def _w_moments(self, grad: Tensor, lr: float) -> tuple[Tensor, Tensor]:
        g = self.groups(grad.detach().float())  # (G, n)
        self.step += 1
        amsgrad_update(self.m, self.v, self.v_max, g)
        return pseudo_model(self.m, self.v_max, int(self.step), lr)

    def _alpha_grad(self, g: Tensor) -> Tensor:
        """β_{g,i}ᵀ g_g · mask (§5.1 step 2): (G, n) → (G, I)."""
        return (self.beta.float() @ g.unsqueeze(-1)).squeeze(-1) * self.mask

    def _alpha_moments(self, grad: Tensor, lr: float, weight_decay: float) -> tuple[Tensor, Tensor]:
        g_alpha = self._alpha_grad(self.groups(grad.detach().float()))  # (G, I)
        if weight_decay:
            g_alpha = g_alpha + weight_decay * self.alpha
        self.step_alpha += 1
        amsgrad_update(self.m_alpha, self.v_alpha, self.v_max_alpha, g_alpha)
        return pseudo_model(self.m_alpha, self.v_max_alpha, int(self.step_alpha), lr)

    def _write_back(self) -> None:
        self.refresh()
        self.w_ref.copy_(self.groups(self.w_hat))

    # -- the steps -----------------------------------------------------------------------------

    @torch.no_grad()
    def coordinate_step(
        self, grad: Tensor, lr: float, weight_decay: float = 0.0, update: bool = True
    ) -> tuple[Tensor, Tensor]:
        """§5.1 (``update=False``: the state updates of a pruning call, §6.1 step 1).

        Returns the α-domain pseudo-gradient and pseudo-Hessian (G, I).
        """
        self._w_moments(grad, lr)
        p_alpha, h_alpha = self._alpha_moments(grad, lr, weight_decay)
        if update:
            self.alpha.sub_(p_alpha / h_alpha).mul_(self.mask)  # P7: pruned α stay 0
            self._write_back()
        return p_alpha, h_alpha

    @torch.no_grad()
    def basis_step(
        self, grad: Tensor, lr: float, *, ste: bool = False, legacy_sign_bug: bool = False
    ) -> None:
        """§5.2 (basis mode) or §5.3 (``ste``: w_ref is the latent float weight)."""
        p, h = self._w_moments(grad, lr)  # (G, n) each
        target = self.w_ref - p / h  # (G, n)
        beta = search_basis(target, self.alpha, self.mask)  # (G, I, n)
        alpha = refit_alpha(beta, h, target, self.mask)  # (G, I)
        alpha, beta = normalise_signs(alpha, beta, legacy_sign_bug)
        self.alpha.copy_(alpha)
        self.beta.copy_(beta)
        self.refresh()
        self.w_ref.copy_(target if ste else self.groups(self.w_hat))
        self.project_states()

    def project_states(self) -> None:
        """§5.2 step 8: m_α = mask·βᵀm, v_α = mask·Σ_j v_j, v̂_α = mask·Σ_j v̂_j; t_α += 1."""
        self.step_alpha += 1
        self.m_alpha.copy_(self._alpha_grad(self.m))
        bsq = self.beta.float().pow(2)  # (G, I, n): 1 on valid slots, 0 elsewhere
        self.v_alpha.copy_((bsq @ self.v.unsqueeze(-1)).squeeze(-1) * self.mask)
        self.v_max_alpha.copy_((bsq @ self.v_max.unsqueeze(-1)).squeeze(-1) * self.mask)

    @torch.no_grad()
    def prune(self, flat_slots: Tensor) -> None:
        """Remove the slots with flat indices g·I + i (§6.1 step 4)."""
        flat = self.mask.view(-1)
        flat[flat_slots] = False
        self.alpha.mul_(self.mask)
        self.beta.mul_(self.mask[..., None].to(self.beta.dtype))


def prune_step(
    quantizers: list[MultiBitQuantizer],
    grads: list[Tensor],
    lr: float,
    top_k: float,
    m_p: float,
    generator: torch.Generator,
    *,
    weight_decay: float = 0.0,
    legacy_importance_bug: bool = False,
) -> int:
    """One pruning call over all layers (§6.1); returns the number of slots removed."""
    pool_d: list[Tensor] = []
    pool_layer: list[Tensor] = []
    pool_slot: list[Tensor] = []
    for li, (q, grad) in enumerate(zip(quantizers, grads, strict=True)):
        p_alpha, h_alpha = q.coordinate_step(grad, lr, weight_decay, update=False)
        d = pruning_importance(q.alpha, p_alpha, h_alpha).view(-1)  # (G·I,)
        valid = q.mask.view(-1).nonzero().squeeze(1)  # (N_l,)
        want = len(valid) * top_k
        k = int(want) + int(float(torch.rand((), generator=generator)) < want - int(want))
        k = min(k, len(valid))
        if k == 0:
            continue
        order = torch.argsort(d[valid])[:k]  # positions in the valid-only list
        # B1: the official code reads D at the valid-list position in the unmasked tensor.
        value = d[order] if legacy_importance_bug else d[valid[order]]
        pool_d.append(value)
        pool_slot.append(valid[order])
        pool_layer.append(torch.full((k,), li, dtype=torch.long, device=d.device))
    if not pool_d:  # P2: empty pool
        for q in quantizers:
            q._write_back()
        return 0
    d_all, layer_all, slot_all = torch.cat(pool_d), torch.cat(pool_layer), torch.cat(pool_slot)
    count = int(len(d_all) * m_p)
    chosen = torch.argsort(d_all)[:count]
    for li, q in enumerate(quantizers):
        q.prune(slot_all[chosen][layer_all[chosen] == li])
        q._write_back()
    return count


def average_bitwidth(quantizers: list[MultiBitQuantizer]) -> float:
    """Σ_g I_g n_g / N over all quantized weights (§2.1)."""
    terms = [q.bitwidth_terms() for q in quantizers]
    return sum(t[0] for t in terms) / max(sum(t[1] for t in terms), 1)


def _alq_layers(model: nn.Module) -> list[tuple[QuantConv2d | QuantLinear, MultiBitQuantizer]]:
    out = []
    for _, layer in quant_layers(model):
        if isinstance(layer.weight_quantizer, MultiBitQuantizer):
            out.append((layer, layer.weight_quantizer))
    return out


def storage_bytes(model: nn.Module) -> dict[str, float]:
    """§9: bases at 1 bit per weight per slot + 32 bits per α + 32 bits per float parameter."""
    qs = [q for _, q in _alq_layers(model)]
    slots = sum(int(q.mask.sum()) for q in qs)  # one float32 α per live slot
    bases = sum(q.bitwidth_terms()[0] for q in qs)
    floats = 0
    for module in model.modules():
        own = dict(module.named_parameters(recurse=False))
        if isinstance(module, QUANT_LAYER_TYPES):  # the weight is counted as bases and α
            own.pop("weight")
        floats += sum(prm.numel() for prm in own.values())  # biases, BN γ/β, float layers
    return {
        "storage_bytes": (bases + 32 * slots + 32 * floats) / 8,
        "bases_only_bytes": bases / 8,
        "slot_count_bytes": sum(q.mask.shape[0] for q in qs) * 4 / 8,
    }


# ---------------------------------------------------------------------------------------------
# The method: init, the three phases (§7), checkpoints between epochs


@dataclass(frozen=True)
class _Epoch:
    mode: str  # "basis" | "coordinate" | "prune" | "ste"
    lr: float


def _schedule(p: ALQParams) -> list[_Epoch]:
    """§7: every epoch of the run with its mode and lr (decay before each epoch)."""
    out: list[_Epoch] = []
    for _ in range(p.outer_iterations):
        lr = p.lr
        for _ in range(p.epochs_basis):
            lr *= p.decay_basis
            out.append(_Epoch("basis", lr))
        for _ in range(p.epochs_coord):
            lr *= p.decay_coord
            out.append(_Epoch("coordinate", lr))
        out.extend(_Epoch("prune", lr) for _ in range(p.epochs_prune))
    if p.posttrain:
        lr = p.lr
        for _ in range(p.posttrain_ste_epochs):
            lr *= p.posttrain_ste_decay
            out.append(_Epoch("ste", lr))
        for _ in range(p.posttrain_coord_epochs):
            lr *= p.posttrain_coord_decay
            out.append(_Epoch("coordinate", lr))
    return out


@dataclass
class _Run:
    """What every epoch of one run needs."""

    model: nn.Module
    layers: list[tuple[QuantConv2d | QuantLinear, MultiBitQuantizer]]
    adam: torch.optim.Optimizer | None
    loader: DataLoader
    params: ALQParams
    m_p: float
    generator: torch.Generator
    ctx: RunContext

    @property
    def quantizers(self) -> list[MultiBitQuantizer]:
        return [q for _, q in self.layers]

    def write_weights(self) -> None:
        """The network holds ŵ in its weight tensors (§5)."""
        with torch.no_grad():
            for layer, q in self.layers:
                layer.weight.copy_(q.w_hat)


def _run_epoch(run: _Run, epoch: _Epoch, index: int, total: int, pruning_done: bool) -> bool:
    """One epoch of one mode (§5, §6); returns whether pruning has reached its target."""
    p, ctx = run.params, run.ctx
    set_epoch = getattr(run.loader.sampler, "set_epoch", None)
    if set_epoch is not None:  # the data order depends on (seed, epoch index) only: resumable
        set_epoch(index)
    if epoch.mode == "prune":  # §6.1: BN in eval mode; quantized layers still give gradients
        run.model.eval()
        for layer, _ in run.layers:
            layer.train()
    else:
        run.model.train()
    if run.adam is not None:
        for group in run.adam.param_groups:
            group["lr"] = epoch.lr
    batches = len(run.loader)
    for i, (x, y) in enumerate(run.loader):
        ctx.check_cancelled()
        if epoch.mode == "prune" and pruning_done:
            break
        x, y = x.to(ctx.device), y.to(ctx.device)
        loss = F.cross_entropy(run.model(x), y)
        run.model.zero_grad(set_to_none=True)
        loss.backward()
        if run.adam is not None:
            run.adam.step()  # §4.2: the FP Adam step comes first, on the same minibatch
        grads = [
            layer.weight.grad if layer.weight.grad is not None else torch.zeros_like(layer.weight)
            for layer, _ in run.layers
        ]
        if epoch.mode == "prune":
            prune_step(
                run.quantizers,
                grads,
                epoch.lr,
                p.top_k,
                run.m_p,
                run.generator,
                weight_decay=p.weight_decay,
                legacy_importance_bug=p.legacy_importance_bug,
            )
            if p.target_bitwidth is not None:
                pruning_done = average_bitwidth(run.quantizers) <= p.target_bitwidth
        else:
            for (_, q), grad in zip(run.layers, grads, strict=True):
                if epoch.mode == "coordinate":
                    q.coordinate_step(grad, epoch.lr, p.weight_decay)
                else:
                    ste = epoch.mode == "ste"
                    q.basis_step(grad, epoch.lr, ste=ste, legacy_sign_bug=p.legacy_sign_bug)
        run.write_weights()
        ctx.report(
            epoch.mode,
            (index + (i + 1) / batches) / total,
            loss=float(loss.detach()),
            average_bits=average_bitwidth(run.quantizers),
        )
    return pruning_done


class ALQ(Method):
    name = "alq"
    title = "ALQ: adaptive loss-aware multi-bit quantization"
    paper = (
        "Qu, Zhou, Cheng, Thiele. Adaptive Loss-aware Quantization for Multi-bit Networks. "
        "CVPR 2020"
    )
    summary = (
        "Multi-bit weights per group with loss-aware basis/coordinate steps and adaptive "
        "pruning of bases; average bitwidth can go below one bit."
    )
    Params = ALQParams
    presets: ClassVar[dict[str, dict[str, Any]]] = {"small data": SMALL_DATA_PRESET}

    @classmethod
    def memory_parts(cls, fp: Footprint, params: Any) -> dict[str, int]:
        """Per quantized weight: I_max binary bases, the written-back ŵ and the AMSGrad moments
        (m, v, v̂) in float32; then the larger of the training step (Adam on the float rest)
        and the basis step's per-weight temporaries on the largest layer (≈ 19·I_max bytes per
        weight, measured on LeNet5 with ``bench/memory.py``)."""
        p: ALQParams = params
        largest = max((layer.weight for layer in fp.layers), default=0)
        step = training_parts(fp, p.batch_size)
        parts = {
            "working model": (fp.params + fp.buffers) * FLOAT,
            "bases and optimizer state": (p.i_max + 4) * FLOAT * fp.weights,
        }
        basis = 19 * p.i_max * largest
        if basis > sum(step.values()):
            return {**parts, "basis step": basis}
        return {**parts, **step}

    def quantize(
        self, model: nn.Module, data: DataBundle, params: ALQParams, ctx: RunContext
    ) -> nn.Module:
        p = params
        model.to(ctx.device)
        found = find_layers(model)
        shapes = [tuple(m.weight.shape) for _, m in found]  # type: ignore[arg-type]
        plan = dict(
            zip(
                [n for n, _ in found],
                layer_structures(shapes, p.i_max, p.fc_group_size),
                strict=True,
            )
        )

        def make(name: str, layer: nn.Module) -> MultiBitQuantizer:
            structure, subchannels = plan[name]
            return MultiBitQuantizer(layer.weight, structure, subchannels, p.i_max)  # type: ignore[arg-type]

        ctx.report("init", 0.0)
        quantize_model(model, make, keep_first_last=False)  # §7: first and last layers too
        layers = _alq_layers(model)
        quantized = {id(layer.weight) for layer, _ in layers}
        fp_params = [prm for prm in model.parameters() if id(prm) not in quantized]
        train_loader, _ = data.loaders(p.batch_size, seed=ctx.seed)
        run = _Run(
            model=model,
            layers=layers,
            adam=torch.optim.Adam(fp_params, lr=p.lr) if fp_params else None,
            loader=train_loader,
            params=p,
            m_p=pruning_rate_per_step(p.prune_ratio, p.top_k, p.epochs_prune, len(train_loader)),
            generator=ctx.generator(offset=9),
            ctx=ctx,
        )
        run.write_weights()
        schedule = _schedule(p)
        start, pruning_done = 0, False
        state = ctx.load_checkpoint("alq")
        if state is not None:  # β, α, masks, w_ref and both moment sets are model buffers
            model.load_state_dict(state["model"])
            if run.adam is not None and state.get("adam") is not None:
                run.adam.load_state_dict(state["adam"])
            run.generator.set_state(state["generator"])
            start, pruning_done = int(state["epoch"]), bool(state["pruning_done"])
        ste_started = any(e.mode == "ste" for e in schedule[:start])
        for index in range(start, len(schedule)):
            epoch = schedule[index]
            if epoch.mode == "ste" and not ste_started:
                ste_started = True
                for q in run.quantizers:  # §5.3: the latent weights start at ŵ
                    q.w_ref.copy_(q.groups(q.w_hat))
            if not (epoch.mode == "prune" and pruning_done):
                pruning_done = _run_epoch(run, epoch, index, len(schedule), pruning_done)
            ctx.save_checkpoint(
                "alq",
                {
                    "model": model.state_dict(),
                    "adam": run.adam.state_dict() if run.adam is not None else None,
                    "generator": run.generator.get_state(),
                    "epoch": index + 1,
                    "pruning_done": pruning_done,
                },
            )
        metrics = storage_bytes(model)
        ctx.report("done", 1.0, average_bits=average_bitwidth(run.quantizers), **metrics)
        return model.eval()
