"""LQ-Nets: learned K-bit bases for weights and activations, refit by QEM every training step.

Paper: Zhang, Yang, Ye, Hua, "LQ-Nets: Learned Quantization for Highly Accurate and Compact Deep
Neural Networks", ECCV 2018 (arXiv:1807.10029). Official code: github.com/microsoft/LQ-Nets
(TensorFlow 1.x + tensorpack), ``learned_quantization.py`` at ``4f3ea9b`` (quantizer logic
unchanged since ``86b9b75``). Specification: ../shared/methods/lq-nets.md (cited as §N below).

Every quantized weight row (one output channel) has a basis v ∈ R^K and takes the nearest of the
2^K levels vᵀb, b ∈ {-1,+1}^K; every activation quantizer has one basis per layer with
b ∈ {0,1}^K (§2). Bases are not trained by gradient: each training step encodes the tensor with
the current basis, solves the KxK least-squares problem for the basis that best reconstructs it
with those codes (QEM, §3.2) and moves the stored basis toward it with a moving average (§3.3).
Gradients are straight-through: identity for weights, clipped above the top level for activations
(§5). First conv and last linear stay float (§6.1).

Where the paper, the official code and this file differ (§10), the default is the official code:

- D1 moving average: TF's zero-debiased ``assign_moving_average`` (``qem_debias=True``: after the
  first step the basis equals that step's solution). ``qem_debias=False`` is the plain
  0.9/0.1 average a "moving average" suggests.
- D2 solves: the weight solve has a 1e-4 ridge toward the old basis, the activation solve none
  (official). Extension, on by default: the activation update is skipped when BᵀB is singular or
  cond(BᵀB) > 1e6 (``act_singular_guard``), where TF would produce inf/NaN or an unstable
  solution; well-conditioned steps are untouched. ``qem_ridge_a > 0`` is the other extension.
- D3/D4 QEM runs inside the quantizer's forward in training mode, after the output was computed
  with the pre-update basis, once per forward (``LQ*Quantizer.qem_enabled`` turns it off, e.g.
  for a second forward in one step). Eval never updates.
- Q1 lowest code: the official threshold sweep starts every element at code index 0 (all -1 /
  all 0) while its value starts at s_0 (weights) or 0 (activations); with a negative basis entry
  the code of the lowest bucket then decodes to another level and QEM fits on it
  (``legacy_lowest_code=True``, default). ``False`` uses the code (and value) of the smallest
  level. The *exported* codes are always those of the chosen level (§8), so the artifact decodes
  to exactly the weight the layer computed with.
- Q2/Q3 ties: among equal levels the higher code index sorts first; a value exactly on a
  threshold takes the lower level (strict ``>``).
- P1 multi-GPU: single-device semantics (QEM on the whole batch).
- P4 ``basis_init="qem"`` (extension for fine-tuning a float model; official: the fan-out
  constants of §4): five encode/solve iterations on the initial weights and on one calibration
  batch for the activations.
- Schedules (§7): the scheduler steps once per epoch (the shared loop), so the ImageNet linear
  decay, per step in the official code, is applied per epoch here. Paper settings themselves
  could not be read (§0); the defaults are the README's ImageNet command.
- Placement (§6): first/last layer float; an activation quantizer on the input of every quantized
  layer. In LQ-Nets' pre-activation ResNet (§6.2) the projection shortcut of a stage's first block
  reads the same quantized tensor as the block's first conv: its input quantizer *follows* the
  conv's (same basis, no QEM of its own), giving the 16 activation quantizers of §11.1 (10).
  An activation quantizer that sees negative inputs (not post-ReLU) logs a warning once.
- Storage (§8): K bits per weight (code index, bit j = b_j) plus K float32 per output channel
  (codebook kind ``bases``); each activation quantizer's basis and EMA state travel as float
  state.
- W32 with quantized activations (float weights; part of the W x A grid this method accepts):
  the layers that would be quantized keep their float weight and get an input activation site
  (``quantcore.layers.QuantAct``, ``where="input"``) holding the same activation quantizer, so
  placement, the §6.2 shortcut sharing, QEM and the artifact are as with quantized weights.
  W32/A32 would quantize nothing: InvalidParams.

Computation (same results as the literal §2.2 procedure; tested against it):

- Sorting the 2^K levels is done by ranks from pairwise comparisons (the stable sort's order,
  ties included), so no sort operator is traced and the eval forward exports to ONNX.
- Training encodes with L-1 comparisons [x ≤ t_k] instead of a per-element search:
  A[l] = [rank = l] as 0/1 masks in column blocks of one reused buffer; the quantized value is
  ``valuesᵀA`` (one non-zero term per element: exactly the level), and QEM's BᵀB and Bᵀx come
  from the per-rank counts A·1 and sums A·x (O(L·K²) once they are known), never from an
  (n, K) code matrix. :func:`encode` (search-based, with code indices) serves export and tests.
  Sums are accumulated in float32 by matrix products, so QEM solutions agree with a literal
  float32 implementation to float rounding (the reference vectors: rtol 1e-5), not bit for bit.
- Where ``torch.compile`` works (:mod:`quantcore.fusion`: C++ on the CPU, Triton on CUDA; on by
  default, ``QUANTCORE_FUSE=0`` turns it off) the training sweep and the normal equations run
  as one compiled kernel instead (:func:`selection_sweep`: ``where`` chains and masked sums, one
  pass over the tensor): the same values bit for bit, the sums equal up to float rounding. Eval
  (and so a loaded artifact) stays op by op: inference never waits for a compiler. The levels
  are still ranked op by op, so every path quantizes to the same level values. On ResNet-20
  (CPU, 2 threads) this takes the W2A2 training step from 1.56x to 1.28x the float step.
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar, Literal, cast

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from quantcore import fusion
from quantcore.context import RunContext
from quantcore.data import DataBundle
from quantcore.errors import NothingQuantized
from quantcore.layers import InputQuantizer, QuantAct, WeightQuantizer
from quantcore.memory import FLOAT, Footprint, training_parts
from quantcore.methods.base import Method, MethodParams
from quantcore.qweight import CodebookKind, Grouping, QuantizedWeight, dequantize
from quantcore.surgery import add_activation_sites, find_layers, quantize_model, select_layers
from quantcore.training import seed_everything, train
from quantcore.zoo.preact_resnet import PreActBasicBlock

log = logging.getLogger(__name__)

W_INIT_SCALE = 0.6745  # §4: Φ⁻¹(0.75), the official constant
A_INIT_TOP = 1.349  # §4: 2 · 0.6745, the initial top activation level
QEM_INIT_ITERATIONS = 5  # §10 P4
SINGULAR_COND = 1e6  # §3.5 recommended guard
SWEEP_BLOCK = 1 << 18  # elements of the encoding sweep's mask buffer on CPU (1 MB: in cache)
SWEEP_BLOCK_ACCEL = 1 << 24  # on other devices (GPU): fewer, larger kernels

Schedule = Literal["imagenet_linear", "imagenet_step", "cifar10_step", "cosine"]


class LQNetsParams(MethodParams):
    """Defaults: the official ImageNet command (§7.1, §13). Small-data preset: SMALL_DATA_PRESET."""

    w_bits: Literal[1, 2, 3, 4, 32] = Field(
        2, description="K_w, bits per weight (basis size per output channel); 32 = float weights."
    )
    a_bits: Literal[2, 3, 4, 32] = Field(
        2, description="K_a, bits per activation (one basis per layer); 32 = float activations."
    )
    epochs: int = Field(64, ge=1, le=1000, description="Training epochs (ImageNet: 64).")
    batch_size: int = Field(256, ge=1, le=4096, description="Minibatch size (ImageNet: 256).")
    lr: float = Field(0.1, gt=0, le=10, description="Initial learning rate (ImageNet: 0.1).")
    lr_schedule: Schedule = Field(
        "imagenet_linear",
        description=(
            "imagenet_linear: linear decay lr → 1e-5 over the run; imagenet_step: x0.1 after "
            "epochs 30, 60, 85, 95, 105; cifar10_step: x0.1 after epochs 80, 160, 300; "
            "cosine: cosine decay to 0 (small-data preset). Stepped once per epoch."
        ),
    )
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    nesterov: bool = Field(True, description="Nesterov momentum (ImageNet script; CIFAR: off).")
    weight_decay: float = Field(
        5e-5, ge=0, le=1, description="L2 on conv/linear weights only (never bases, BN, biases)."
    )
    qem_momentum: float = Field(
        0.9, gt=0, lt=1, description="Decay of the basis moving average (new solution: 1 - it)."
    )
    qem_debias: bool = Field(
        True, description="Zero-debiased moving average as TF's (official); off: plain average."
    )
    qem_ridge_w: float = Field(
        1e-4, ge=0, le=1, description="Ridge toward the old basis in the weight solve (official)."
    )
    qem_ridge_a: float = Field(
        0.0, ge=0, le=1, description="Ridge in the activation solve (official: none)."
    )
    act_singular_guard: bool = Field(
        True, description="Skip an activation update whose BᵀB is singular (extension)."
    )
    basis_init: Literal["official", "qem"] = Field(
        "official",
        description="official: the fan-out constants of §4; qem: 5 encode/solve iterations on "
        "the float weights and one calibration batch (for fine-tuning).",
    )
    calibration_batch: int = Field(
        256, ge=1, le=4096, description="Images in the activation calibration batch (qem init)."
    )
    legacy_lowest_code: bool = Field(
        True, description="Official quirk: the lowest bucket gets code 0, not its level's code."
    )
    keep_first_last: bool = Field(
        True, description="Keep the first conv and the last linear layer in float (official)."
    )

    @model_validator(mode="after")
    def _quantizes_something(self) -> LQNetsParams:
        if self.w_bits == 32 and self.a_bits == 32:
            raise ValueError(
                "w_bits=32 with a_bits=32 quantizes nothing: choose w_bits in 1, 2, 3, 4 or "
                "a_bits in 2, 3, 4"
            )
        return self


# §13 small-data preset (LeNet-5 / Fashion-MNIST from a float model; not from the paper or code).
SMALL_DATA_PRESET: dict[str, Any] = {
    "epochs": 15,
    "batch_size": 128,
    "lr": 0.01,
    "lr_schedule": "cosine",
    "nesterov": True,
    "weight_decay": 5e-5,
    "basis_init": "qem",
    "calibration_batch": 256,
}
# §7.2 official CIFAR-10 VGG-Small script.
CIFAR10_PRESET: dict[str, Any] = {
    "epochs": 400,
    "batch_size": 100,
    "lr": 0.02,
    "lr_schedule": "cifar10_step",
    "nesterov": False,
    "weight_decay": 5e-4,
}


# ---------------------------------------------------------------------------------------------
# Math (§2-§4)
# ---------------------------------------------------------------------------------------------


def code_table(bits: int, signed: bool, device: torch.device | None = None) -> Tensor:
    """§2.1 E[i, j] = bit j of i, as ±1 (weights, ``signed``) or 0/1 (activations); (2^K, K)."""
    idx = torch.arange(2**bits, device=device).unsqueeze(-1)  # (L, 1)
    powers = 2 ** torch.arange(bits, device=device)  # (K,)
    table = torch.div(idx, powers, rounding_mode="floor").remainder(2).float()  # (L, K)
    return table * 2 - 1 if signed else table


def sorted_levels(
    basis: Tensor, signed: bool, table: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """§2.2 steps 1-3 for bases ``(G, K)``: sorted levels, sort ids ``(G, L)``, thresholds.

    Among equal levels the higher code index comes first (Q2). Thresholds are
    ½ s_k + ½ s_{k+1}, ``(G, L - 1)``. The sort is computed as ranks from pairwise comparisons
    (L ≤ 16): the order of a stable sort, with no sort operator, so it traces to ONNX.
    ``table``: :func:`code_table` of ``(K, signed)`` when the caller keeps one.
    """
    if table is None:
        table = code_table(basis.shape[-1], signed, basis.device)
    table = table.to(basis.dtype)  # (L, K)
    values = (basis.unsqueeze(-2) * table).sum(-1)  # (G, L): l_i = E[i]·v
    idx = torch.arange(values.shape[-1], device=basis.device)  # (L,)
    vi, vj = values.unsqueeze(-1), values.unsqueeze(-2)  # (G, L, 1), (G, 1, L)
    # rank_i = #{j: l_j < l_i} + #{j > i: l_j = l_i}: ties put the higher code index first
    before = (vj < vi) | ((vj == vi) & (idx > idx.unsqueeze(-1)))  # (G, L_i, L_j)
    at = before.sum(-1, keepdim=True) == idx  # (G, L_i, L_rank): code i sits at that rank
    levels = torch.where(at, vi, torch.zeros_like(vi)).sum(-2)  # (G, L), one term per rank
    codes = idx.unsqueeze(-1).expand_as(at)  # (G, L_i, L_rank)
    sort_id = torch.where(at, codes, torch.zeros_like(codes)).sum(-2)  # (G, L)
    thresholds = 0.5 * levels[..., :-1] + 0.5 * levels[..., 1:]  # (G, L-1)
    return levels, sort_id, thresholds


def rank_values(levels: Tensor, signed: bool, legacy_lowest_code: bool) -> Tensor:
    """The value each level rank encodes to ``(G, L)``: the sorted levels, except that the
    official activation sweep starts at value 0, not s_0 (§2.2 step 4, Q1)."""
    if legacy_lowest_code and not signed:
        return torch.cat([torch.zeros_like(levels[:, :1]), levels[:, 1:]], dim=1)
    return levels


def qem_code_rows(sort_id: Tensor, table: Tensor, legacy_lowest_code: bool) -> Tensor:
    """The row of ``table`` (:func:`code_table`) QEM uses for each level rank ``(G, L, K)``: the
    code of that level, except code 0 for the lowest bucket with ``legacy_lowest_code`` (Q1)."""
    rows = table[sort_id]  # (G, L, K)
    if legacy_lowest_code:
        rows[:, 0] = table[0]
    return rows


def encode(
    x: Tensor, basis: Tensor, signed: bool, legacy_lowest_code: bool = True
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """§2.2: quantize each row of ``x`` ``(G, n)`` with its basis ``(G, K)``.

    Returns ``(y, level_index, code_index, qem_codes)``: the quantized values ``(G, n)``, the rank
    of the chosen level ``(G, n)``, the code index of the chosen level ``(G, n)`` (what decodes
    to ``y``: the exported code) and the code table rows QEM uses per level rank ``(G, L, K)``
    (with ``legacy_lowest_code`` row 0 is code 0 (Q1); else the chosen levels' codes).
    """
    table = code_table(basis.shape[-1], signed, basis.device)  # (L, K)
    levels, sort_id, thresholds = sorted_levels(basis, signed, table)  # (G, L) ... (G, L-1)
    values = rank_values(levels, signed, legacy_lowest_code)  # (G, L)
    # Strict x > t_k counts the thresholds below x: the rank of the highest threshold exceeded.
    if x.shape[0] == 1:  # one shared basis (activations): the 1-D search
        level_index = torch.bucketize(x[0], thresholds[0], right=False).unsqueeze(0)  # (1, n)
        y = values[0][level_index]  # (1, n)
    else:
        level_index = torch.searchsorted(thresholds.contiguous(), x.contiguous(), right=False)
        y = values.gather(1, level_index)  # (G, n)
    code_index = sort_id.gather(1, level_index)  # (G, n)
    qem_codes = qem_code_rows(sort_id, table, legacy_lowest_code).to(x.dtype)
    return y, level_index, code_index, qem_codes


def level_sweep(
    x: Tensor, values: Tensor, thresholds: Tensor, statistics: bool = True
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """§2.2 step 5 without an index per element: each row of ``x`` ``(G, n)`` takes the value of
    its rank, ``values`` ``(G, L)``, the rank being the number of ``thresholds`` ``(G, L-1)`` that
    x exceeds strictly (a value on a threshold goes down, Q3): the rank :func:`encode` finds.

    With A[l] = [rank = l] (0/1 masks from the L-1 comparisons [x ≤ t_k]), y = valuesᵀA has one
    non-zero term per element, so it is exactly the level (no rounding). With ``statistics`` also
    returns the per-rank counts A·1 and sums A·x ``(G, L)``, which is all QEM needs
    (:func:`normal_equations_from_levels`). The columns go in blocks through reused
    ``(G, L, w)`` buffers of about ``SWEEP_BLOCK`` elements (CPU; ``SWEEP_BLOCK_ACCEL`` on other
    devices), so only ``y`` is as large as x. The op-by-op form; :func:`quantize_step` runs
    :func:`selection_sweep` compiled where it can.
    """
    g, n = x.shape
    big_l = values.shape[1]
    if torch.compiler.is_compiling():  # torch.export / ONNX: one block, functional ops
        below = (x.unsqueeze(1) <= thresholds.unsqueeze(-1)).to(x.dtype)  # (G, L-1, n)
        ones = torch.ones_like(below[:, :1])  # (G, 1, n)
        at = torch.cat([below, ones], 1) - torch.cat([torch.zeros_like(ones), below], 1)
        y = (values.to(x.dtype).unsqueeze(1) @ at).squeeze(1)  # (G, n)
        if not statistics:
            return y, None, None
        return y, at.sum(-1), (at @ x.unsqueeze(-1)).squeeze(-1)
    y = torch.empty_like(x)  # (G, n)
    size = SWEEP_BLOCK if x.device.type == "cpu" else SWEEP_BLOCK_ACCEL
    width = max(1, min(n, size // (g * big_l)))
    # steps[:, k] = [x ≤ t_{k-1}] with a row of zeros (t_{-1} = -inf) and ones (t_{L-1} = inf)
    steps = x.new_empty(g, big_l + 1, width)  # (G, L+1, w)
    steps[:, 0].zero_()
    steps[:, -1].fill_(1)
    work = x.new_empty(g, big_l, width)  # (G, L, w)
    vals = values.to(x.dtype).unsqueeze(1)  # (G, 1, L)
    cuts = thresholds.to(x.dtype).unsqueeze(-1)  # (G, L-1, 1)
    counts, sums = [], []
    for start in range(0, n, width):
        cols = x[:, start : start + width]  # (G, w)
        w = cols.shape[1]
        torch.le(cols.unsqueeze(1), cuts, out=steps[:, 1:-1, :w])  # [x ≤ t_k]
        at = torch.sub(steps[:, 1:, :w], steps[:, :-1, :w], out=work[..., :w])  # [rank = l]
        torch.matmul(vals, at, out=y[:, start : start + width].unsqueeze(1))  # (G, 1, w)
        if statistics:
            counts.append(at.sum(-1))  # (G, L); float32: exact up to 2^24 per block
            sums.append((at @ cols.unsqueeze(-1)).squeeze(-1))  # (G, L)
    if not statistics:
        return y, None, None
    return y, torch.stack(counts).sum(0), torch.stack(sums).sum(0)


def selection_sweep(x: Tensor, values: Tensor, thresholds: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`level_sweep` with statistics, as selections and masked reductions, which
    ``torch.compile`` fuses into one pass over x (run op by op it would make L full-size
    temporaries). The value is a chain of ``where`` from the top level down: exactly the level,
    as the masked sum there (NaN is not ≤ any threshold: the top level, as there). The per-rank
    counts and sums are the differences of the cumulative ones over [x ≤ t_k] and over all of
    x: the counts exact, the sums equal up to float rounding (a -inf input makes its rank's sum
    NaN instead of -inf)."""
    big_l = values.shape[1]
    vals = values.to(x.dtype)  # (G, L)
    cuts = thresholds.to(x.dtype)  # (G, L-1)
    below = [x <= cuts[:, k : k + 1] for k in range(big_l - 1)]  # L-1 of (G, n)
    y = vals[:, big_l - 1 :].expand_as(x)  # (G, n)
    for k in range(big_l - 2, -1, -1):
        y = torch.where(below[k], vals[:, k : k + 1], y)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    total = torch.full_like(x[:, :1], x.shape[1], dtype=torch.int64)  # (G, 1)
    at_most = torch.cat([*(b.sum(1, keepdim=True) for b in below), total], 1)  # (G, L)
    sum_at_most = torch.cat(
        [*(torch.where(b, x, zero).sum(1, keepdim=True) for b in below), x.sum(1, keepdim=True)],
        1,
    )  # (G, L)
    counts = torch.diff(at_most, dim=1, prepend=torch.zeros_like(at_most[:, :1]))
    sums = torch.diff(sum_at_most, dim=1, prepend=torch.zeros_like(sum_at_most[:, :1]))
    return y, counts.to(x.dtype), sums


def normal_equations_from_levels(
    counts: Tensor, sums: Tensor, qem_codes: Tensor
) -> tuple[Tensor, Tensor]:
    """§3.2 BᵀB ``(G, K, K)`` and Bᵀx ``(G, K)`` from per-rank counts and sums ``(G, L)``.

    B's row for an element at rank l is ``qem_codes[g, l]``; grouping equal rows gives
    BᵀB = Σ_l count_l e_l e_lᵀ and Bᵀx = Σ_l (Σ_{x at l} x) e_l. In the dtype of ``sums``.
    """
    codes = qem_codes.to(sums.dtype)  # (G, L, K)
    codes_t = codes.transpose(1, 2)  # (G, K, L)
    btb = codes_t @ (counts.to(sums.dtype).unsqueeze(-1) * codes)  # (G, K, K)
    btx = (codes_t @ sums.unsqueeze(-1)).squeeze(-1)  # (G, K)
    return btb, btx


def normal_equations(x: Tensor, level_index: Tensor, qem_codes: Tensor) -> tuple[Tensor, Tensor]:
    """§3.2 BᵀB ``(G, K, K)`` and Bᵀx ``(G, K)`` of the elements ``x`` ``(G, n)`` at the ranks
    ``level_index`` (from :func:`encode`), through per-rank counts and sums; in x's dtype."""
    g, big_l = qem_codes.shape[:2]
    counts = torch.zeros(g, big_l, dtype=x.dtype, device=x.device)  # (G, L)
    counts.scatter_add_(1, level_index, x.new_ones(()).expand_as(x))
    sums = torch.zeros(g, big_l, dtype=x.dtype, device=x.device)  # (G, L)
    sums.scatter_add_(1, level_index, x)
    return normal_equations_from_levels(counts, sums, qem_codes)


def solve_basis(
    btb: Tensor, btx: Tensor, old: Tensor, ridge: float, check: bool = True
) -> tuple[Tensor, Tensor]:
    """§3.2 u = (BᵀB + δI)⁻¹(Bᵀx + δ v_old), batched; returns ``(u (G, K), ok (G,))``.

    With ``check``, ``ok`` is false where the system is singular, or cond > 1e6 (§3.5 guard), or
    u is not finite; without it (the ridged weight solve, always invertible) ``ok`` is all true.
    """
    k = btb.shape[-1]
    eye = torch.eye(k, dtype=btb.dtype, device=btb.device)  # (K, K)
    a = btb + ridge * eye  # (G, K, K)
    b = btx + ridge * old  # (G, K)
    u, info = torch.linalg.solve_ex(a, b)  # (G, K), (G,)
    if not check:
        return u, torch.ones_like(info, dtype=torch.bool)
    diag_ok = torch.diagonal(a, dim1=-2, dim2=-1).amin(-1) > 0  # (G,)
    cond_ok = torch.linalg.cond(a) <= SINGULAR_COND  # (G,)
    ok = (info == 0) & diag_ok & cond_ok & torch.isfinite(u).all(-1)  # (G,)
    return u, ok


def moving_average(
    basis: Tensor, biased: Tensor, steps: Tensor, u: Tensor, momentum: float, debias: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """§3.3 one EMA update; returns new ``(basis, biased, steps)``.

    Debiased (TF ``assign_moving_average``, zero_debias): biased ← biased - (1-m)(biased - u),
    τ ← τ + 1, basis = biased / (1 - m^τ). Plain: basis ← basis - (1-m)(basis - u).
    """
    if not debias:
        return basis - (1 - momentum) * (basis - u), biased, steps
    biased = biased - (1 - momentum) * (biased - u)
    steps = steps + 1
    return biased / (1 - momentum**steps), biased, steps


def initial_weight_basis(bits: int, fan_out: int) -> Tensor:
    """§4 weights: v_j = 2^j · 0.6745·sqrt(2/n)/2^(K-1), n = kh·kw·C_out; ``(K,)`` float32."""
    base = W_INIT_SCALE * math.sqrt(2.0 / fan_out) / 2 ** (bits - 1)
    return torch.tensor([base * 2**j for j in range(bits)], dtype=torch.float32)


def initial_act_basis(bits: int) -> Tensor:
    """§4 activations: v_j = (2·0.6745/(2^K - 1))·2^j; levels uniform on [0, 1.349]; ``(K,)``."""
    c = W_INIT_SCALE * 2 / (2**bits - 1)
    return torch.tensor([c * 2**j for j in range(bits)], dtype=torch.float32)


def weight_fan_out(layer: nn.Module) -> int:
    """§4 n = kh·kw·C_out (a linear layer counts as a 1x1 conv: n = C_out)."""
    w = cast(Tensor, layer.weight)
    return int(w.shape[0] * math.prod(w.shape[2:]))


def quantize_step(
    rows: Tensor,
    basis: Tensor,
    table: Tensor,
    signed: bool,
    legacy_lowest_code: bool,
    statistics: bool,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """One quantizer's encoding of ``rows`` ``(G, n)`` with ``basis`` ``(G, K)`` (§2.2, §3.2):
    ``(y (G, n), top level (G,), [BᵀB | Bᵀx] (G, K, K+1) or None)``; ``table``: the quantizer's
    :func:`code_table`.

    The levels are ranked op by op (a few tiny tensors), so ``y`` holds exactly the levels every
    other path computes. With ``statistics`` (training: the hot path) the sweep and the normal
    equations run as one compiled kernel where :mod:`quantcore.fusion` allows it; without (eval,
    a loaded artifact) op by op, so inference never waits for a compiler.
    """
    levels, sort_id, thresholds = sorted_levels(basis, signed, table)
    values = rank_values(levels, signed, legacy_lowest_code)  # (G, L)
    if not statistics:
        return level_sweep(rows, values, thresholds, statistics=False)[0], levels[:, -1], None
    codes = qem_code_rows(sort_id, table, legacy_lowest_code).to(rows.dtype)  # (G, L, K)
    with torch.no_grad():  # one kind of compiled call whatever the caller's grad mode
        # detach(): the same memory, but no longer a view of the layer's tensor, whose shape
        # torch.compile would otherwise guard on (one more graph per layer shape)
        y, system = _fused_system(rows.detach(), values, thresholds, codes)
    return y, levels[:, -1], system.to(basis.dtype)


def _stacked_system(counts: Tensor, sums: Tensor, codes: Tensor) -> Tensor:
    btb, btx = normal_equations_from_levels(counts, sums, codes)  # (G, K, K), (G, K)
    return torch.cat([btb, btx.unsqueeze(-1)], -1)  # (G, K, K+1)


def _system(
    rows: Tensor, values: Tensor, thresholds: Tensor, codes: Tensor
) -> tuple[Tensor, Tensor]:
    """``(y, [BᵀB | Bᵀx])`` of :func:`quantize_step`, op by op."""
    y, counts, sums = level_sweep(rows, values, thresholds)
    assert counts is not None
    assert sums is not None
    return y, _stacked_system(counts, sums, codes)


def _selection_system(
    rows: Tensor, values: Tensor, thresholds: Tensor, codes: Tensor
) -> tuple[Tensor, Tensor]:
    """:func:`_system` through :func:`selection_sweep`: what :data:`_fused_system` compiles."""
    y, counts, sums = selection_sweep(rows, values, thresholds)
    return y, _stacked_system(counts, sums, codes)


# Each kind of call is its own graph: activations (one row) at 4, 8 or 16 levels, weights (a row
# per channel) at 2, 4, 8 or 16; a worker that runs every bit width keeps all 7.
_fused_system = fusion.Fused(_selection_system, eager=_system)


# ---------------------------------------------------------------------------------------------
# Quantizer modules
# ---------------------------------------------------------------------------------------------


class _QEMState(nn.Module):
    """Basis buffers shared by both quantizers: ``basis``, EMA ``biased`` and step count ``steps``.

    All three are persistent: a resumed run reproduces the official moving average (§3.3).
    """

    signed: bool
    legacy_lowest_code: bool
    bits: int
    basis: Tensor
    biased: Tensor
    steps: Tensor
    table: Tensor

    def _init_state(self, basis: Tensor, momentum: float, debias: bool, ridge: float) -> None:
        self.register_buffer("basis", basis.clone().float())
        self.register_buffer("biased", torch.zeros_like(self.basis))
        self.register_buffer("steps", torch.zeros((), dtype=torch.float32))
        # §2.1 code table (L, K), derived from the constructor arguments: not saved
        self.register_buffer("table", code_table(self.bits, self.signed), persistent=False)
        self.momentum = momentum
        self.debias = debias
        self.ridge = ridge
        self.guard = False
        self.qem_enabled = True

    def _sweep(
        self, rows: Tensor, basis: Tensor, statistics: bool
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Quantize ``rows`` ``(G, n)`` with ``basis`` ``(G, K)``: ``(y, top level (G,),
        (BᵀB, Bᵀx) of the QEM solve or None)``: :func:`quantize_step`."""
        return quantize_step(
            rows, basis, self.table, self.signed, self.legacy_lowest_code, statistics
        )

    @torch.no_grad()
    def _qem_update(self, system: Tensor) -> None:
        """§3.1-§3.3: one solve on this step's codes ``[BᵀB | Bᵀx]`` ``(G, K, K+1)``, then the
        moving average."""
        basis = self.basis.view(-1, self.basis.shape[-1])  # (G, K)
        btb, btx = system[..., :-1], system[..., -1]  # (G, K, K), (G, K)
        u, ok = solve_basis(btb, btx, basis, self.ridge, self.guard)  # (G, K), (G,)
        new_basis, new_biased, new_steps = moving_average(
            basis, self.biased.view_as(basis), self.steps, u, self.momentum, self.debias
        )
        if self.guard:  # skip the whole update (basis, EMA state) when singular (§3.5)
            keep = ok.all()
            new_basis = torch.where(keep, new_basis, basis)
            new_biased = torch.where(keep, new_biased, self.biased.view_as(basis))
            new_steps = torch.where(keep, new_steps, self.steps)
        self.basis.copy_(new_basis.view_as(self.basis))
        self.biased.copy_(new_biased.view_as(self.biased))
        self.steps.copy_(new_steps)

    @torch.no_grad()
    def fit_basis(self, x: Tensor, iterations: int = QEM_INIT_ITERATIONS) -> None:
        """§10 P4: ``iterations`` encode/solve rounds on ``x``, no moving average.

        Each round is this quantizer's own solve (weights keep their ridge toward the previous
        round's basis); a singular row keeps its basis.
        """
        basis = self.basis.view(-1, self.basis.shape[-1])  # (G, K)
        rows = x.detach().float().reshape(basis.shape[0], -1)  # (G, n)
        for _ in range(iterations):
            system = self._sweep(rows, basis, statistics=True)[2]
            assert system is not None
            u, ok = solve_basis(system[..., :-1], system[..., -1], basis, self.ridge)  # (G, K)
            basis = torch.where(ok.unsqueeze(-1), u, basis)  # singular rows keep their basis
        self.basis.copy_(basis.view_as(self.basis))


class _WeightSTE(torch.autograd.Function):
    """§5 weights: forward Q(W), backward identity (no mask, no clip)."""

    @staticmethod
    def forward(ctx: Any, w: Tensor, y: Tensor) -> Tensor:
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


class _ActSTE(torch.autograd.Function):
    """§5 activations: forward Q(x), backward ∂L/∂y · [x ≤ s_max] (the pre-update top level).

    The mask is recomputed from the saved input in the backward (x is kept alive by the layer
    that produced it anyway), one float pass instead of a stored mask.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, y: Tensor, top: Tensor) -> Tensor:
        ctx.save_for_backward(x, top)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        x, top = ctx.saved_tensors
        mask = torch.le(x, top, out=torch.empty_like(grad))  # (…) 0/1 in grad's dtype
        return mask.mul_(grad), None, None


class LQWeightQuantizer(_QEMState, WeightQuantizer):
    """§2.3 one K-bit basis per output channel, signed codes; QEM in training forwards.

    Buffers: ``basis`` (C_out, K), ``biased`` (C_out, K), ``steps`` (). Export: code index per
    weight (bit k ↔ b_k = +1), codebook = the channel's basis, kind ``bases``, per channel.
    """

    signed = True

    def __init__(
        self,
        bits: int,
        out_channels: int,
        fan_out: int,
        *,
        momentum: float = 0.9,
        debias: bool = True,
        ridge: float = 1e-4,
        legacy_lowest_code: bool = True,
    ) -> None:
        super().__init__()
        self.bits = bits
        self.legacy_lowest_code = legacy_lowest_code
        basis = initial_weight_basis(bits, fan_out).expand(out_channels, bits)  # (C_out, K)
        self._init_state(basis, momentum, debias, ridge)

    def _rows(self, w: Tensor) -> Tensor:
        return w.detach().reshape(w.shape[0], -1).to(self.basis.dtype)  # (C_out, M)

    def forward(self, w: Tensor) -> Tensor:
        if not self.training:
            return _WeightSTE.apply(w, dequantize(self.export(w)).to(w.dtype))
        with torch.no_grad():
            y, _, system = self._sweep(self._rows(w), self.basis, self.qem_enabled)
            if system is not None:  # after the forward value: it used the pre-update basis (D4)
                self._qem_update(system)
        return _WeightSTE.apply(w, y.reshape(w.shape).to(w.dtype))

    def export(self, w: Tensor) -> QuantizedWeight:
        shape = tuple(w.shape)
        with torch.no_grad():
            _, _, code_index, _ = encode(self._rows(w), self.basis, True)  # (C_out, M)
        return QuantizedWeight(
            shape=shape,
            grouping=Grouping.per_channel(shape),
            codes=code_index.to(torch.uint8),
            bits=torch.full((shape[0],), self.bits, dtype=torch.uint8, device=w.device),
            codebook=self.basis.detach().float().clone(),  # (C_out, K)
            kind=CodebookKind.BASES,
        )


class LQActQuantizer(_QEMState, InputQuantizer):
    """§2.4 one K-bit basis per layer with 0/1 codes; QEM on the whole batch in training.

    A *follower* (see :meth:`follow`) quantizes with its leader's basis (the pre-update one during
    a training step) and runs no QEM: the §6.2 projection shortcut that reads the same quantized
    tensor as its block's first conv. Its own ``basis`` buffer is kept equal to the leader's (for
    the artifact), and synced when the module switches to eval.

    The eval forward is a fixed function of ``basis`` with no sort and no state change, so
    ``torch.export`` (and the ONNX export) can trace it.
    """

    kind = "lq_nets_act"
    signed = False

    def __init__(
        self,
        bits: int,
        *,
        momentum: float = 0.9,
        debias: bool = True,
        ridge: float = 0.0,
        singular_guard: bool = True,
        legacy_lowest_code: bool = True,
        ste_clip_top: bool = True,
    ) -> None:
        super().__init__()
        self.bits = bits
        self.legacy_lowest_code = legacy_lowest_code
        self.ste_clip_top = ste_clip_top
        self.singular_guard = singular_guard
        self._init_state(initial_act_basis(bits), momentum, debias, ridge)
        self.guard = singular_guard
        self._leader: tuple[LQActQuantizer, ...] = ()
        self._step_basis: Tensor | None = None
        self._sign_checked = False

    def config(self) -> dict[str, Any]:
        return {
            "bits": self.bits,
            "momentum": self.momentum,
            "debias": self.debias,
            "ridge": self.ridge,
            "singular_guard": self.singular_guard,
            "legacy_lowest_code": self.legacy_lowest_code,
            "ste_clip_top": self.ste_clip_top,
        }

    def follow(self, leader: LQActQuantizer) -> None:
        """Quantize with ``leader``'s basis from now on (kept in sync in this module's buffer)."""
        self._leader = (leader,)  # a tuple: not registered as a submodule
        with torch.no_grad():
            self.basis.copy_(leader.basis)

    def train(self, mode: bool = True) -> LQActQuantizer:
        super().train(mode)
        if not mode:
            self._step_basis = None
            if self._leader:  # the leader's last training step may have come after ours
                with torch.no_grad():
                    self.basis.copy_(self._leader[0].basis)
        return self

    def _basis_in_use(self) -> Tensor:
        """The basis this step quantized with: pre-update while training (D4)."""
        if self.training and self._step_basis is not None:
            return self._step_basis
        return self.basis

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return self._eval_forward(x)
        basis = self.basis
        if self._leader:
            basis = self._leader[0]._basis_in_use().detach()
            with torch.no_grad():
                self.basis.copy_(self._leader[0].basis)
        flat = x.detach().reshape(1, -1).to(basis.dtype)  # (1, numel)
        if not self._sign_checked:  # one host sync per quantizer and run (§6.4 default rule)
            self._sign_checked = True
            if bool((flat < 0).any()):
                log.warning(
                    "LQ-Nets activation quantizer sees negative inputs: its levels are >= 0 "
                    "(post-ReLU input expected), so negatives map to the lowest level"
                )
        qem = self.qem_enabled and not self._leader
        with torch.no_grad():
            y, top, system = self._sweep(flat, basis.view(1, -1), qem)  # top: pre-update s_max
            if not self._leader:
                self._step_basis = basis.clone()
            if system is not None:
                self._qem_update(system)
        y = y.reshape(x.shape).to(x.dtype)
        return self._ste(x, y, top[0])

    def _eval_forward(self, x: Tensor) -> Tensor:
        """Frozen basis: encode only (traceable: no sort, no state change, no host sync)."""
        basis = (self._leader[0].basis if self._leader else self.basis).view(1, -1)  # (1, K)
        flat = x.detach().reshape(1, -1).to(basis.dtype)  # (1, numel)
        y = self._sweep(flat, basis, statistics=False)[0].reshape(x.shape).to(x.dtype)
        if not (torch.is_grad_enabled() and x.requires_grad):
            return y
        top = sorted_levels(basis, False, self.table)[0][0, -1]  # ()
        return self._ste(x, y, top)

    def _ste(self, x: Tensor, y: Tensor, top: Tensor) -> Tensor:
        if not self.ste_clip_top:
            top = torch.full_like(top, math.inf)
        return _ActSTE.apply(x, y, top.to(x.dtype))


# ---------------------------------------------------------------------------------------------
# The method
# ---------------------------------------------------------------------------------------------


def _lr_factor(schedule: str, epochs: int, base_lr: float) -> Any:
    """Per-epoch multiplier of the initial lr for each named schedule (§7)."""

    def imagenet_linear(e: int) -> float:  # (lr - 1e-5)(1 - e/E) + 1e-5, per epoch here
        return ((base_lr - 1e-5) * (1 - e / epochs) + 1e-5) / base_lr

    def step(milestones: tuple[int, ...]) -> Any:
        return lambda e: 0.1 ** sum(e >= m for m in milestones)

    def cosine(e: int) -> float:
        return 0.5 * (1 + math.cos(math.pi * e / epochs))

    table = {
        "imagenet_linear": imagenet_linear,
        "imagenet_step": step((30, 60, 85, 95, 105)),
        "cifar10_step": step((80, 160, 300)),
        "cosine": cosine,
    }
    return table[schedule]


def _act_quantizer(module: nn.Module | None) -> LQActQuantizer | None:
    """The LQ-Nets quantizer on ``module``'s input: a quantized layer's input quantizer, or the
    quantizer of an input activation site around a float layer (W32)."""
    if isinstance(module, QuantAct) and module.where == "input":
        q: Any = module.quantizer
    else:
        q = getattr(module, "input_quantizer", None)
    return q if isinstance(q, LQActQuantizer) else None


def _link_preact_shortcuts(model: nn.Module) -> None:
    """§6.2: a projection shortcut reads the quantized stage input its block's conv1 reads."""
    for block in model.modules():
        down = getattr(block, "downsample", None)
        if not isinstance(block, PreActBasicBlock) or not isinstance(down, nn.Sequential):
            continue
        leader, follower = _act_quantizer(block.conv1), _act_quantizer(down[0])
        if leader is not None and follower is not None:
            follower.follow(leader)


def _fit_hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
    """Calibration pre-hook: fit an activation basis on the input it is about to quantize."""
    assert isinstance(module, LQActQuantizer)
    module.fit_basis(inputs[0])


def _decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """§5 weight decay on every conv/linear weight (float first/last too), never on the rest."""
    decayed = {id(m.weight) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if id(p) in decayed], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0},
    ]


class LQNets(Method):
    name = "lq_nets"
    title = "LQ-Nets (learned quantizers, QEM)"
    paper = "Zhang et al., LQ-Nets, ECCV 2018 (arXiv:1807.10029)"
    summary = (
        "Weights and activations on learned K-bit bases (per output channel / per layer), "
        "refit every training step by least squares (QEM), trained with straight-through "
        "gradients."
    )
    Params = LQNetsParams
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "small data": SMALL_DATA_PRESET,
        "CIFAR-10 VGG-Small": CIFAR10_PRESET,
    }

    @classmethod
    def memory_parts(cls, fp: Footprint, params: Any) -> dict[str, int]:
        """The larger of the QAT step (the float step plus, with activations quantized, one
        saved quantized copy of every activation the quantizers see, ≈ the ReLU outputs) and
        the weights' encode-and-solve (≈ 8 + 20·K bytes per weight: codes, bits and the
        per-channel systems), both measured on LeNet5 and ResNet-20 with ``bench/memory.py``."""
        p: LQNetsParams = params
        model = {"working model": (fp.params + fp.buffers) * FLOAT}
        acts = fp.relu_outputs * FLOAT if p.a_bits != 32 else 0
        step = training_parts(fp, p.batch_size, extra_per_sample=acts)
        qem = (8 + 20 * p.w_bits) * fp.weights if p.w_bits != 32 else 0
        if qem > sum(step.values()):
            return {**model, "QEM encode and solve": qem}
        return {**model, **step}

    def quantize(
        self, model: nn.Module, data: DataBundle, params: LQNetsParams, ctx: RunContext
    ) -> nn.Module:
        ctx.report("prepare", 0.0)
        seed_everything(ctx.seed)
        model.to(ctx.device)
        train_loader, val_loader = data.loaders(params.batch_size, seed=ctx.seed)
        self._insert_quantizers(model, params)
        model.to(ctx.device)
        if params.basis_init == "qem":
            self._calibrate(model, data, params, ctx)
        ctx.report("prepare", 1.0)

        optimizer = torch.optim.SGD(
            _decay_groups(model, params.weight_decay),
            lr=params.lr,
            momentum=params.momentum,
            nesterov=params.nesterov and params.momentum > 0,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, _lr_factor(params.lr_schedule, params.epochs, params.lr)
        )
        train(
            model,
            train_loader,
            epochs=params.epochs,
            optimizer=optimizer,
            ctx=ctx,
            scheduler=scheduler,
            val_loader=val_loader,
            stage="lq_nets",
        )
        return model.to(ctx.device).eval()

    @staticmethod
    def _insert_quantizers(model: nn.Module, params: LQNetsParams) -> None:
        def weight_quantizer(_name: str, layer: nn.Module) -> WeightQuantizer:
            weight = cast(Tensor, layer.weight)
            wq = LQWeightQuantizer(
                params.w_bits,
                weight.shape[0],
                weight_fan_out(layer),
                momentum=params.qem_momentum,
                debias=params.qem_debias,
                ridge=params.qem_ridge_w,
                legacy_lowest_code=params.legacy_lowest_code,
            ).to(weight.device)
            if params.basis_init == "qem":
                wq.fit_basis(weight)
            return wq

        def input_quantizer(_name: str, layer: nn.Module) -> InputQuantizer | None:
            if params.a_bits == 32:
                return None
            iq = LQActQuantizer(
                params.a_bits,
                momentum=params.qem_momentum,
                debias=params.qem_debias,
                ridge=params.qem_ridge_a,
                singular_guard=params.act_singular_guard,
                legacy_lowest_code=params.legacy_lowest_code,
            )
            return iq.to(cast(Tensor, layer.weight).device)

        if params.w_bits == 32:  # float weights: an input activation site on each chosen layer
            chosen = select_layers(find_layers(model), keep_first_last=params.keep_first_last)
            if not chosen:
                raise NothingQuantized(
                    "no layer to quantize: the model has too few Conv2d/Linear layers"
                    + (" and the first and last stay in float" if params.keep_first_last else ""),
                    {"keep_first_last": params.keep_first_last},
                )
            add_activation_sites(model, [n for n, _ in chosen], input_quantizer, where="input")
        else:
            quantize_model(
                model,
                weight_quantizer,
                input_quantizer=input_quantizer,
                keep_first_last=params.keep_first_last,
            )
        _link_preact_shortcuts(model)

    @staticmethod
    @torch.no_grad()
    def _calibrate(
        model: nn.Module, data: DataBundle, params: LQNetsParams, ctx: RunContext
    ) -> None:
        """§10 P4: fit every activation basis on one calibration batch, in network order."""
        if params.a_bits == 32:
            return
        loader, _ = data.loaders(params.calibration_batch, seed=ctx.seed + 1)
        x, _ = next(iter(loader))
        hooks = []
        for iq in model.modules():  # layers' input quantizers and activation sites alike
            if isinstance(iq, LQActQuantizer) and not iq._leader:
                hooks.append(iq.register_forward_pre_hook(_fit_hook))
        was_training = model.training
        model.eval()
        try:
            model(x.to(ctx.device))
        finally:
            for h in hooks:
                h.remove()
            model.train(was_training)
        _link_preact_shortcuts(model)
