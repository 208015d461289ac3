# ruff: noqa: RUF001, RUF002, RUF003  (the spec's notation: α, ρ, λ, −)
"""L-DNQ: layer-wise quantization from a small slice of the training data.

Paper: Chen, Wang, Pan, "Deep Neural Network Quantization via Layer-Wise Optimization using
Limited Training Data", AAAI 2019, pp. 3329-3336 (doi 10.1609/aaai.v33i01.33013329).
Official code: github.com/csyhhu/L-DNQ at 309400415e596cba49760de8bc13be8831d0f713.
Specification: ../shared/methods/l-dnq.md (the § numbers below are its sections).

The weight layers are quantized one at a time, in network order, first and last included (§5).
For each layer: the layer Hessian H from the partly quantized network's inputs (§3.3), an ADMM
solve of min tr((Ŵ − W)ᵀ H (Ŵ − W)) over Ŵ ∈ α·{0, ±1, ±2, ±4, …} with one α per layer (§4),
then the "cascade" update: SGD on the data subset so the partly quantized network's logits match
the float network's by MSE, training only what is not yet quantized (§6).

``kbits`` is the NUMBER OF LEVELS K ∈ {3, 5, 7, 9, 11}, not a bit count (§2.1): K = 3 is ternary.
Codes are stored at ⌈log₂K⌉ bits. The exported contract is a ``levels`` codebook, one shared row
per layer holding the K values α·m (m ascending), and codes = index into that row.

Where this port and the official code differ (default first):

- Hessian layout (B1): default ``hessian_layout="consistent"`` (the conv's own unfold, rows
  (c, i, j), matching the weight rows: the paper's objective). ``"tf_permuted"`` rebuilds the
  official quadratic form: TensorFlow "SAME" patches in (i, j, c) order, mis-indexed against the
  weight rows for every k > 1, C > 1 conv. The one place where the default is not the code's.
- Ties (B2): default ``legacy_ties=False``, nearest level with ties toward zero (as the issue
  asks). ``legacy_ties=True`` is the official quirk: for K = 5, 7, 9 a value exactly on an inner
  boundary (1.5α, 3α, 6α) gets code 0. The spec's §13 table suggests True; only exact ties
  differ, which float weights essentially never hit.
- ρ (D2, B11): ρ = rho_factor·H[0,0] (official); ``rho_mode="mean_diag"`` uses the mean of
  diag H (not from the paper). Both are floored at 1e-8·mean(diag H) so a dead first input
  feature cannot make H + ρI singular; a singular system falls back to a pseudo-inverse, as the
  official code falls back to least squares.
- NaN α (B10): a projection step whose codes are all zero stops the alternation instead of
  producing NaN (the official code survives the NaN by accident, with the same result).
- Subset (B7): seeded (``subset_seed``) through ``quantcore.data.subset``; it keeps
  round(ratio·N) images (the official code rounds down), class-balanced as an option.
- Multi-GPU Hessian (B9): every sample of every batch counts.
- First/last flag (B6): a real boolean. Skipped layers stay float and train in every cascade.
- BN in the cascade (B5): every BatchNorm trains, except shortcut BNs (a path component named
  ``downsample`` or ``shortcut``) placed before the current layer, which reproduces the official
  name rule ("bn" in the name, or after the layer) on the zoo's ResNets; ``train_all_bn`` trains
  all of them.
- Cascade length (P5): the official plateau rule plus a cap ``cascade_max_epochs``; the epochs
  each layer used are recorded in :attr:`LDNQ.layer_records`.
- Batches: both loaders drop the last partial batch (official) unless the subset is smaller
  than one batch, which then forms a single batch.
- The Hessian pass and the cascade both read the train split as the caller loaded it
  (augmented when the bundle augments, as the official loaders are); the Hessian pass runs the
  network in eval mode (official).
- Cascade targets: the official code runs the float network on every cascade batch. Where its
  logits cannot change between steps (the subset is read without augmentation, the teacher in
  its mode has no BatchNorm or dropout in training mode), they are computed once for the whole
  subset and looked up (``cascade_cache_targets``, on by default; equal up to the float
  rounding of a different batch composition), and the float copy is released. On LeNet5 this
  takes about a third off each cascade step (40 to 26 ms on the 2-core CPU). ResNets' teacher
  runs BatchNorm in training mode (official), so they keep the per-step forward.
- Frozen prefix: the official code runs the whole network at every cascade step. Where the
  front of the partly quantized network trains nothing and depends on its input alone (no
  BatchNorm or dropout in training mode, nothing random; in LeNet5 everything up to the
  first trainable parameter), its output on the subset is computed once per layer and the
  steps run the rest on it (``cascade_cache_prefix``, on by default; equal up to float
  rounding, the same batches and stop decisions). It needs a subset without augmentation, and
  the cache may take only what a training step of the whole network needs beyond one of the
  rest (:func:`prefix_budget`), so the peak stays within the memory estimate; otherwise the
  whole network runs. The layer just quantized trains its bias only (§6), so the front also
  takes that layer's product without the bias, and a conv's max pooling after it
  (max(y + b) = max(y) + b); the rest adds the bias first (the same function up to float
  rounding, the same gradient for the bias). On LeNet5 every layer's cascade then runs only
  what follows its own pooling. ResNets gain nothing: every BatchNorm trains, so their front
  ends at the first conv and does not fit that budget. Together with a frozen weight being
  rounded once (:class:`PowerOfTwoLevels`) and channels-last cached maps on the CPU
  (:func:`subset_outputs`), this takes a LeNet5 kbits-3 run at the official settings from
  about six float training epochs to under two on a 2-core CPU (docs/methods/l_dnq.md).
- Not logged: the official test-set evaluation after every layer (logging only there).
- Precision: H and ADMM run in float64; the stored α is float32 and the layer's latent weight
  becomes α₃₂·m exactly, so rounding it again at α gives the same codes.
- Storage: the ``levels`` codebook holds the K values α·m (K ≤ 11 floats per layer) where the
  paper stores the single α; codes take ⌈log₂K⌉ bits as in §9.

The cascade is its own loop, not ``quantcore.training.train``: its loss compares two networks'
logits, and its stop rule can fire after the first step of an epoch.
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal, cast

import torch
from pydantic import Field
from torch import Tensor, fx, nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd
from torch.utils.data import DataLoader, Dataset

from quantcore.context import RunContext
from quantcore.data import DataBundle, repeatable, subset
from quantcore.errors import InvalidModel, NothingQuantized
from quantcore.layers import InputQuantizer, QuantAct, QuantConv2d, QuantLinear, WeightQuantizer
from quantcore.memory import FLOAT, Footprint, footprint, meta_train_step, training_parts
from quantcore.methods.base import Method, MethodParams
from quantcore.qweight import CodebookKind, Grouping, QuantizedWeight
from quantcore.surgery import find_layers, set_submodule

KBits = Literal[3, 5, 7, 9, 11]
WeightLayer = nn.Conv2d | nn.Linear
KBITS: tuple[int, ...] = (3, 5, 7, 9, 11)
# §2.2: boundaries between consecutive multipliers 0|1, 1|2, 2|4, 4|8, 8|16, in units of α.
_BOUNDARIES = (0.5, 1.5, 3.0, 6.0, 12.0)
_RHO_FLOOR = 1e-8  # ρ ≥ _RHO_FLOOR · mean(diag H) (B11)
_CHECKPOINT = "l_dnq"


# ---------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------


class LDNQParams(MethodParams):
    kbits: KBits = Field(
        3, description="Number of levels K (3 = ternary {0, ±α}); codes take ceil(log2 K) bits."
    )
    data_ratio: float = Field(
        0.01, gt=0, le=1, description="Share of the training set used (the paper: 1%)."
    )
    subset_seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the data subset.")
    class_balanced: bool = Field(False, description="Draw the subset class-balanced.")
    batch_size: int = Field(128, ge=1, le=4096, description="Cascade batch size.")
    hessian_batch_size: int = Field(2, ge=1, le=4096, description="Hessian-pass batch size.")
    hessian_num_batches: int = Field(
        101, ge=1, le=100_000, description="Batches summed into H (official: 101)."
    )
    hessian_divisor: float = Field(
        100.0, gt=0, le=1e9, description="H = sum of per-batch means / divisor (official: 100)."
    )
    hessian_layout: Literal["consistent", "tf_permuted"] = Field(
        "consistent",
        description="Patch order of conv Hessians: the conv's own unfold, or the official "
        "TensorFlow SAME (i, j, c) order, mis-indexed against the weights (spec B1). Linear "
        "layers are the same either way.",
    )
    proj_max_iter: int = Field(10, ge=1, le=1000, description="α/code alternations per projection.")
    proj_tol: float = Field(1e-3, ge=0, le=1, description="Absolute α change that stops them.")
    rho_factor: float = Field(1.0, gt=0, le=1e6, description="ρ = rho_factor · (H[0,0] or mean).")
    rho_mode: Literal["h00", "mean_diag"] = Field(
        "h00", description="ρ from H[0,0] (official) or the mean of diag H (not from the paper)."
    )
    admm_max_iter: int = Field(100, ge=1, le=100_000, description="ADMM iteration cap.")
    admm_tol: float = Field(
        1e-3, ge=0, le=1e6, description="Absolute H-error gain an iterate needs to be kept."
    )
    admm_patience: int = Field(3, ge=1, le=1000, description="Non-improving iterations to stop.")
    legacy_ties: bool = Field(
        False, description="Official tie quirk: exact inner-boundary values get code 0."
    )
    quantize_first_last: bool = Field(True, description="Quantize the first and last layers.")
    quantize_bias_jointly: bool = Field(
        True, description="Put a layer's bias into its ADMM problem as an extra row (same α)."
    )
    freeze_quantized_bias: bool = Field(
        False, description="Keep that bias on the grid; off: it is retrained in float (official)."
    )
    cascade: bool = Field(True, description="Run the cascade weight update after each layer.")
    cascade_lr: float = Field(1e-3, gt=0, le=10, description="Cascade SGD learning rate.")
    cascade_momentum: float = Field(0.9, ge=0, lt=1, description="Cascade SGD momentum.")
    cascade_weight_decay: float = Field(5e-4, ge=0, le=1, description="Cascade weight decay.")
    teacher_mode: Literal["train", "eval"] = Field(
        "train", description="Mode of the float network giving the targets (official: train)."
    )
    student_mode: Literal["train", "eval"] = Field(
        "train", description="Mode of the partly quantized network (official: train)."
    )
    cascade_check_every: int = Field(
        10, ge=1, le=100_000, description="Check the plateau rule at batches b with b % this == 0."
    )
    cascade_gap: float = Field(
        1e-4, ge=0, le=1e6, description="A cumulative-mean change below this is a plateau strike."
    )
    cascade_patience: int = Field(3, ge=1, le=1000, description="Strikes that stop the cascade.")
    cascade_max_epochs: int = Field(
        1000, ge=1, le=1_000_000, description="Safety cap on cascade epochs per layer."
    )
    train_all_bn: bool = Field(False, description="Train every BatchNorm, shortcut BNs included.")
    cascade_cache_targets: bool = Field(
        True,
        description="Compute the float network's logits on the subset once, not at every cascade "
        "step, where they cannot change (no augmentation, no BatchNorm or dropout in the "
        "teacher's mode) and fit in the teacher's memory, which they replace. Same targets up "
        "to float rounding.",
    )
    cascade_cache_prefix: bool = Field(
        True,
        description="Compute the frozen front of the partly quantized network (quantized layers "
        "and what lies between them, up to the first trainable or batch-dependent module; "
        "through the layer just quantized, without its trainable bias, where it fits) on the "
        "subset once per layer and train the rest on it, where the subset has no augmentation "
        "and the result fits in the memory a step of the rest leaves unused. Same outputs up to "
        "float rounding.",
    )


# Small-data preset (spec §13, not from the paper): LeNet-5 on Fashion-MNIST.
LENET5_FASHION_MNIST: dict[str, object] = {
    "kbits": 3,
    "data_ratio": 0.01,
    "cascade_max_epochs": 300,
}

# Time-bounded small-data preset (not from the paper or the spec): the same with each layer's
# cascade capped at 60 epochs, a departure from the official rule (no cap). Measured on
# Fashion-MNIST LeNet5 (docs/methods/l_dnq.md, "What a cap would do"): kbits 3 −2.54 pt in
# 0.91 float epochs against −2.67 in 3.34 uncapped; kbits 5, 7 and 9 within 1 float epoch
# (session 6's code; since the cached fronts take the bias split, the uncapped kbits 3 run
# takes 1.7-1.9 float epochs on a 2-core CPU too).
LENET5_FASHION_MNIST_FAST: dict[str, object] = {**LENET5_FASHION_MNIST, "cascade_max_epochs": 60}


# ---------------------------------------------------------------------------------------------
# The level set and its projection (§2)
# ---------------------------------------------------------------------------------------------


def _check_kbits(kbits: int) -> int:
    if kbits not in KBITS:
        raise NotImplementedError(f"kbits (number of levels) must be one of {KBITS}, got {kbits}")
    return (kbits - 1) // 2


def level_multipliers(kbits: int) -> list[int]:
    """The integer multipliers m of K levels α·m, ascending (§2.1): K = 7 → [-4, -2, -1, 0, …]."""
    n = _check_kbits(kbits)
    positive = [2**j for j in range(n)]
    return [-m for m in reversed(positive)] + [0] + positive


def code_bits(kbits: int) -> int:
    """Bits of a fixed-length code for K levels: ⌈log₂K⌉."""
    _check_kbits(kbits)
    return math.ceil(math.log2(kbits))


def _thresholds(v: Tensor, alpha: Tensor | float, kbits: int) -> Tensor:
    """The boundaries t·α of §2.2 in ``v``'s dtype, ``(n,)``."""
    n = _check_kbits(kbits)
    a = torch.as_tensor(alpha, dtype=v.dtype, device=v.device)
    # §2.2: compare |v| with t·α (never |v|/α with t) so exact ties fall as in the official code.
    return torch.tensor(_BOUNDARIES[:n], dtype=v.dtype, device=v.device) * a  # (n,)


def _magnitude_index(v: Tensor, alpha: Tensor | float, kbits: int, legacy_ties: bool) -> Tensor:
    """j ∈ 0..n per entry (j = 0: level 0; j ≥ 1: multiplier 2^(j-1)), in ``v``'s dtype."""
    thresholds = _thresholds(v, alpha, kbits)  # (n,)
    mag = v.abs()  # (...)
    j = torch.zeros_like(v)  # (...)
    for t in thresholds:  # n ≤ 5 boundaries, each one elementwise pass
        j += mag > t  # |v| > t·α moves one level up: a tie stays on the smaller magnitude
    if legacy_ties and kbits in (5, 7, 9):
        # §2.3: strict comparisons on both sides leave inner-boundary values in no interval → 0.
        for t in thresholds[1:]:
            j = torch.where(mag == t, 0.0, j)
    return j


def level_codes(
    v: Tensor, alpha: Tensor | float, kbits: int, *, legacy_ties: bool = False
) -> Tensor:
    """The integer multiplier m of the level α·m each entry of ``v`` rounds to (§2.2).

    Returned in ``v``'s dtype (exact small integers), so it multiplies α directly.
    """
    j = _magnitude_index(v, alpha, kbits, legacy_ties)  # (...)
    table = torch.tensor([0.0, 1.0, 2.0, 4.0, 8.0, 16.0], dtype=v.dtype, device=v.device)
    mag = table[j.long()]  # (...) |m|
    return torch.where(v < 0, -mag, mag)  # (...)


def level_codes_reference(
    v: Tensor, alpha: float, kbits: int, *, legacy_ties: bool = False
) -> Tensor:
    """Loop reference of :func:`level_codes`: the official interval tests, one value at a time."""
    n = _check_kbits(kbits)
    mults = [0] + [2**j for j in range(n)]
    out = []
    for x in v.double().reshape(-1).tolist():
        a, code = abs(x), 0
        for k in range(1, n + 1):
            lower = _BOUNDARIES[k - 1] * alpha
            upper = _BOUNDARIES[k] * alpha if k < n else math.inf
            inside = (lower < a < upper) if legacy_ties and kbits != 11 else (lower < a <= upper)
            if inside:
                code = mults[k]
        out.append(int(math.copysign(code, x)) if code else 0)
    return torch.tensor(out, dtype=torch.long).reshape(v.shape)


@dataclass(frozen=True)
class Projection:
    """Result of one projection (§2.4): ``alpha`` (0-d) and integer multipliers ``codes``."""

    alpha: Tensor
    codes: Tensor
    error: float
    alphas: tuple[float, ...]  # α of each candidate: α₀, then one per alternation
    errors: tuple[float, ...]  # ‖V − α·Q‖² of each candidate


def project_levels(
    v: Tensor,
    alpha0: Tensor | float,
    kbits: int,
    *,
    max_iter: int = 10,
    tol: float = 1e-3,
    legacy_ties: bool = False,
) -> Projection:
    """Project ``v`` on α·levels by the §2.4 alternation, always started from ``alpha0``.

    Candidates: α₀ with its codes, then after each step the refitted α = ⟨V, Q⟩/⟨Q, Q⟩ paired
    with the codes Q of the previous α. Stops once α moves by less than ``tol`` (absolute) or
    after ``max_iter`` steps; returns the first candidate of least ‖V − α·Q‖².
    """
    alpha = torch.as_tensor(alpha0, dtype=v.dtype, device=v.device)
    q = level_codes(v, alpha, kbits, legacy_ties=legacy_ties)  # (...)
    best_err = float(((v - alpha * q) ** 2).sum())
    best_alpha, best_q = alpha, q
    alphas, errors = [float(alpha)], [best_err]
    last = float(alpha)
    for _ in range(max_iter):
        q = level_codes(v, alpha, kbits, legacy_ties=legacy_ties)  # (...)
        qq = (q * q).sum()
        if float(qq) == 0.0:  # B10: all codes 0, α would be NaN; no candidate
            break
        alpha = (v * q).sum() / qq  # Lloyd step: least-squares α for these codes
        err = float(((v - alpha * q) ** 2).sum())
        alphas.append(float(alpha))
        errors.append(err)
        if err < best_err:
            best_err, best_alpha, best_q = err, alpha, q
        if abs(last - float(alpha)) < tol:
            break
        last = float(alpha)
    return Projection(best_alpha, best_q.long(), best_err, tuple(alphas), tuple(errors))


# ---------------------------------------------------------------------------------------------
# Layer matrices and the Hessian (§3)
# ---------------------------------------------------------------------------------------------


def unfold_weight(layer: WeightLayer, *, bias_row: bool) -> Tensor:
    """The layer's weight as [fan_in (+1 bias row), out] (§3.2); row c·kh·kw + i·kw + j."""
    w = layer.weight.detach()
    mat = w.reshape(w.shape[0], -1).T  # (fan_in, O)
    if bias_row and layer.bias is not None:
        mat = torch.cat([mat, layer.bias.detach().unsqueeze(0)], 0)  # (fan_in + 1, O)
    return mat


def _check_conv(layer: nn.Conv2d) -> None:
    if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        raise InvalidModel(
            "L-DNQ builds layer Hessians for ungrouped, zero-padded convs with numeric padding; "
            f"{layer} is not one",
            {"groups": layer.groups, "padding": str(layer.padding)},
        )


def _tf_same_pad(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) for one spatial axis."""
    out = -(-size // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


def layer_patches(x: Tensor, layer: WeightLayer, *, layout: str, bias_row: bool) -> Tensor:
    """The rows p whose outer products make H: ``(P, D)``, one per sample (and conv position)."""
    if isinstance(layer, nn.Conv2d):
        _check_conv(layer)
        k, s, d = layer.kernel_size, layer.stride, layer.dilation
        if layout == "consistent":
            pad = cast(tuple[int, int], layer.padding)  # numeric: checked above
            cols = F.unfold(x, k, dilation=d, padding=pad, stride=s)  # (N, C·kh·kw, L)
            rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])  # (N·L, C·kh·kw)
        else:
            top, bottom = _tf_same_pad(x.shape[2], k[0], s[0], d[0])
            left, right = _tf_same_pad(x.shape[3], k[1], s[1], d[1])
            xp = F.pad(x, (left, right, top, bottom))  # (N, C, H', W')
            cols = F.unfold(xp, k, dilation=d, stride=s)  # (N, C·kh·kw, L), rows (c, i, j)
            n, c, length = x.shape[0], x.shape[1], cols.shape[2]
            cols = cols.reshape(n, c, k[0], k[1], length)  # (N, C, kh, kw, L)
            rows = cols.permute(0, 4, 2, 3, 1).reshape(n * length, -1)  # (N·L, kh·kw·C): (i,j,c)
    else:
        rows = x.reshape(-1, x.shape[-1])  # (N·…, in)
    if bias_row:
        rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], 1)  # (P, D + 1)
    return rows


def batch_hessian(x: Tensor, layer: WeightLayer, *, layout: str, bias_row: bool) -> Tensor:
    """One batch's mean of p pᵀ over its patches (§3.3), float64 ``(D, D)``."""
    p = layer_patches(x.double(), layer, layout=layout, bias_row=bias_row)  # (P, D)
    return p.T @ p / p.shape[0]  # (D, D)


def accumulate_hessian(hessians: Iterable[Tensor], *, num_batches: int, divisor: float) -> Tensor:
    """H = (h_0 + … + h_{num_batches−1}) / divisor (§3.3: officially 101 batches over 100)."""
    total: Tensor | None = None
    for i, h in enumerate(hessians):
        if i >= num_batches:
            break
        total = h if total is None else total + h
    if total is None:
        raise ValueError("no batch reached the layer: the Hessian is empty")
    return total / divisor


class _StopForward(Exception):
    """Raised by the Hessian hook so the forward pass stops at the layer it needs."""


def collect_hessian(
    model: nn.Module,
    layer: WeightLayer,
    batches: Iterable[Tensor],
    *,
    num_batches: int,
    divisor: float,
    layout: str,
    bias_row: bool,
) -> Tensor:
    """The layer Hessian of ``layer`` from ``model`` run in eval mode on ``batches`` (§3.3)."""
    found: list[Tensor] = []

    def hook(_module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        found.append(batch_hessian(inputs[0], layer, layout=layout, bias_row=bias_row))
        raise _StopForward

    def per_batch() -> Iterator[Tensor]:
        for x in batches:
            try:
                model(x)
            except _StopForward:
                pass
            if found:
                yield found.pop()

    was_training = model.training
    model.eval()
    handle = layer.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            return accumulate_hessian(per_batch(), num_batches=num_batches, divisor=divisor)
    finally:
        handle.remove()
        model.train(was_training)


# ---------------------------------------------------------------------------------------------
# The per-layer ADMM solver (§4)
# ---------------------------------------------------------------------------------------------


def layer_error(delta: Tensor, hessian: Tensor) -> Tensor:
    """tr(Δᵀ H Δ), no ½ (D4); ``delta`` (D, O), ``hessian`` (D, D)."""
    return (delta * (hessian @ delta)).sum()


@dataclass(frozen=True)
class AdmmStep:
    """One ADMM iteration, for tests and diagnostics."""

    w: Tensor  # proximal solution
    v: Tensor  # W + λ_prev, the projection's input
    g: Tensor  # projection output α·Q
    dual: Tensor  # λ after the update
    alpha: float
    prox_error: float
    proj_error: float
    improved: bool


@dataclass(frozen=True)
class AdmmResult:
    alpha: Tensor  # 0-d, the α of the best iterate
    codes: Tensor  # int64 multipliers, W0's shape
    error: float  # tr(ΔᵀHΔ) of the best iterate
    initial_error: float  # of plain rounding at α₀
    alpha0: float
    rho: float
    iterations: int
    steps: tuple[AdmmStep, ...]  # filled when record=True


def admm_quantize(
    w0: Tensor,
    hessian: Tensor,
    kbits: int,
    *,
    rho_factor: float = 1.0,
    rho_mode: str = "h00",
    max_iter: int = 100,
    tol: float = 1e-3,
    patience: int = 3,
    proj_max_iter: int = 10,
    proj_tol: float = 1e-3,
    legacy_ties: bool = False,
    record: bool = False,
) -> AdmmResult:
    """min tr((G − W₀)ᵀ H (G − W₀)) over G on α·levels by ADMM (§4), in ``w0``'s dtype.

    ``w0`` (D, O) in the layout of §3.2, ``hessian`` (D, D). Proximal step (H + ρI) W =
    H W₀ + ρ(G − λ) through one factorisation, projection of W + λ started at α₀ = mean|W₀|,
    dual update λ += W − G; an iterate is kept only if it beats the best by more than ``tol``;
    ``patience`` non-kept iterations in a row stop the run.
    """
    h = hessian.to(w0.dtype)  # (D, D)
    alpha0 = w0.abs().mean()
    q0 = level_codes(w0, alpha0, kbits, legacy_ties=legacy_ties)  # (D, O)
    g = alpha0 * q0.to(w0.dtype)  # (D, O)
    best_err = float(layer_error(g - w0, h))
    best_alpha, best_q = alpha0, q0
    diag = h.diagonal()  # (D,)
    base = h[0, 0] if rho_mode == "h00" else diag.mean()
    rho = max(rho_factor * float(base), _RHO_FLOOR * float(diag.mean()))
    a = h.clone()  # (D, D): H + ρI, without a (D, D) identity
    a.diagonal().add_(rho)
    chol, info = torch.linalg.cholesky_ex(a)
    pinv = torch.linalg.pinv(a) if int(info) != 0 else None  # B11 fallback (official: lstsq)
    b1 = h @ w0  # (D, O)
    dual = torch.zeros_like(w0)  # (D, O)
    initial_err, strikes, steps, iterations = best_err, 0, [], 0
    for _ in range(max_iter):
        iterations += 1
        rhs = b1 + rho * (g - dual)  # (D, O)
        w = torch.cholesky_solve(rhs, chol) if pinv is None else pinv @ rhs  # (D, O)
        v = w + dual  # (D, O)
        proj = project_levels(
            v, alpha0, kbits, max_iter=proj_max_iter, tol=proj_tol, legacy_ties=legacy_ties
        )
        g = proj.alpha * proj.codes.to(w0.dtype)  # (D, O)
        err = float(layer_error(g - w0, h))
        dual = dual + w - g  # (D, O)
        improved = err < best_err and abs(best_err - err) > tol
        if improved:
            best_err, best_alpha, best_q, strikes = err, proj.alpha, proj.codes, 0
        else:
            strikes += 1
        if record:
            prox = float(layer_error(w - w0, h))
            steps.append(AdmmStep(w, v, g, dual, float(proj.alpha), prox, err, improved))
        if strikes >= patience:
            break
    return AdmmResult(
        best_alpha,
        best_q.long(),
        best_err,
        initial_err,
        float(alpha0),
        rho,
        iterations,
        tuple(steps),
    )


def admm_bytes(rows: int, outputs: int) -> int:
    """Tensor peak of one layer's ADMM solve, its float64 (D, O) weight and (D, D) Hessian
    included: 16 D·O + 4 D² doubles (the iterates, the dual, the projection's temporaries;
    H, H + ρI, its Cholesky factor and the factorisation's copy). Measured with
    ``TensorPeakMeter`` on (D, O) from (28, 16) to (2305, 256), tall ones to (1601, 100):
    0.95 to 1.00 of this bound."""
    return (16 * rows * outputs + 4 * rows * rows) * 8


# ---------------------------------------------------------------------------------------------
# The weight quantizer: α · levels, exported as a levels codebook
# ---------------------------------------------------------------------------------------------


class PowerOfTwoLevels(WeightQuantizer):
    """Rounds a weight to α·{0, ±1, ±2, …} (K levels, one α per layer) with the §2.2 rule.

    L-DNQ writes α·Q into the latent weight and freezes it, so rounding at the stored α gives Q
    back exactly. Export: codes (1, numel) = index into the ascending levels, codebook (1, K) =
    α·m, ⌈log₂K⌉ bits. Straight-through gradient in training (the weight is frozen anyway).

    A weight that needs no gradient is rounded once and the result reused until the weight or
    α changes (same tensor objects, same in-place version counters): every cascade step runs
    the forward of every layer already quantized, and rounding them again took about a tenth of
    a LeNet5 cascade step.
    """

    alpha: Tensor  # () float32 buffer

    def __init__(self, kbits: int, alpha: float = 0.0, *, legacy_ties: bool = False) -> None:
        super().__init__()
        self.kbits = kbits
        self.legacy_ties = legacy_ties
        self.register_buffer("alpha", torch.tensor(float(alpha), dtype=torch.float32))
        self._memo: tuple[tuple[object, ...], Tensor, Tensor, Tensor] | None = None

    def export(self, w: Tensor) -> QuantizedWeight:
        shape = tuple(w.shape)
        grouping = Grouping.per_tensor(shape)
        alpha = self.alpha.to(w.device)
        flat = grouping.split(w.detach().float())  # (1, numel)
        j = _magnitude_index(flat, alpha, self.kbits, self.legacy_ties)  # (1, numel) in 0..n
        index = torch.where(flat < 0, -j, j)  # (1, numel) signed, in -n..n
        n = (self.kbits - 1) // 2
        mults = torch.tensor(level_multipliers(self.kbits), dtype=torch.float32, device=w.device)
        return QuantizedWeight(
            shape=shape,
            grouping=grouping,
            codes=(index + n).to(torch.uint8),  # (1, numel) index into the ascending levels
            bits=torch.full((1,), code_bits(self.kbits), dtype=torch.uint8, device=w.device),
            codebook=(alpha * mults).unsqueeze(0),  # (1, K)
            kind=CodebookKind.LEVELS,
        )

    def _memo_key(self, w: Tensor) -> tuple[object, ...]:
        a = self.alpha
        return (w.data_ptr(), w.device, w.dtype, w.shape, w._version, a.data_ptr(), a._version)

    def forward(self, w: Tensor) -> Tensor:
        if w.requires_grad or torch.is_inference_mode_enabled():
            q = super().forward(w)
            return w + (q - w).detach()
        key = self._memo_key(w)
        if self._memo is not None and self._memo[0] == key:
            return self._memo[3]
        with torch.no_grad():
            q = super().forward(w)
            out = w + (q - w)  # the straight-through path's values, bit for bit
        # The memo holds w's and α's storage (detach shares it), so their addresses in the key
        # cannot be reused by other tensors while it lives.
        self._memo = (key, w.detach(), self.alpha.detach(), out)
        return out

    def extra_repr(self) -> str:
        return f"kbits={self.kbits}, alpha={float(self.alpha):.6g}"


# ---------------------------------------------------------------------------------------------
# The network-level procedure (§5-§7)
# ---------------------------------------------------------------------------------------------


def _is_shortcut_bn(name: str) -> bool:
    return any(part in ("downsample", "shortcut") for part in name.split("."))


def cascade_trainable(
    model: nn.Module,
    layer_name: str,
    *,
    float_layers: Iterable[str] = (),
    train_all_bn: bool = False,
) -> list[str]:
    """Names of the parameters the cascade after ``layer_name`` trains (§6, B5).

    Everything after ``layer_name.weight`` in ``named_parameters`` order, every BatchNorm
    parameter (shortcut BNs before the layer only with ``train_all_bn``), and the parameters of
    the layers left in float (``float_layers``).
    """
    names = [n for n, _ in model.named_parameters()]
    start = names.index(f"{layer_name}.weight") + 1
    chosen = set(names[start:])
    for mod_name, module in model.named_modules():
        if isinstance(module, _BatchNorm) and (train_all_bn or not _is_shortcut_bn(mod_name)):
            chosen.update(f"{mod_name}.{p}" for p, _ in module.named_parameters(recurse=False))
    for mod_name in float_layers:
        module = model.get_submodule(mod_name)
        chosen.update(f"{mod_name}.{p}" for p, _ in module.named_parameters(recurse=False))
    return [n for n in names if n in chosen]


class PlateauRule:
    """The official cascade stop rule (§6) on the cumulative mean loss ``avg``.

    At a check, a strike when ``avg > last`` or ``|avg − last| < gap`` (the first check always
    strikes, last starting at 0), else the strikes reset; stop at ``patience`` strikes.
    """

    def __init__(self, gap: float = 1e-4, patience: int = 3) -> None:
        self.gap, self.patience = gap, patience
        self.last, self.strikes = 0.0, 0

    def check(self, avg: float) -> bool:
        if avg > self.last or abs(avg - self.last) < self.gap:
            self.strikes += 1
        else:
            self.strikes = 0
        self.last = avg
        return self.strikes >= self.patience


@dataclass(frozen=True)
class LayerRecord:
    """What one layer's step did: ADMM errors and iterations, α, cascade epochs and loss."""

    layer: str
    alpha: float
    admm_initial_error: float
    admm_error: float
    admm_iterations: int
    cascade_epochs: int
    cascade_steps: int
    cascade_loss: float


def _shuffled_loader(ds: Dataset, batch_size: int, seed: int, *, drop_last: bool) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=True, generator=gen, drop_last=drop_last)


Teacher = tuple[nn.Module | None, Tensor | None]  # the float network, or its cached logits


class _Indexed(Dataset[tuple[Tensor, int]]):
    """``dataset``'s images with their index in it in place of the label (for cached targets)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.dataset[index][0], index

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, int]]:
        fetch = getattr(self.dataset, "__getitems__", None)
        items = fetch(indices) if fetch else [self.dataset[i] for i in indices]
        return [(item[0], i) for item, i in zip(items, indices, strict=True)]


class _Positions(Dataset[int]):
    """The indices 0..n−1 (a loader over it shuffles exactly as one over n images)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return index


def subset_outputs(
    module: nn.Module, part: Dataset, batch_size: int, budget: int, ctx: RunContext
) -> Tensor | None:
    """``module``'s output (no gradient) on all of ``part``, ``(len(part), …)`` in subset
    order, or None when it is not one tensor or would take more than ``budget`` bytes.

    Feature maps on the CPU are stored channels-last: the convolutions that read them then run
    in that layout, faster there (LeNet5, conv1's cascade on its cached front: 22 → 18.5 ms per
    step on a 2-core CPU; not measured on CUDA, so left in the default layout there)."""
    n = len(part)  # type: ignore[arg-type]
    out: Tensor | None = None
    start = 0
    with torch.no_grad():
        for x, _ in DataLoader(part, batch_size=batch_size, shuffle=False):
            y = module(x.to(ctx.device))  # (B, …)
            if not isinstance(y, Tensor):
                return None
            if out is None:
                if n * y[0].numel() * y.element_size() > budget:
                    return None
                layout = (
                    torch.channels_last
                    if y.dim() == 4 and y.device.type == "cpu"
                    else torch.contiguous_format
                )
                out = torch.empty(
                    n, *y.shape[1:], dtype=y.dtype, device=y.device, memory_format=layout
                )
            out[start : start + len(y)] = y
            start += len(y)
    return out


def _batch_dependent(module: nn.Module) -> bool:
    """A module (or one inside it) whose output in its current mode depends on more than its
    input, or that changes its own state when called: BatchNorm or dropout in training mode,
    an activation quantizer in training mode."""
    return any(
        m.training and isinstance(m, (_BatchNorm, _DropoutNd, InputQuantizer, QuantAct))
        for m in module.modules()
    )


def fixed_targets(
    teacher: nn.Module, part: Dataset, mode: str, batch_size: int, ctx: RunContext
) -> Tensor | None:
    """The float network's logits on all of ``part`` ``(len(part), classes)``, in subset order,
    when the cascade would compute the same ones at every step (§6 reads them every step), else
    None.

    The same: ``part``'s images read the same every time (:func:`quantcore.data.repeatable`: no
    augmentation) and nothing in the teacher in ``mode`` is batch-dependent
    (:func:`_batch_dependent`: no batch statistics, no randomness), so a logit depends on its
    image only, up to the float rounding of a different batch composition. They must also take
    no more memory than the teacher's parameters and buffers, which the caller then releases:
    the run's peak stays within the memory estimate, which counts the teacher.
    """
    teacher.train(mode == "train")
    if not repeatable(part) or _batch_dependent(teacher):
        return None
    budget = sum(t.numel() * t.element_size() for t in (*teacher.parameters(), *teacher.buffers()))
    return subset_outputs(teacher, part, batch_size, budget, ctx)  # (N, classes)


# Calls whose result is random: never part of a cached prefix.
_RANDOM_FUNCTIONS: frozenset[object] = frozenset(
    {
        F.dropout,
        F.dropout1d,
        F.dropout2d,
        F.dropout3d,
        F.alpha_dropout,
        F.feature_alpha_dropout,
        torch.dropout,
        torch.bernoulli,
        torch.normal,
        torch.multinomial,
        torch.rand,
        torch.rand_like,
        torch.randn,
        torch.randn_like,
        torch.randint,
        torch.randint_like,
        torch.randperm,
    }
)
_RANDOM_METHODS = frozenset({"bernoulli", "bernoulli_", "normal_", "uniform_", "random_"})


class _LayerTracer(fx.Tracer):
    """Traces through containers; a module with parameters or buffers of its own (a layer, a
    quantized layer with its quantizers, a BatchNorm) stays one call."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        own = any(True for _ in m.parameters(recurse=False)) or any(
            True for _ in m.buffers(recurse=False)
        )
        return own or super().is_leaf_module(m, module_qualified_name)


_MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_MAX_POOL_FUNCTIONS = frozenset({F.max_pool1d, F.max_pool2d, F.max_pool3d})


def _without_bias(layer: nn.Module, *args: Any, **kwargs: Any) -> Tensor:
    """``layer``'s output with its bias left out: the same product, nothing added."""
    no_bias: dict[str, Any] = {"bias": None}
    return cast(Tensor, torch.func.functional_call(layer, no_bias, args, kwargs))


def _add_channel_bias(x: Tensor, bias: Tensor) -> Tensor:
    """A conv's bias added to its (pooled) output ``(N, C, …)``, one value per channel."""
    return x + bias.view(-1, *([1] * (x.dim() - 2)))


def _bias_only(module: nn.Module, training: set[int]) -> bool:
    """A conv or fully connected layer of which only the bias trains (§6: the layer just
    quantized), whose output depends on its input alone."""
    bias = getattr(module, "bias", None)
    return (
        isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear)
        and isinstance(bias, Tensor)
        and {id(p) for p in module.parameters() if id(p) in training} == {id(bias)}
        and not _batch_dependent(module)
    )


def _max_pool(node: fx.Node, model: nn.Module) -> bool:
    """A max pooling without indices: max(y + b) = max(y) + b for a per-channel b, exactly (the
    float rounding of ``+ b`` is monotone), and the gradient that reaches b is the same."""
    if node.op == "call_module":
        module = model.get_submodule(str(node.target))
        return isinstance(module, _MAX_POOLS) and not module.return_indices
    return (
        node.op == "call_function"
        and node.target in _MAX_POOL_FUNCTIONS
        and len(node.args) < 7  # return_indices is the 7th argument
        and not node.kwargs.get("return_indices", False)
    )


@dataclass(frozen=True)
class FrozenPrefix:
    """The partly quantized network cut in two: ``front`` (input → ``cut``) holds nothing the
    cascade trains and nothing whose output depends on more than its input; ``rest`` (the
    ``cut`` tensor → logits) is the remainder. Both call the network's own modules.

    ``bias``: the layer whose weight ends the front while its bias trains (the layer just
    quantized); the front computes it without the bias, through any max pooling after it, and
    the rest adds the bias first."""

    front: fx.GraphModule
    rest: fx.GraphModule
    cut: str  # the graph node the network is cut after
    bias: str | None = None

    def on(self, root: nn.Module) -> tuple[fx.GraphModule, fx.GraphModule]:
        """Front and rest calling the same-named modules of ``root`` (a meta copy, say)."""
        return (
            fx.GraphModule(root, copy.deepcopy(self.front.graph)),
            fx.GraphModule(root, copy.deepcopy(self.rest.graph)),
        )


def split_frozen_prefix(
    model: nn.Module, trainable: Iterable[Tensor], *, split_bias: bool = True
) -> FrozenPrefix | None:
    """Cut ``model`` after the latest node of its traced graph such that everything up to it
    involves no tensor of ``trainable`` and no batch-dependent or random operation, and only
    that node's output is read beyond it (one tensor crosses the cut). None when the graph
    cannot be traced or no such node follows the input.

    The front's output then depends on the input image alone and does not change while the
    cascade trains, so it can be computed once for the subset (§6 recomputes it at every step).
    Node order is the traced program order, so the front is always a prefix of the program.

    ``split_bias``: where the first trainable tensor is the bias of a conv or fully connected
    layer whose weight is frozen (the layer just quantized, §6), the front goes on through that
    layer's weight (and a conv's max pooling right after it); the rest adds the bias. The same
    function up to float rounding, and the same gradient for the bias.
    """
    training = {id(t) for t in trainable}
    try:
        graph = _LayerTracer().trace(model)
    except Exception:  # data-dependent control flow and the like: keep the plain forward
        return None
    nodes = list(graph.nodes)
    position = {node: i for i, node in enumerate(nodes)}
    if sum(node.op == "placeholder" for node in nodes) != 1:
        return None

    frozen: set[fx.Node] = set()

    def is_frozen(node: fx.Node) -> bool:
        """Nothing trainable, batch-dependent or random, and only frozen inputs."""
        if node.op == "placeholder":
            return True
        if node.op == "get_attr":
            value = operator.attrgetter(str(node.target))(model)
            return not (isinstance(value, Tensor) and id(value) in training)
        if not all(arg in frozen for arg in node.all_input_nodes):
            return False
        if node.op == "call_module":
            module = model.get_submodule(str(node.target))
            return not _batch_dependent(module) and all(
                id(p) not in training for p in module.parameters()
            )
        if node.op == "call_function":
            return node.target not in _RANDOM_FUNCTIONS
        return node.op != "call_method" or node.target not in _RANDOM_METHODS

    reach = 0  # the last position that reads a frozen node other than the candidate cut
    cut: int | None = None
    stop = len(nodes) - 1  # the first node that is not frozen (at the latest, the output)
    for i, node in enumerate(nodes[:-1]):
        if not is_frozen(node):
            stop = i
            break
        frozen.add(node)
        if node.op == "get_attr":  # an attribute may be read again behind the cut
            continue
        if node.op != "placeholder" and reach <= i:
            cut = i
        reach = max([reach, *(position[user] for user in node.users)])
    layer = nodes[stop]
    biased = (
        split_bias
        and layer.op == "call_module"
        and reach <= stop
        and all(arg in frozen for arg in layer.all_input_nodes)
        and _bias_only(model.get_submodule(str(layer.target)), training)
    )
    if biased:
        cut = stop
        conv = not isinstance(model.get_submodule(str(layer.target)), nn.Linear)
        while (
            conv and list(nodes[cut].users) == [nodes[cut + 1]] and _max_pool(nodes[cut + 1], model)
        ):
            cut += 1
    if cut is None:
        return None
    front_graph, rest_graph = fx.Graph(), fx.Graph()
    front: dict[fx.Node, fx.Node] = {}
    for node in nodes[: cut + 1]:
        if biased and node is layer:
            module = front_graph.get_attr(str(layer.target))
            args = fx.map_arg(layer.args, front.__getitem__)
            kwargs = fx.map_arg(layer.kwargs, front.__getitem__)
            front[node] = front_graph.call_function(_without_bias, (module, *args), kwargs)
        else:
            front[node] = front_graph.node_copy(node, front.__getitem__)
    front_graph.output(front[nodes[cut]])
    entry = rest_graph.placeholder("cut")
    if biased:
        bias = rest_graph.get_attr(f"{layer.target}.bias")
        add = _add_channel_bias if conv else operator.add
        entry = rest_graph.call_function(add, (entry, bias))
    rest: dict[fx.Node, fx.Node] = {nodes[cut]: entry}

    def arg(node: fx.Node) -> fx.Node:
        if node not in rest:  # an attribute the front read, read again behind the cut
            rest[node] = rest_graph.node_copy(node, arg)
        return rest[node]

    for node in nodes[cut + 1 :]:
        rest[node] = rest_graph.node_copy(node, arg)
    return FrozenPrefix(
        fx.GraphModule(model, front_graph),
        fx.GraphModule(model, rest_graph),
        nodes[cut].name,
        str(layer.target) if biased else None,
    )


def prefix_budget(split: FrozenPrefix, fp: Footprint, batch: int) -> int:
    """Bytes the front's cached output may take: the tensor peak of a float training step of
    the whole network (what the memory estimate counts for the cascade) less that of the rest
    alone fed a batch of cut values, both measured on ``fp``'s meta copy of the network.

    The cascade step then runs the rest, so its peak plus the cache stays within the estimate.
    """
    front, rest = split.on(fp.meta)
    with torch.no_grad():
        cut = front(torch.empty(1, *fp.input_shape, device="meta"))
    if not isinstance(cut, Tensor):
        return 0
    per_sample = cut[0].numel() * cut.element_size()
    spare = fp.train_step(batch) - meta_train_step(rest, tuple(cut.shape[1:]), batch)
    return max(0, spare - batch * per_sample)  # the step's batch of cut values is extra


def _swap_in(
    model: nn.Module, name: str, layer: WeightLayer, quantizer: PowerOfTwoLevels
) -> nn.Module:
    cls = QuantConv2d if isinstance(layer, nn.Conv2d) else QuantLinear
    wrapped = cls.from_float(layer, quantizer)  # type: ignore[arg-type]
    wrapped.weight.requires_grad_(False)
    set_submodule(model, name, wrapped)
    return wrapped


class LDNQ(Method):
    name = "l_dnq"
    title = "L-DNQ: layer-wise quantization with limited data"
    paper = "Chen, Wang, Pan, AAAI 2019 (doi 10.1609/aaai.v33i01.33013329)"
    summary = (
        "Quantizes layer by layer to α·{0, ±2^j} by ADMM on a layer Hessian from 1% of the data, "
        "retraining the rest of the network to match the float logits after each layer."
    )
    Params = LDNQParams
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "small data": LENET5_FASHION_MNIST,
        "small data, cascade cap 60": LENET5_FASHION_MNIST_FAST,
    }

    def __init__(self) -> None:
        self.layer_records: list[LayerRecord] = []
        self._twin: Footprint | None = None  # the float network on meta, for prefix budgets
        # layer → the graph node its cascade's cached front ended at (layers with a cache only)
        self.cached_fronts: dict[str, str] = {}

    @classmethod
    def memory_parts(cls, fp: Footprint, params: Any) -> dict[str, int]:
        """The student and the float teacher, then the larger of the cascade (a training step
        of the student at ``batch_size``) and the ADMM solve of the largest layer
        (:func:`admm_bytes`, with the bias row)."""
        p: LDNQParams = params
        model = (fp.params + fp.buffers) * FLOAT
        admm = max((admm_bytes(layer.fan_in + 1, layer.outputs) for layer in fp.layers), default=0)
        parts = {"student": model, "teacher": model}
        cascade = training_parts(fp, p.batch_size) if p.cascade else {}
        if admm > sum(cascade.values()):
            return {**parts, "ADMM": admm}
        return {**parts, **cascade}

    def quantize(
        self, model: nn.Module, data: DataBundle, params: LDNQParams, ctx: RunContext
    ) -> nn.Module:
        device = ctx.device
        part = subset(
            data.train, params.data_ratio, seed=params.subset_seed, balanced=params.class_balanced
        )
        self._twin = None
        if params.cascade and params.cascade_cache_prefix and repeatable(part):
            self._twin = footprint(model, (data.in_channels, *data.input_size))
        model.to(device)
        teacher = copy.deepcopy(model).requires_grad_(False)
        layers = cast(list[tuple[str, WeightLayer]], find_layers(model))
        chosen = layers if params.quantize_first_last else layers[1:-1]
        float_layers = [n for n, _ in layers if n not in {c for c, _ in chosen}]
        if not chosen:
            raise NothingQuantized(
                f"L-DNQ found no layer to quantize among {len(layers)} Conv2d/Linear layers",
                {"layers": [n for n, _ in layers]},
            )
        targets = None
        if params.cascade and params.cascade_cache_targets:
            targets = fixed_targets(teacher, part, params.teacher_mode, params.batch_size, ctx)
        cascade_teacher = None if targets is not None else teacher
        del teacher  # with the logits cached, nothing else holds the float copy
        self.layer_records = []
        self.cached_fronts = {}
        start = self._resume(model, chosen, params, ctx)
        n = len(chosen)
        for i in range(start, n):
            name, layer = chosen[i]
            ctx.check_cancelled()
            ctx.report("l_dnq", i / n, layer=i + 1, layers=n)
            record = self._quantize_layer(
                model, (cascade_teacher, targets), part, i, name, layer, float_layers, params, ctx
            )
            self.layer_records.append(record)
            ctx.report(
                "l_dnq",
                (i + 1) / n,
                layer=i + 1,
                layers=n,
                **{k: v for k, v in asdict(record).items() if k != "layer"},
            )
            ctx.save_checkpoint(
                _CHECKPOINT,
                {
                    "next_layer": i + 1,
                    "model": model.state_dict(),
                    "records": [asdict(r) for r in self.layer_records],
                },
            )
        return model.to(device).eval()

    def _resume(
        self,
        model: nn.Module,
        chosen: list[tuple[str, WeightLayer]],
        params: LDNQParams,
        ctx: RunContext,
    ) -> int:
        state = ctx.load_checkpoint(_CHECKPOINT)
        if state is None:
            return 0
        done = int(state["next_layer"])
        for name, layer in chosen[:done]:
            _swap_in(
                model, name, layer, PowerOfTwoLevels(params.kbits, legacy_ties=params.legacy_ties)
            )
        model.load_state_dict(state["model"])
        model.to(ctx.device)
        self.layer_records = [LayerRecord(**r) for r in state["records"]]
        return done

    def _quantize_layer(
        self,
        model: nn.Module,
        teacher: Teacher,
        part: Dataset,
        index: int,
        name: str,
        layer: WeightLayer,
        float_layers: list[str],
        params: LDNQParams,
        ctx: RunContext,
    ) -> LayerRecord:
        device = ctx.device
        bias_row = params.quantize_bias_jointly and layer.bias is not None
        # §3.3: the Hessian from the partly quantized network's inputs, eval mode.
        hess_loader = _shuffled_loader(
            part,
            params.hessian_batch_size,
            ctx.seed * 1_000_003 + 2 * index,
            drop_last=len(part) >= params.hessian_batch_size,  # type: ignore[arg-type]
        )
        hessian = collect_hessian(
            model,
            layer,
            (x.to(device) for x, _ in hess_loader),
            num_batches=params.hessian_num_batches,
            divisor=params.hessian_divisor,
            layout=params.hessian_layout,
            bias_row=bias_row,
        )
        # §4: ADMM on the current float weight (float64), result written back as α·Q.
        w0 = unfold_weight(layer, bias_row=bias_row).double()  # (D, O)
        result = admm_quantize(
            w0,
            hessian,
            params.kbits,
            rho_factor=params.rho_factor,
            rho_mode=params.rho_mode,
            max_iter=params.admm_max_iter,
            tol=params.admm_tol,
            patience=params.admm_patience,
            proj_max_iter=params.proj_max_iter,
            proj_tol=params.proj_tol,
            legacy_ties=params.legacy_ties,
        )
        alpha = result.alpha.float()  # the stored α: the grid is α32 · m exactly
        grid = alpha * result.codes.float()  # (D, O)
        fan_in = layer.weight[0].numel()
        with torch.no_grad():
            layer.weight.copy_(grid[:fan_in].T.reshape(layer.weight.shape))
            if bias_row:
                cast(Tensor, layer.bias).copy_(grid[fan_in])
        quantizer = PowerOfTwoLevels(params.kbits, float(alpha), legacy_ties=params.legacy_ties)
        wrapped = _swap_in(model, name, layer, quantizer.to(device))
        if bias_row and params.freeze_quantized_bias:
            wrapped.bias.requires_grad_(False)
        epochs, steps, loss = 0, 0, float("nan")
        if params.cascade:
            epochs, steps, loss = self._cascade(
                model, teacher, part, index, name, float_layers, params, ctx
            )
        return LayerRecord(
            name,
            float(alpha),
            result.initial_error,
            result.error,
            result.iterations,
            epochs,
            steps,
            loss,
        )

    def _front(
        self,
        model: nn.Module,
        trainable: Iterable[Tensor],
        part: Dataset,
        name: str,
        params: LDNQParams,
        ctx: RunContext,
    ) -> tuple[nn.Module, Tensor | None]:
        """What the cascade steps run and on what: the rest of the network and its frozen
        front's output on the subset ``(len(part), *cut)``, where that front exists and fits
        its budget; else the whole network and None (the steps read images)."""
        twin = self._twin
        if twin is None:
            return model, None
        for split_bias in (True, False):  # the longer front first, if it fits
            split = split_frozen_prefix(model, trainable, split_bias=split_bias)
            if split is None:
                break
            budget = prefix_budget(split, twin, params.batch_size)
            features = subset_outputs(split.front, part, params.batch_size, budget, ctx)
            if features is not None:
                self.cached_fronts[name] = split.cut
                return split.rest, features
            if split.bias is None:
                break
        return model, None

    def _cascade(
        self,
        model: nn.Module,
        teacher: Teacher,
        part: Dataset,
        index: int,
        name: str,
        float_layers: list[str],
        params: LDNQParams,
        ctx: RunContext,
    ) -> tuple[int, int, float]:
        """§6: SGD so the partly quantized logits match the float ones; (epochs, steps, loss).

        ``teacher``: the float network, or (None, its logits on ``part`` in subset order) from
        :func:`fixed_targets`; then each batch carries its subset indices to look them up. With
        a prefix budget, the frozen front of the network (:func:`split_frozen_prefix`) runs once
        on the subset and the steps train the rest on its cached output, looked up the same
        way."""
        wanted = set(
            cascade_trainable(
                model, name, float_layers=float_layers, train_all_bn=params.train_all_bn
            )
        )
        trainable = [p for n, p in model.named_parameters() if n in wanted and p.requires_grad]
        if not trainable:
            return 0, 0, float("nan")
        opt = torch.optim.SGD(
            trainable,
            lr=params.cascade_lr,
            momentum=params.cascade_momentum,
            weight_decay=params.cascade_weight_decay,
        )
        try:
            network, targets = teacher
            model.train(params.student_mode == "train")
            if network is not None:
                network.train(params.teacher_mode == "train")
            forward, features = self._front(model, trainable, part, name, params, ctx)
            # The batches: subset indices (for the caches), with the images where the network
            # or the teacher reads them; the same shuffled order either way (it depends on
            # len(part) only).
            n = len(part)  # type: ignore[arg-type]
            images = features is None or targets is None
            source: Dataset = _Indexed(part) if images else _Positions(n)
            loader = _shuffled_loader(
                source,
                params.batch_size,
                ctx.seed * 1_000_003 + 2 * index + 1,
                drop_last=n >= params.batch_size,
            )
            rule = PlateauRule(params.cascade_gap, params.cascade_patience)
            total, count, steps, avg = 0.0, 0, 0, float("nan")
            for epoch in range(params.cascade_max_epochs):
                for b, batch in enumerate(loader):
                    ctx.check_cancelled()
                    x, held = batch if images else (None, batch)  # held: subset indices
                    if x is not None:
                        x = x.to(ctx.device)
                    if targets is not None:
                        target = targets[held.to(targets.device)]  # (B, classes)
                    else:
                        assert network is not None
                        assert x is not None
                        with torch.no_grad():
                            target = network(x)  # (B, classes)
                    inputs = x if features is None else features[held.to(features.device)]
                    loss = F.mse_loss(forward(inputs), target)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    steps += 1
                    total, count = total + float(loss.detach()) * len(target), count + len(target)
                    avg = total / count
                    if b % params.cascade_check_every == 0 and rule.check(avg):
                        return epoch + 1, steps, avg
                ctx.report(
                    "l_dnq:cascade",
                    (epoch + 1) / params.cascade_max_epochs,
                    layer=index + 1,
                    cascade_epoch=epoch + 1,
                    cascade_loss=avg,
                )
            return params.cascade_max_epochs, steps, avg
        finally:
            model.eval()
