"""Quantization Networks (Yang et al., CVPR 2019): a learned soft staircase per layer.

Paper: J. Yang, X. Shen, J. Xing, X. Tian, H. Li, B. Deng, J. Huang, X.-S. Hua, "Quantization
Networks", CVPR 2019, pp. 7308-7316 (arXiv:1911.09464), eqs. (5)-(12), Algorithm 1.
Official code: github.com/aliyun/alibabacloud-quantization-networks @ 05522aa (PyTorch 0.3).
CIFAR fork: github.com/haoyz/quantization-networks-cifar10 @ 7214733.
Spec: shared/methods/quantization-networks.md (section numbers below refer to it).

A quantizer with integer levels Y_0 < ... < Y_n is the staircase (eq. 7, spec §2.3)

    y = alpha * (sum_i s_i * sigmoid(T * (beta * x - b_i)) - o),   s_i = Y_i - Y_{i-1}, o = -Y_0

and at inference its hard step (eq. 12, §2.2) y = alpha * Y_k with k = #{i : beta * x > b_i}.
One (alpha, beta, b) per layer (weights) and per activation site; b comes from 1-D k-means in
beta0-scaled units and stays frozen; alpha and beta are learned; T = T0 * epoch (weights capped).

Where paper and code differ (default first, spec §10):

- Ties at a threshold: strict ``>`` (both code bases; the paper's A(0) = 1 is not implemented).
- Offset: o = -Y_0 (equals the paper's sum(s)/2 for symmetric sets and 0 for activations).
- Sigmoid argument clamped to [-10, 10] with the backward evaluated at the clamped argument (the
  code's leaky gradient floor); ``clamp=False`` gives the paper's exact sigmoid (§3.4).
- Weight gradient: ``surrogate_t1`` for binary weights (the official code: sigmoid derivative at
  temperature 1, times T) and ``exact`` for three or more levels (the official comment's rule);
  the paper's exact derivative for binary is ``weight_grad="exact"`` (§3.2, §10 row 2).
- Activation gradient: exact (official, T * sum (s sigma)(1 - s sigma), equal to the exact
  derivative for the unit steps of every activation set); the fork's T-free surrogate is
  ``act_grad="fork_t1"``, kept only to reproduce its table (§3.3, §10 row 3).
- Gradient clipping: the global L2 norm is clipped on dL/dw_hat of the quantized layers together
  with the other parameters' gradients (activation alpha/beta included) *before* the chain rule to
  the latent weights and the weight alpha/beta, as the official code does (§3.4, §11 "detached
  leaf" step). Weight alpha/beta gradients are formed from the clipped dL/dw_hat and not clipped.
- Bias init: centre midpoints of a converged, deterministic 1-D k-means (quantile init plus
  seeded k-means++ restarts), not the official tool's unconverged sklearn run; binary weights get
  b = 0 exactly; the paper's +-0.05 band around zero is ``center_band`` (off by default, §10 row 1).
- Activation init: the paper's beta0 = 1.25 * Y_n / q with q the max over the calibration samples;
  ``act_trim`` = gamma trims gamma/2 per tail ("3-sigma" with gamma = 0.0027, off by default);
  ``legacy_fork_act_beta`` reproduces the fork's bug (beta0 = alpha0 = 1, b in Y_n/q' units, gamma
  per tail, §4.3, §10 row 7).
- alpha/beta: SGD with the model's schedule, momentum 0.9, no weight decay, also for the
  activation alpha/beta (the official W+A script decays those; negligible, §10 row 6). Their lr
  equals the network's as in the code; ``scale_lr_mult`` (not in the paper or the code, default
  1) scales it: alpha's gradient sums over every weight of the layer, and from a small float model
  (LeNet5) the official same-lr step drives alpha negative within a few steps for pm4.
- Phases (§7.1, §10 row 8): weights (soft) from the float model; then activations only, with the
  weights hard and frozen and the BatchNorm affine parameters frozen (paper: "train activation
  quantization only"; fork: BN affine frozen); then everything, the weight temperature continuing
  from its phase-1 value (the official W+A script restarts it at T0 and re-initializes alpha/beta;
  not reproduced).
- Placement (§5): weights of every Conv2d/Linear except the first and the last (downsample convs
  included). Activations (§5.2, "quantize the ReLU outputs ... after the pooling when a pooling
  follows"): one quantizer after every ReLU module, found by tracing one forward pass
  (:func:`activation_site_names`), no per-architecture table:

  - a ReLU whose output only a max-pool module reads is quantized after that pool (the stem of
    the torchvision ResNets, AlexNet's pooled convs);
  - residual block outputs are quantized: every zoo ResNet block ends in its own ReLU module
    after the addition, so the block output (also the next block's shortcut) is one site, shared
    by the next block's conv1 and downsample conv (one quantizer per distinct tensor, §11);
  - the last block's output is quantized too (it goes through the average pool to the float
    FC), as in the official ResNet-18 (17 sites) and the fork's ResNet-20 (19 sites);
  - a ReLU read only by the float last layer (directly or through Dropout/Flatten/Identity
    modules) is not quantized: the official AlexNet leaves fc7's output, the float classifier's
    input, in float (6 sites).

  So ResNet-20/32/56 (option A or B) have 1 + 2 per block sites, torchvision ResNet-18/34 1 + 2
  per block, ResNet-50 1 + 3 per block, AlexNet 6, LeNet5 2, VGG-Small 7. The stem site is
  quantized (the official ResNet code drops it by a bug, §10 row 9). The spec says nothing of
  the LQ-Nets pre-activation ResNet-18: there the same rule quantizes the ReLU sites (stem + pool,
  every pre-activation ReLU, every inner ReLU, each stage's closing ReLU; 17 sites), and the
  block sums, which have no ReLU, stay float. A model with no ReLU module (ReLUs called as
  functions) falls back to §11's generic rule: the input of every weight-quantized layer.

Params defaults are the paper's ResNet recipe (lr 1e-3, milestones 30/45, 55 epochs, T0 = 5, wd
1e-4, clip 5); ``PRESETS`` holds documented settings for AlexNet, the fork's CIFAR ResNet-20 and
the small LeNet5 benchmarks.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, cast

import torch
from pydantic import Field
from torch import Tensor, nn

from quantcore.context import RunContext
from quantcore.data import DataBundle
from quantcore.layers import InputQuantizer, WeightQuantizer, quant_layers
from quantcore.memory import FLOAT, Footprint, training_parts
from quantcore.methods.base import Method, MethodParams
from quantcore.qweight import CodebookKind, Grouping, QuantizedWeight
from quantcore.surgery import (
    add_activation_sites,
    find_layers,
    quantize_model,
    relu_sites,
    select_layers,
)
from quantcore.training import train

# --- level sets (§2.1) -------------------------------------------------------------------------

WEIGHT_LEVEL_SETS: dict[str, tuple[int, ...]] = {
    "binary": (-1, 1),
    "ternary": (-1, 0, 1),
    "pm2": (-2, -1, 0, 1, 2),  # "3 bits (+-2)"
    "pm4": (-4, -2, -1, 0, 1, 2, 4),  # "3 bits (+-4)", log-like
    "uniform3": tuple(range(-3, 4)),  # fork "3 bits"
    "uniform4": tuple(range(-7, 8)),  # fork "4 bits"
    "pm15": tuple(range(-15, 16)),  # "5 bits" (ResNet-18/50)
}
CLAMP = 10.0  # both code bases clamp the sigmoid argument to [-10, 10] (§2.3)
T_CAP = 2000.0  # weight temperature cap of both code bases (§6)
BETA_MARGIN = 1.25  # beta0 = 1.25 * Y_n / max|x| (§2.4)
CENTER_BAND = 0.05  # the paper's ternary rule, in beta units (§4.1)

GradMode = Literal["exact", "surrogate_t1", "official_act", "fork_t1"]


def activation_levels(bits: int) -> tuple[int, ...]:
    """{0, 1, ..., 2**bits - 1} (§2.1, last row)."""
    return tuple(range(2**bits))


@dataclass(frozen=True)
class LevelSet:
    """An ascending integer level set Y and its derived constants (§2.1, P1)."""

    values: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.values) < 2 or any(b <= a for a, b in itertools.pairwise(self.values)):
            raise ValueError(f"levels must be at least two ascending integers, got {self.values}")

    @property
    def n(self) -> int:
        return len(self.values) - 1

    @property
    def steps(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in itertools.pairwise(self.values))

    @property
    def offset(self) -> int:
        return -self.values[0]

    @property
    def top(self) -> int:
        """p = Y_n, the last level (the code's choice for beta0, §2.4)."""
        return self.values[-1]

    @property
    def bits(self) -> int:
        return max(1, math.ceil(math.log2(len(self.values))))


# --- the staircase (§2.2, §2.3, §3) ------------------------------------------------------------


def _step_derivative(
    u: Tensor, b: Tensor, s: Tensor, t: float, clamp: float | None, grad: str
) -> Tensor:
    """d/du of S(u) = sum_i s_i sigma(T (u - b_i)) as each variant computes it (§3.2, §3.3).

    With c(z) = clamp(z, -10, 10) (or z when ``clamp`` is None), sigma_i = sigma(c(T (u - b_i)))
    and sigma1_i = sigma(c(u - b_i)):

    ``exact``         T sum s_i sigma_i (1 - sigma_i)        paper; official weights, 3+ levels
    ``surrogate_t1``  T sum s_i sigma1_i (1 - sigma1_i)      official binary weights
    ``official_act``  T sum (s_i sigma_i)(1 - s_i sigma_i)   official activation module
    ``fork_t1``       sum (s_i sigma1_i)(1 - s_i sigma1_i)   the fork's activation module

    With the clamp the derivative is taken at the clamped argument (the code's leaky floor).
    """
    scale = t if grad in ("exact", "official_act") else 1.0
    z = scale * (u.unsqueeze(-1) - b)  # (..., n)
    if clamp is not None:
        z = z.clamp(-clamp, clamp)
    sig, co = torch.sigmoid(z), torch.sigmoid(-z)  # (..., n); co = 1 - sig without cancellation
    if grad in ("exact", "surrogate_t1"):
        d = (s * sig * co).sum(-1)  # (...)
    else:  # official activation backward and the fork's: (s sigma)(1 - s sigma)
        d = (s * sig * (co - (s - 1) * sig)).sum(-1)  # (...)
    return d if grad == "fork_t1" else t * d


class SigmoidStaircase(torch.autograd.Function):
    """S(u) = sum_i s_i sigma(clamp(T (u - b_i))) with the chosen backward (eq. 7, §3)."""

    @staticmethod
    def forward(ctx: Any, u: Tensor, b: Tensor, s: Tensor, t: float, clamp, grad: str) -> Tensor:
        z = t * (u.unsqueeze(-1) - b)  # (..., n)
        if clamp is not None:
            z = z.clamp(-clamp, clamp)
        ctx.save_for_backward(u, b, s)
        ctx.t, ctx.clamp, ctx.grad = t, clamp, grad
        return (s * torch.sigmoid(z)).sum(-1)  # (...)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        u, b, s = ctx.saved_tensors
        d = _step_derivative(u, b, s, ctx.t, ctx.clamp, ctx.grad)  # (...)
        return grad_out * d, None, None, None, None, None


def soft_quantize(
    x: Tensor,
    alpha: Tensor,
    beta: Tensor,
    b: Tensor,
    s: Tensor,
    offset: float,
    temperature: float,
    *,
    clamp: float | None = CLAMP,
    grad: GradMode = "exact",
) -> Tensor:
    """y = alpha (S(beta x) - o), eq. (7); gradients for x, alpha, beta by the chain rule (§3.1)."""
    staircase = SigmoidStaircase.apply(beta * x, b, s, float(temperature), clamp, grad)
    return alpha * (staircase - offset)


def step_codes(x: Tensor, beta: Tensor, b: Tensor) -> Tensor:
    """k = #{i : beta x > b_i} (strict, ties go to the lower level; eq. 12, §2.2)."""
    return torch.bucketize(beta * x, b.contiguous(), right=False)


def hard_quantize(x: Tensor, alpha: Tensor, beta: Tensor, b: Tensor, levels: Tensor) -> Tensor:
    """alpha * Y_k, eq. (12); the codebook alpha * Y is what export writes."""
    return (alpha * levels)[step_codes(x, beta, b)]


def temperature_at(epoch: int, t0: float, cap: float | None = None) -> float:
    """T = T0 * epoch, epochs counted from 1, optionally capped (§6, P12)."""
    t = t0 * epoch
    return t if cap is None else min(t, cap)


# --- bias init: 1-D k-means (§4, §11) ----------------------------------------------------------


def _lloyd_1d(x: Tensor, csum: Tensor, centres: Tensor, max_iter: int) -> Tensor:
    """Lloyd's iterations on sorted ``x`` (N,) until the partition stops changing."""
    n = x.numel()
    for _ in range(max_iter):
        mids = (centres[1:] + centres[:-1]) / 2  # (k-1,)
        edges = torch.searchsorted(x, mids, right=True)  # (k-1,) first index of the next cluster
        zero = edges.new_zeros(1)
        starts, ends = torch.cat([zero, edges]), torch.cat([edges, zero + n])  # (k,)
        counts = (ends - starts).to(x.dtype)  # (k,)
        sums = csum[ends] - csum[starts]  # (k,)
        new = torch.where(counts > 0, sums / counts.clamp(min=1), centres)  # (k,)
        new = new.sort().values
        if torch.equal(new, centres):
            break
        centres = new
    return centres


def _inertia(x: Tensor, centres: Tensor) -> Tensor:
    mids = (centres[1:] + centres[:-1]) / 2  # (k-1,)
    return ((x - centres[torch.bucketize(x, mids, right=True)]) ** 2).sum()


def kmeans_1d(
    values: Tensor, k: int, *, restarts: int = 5, seed: int = 0, max_iter: int = 1000
) -> tuple[Tensor, float]:
    """Converged 1-D k-means: sorted centres (k,) float64 and their inertia (§11).

    Runs Lloyd from the quantile init and from ``restarts - 1`` k-means++ draws (a generator
    seeded with ``seed``) and keeps the lowest inertia.
    """
    x = values.detach().double().flatten().sort().values  # (N,)
    csum = torch.cat([x.new_zeros(1), x.cumsum(0)])  # (N+1,)
    q = (torch.arange(k, dtype=x.dtype, device=x.device) + 0.5) / k  # (k,)
    inits = [torch.quantile(x, q) if x.numel() <= 16_000_000 else x[(q * x.numel()).long()]]
    gen = torch.Generator().manual_seed(seed)
    for _ in range(max(restarts - 1, 0)):  # k-means++: draw by D^2 through the inverse CDF
        chosen = [x[int(torch.randint(x.numel(), (1,), generator=gen))]]
        d2 = (x - chosen[0]) ** 2  # (N,) squared distance to the nearest chosen centre
        for _ in range(k - 1):
            cdf = d2.cumsum(0)  # (N,)
            if float(cdf[-1]) <= 0:
                chosen.append(chosen[-1])
                continue
            r = float(torch.rand(1, generator=gen, dtype=torch.float64)) * float(cdf[-1])
            idx = int(
                torch.searchsorted(cdf, torch.tensor([r], dtype=cdf.dtype, device=cdf.device))
            )
            chosen.append(x[min(idx, x.numel() - 1)])
            d2 = torch.minimum(d2, (x - chosen[-1]) ** 2)  # (N,)
        inits.append(torch.stack(chosen).sort().values)
    best, best_inertia = None, math.inf
    for init in inits:
        centres = _lloyd_1d(x, csum, init.sort().values, max_iter)
        inertia = float(_inertia(x, centres))
        if inertia < best_inertia:
            best, best_inertia = centres, inertia
    assert best is not None
    return best, best_inertia


def kmeans_thresholds(
    scaled: Tensor, levels: LevelSet, *, restarts: int = 5, seed: int = 0
) -> Tensor:
    """b_i = midpoints of adjacent sorted k-means centres, |Y| clusters (§4.1 step 4)."""
    centres, _ = kmeans_1d(scaled, len(levels.values), restarts=restarts, seed=seed)
    return (centres[1:] + centres[:-1]) / 2  # (n,)


def _level_midpoints(levels: LevelSet) -> Tensor:
    values = torch.tensor(levels.values, dtype=torch.float64)  # (L,)
    return (values[1:] + values[:-1]) / 2  # (n,)


def apply_center_band(b: Tensor, levels: LevelSet) -> Tensor:
    """The paper's rule: b_{n//2} = -0.05, b_{n//2+1} = +0.05 (1-indexed), §4.1."""
    n = levels.n
    if n < 2 or levels.steps[n // 2 - 1] != 1 or levels.steps[n // 2] != 1:
        raise ValueError(f"the +-{CENTER_BAND} band needs unit steps around zero: {levels.values}")
    b = b.clone()
    b[n // 2 - 1], b[n // 2] = -CENTER_BAND, CENTER_BAND
    return b


def init_weight_thresholds(
    w: Tensor,
    levels: LevelSet,
    *,
    center_band: bool = False,
    restarts: int = 5,
    seed: int = 0,
) -> tuple[float, Tensor]:
    """beta0 = 1.25 Y_n / max|w| and b (beta units) for one layer (§2.4, §4.1)."""
    q = float(w.detach().abs().max())
    if q == 0:  # an all-zero layer: any scale; thresholds at the level midpoints keep it zero
        return 1.0, _level_midpoints(levels)
    beta0 = BETA_MARGIN * levels.top / q
    if levels.n == 1:  # binary: b = 0, no clustering
        return beta0, torch.zeros(1, dtype=torch.float64)
    if levels.n == 2 and center_band:  # ternary: the band alone
        return beta0, torch.tensor([-CENTER_BAND, CENTER_BAND], dtype=torch.float64)
    b = kmeans_thresholds(
        beta0 * w.detach().double().flatten(), levels, restarts=restarts, seed=seed
    )
    return beta0, (apply_center_band(b, levels) if center_band else b)


def init_activation_thresholds(
    x: Tensor,
    levels: LevelSet,
    *,
    trim: float = 0.0,
    legacy_fork: bool = False,
    restarts: int = 5,
    seed: int = 0,
) -> tuple[float, float, Tensor, float]:
    """(beta0, alpha0, b, q) from calibration samples of one site (§4.1, §4.3, §10 row 7).

    ``trim`` = gamma drops floor(N gamma / 2) values per tail (floor(N gamma) with
    ``legacy_fork``); q = max |kept|. Default beta0 = 1.25 Y_n / q; ``legacy_fork`` scales the
    clustering by Y_n / q and returns beta0 = alpha0 = 1, as the fork's code does.
    """
    v = x.detach().double().flatten().sort().values  # (N,)
    cut = math.floor(v.numel() * trim) if legacy_fork else math.floor(v.numel() * trim / 2)
    cut = min(cut, (v.numel() - 1) // 2)
    if cut:
        v = v[cut:-cut]
    q = float(v.abs().max())
    if q == 0:  # a dead site: every input is 0 and maps to level 0 whatever the scale
        return 1.0, 1.0, _level_midpoints(levels), 0.0
    scale = (1.0 if legacy_fork else BETA_MARGIN) * levels.top / q
    b = kmeans_thresholds(scale * v, levels, restarts=restarts, seed=seed)
    beta0 = 1.0 if legacy_fork else scale
    return beta0, 1.0 / beta0, b, q


# --- quantizer modules -------------------------------------------------------------------------


class _Staircase(nn.Module):
    """State shared by the weight and activation quantizers: levels, b, alpha, beta, T."""

    levels: Tensor  # (L,) Y, float32
    steps: Tensor  # (n,) s
    thresholds: Tensor  # (n,) b, in beta units
    temperature: Tensor  # ()

    def _init_staircase(self, levels: Sequence[int], grad: str, clamp: float | None) -> None:
        self.level_set = LevelSet(tuple(int(v) for v in levels))
        ls = self.level_set
        self.register_buffer("levels", torch.tensor(ls.values, dtype=torch.float32))  # (L,)
        self.register_buffer("steps", torch.tensor(ls.steps, dtype=torch.float32))  # (n,)
        self.register_buffer("thresholds", torch.zeros(ls.n))  # (n,) b, beta units, frozen
        self.register_buffer("temperature", torch.tensor(1.0))
        self.alpha = nn.Parameter(torch.tensor(1.0))
        self.beta = nn.Parameter(torch.tensor(1.0))
        self.grad, self.clamp = grad, clamp

    def set_scales(self, beta0: float, alpha0: float, b: Tensor) -> None:
        with torch.no_grad():
            self.beta.fill_(beta0)
            self.alpha.fill_(alpha0)
            self.thresholds.copy_(b.to(self.thresholds))

    def set_temperature(self, t: float) -> None:
        self.temperature.fill_(t)

    def _soft(self, x: Tensor, t: float) -> Tensor:
        return soft_quantize(
            x,
            self.alpha,
            self.beta,
            self.thresholds.to(x.dtype),
            self.steps.to(x.dtype),
            float(self.level_set.offset),
            t,
            clamp=self.clamp,
            grad=self.grad,  # type: ignore[arg-type]
        )

    def codebook(self) -> Tensor:
        """alpha * Y (L,), float32: the values the hard step outputs."""
        return (self.alpha.detach() * self.levels).float()


class QNetsWeightQuantizer(_Staircase, WeightQuantizer):
    """One layer's weight staircase. ``mode``: "soft" (training) or "hard" (frozen, phase 2).

    With ``leaf`` set, training forward returns a detached leaf copy of w_hat and keeps the pair
    for :class:`ClippedChainSGD`, which clips dL/dw_hat before the chain rule (§11).
    """

    def __init__(
        self,
        levels: Sequence[int],
        *,
        grad: Literal["exact", "surrogate_t1"] = "exact",
        clamp: float | None = CLAMP,
        t_cap: float | None = T_CAP,
    ) -> None:
        super().__init__()
        self._init_staircase(levels, grad, clamp)
        self.t_cap = t_cap
        self.mode: Literal["soft", "hard"] = "soft"
        self.leaf = False
        self._pending: list[tuple[Tensor, Tensor]] = []

    def init_from_weight(self, w: Tensor, **kwargs: Any) -> None:
        """beta0, alpha0 = 1/beta0 and b from the pre-trained weight (§2.4, §4.1)."""
        beta0, b = init_weight_thresholds(w, self.level_set, **kwargs)
        self.set_scales(beta0, 1.0 / beta0, b)

    def take_pending(self) -> list[tuple[Tensor, Tensor]]:
        pending, self._pending = self._pending, []
        return pending

    def forward(self, w: Tensor) -> Tensor:
        if self.mode == "hard":
            return super().forward(w)  # dequantize(export(w)): no gradient to w, alpha, beta
        t = float(self.temperature)
        y = self._soft(w, t if self.t_cap is None else min(t, self.t_cap))
        if not self.leaf:
            return y
        leaf = y.detach().requires_grad_(True)
        self._pending.append((y, leaf))
        return leaf

    def export(self, w: Tensor) -> QuantizedWeight:
        shape = tuple(w.shape)
        grouping = Grouping.per_tensor(shape)
        codes = step_codes(w.detach(), self.beta.detach(), self.thresholds)  # same shape as w
        return QuantizedWeight(
            shape=shape,
            grouping=grouping,
            codes=grouping.split(codes).to(torch.uint8),  # (1, N)
            bits=torch.full((1,), self.level_set.bits, dtype=torch.uint8, device=w.device),
            codebook=self.codebook().unsqueeze(0),  # (1, L)
            kind=CodebookKind.LEVELS,
        )


class QNetsActQuantizer(_Staircase, InputQuantizer):
    """One activation site's staircase: soft in training, the hard step in eval (§2.2, §5.2).

    ``passthrough`` (not state) returns the input unchanged: activation quantization off
    (phase 1) and the calibration pass.
    """

    kind: ClassVar[str] = "qnets_act"

    def __init__(
        self,
        levels: Sequence[int],
        grad: Literal["exact", "official_act", "fork_t1"] = "official_act",
        clamp: float | None = CLAMP,
    ) -> None:
        super().__init__()
        self._init_staircase(levels, grad, clamp)
        self.passthrough = False

    def config(self) -> dict[str, Any]:
        return {"levels": list(self.level_set.values), "grad": self.grad, "clamp": self.clamp}

    def init_from_samples(self, x: Tensor, **kwargs: Any) -> None:
        beta0, alpha0, b, _ = init_activation_thresholds(x, self.level_set, **kwargs)
        self.set_scales(beta0, alpha0, b)

    def forward(self, x: Tensor) -> Tensor:
        if self.passthrough:
            return x
        if self.training:
            return self._soft(x, float(self.temperature))
        codebook = self.codebook().to(x.dtype)  # (L,)
        return codebook[step_codes(x, self.beta.detach().to(x.dtype), self.thresholds)]


# --- training: the clipped chain-rule step and the per-epoch schedule (§3.2, §6, §11) -----------


class ClippedChainSGD(torch.optim.SGD):
    """SGD whose step first clips dL/dw_hat, then chains it to w and the weight alpha/beta (§11).

    The weight quantizers run in ``leaf`` mode, so ``loss.backward()`` leaves dL/dw_hat on
    detached leaves. ``step`` clips the global L2 norm of {those leaves' grads} and
    ``clip_params``' grads (every other trainable parameter, activation alpha/beta included; the
    weight alpha/beta and latent weights have no gradient yet), backpropagates the clipped
    dL/dw_hat through the staircase in one ``torch.autograd.backward`` call, then steps.
    """

    def __init__(
        self,
        param_groups: list[dict[str, Any]],
        *,
        lr: float,
        momentum: float,
        weight_quantizers: Sequence[QNetsWeightQuantizer],
        clip_params: Sequence[Tensor],
        max_norm: float,
    ) -> None:
        super().__init__(param_groups, lr=lr, momentum=momentum)
        self.weight_quantizers = list(weight_quantizers)
        self.clip_params = list(clip_params)
        self.max_norm = max_norm

    def step(self, closure: Any = None) -> Any:
        pairs = [
            (y, leaf)
            for q in self.weight_quantizers
            for y, leaf in q.take_pending()
            if leaf.grad is not None
        ]
        if self.max_norm > 0:
            clipped = [leaf for _, leaf in pairs] + [
                p for p in self.clip_params if p.grad is not None
            ]
            if clipped:
                torch.nn.utils.clip_grad_norm_(clipped, self.max_norm)
        if pairs:
            with torch.enable_grad():
                torch.autograd.backward([y for y, _ in pairs], [leaf.grad for _, leaf in pairs])
        return super().step(closure)


class TemperatureSchedule:
    """MultiStepLR plus T = T0 * (offset + epoch) on each quantizer, stepped once per epoch (§6).

    Quacks like an LR scheduler for :func:`quantcore.training.train` (step, state_dict,
    load_state_dict), so the temperature resumes with the checkpoint.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        milestones: Sequence[int],
        gamma: float,
        quantizers: Sequence[tuple[_Staircase, int, float | None]],
        t0: float,
    ) -> None:
        self.lr = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(milestones), gamma)
        self.quantizers, self.t0, self.epoch = list(quantizers), t0, 0
        self._apply()

    def _apply(self) -> None:
        for q, offset, cap in self.quantizers:
            q.set_temperature(temperature_at(offset + self.epoch + 1, self.t0, cap))

    def step(self) -> None:
        self.lr.step()
        self.epoch += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"lr": self.lr.state_dict(), "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr.load_state_dict(state["lr"])
        self.epoch = int(state["epoch"])
        self._apply()


# --- the method ---------------------------------------------------------------------------------


class QNetsParams(MethodParams):
    weight_levels: Literal["binary", "ternary", "pm2", "pm4", "uniform3", "uniform4", "pm15"] = (
        Field(
            "ternary",
            description="Weight level set: binary {-1,1}, ternary {-1,0,1}, pm2 {-2..2}, pm4 "
            "{-4,-2,-1,0,1,2,4}, uniform3 {-3..3}, uniform4 {-7..7}, pm15 {-15..15}.",
        )
    )
    act_bits: int = Field(
        0, ge=0, le=4, description="Activation bits (levels {0..2^k-1}); 0 keeps activations float."
    )
    epochs: int = Field(55, ge=1, le=1000, description="Phase 1 epochs (weights only).")
    act_epochs: int = Field(
        55, ge=0, le=1000, description="Phase 2 epochs (activations only, weights hard and frozen)."
    )
    joint_epochs: int = Field(55, ge=0, le=1000, description="Phase 3 epochs (both trained).")
    lr: float = Field(1e-3, gt=0, le=10, description="SGD learning rate of every phase.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    weight_decay: float = Field(
        1e-4, ge=0, le=0.1, description="Weight decay of the network (never of alpha/beta)."
    )
    milestones: list[Annotated[int, Field(ge=1, le=1000)]] = Field(
        [30, 45],
        max_length=16,
        description="Epochs (per phase) at which the learning rate is multiplied by gamma.",
    )
    lr_gamma: float = Field(0.1, gt=0, le=1, description="Learning-rate decay factor.")
    t0: float = Field(5.0, gt=0, le=1000, description="Temperature T = t0 * epoch.")
    t_cap: float = Field(2000.0, gt=0, le=1e6, description="Cap of the weight temperature.")
    scale_lr_mult: float = Field(
        1.0,
        gt=0,
        le=10,
        description="Learning-rate multiplier of every alpha/beta (1 = the code's same lr).",
    )
    max_grad_norm: float = Field(
        5.0, ge=0, le=1e6, description="Global L2 clip of dL/dw_hat and other grads; 0 = off."
    )
    batch_size: int = Field(256, ge=1, le=65536, description="Training batch size.")
    weight_grad: Literal["auto", "exact", "surrogate_t1"] = Field(
        "auto",
        description="Weight backward: auto = the official code's (T=1 surrogate for binary, "
        "exact for 3+ levels); exact = the paper's derivative; surrogate_t1 always.",
    )
    act_grad: Literal["official", "exact", "fork_t1"] = Field(
        "official",
        description="Activation backward: official (= exact for unit steps), exact, or the "
        "fork's T-free surrogate.",
    )
    clamp: bool = Field(
        True, description="Clamp the sigmoid argument to +-10 as the code does (off: paper's)."
    )
    center_band: bool = Field(
        False, description="The paper's +-0.05 thresholds around zero (ternary and wider)."
    )
    act_trim: float = Field(
        0.0,
        ge=0,
        le=0.2,
        description="Outlier share trimmed before activation init (0.0027 = 3 sigma).",
    )
    legacy_fork_act_beta: bool = Field(
        False, description="Reproduce the fork's activation init bug (beta0 = alpha0 = 1)."
    )
    calib_samples: int = Field(
        1000, ge=1, le=1_000_000, description="Training samples for the activation calibration."
    )
    kmeans_restarts: int = Field(5, ge=1, le=100, description="Seeded k-means restarts.")


PRESETS: dict[str, dict[str, Any]] = {
    # The paper's AlexNet-BN recipe (§7.1).
    "alexnet": {"milestones": [25, 40], "t0": 10.0, "weight_decay": 5e-4},
    # The fork's CIFAR-10 ResNet-20 weight runs (§7.3, §9.2; milestones per level set there).
    "cifar_resnet20": {"lr": 0.1, "epochs": 200, "t0": 5.0, "milestones": [16, 100]},
    # Small-data benchmark (bench/qnets.py, Fashion-MNIST LeNet5): not from the paper. The
    # alpha/beta lr is 1/100 of the network's (digits LeNet5, 4 epochs from float: pm4 97.2%
    # with it, 74% without).
    "fashion_lenet5": {
        "epochs": 10,
        "act_epochs": 3,
        "joint_epochs": 5,
        "lr": 1e-3,
        "milestones": [7],
        "t0": 20.0,
        "batch_size": 128,
        "scale_lr_mult": 0.01,
    },
}


def _is_bn(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm)


def _act_quantizers(model: nn.Module) -> list[QNetsActQuantizer]:
    return [m for m in model.modules() if isinstance(m, QNetsActQuantizer)]


def activation_site_names(
    model: nn.Module, example_input: Tensor, float_layers: set[str]
) -> list[str]:
    """The modules after which QNets quantizes activations (§5.2; the module docstring).

    Every ReLU module of the float ``model`` that one forward of ``example_input`` calls (moved
    after a max-pool that alone reads it), except those read only by ``float_layers`` (the
    Conv2d/Linear layers that keep float weights: the last FC).
    """
    return [
        site.name
        for site in relu_sites(model, example_input)
        if not (site.readers and set(site.readers) <= float_layers)
    ]


class QNets(Method):
    name = "qnets"
    title = "Quantization Networks"
    paper = "Yang et al., Quantization Networks, CVPR 2019 (arXiv:1911.09464)"
    summary = (
        "Learns a soft staircase of sigmoids per layer (k-means thresholds, learned scales) whose "
        "temperature grows each epoch; inference uses the hard step."
    )
    Params = QNetsParams
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "AlexNet (paper)": PRESETS["alexnet"],
        "CIFAR-10 ResNet-20": PRESETS["cifar_resnet20"],
        "small data": PRESETS["fashion_lenet5"],
    }

    @classmethod
    def memory_parts(cls, fp: Footprint, params: Any) -> dict[str, int]:
        """The largest of the three places the method peaks (each measured on LeNet5 and
        ResNet-20 with ``bench/memory.py``): k-means on the largest layer's weights (float64,
        about a dozen weight-sized temporaries), the weight phase (the float step plus the soft
        quantizers' saved sigmoid terms, ≈ 24 B per weight), and with activations the joint
        phase (≈ 88 B per weight, and per activation element n + ¼ saved floats for the n
        sigmoid terms of its level set). Calibration samples are held on the host."""
        p: QNetsParams = params
        model = (fp.params + fp.buffers) * FLOAT
        largest = max((layer.weight for layer in fp.layers), default=0)
        kmeans = {"working model": model, "k-means": 100 * largest}
        weights = {"working model": model, **training_parts(fp, p.batch_size)}
        weights["soft weight quantizers"] = 24 * fp.weights
        phases = [kmeans, weights]
        if p.act_bits:
            n = 2**p.act_bits - 1
            per_sample = int(fp.relu_outputs * FLOAT * (n + 0.25))
            joint = {"working model": model}
            joint.update(training_parts(fp, p.batch_size, extra_per_sample=per_sample))
            joint["soft weight quantizers"] = 88 * fp.weights
            phases.append(joint)
        return max(phases, key=lambda parts: sum(parts.values()))

    def quantize(
        self, model: nn.Module, data: DataBundle, params: QNetsParams, ctx: RunContext
    ) -> nn.Module:
        p = params
        levels = WEIGHT_LEVEL_SETS[p.weight_levels]
        wgrad = p.weight_grad
        if wgrad == "auto":
            wgrad = "surrogate_t1" if len(levels) == 2 else "exact"
        agrad: Literal["exact", "official_act", "fork_t1"] = (
            "official_act" if p.act_grad == "official" else p.act_grad
        )
        clamp = CLAMP if p.clamp else None
        model.to(ctx.device)
        ctx.report("init", 0.0)

        def weight_factory(_name: str, layer: nn.Module) -> QNetsWeightQuantizer:
            weight = cast(Tensor, layer.weight)
            wq = QNetsWeightQuantizer(levels, grad=wgrad, clamp=clamp, t_cap=p.t_cap)
            wq.init_from_weight(
                weight, center_band=p.center_band, restarts=p.kmeans_restarts, seed=ctx.seed
            )
            return wq.to(weight.device)

        def act_factory(_name: str, _module: nn.Module) -> QNetsActQuantizer:
            aq = QNetsActQuantizer(activation_levels(p.act_bits), grad=agrad, clamp=clamp)
            aq.passthrough = True  # phase 1: activation quantization off
            return aq.to(ctx.device)

        sites: list[str] = []
        if p.act_bits:  # placement on the float model (§5.2), before any layer is swapped
            found = find_layers(model)
            kept_float = {n for n, _ in found} - {n for n, _ in select_layers(found)}
            example = torch.zeros(2, data.in_channels, *data.input_size, device=ctx.device)
            sites = activation_site_names(model, example, kept_float)
        per_layer = p.act_bits > 0 and not sites  # no ReLU module: §11's generic rule
        quantize_model(model, weight_factory, input_quantizer=act_factory if per_layer else None)
        add_activation_sites(model, sites, act_factory)
        wqs = [
            cast(QNetsWeightQuantizer, layer.weight_quantizer) for _, layer in quant_layers(model)
        ]
        aqs = _act_quantizers(model)
        train_loader, val_loader = data.loaders(p.batch_size, seed=ctx.seed)
        ctx.report("init", 1.0)

        phase = functools.partial(self._run_phase, model, p, ctx, train_loader, val_loader)
        # Phase 1: weights (soft, clipped chain rule) from the float model.
        phase("qnets_weights", p.epochs, wqs, [], weight_offset=0, act_offset=0)
        if aqs:
            self._calibrate(model, aqs, train_loader, p, ctx)
            # Phase 2: activations only; weights hard and frozen, BN affine frozen.
            for wq in wqs:
                wq.mode = "hard"
            phase("qnets_acts", p.act_epochs, [], aqs, weight_offset=0, act_offset=0)
            # Phase 3: both; the temperatures continue from the earlier phases.
            for wq in wqs:
                wq.mode = "soft"
            offsets = {"weight_offset": p.epochs, "act_offset": p.act_epochs}
            phase("qnets_joint", p.joint_epochs, wqs, aqs, **offsets)
        for aq in aqs:  # on in the result even when no activation phase ran (calibrated init)
            aq.passthrough = False
        for wq in wqs:
            wq.leaf = False
            wq.take_pending()
        return model.to(ctx.device).eval()

    @staticmethod
    def _run_phase(
        model: nn.Module,
        p: QNetsParams,
        ctx: RunContext,
        train_loader: Any,
        val_loader: Any,
        stage: str,
        epochs: int,
        wqs: list[QNetsWeightQuantizer],
        aqs: list[QNetsActQuantizer],
        *,
        weight_offset: int,
        act_offset: int,
    ) -> None:
        if epochs == 0:
            return
        scale_ids = {id(t) for q in (*wqs, *aqs) for t in (q.alpha, q.beta)}
        all_wq_ids = {
            id(t) for _, layer in quant_layers(model) for t in layer.weight_quantizer.parameters()
        }
        all_aq_ids = {id(t) for q in _act_quantizers(model) for t in q.parameters()}
        if wqs:  # phases 1 and 3: the whole network trains
            frozen_bn: set[int] = set()
            network = [t for t in model.parameters() if id(t) not in all_wq_ids | all_aq_ids]
        else:  # phase 2: activation quantizers only
            network = []
            frozen_bn = {id(t) for m in model.modules() if _is_bn(m) for t in m.parameters()}
        latent = {id(layer.weight) for _, layer in quant_layers(model)}
        trainable = {id(t) for t in network} | scale_ids
        saved = {id(t): t.requires_grad for t in model.parameters()}
        for t in model.parameters():
            t.requires_grad_(id(t) in trainable and id(t) not in frozen_bn)
        for wq in wqs:
            wq.leaf = True
        groups = [{"params": network, "weight_decay": p.weight_decay}]
        scales = [t for q in (*wqs, *aqs) for t in (q.alpha, q.beta)]
        groups.append({"params": scales, "weight_decay": 0.0, "lr": p.lr * p.scale_lr_mult})
        act_scales = [t for q in aqs for t in (q.alpha, q.beta)]
        optimizer = ClippedChainSGD(
            [g for g in groups if g["params"]],
            lr=p.lr,
            momentum=p.momentum,
            weight_quantizers=wqs,
            clip_params=[t for t in network if id(t) not in latent] + act_scales,
            max_norm=p.max_grad_norm,
        )
        schedule = TemperatureSchedule(
            optimizer,
            p.milestones,
            p.lr_gamma,
            [(q, weight_offset, p.t_cap) for q in wqs] + [(q, act_offset, None) for q in aqs],
            p.t0,
        )
        for aq in aqs:
            aq.passthrough = False
        try:
            train(
                model,
                train_loader,
                epochs=epochs,
                optimizer=optimizer,
                ctx=ctx,
                scheduler=schedule,
                val_loader=val_loader,
                stage=stage,
            )
        finally:
            for t in model.parameters():
                t.requires_grad_(saved[id(t)])
            for wq in wqs:
                wq.leaf = False
                wq.take_pending()

    @staticmethod
    @torch.no_grad()
    def _calibrate(
        model: nn.Module,
        aqs: list[QNetsActQuantizer],
        loader: Any,
        p: QNetsParams,
        ctx: RunContext,
    ) -> None:
        """One eval pass (weights hard, activations float) over calib_samples images (§11)."""
        ctx.report("calibrate", 0.0)
        seen: dict[int, list[Tensor]] = {id(q): [] for q in aqs}

        def record(q: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            seen[id(q)].append(inputs[0].detach().flatten().cpu())

        hooks = [q.register_forward_pre_hook(record) for q in aqs]
        was_training = model.training
        model.eval()
        for q in aqs:
            q.passthrough = True
        count = 0
        try:
            for x, _ in loader:
                ctx.check_cancelled()
                model(x.to(ctx.device))
                count += len(x)
                if count >= p.calib_samples:
                    break
        finally:
            for h in hooks:
                h.remove()
            model.train(was_training)
        gen = ctx.generator(1)
        for i, q in enumerate(aqs):
            values = torch.cat(seen[id(q)])  # (M,)
            if values.numel() > 1_000_000:  # subsample for k-means (§11)
                values = values[torch.randperm(values.numel(), generator=gen)[:1_000_000]]
            q.init_from_samples(
                values,
                trim=p.act_trim,
                legacy_fork=p.legacy_fork_act_beta,
                restarts=p.kmeans_restarts,
                seed=ctx.seed + i,
            )
            ctx.report("calibrate", (i + 1) / len(aqs))
