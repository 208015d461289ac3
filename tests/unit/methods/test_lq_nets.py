"""LQ-Nets against its specification (../shared/methods/lq-nets.md) and reference vectors.

Reference vectors: /work/shared/refvectors/lq-nets/ (README there), compared with rtol 1e-5,
atol 1e-7 as it says. Property tests compare the vectorised code with plain loop references
written from §2.2 and §3.2 on fresh random inputs.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from quantcore import fusion, zoo
from quantcore.artifact import ModelSpec, load_artifact, save_artifact
from quantcore.context import RunContext
from quantcore.data import DataBundle, load_dataset, subset
from quantcore.errors import Cancelled, InvalidParams
from quantcore.layers import InputQuantizer, QuantConv2d, activation_sites, quant_layers
from quantcore.methods import lq_nets as lq
from quantcore.qweight import CodebookKind, dequantize
from quantcore.registry import get_method, parse_params

REF = Path("/work/shared/refvectors/lq-nets")
RTOL, ATOL = 1e-5, 1e-7
FAST: dict[str, Any] = {"epochs": 1, "batch_size": 128, "lr": 0.01, "lr_schedule": "cosine"}

needs_ref = pytest.mark.skipif(not REF.exists(), reason="LQ-Nets reference vectors not present")


def _npz(name: str) -> dict[str, np.ndarray]:
    with np.load(REF / f"{name}.npz") as f:
        return {k: f[k] for k in f.files}


def _close(actual: torch.Tensor, expected: np.ndarray, rtol: float = RTOL) -> None:
    np.testing.assert_allclose(actual.detach().double().numpy(), expected, rtol=rtol, atol=ATOL)


# --- loop references (float64), written from §2.2 and §3.2 --------------------------------------


def encode_loop(
    x: list[float], basis: list[float], signed: bool, legacy: bool
) -> tuple[list[float], list[int], list[tuple[int, ...]]]:
    """§2.2 literally: levels by code, sort (ties: higher code first), midpoints, strict sweep."""
    k = len(basis)
    table = [
        tuple((2 * ((i >> j) & 1) - 1) if signed else ((i >> j) & 1) for j in range(k))
        for i in range(2**k)
    ]
    levels = [sum(c * v for c, v in zip(row, basis, strict=True)) for row in table]
    order = sorted(range(2**k), key=lambda i: (levels[i], -i))
    s = [levels[i] for i in order]
    t = [0.5 * s[i] + 0.5 * s[i + 1] for i in range(len(s) - 1)]
    ys, ranks, codes = [], [], []
    for xv in x:
        y = (0.0 if not signed else s[0]) if legacy else s[0]
        rank, code = 0, table[0] if legacy else table[order[0]]
        for j, tj in enumerate(t):
            if xv > tj:
                y, rank, code = s[j + 1], j + 1, table[order[j + 1]]
        ys.append(y)
        ranks.append(rank)
        codes.append(code)
    return ys, ranks, codes


def solve_loop(codes: list[tuple[int, ...]], x: list[float], old: list[float], ridge: float):
    b = np.array(codes, dtype=np.float64)  # (n, K)
    a = b.T @ b + ridge * np.eye(b.shape[1])
    return np.linalg.solve(a, b.T @ np.array(x, dtype=np.float64) + ridge * np.array(old))


# --- §2.1, §4: tables and initial bases ---------------------------------------------------------


def test_code_tables_follow_the_bits_of_the_index() -> None:
    """§2.1 and §11.1 (1): E_w[i, j] = 2·bit_j(i) - 1, E_a[i, j] = bit_j(i); K = 2 rows."""
    assert lq.code_table(2, True).tolist() == [[-1, -1], [1, -1], [-1, 1], [1, 1]]
    assert lq.code_table(2, False).tolist() == [[0, 0], [1, 0], [0, 1], [1, 1]]
    for k in range(1, 5):
        e = lq.code_table(k, True)
        for i, j in itertools.product(range(2**k), range(k)):
            assert e[i, j] == 2 * ((i >> j) & 1) - 1


@needs_ref
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_initial_bases_match_the_official_constants(k: int) -> None:
    """§4 and worked_examples.npz init_*: weight (n = 576) and activation bases; uniform grids."""
    ref = _npz("worked_examples")
    w = lq.initial_weight_basis(k, 576)
    a = lq.initial_act_basis(k)
    _close(w, ref[f"init_w_basis_K{k}_n576"])
    _close(a, ref[f"init_a_basis_K{k}"])
    # §11.1 (2): weight levels = base·{±1, ±3, …}, activation levels = {0..2^K-1}·1.349/(2^K-1).
    base = 0.6745 * math.sqrt(2 / 576) / 2 ** (k - 1)
    levels, sort_id, _ = lq.sorted_levels(w.unsqueeze(0), True)
    odd = torch.arange(-(2**k) + 1, 2**k, 2, dtype=torch.float64)
    _close(levels[0], (odd * base).numpy())
    assert sort_id[0].tolist() == list(range(2**k))
    a_levels, a_sort, _ = lq.sorted_levels(a.unsqueeze(0), False)
    _close(a_levels[0], (torch.arange(2**k, dtype=torch.float64) * 1.349 / (2**k - 1)).numpy())
    assert a_sort[0].tolist() == list(range(2**k))


def test_weight_fan_out_counts_output_channels_times_kernel() -> None:
    """§4: n = kh·kw·C_out; a linear layer counts as a 1x1 conv (n = C_out)."""
    assert lq.weight_fan_out(nn.Conv2d(3, 64, 3)) == 576
    assert lq.weight_fan_out(nn.Linear(800, 500)) == 500


# --- §2.2, §3.2 against weight_forward.npz ------------------------------------------------------


@needs_ref
@pytest.mark.parametrize(("k", "case"), list(itertools.product([1, 2, 3], ["init", "rand"])))
def test_weight_encoding_and_solve_match_weight_forward(k: int, case: str) -> None:
    """weight_forward.npz: sorted levels, sort ids, thresholds, y, codes, ranks, QEM solution."""
    ref = _npz("weight_forward")
    p = f"K{k}_{case}_"
    w = torch.tensor(ref["W"])  # (4, 3, 3, 3)
    basis = torch.tensor(ref[p + "basis"])  # (4, K)
    rows = w.reshape(4, -1)  # (4, 27)
    levels, sort_id, thresholds = lq.sorted_levels(basis, True)
    y, idx, _, qem_codes = lq.encode(rows, basis, True, legacy_lowest_code=True)
    codes = qem_codes.gather(1, idx.unsqueeze(-1).expand(-1, -1, k))  # (4, 27, K)
    _close(levels, ref[p + "sorted_levels"])
    assert sort_id.tolist() == ref[p + "sort_id"].tolist()
    _close(thresholds, ref[p + "thresholds"])
    _close(y.reshape(w.shape), ref[p + "y"])
    assert idx.tolist() == ref[p + "level_index"].tolist()
    assert codes.tolist() == ref[p + "codes"].tolist()
    btb, btx = lq.normal_equations(rows, idx, qem_codes)
    u, _ = lq.solve_basis(btb, btx, basis, 1e-4)
    _close(u, ref[p + "v_new"])
    # §11.1 (5): the solve does not increase the error on the codes it fitted.
    b = codes.double()
    before = ((rows.double() - (b * basis.double().unsqueeze(1)).sum(-1)) ** 2).sum(1)
    after = ((rows.double() - (b * u.double().unsqueeze(1)).sum(-1)) ** 2).sum(1)
    assert bool((after <= before + 1e-9).all())


@needs_ref
@pytest.mark.parametrize(("k", "track"), list(itertools.product([2, 3], ["debiased", "plain"])))
def test_weight_qem_sequence_matches_both_ema_tracks(k: int, track: str) -> None:
    """weight_qem_sequence.npz: six training forwards of the weight quantizer (QEM on W_t)."""
    ref = _npz("weight_qem_sequence")
    p = f"K{k}_{track}_"
    wq = lq.LQWeightQuantizer(k, 8, int(ref["n"]), debias=track == "debiased").train()
    w = torch.tensor(ref["W0"])
    for t in range(6):
        _close(w, ref[p + "W"][t])
        _close(wq.basis, ref[p + "basis_before"][t])
        before = wq.basis.clone()
        y = wq(w)
        _close(y, ref[p + "y"][t])
        rows = w.reshape(8, -1)
        _, idx, _, qem_codes = lq.encode(rows, before, True)
        u, _ = lq.solve_basis(*lq.normal_equations(rows, idx, qem_codes), before, 1e-4)
        _close(u, ref[p + "v_new"][t])
        _close(wq.basis, ref[p + "basis_after"][t])
        np.testing.assert_allclose(float(((w - y) ** 2).sum()), ref[p + "sqerr"][t], rtol=RTOL)
        w = w - torch.tensor(ref["lr"]) * torch.tensor(ref["G"][t])
    if track == "debiased":  # §12: the debiased track lowers the error much faster
        assert ref[p + "sqerr"][-1] < ref[f"K{k}_plain_sqerr"][-1]


@needs_ref
@pytest.mark.parametrize(("k", "track"), list(itertools.product([1, 2, 3], ["debiased", "plain"])))
def test_activation_sequence_matches_both_ema_tracks(k: int, track: str) -> None:
    """act_sequence.npz: three batches; y, level index, STE mask (as the gradient), u, basis."""
    ref = _npz("act_sequence")
    p = f"K{k}_{track}_"
    aq = lq.LQActQuantizer(k, debias=track == "debiased").train()
    for t in range(3):
        x = torch.tensor(ref["X"][t], requires_grad=True)
        _close(aq.basis, ref[p + "basis_before"][t])
        before = aq.basis.clone()
        y = aq(x)
        y.sum().backward()
        _close(y, ref[p + "y"][t])
        assert x.grad is not None
        assert x.grad.tolist() == ref[p + "ste_mask"][t].astype(np.float32).tolist()
        flat = x.detach().reshape(1, -1)
        _, idx, _, qem_codes = lq.encode(flat, before.view(1, -1), False)
        assert idx.view(x.shape).tolist() == ref[p + "level_index"][t].tolist()
        u, ok = lq.solve_basis(*lq.normal_equations(flat, idx, qem_codes), before.view(1, -1), 0.0)
        assert bool(ok.all())
        _close(u[0], ref[p + "v_new"][t])
        _close(aq.basis, ref[p + "basis_after"][t])


# --- §11.2 worked examples ----------------------------------------------------------------------


@needs_ref
def test_worked_example_w() -> None:
    """§11.2 W: encoding, ridge and ridge-free solves, both EMAs, errors, re-encoding."""
    ref = _npz("worked_examples")
    x = torch.tensor(ref["ex_w_input"])  # (1, 6)
    v = torch.tensor(ref["ex_w_basis"])  # (1, 2)
    levels, _, thresholds = lq.sorted_levels(v, True)
    y, idx, _, qem_codes = lq.encode(x, v, True)
    codes = qem_codes.gather(1, idx.unsqueeze(-1).expand(-1, -1, 2))
    _close(levels, ref["ex_w_sorted_levels"])
    _close(thresholds, ref["ex_w_thresholds"])
    _close(y, ref["ex_w_y"])
    assert codes.tolist() == ref["ex_w_codes"].tolist()
    btb, btx = lq.normal_equations(x, idx, qem_codes)
    assert btb[0].tolist() == [[6, 0], [0, 6]]
    _close(btx[0], np.array([1.95, 3.45]))
    u, _ = lq.solve_basis(btb, btx, v, 1e-4)
    _close(u, ref["ex_w_v_new"])
    _close(lq.solve_basis(btb, btx, v, 0.0)[0], ref["ex_w_v_new_noridge"])
    for debias, key in ((True, "ex_w_basis_after_debiased"), (False, "ex_w_basis_after_plain")):
        wq = lq.LQWeightQuantizer(2, 1, 1, debias=debias).train()
        wq.basis.copy_(v)
        wq(x)
        _close(wq.basis, ref[key])
    y2, _, _, _ = lq.encode(x, u, True)
    _close(y2, ref["ex_w_y_reencoded"])
    b = codes.double()[0]
    errs = [
        float(((x.double()[0] - b @ v.double()[0]) ** 2).sum()),
        float(((x.double()[0] - b @ u.double()[0]) ** 2).sum()),
        float(((x.double() - y2.double()) ** 2).sum()),
    ]
    np.testing.assert_allclose(errs, ref["ex_w_sqerr"], rtol=RTOL)


@needs_ref
def test_worked_example_a_two_steps_both_tracks() -> None:
    """§11.2 A: codes, STE mask, solve, debiased and plain tracks over two batches."""
    ref = _npz("worked_examples")
    x1 = torch.tensor(ref["ex_a_input"])
    x2 = torch.tensor(ref["ex_a_input2"])
    _close(lq.initial_act_basis(2), ref["ex_a_basis"])
    _, idx, _, qem_codes = lq.encode(x1.view(1, -1), lq.initial_act_basis(2).view(1, -1), False)
    codes = qem_codes.gather(1, idx.unsqueeze(-1).expand(-1, -1, 2))[0]
    assert codes.tolist() == ref["ex_a_codes"].tolist()
    for track in ("debiased", "plain"):
        aq = lq.LQActQuantizer(2, debias=track == "debiased").train()
        x = x1.clone().requires_grad_(True)
        y = aq(x)
        y.sum().backward()
        _close(y, ref["ex_a_y"])
        assert x.grad is not None
        assert x.grad.tolist() == ref["ex_a_ste_mask"].tolist()
        _close(aq.basis, ref[f"ex_a_basis_after_{track}"])
        _close(aq(x2), ref[f"ex_a_y2_{track}"])
        _close(aq.basis, ref[f"ex_a_basis_after2_{track}"])
    btb, btx = lq.normal_equations(x1.view(1, -1), idx, qem_codes)
    assert btb[0].tolist() == [[4, 2], [2, 4]]
    u, _ = lq.solve_basis(btb, btx, torch.zeros(1, 2), 0.0)
    _close(u[0], ref["ex_a_v_new"])


@needs_ref
def test_worked_example_negative_basis_quirk() -> None:
    """§11.2 Q1: official codes (-,-) for the lowest bucket versus the fixed (-,+)."""
    ref = _npz("worked_examples")
    x = torch.tensor(ref["neg_w_input"])
    v = torch.tensor(ref["neg_w_basis"])
    for legacy, tag in ((True, "official"), (False, "fixed")):
        y, idx, _, qem_codes = lq.encode(x, v, True, legacy_lowest_code=legacy)
        codes = qem_codes.gather(1, idx.unsqueeze(-1).expand(-1, -1, 2))
        _close(y, ref["neg_w_y"])
        assert codes.tolist() == ref[f"neg_w_codes_{tag}"].tolist()
        u, _ = lq.solve_basis(*lq.normal_equations(x, idx, qem_codes), v, 1e-4)
        _close(u, ref[f"neg_w_v_new_{tag}"])
    # The exported code is always the chosen level's (§8): it decodes to y.
    wq = lq.LQWeightQuantizer(2, 1, 1)
    wq.basis.copy_(v)
    _close(dequantize(wq.export(x)), ref["neg_w_y"])


# --- properties on fresh random inputs ----------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("signed", [True, False])
def test_encode_matches_the_loop_reference_on_random_bases(seed: int, signed: bool) -> None:
    """§2.2 vectorised == the literal sweep, for random (also negative) bases and both quirks."""
    gen = torch.Generator().manual_seed(seed)
    k = 1 + seed % 4
    basis = torch.randn(3, k, generator=gen)  # (G, K), mixed signs
    x = torch.randn(3, 40, generator=gen) * 1.5  # (G, n)
    for legacy in (True, False):
        y, idx, code_index, qem_codes = lq.encode(x, basis, signed, legacy)
        codes = qem_codes.gather(1, idx.unsqueeze(-1).expand(-1, -1, k))  # (G, n, K)
        table = lq.code_table(k, signed)
        for g in range(3):
            ry, rr, rc = encode_loop(x[g].tolist(), basis[g].tolist(), signed, legacy)
            np.testing.assert_allclose(y[g].numpy(), ry, rtol=1e-5, atol=1e-6)
            assert idx[g].tolist() == rr
            assert [tuple(int(c) for c in row) for row in codes[g].tolist()] == rc
            decoded = (table[code_index[g]] * basis[g]).sum(-1)  # the exported code's value
            levels = lq.sorted_levels(basis[g : g + 1], signed)[0][0]
            np.testing.assert_allclose(decoded.numpy(), levels[idx[g]].numpy(), atol=1e-6)


@pytest.mark.parametrize("seed", range(8))
def test_training_sweep_is_encode_exactly_and_its_statistics_are_the_normal_equations(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The training path (``level_sweep``: masks, no per-element index) gives bit-identical
    values to :func:`encode`, including values exactly on thresholds, one or many rows, one or
    many column blocks; its per-rank counts and sums give the same BᵀB and Bᵀx."""
    gen = torch.Generator().manual_seed(300 + seed)
    k, signed, legacy = 1 + seed % 4, seed % 2 == 0, seed % 3 != 0
    g = 1 if seed < 4 else 5
    monkeypatch.setattr(lq, "SWEEP_BLOCK", 2**k * g * 7)  # several blocks of 7 columns
    basis = torch.randn(g, k, generator=gen)  # (G, K), mixed signs
    levels, _, thresholds = lq.sorted_levels(basis, signed)
    x = torch.cat([torch.randn(g, 45, generator=gen), thresholds, levels], dim=1)  # (G, n)
    x = x[:, torch.randperm(x.shape[1], generator=gen)]
    y, idx, _, qem_codes = lq.encode(x, basis, signed, legacy)
    values = lq.rank_values(levels, signed, legacy)
    y_sweep, counts, sums = lq.level_sweep(x, values, thresholds)
    assert torch.equal(y_sweep, y)
    assert torch.equal(lq.level_sweep(x, values, thresholds, statistics=False)[0], y)
    assert counts is not None
    assert sums is not None
    ranks = torch.arange(2**k).view(1, -1, 1)  # (1, L, 1)
    assert torch.equal(counts, (idx.unsqueeze(1) == ranks).sum(-1).float())
    btb, btx = lq.normal_equations_from_levels(counts, sums, qem_codes)
    ref_btb, ref_btx = lq.normal_equations(x, idx, qem_codes)
    assert torch.equal(btb, ref_btb)
    torch.testing.assert_close(btx, ref_btx, rtol=1e-5, atol=1e-5)


# (K, signed, legacy, G): a few kinds of call, within torch.compile's 8 graphs per function.
FUSED_CASES = [(1, True, True, 5), (2, False, True, 1), (3, True, False, 1), (4, False, False, 5)]


@pytest.mark.slow
@pytest.mark.parametrize(("k", "signed", "legacy", "g"), FUSED_CASES)
def test_fused_step_is_the_op_by_op_step(
    k: int, signed: bool, legacy: bool, g: int, fusing: None
) -> None:
    """The compiled quantizer step (one kernel: sweep and normal equations) gives the same
    values bit for bit, including values on thresholds, at the top level, NaN and ±inf; the
    same top level, and the QEM system up to float32 rounding of the sums."""
    gen = torch.Generator().manual_seed(1000 + 10 * k + g)
    basis = torch.randn(g, k, generator=gen)  # (G, K), mixed signs
    table = lq.code_table(k, signed)
    levels, _, thresholds = lq.sorted_levels(basis, signed)
    special = torch.tensor([math.nan, math.inf, -math.inf, 0.0]).expand(g, 4)
    n = int(torch.randint(300, 3000, (), generator=gen))
    x = torch.cat([torch.randn(g, n, generator=gen), thresholds, levels, special], dim=1)
    x = x[:, torch.randperm(x.shape[1], generator=gen)]
    got = lq.quantize_step(x, basis, table, signed, legacy, True)
    assert not lq._fused_system.failed  # the compiled code ran
    fusion.set_enabled(False)
    want = lq.quantize_step(x, basis, table, signed, legacy, True)
    fusion.set_enabled(True)
    assert torch.equal(got[0], want[0])
    assert torch.equal(got[1], want[1])
    assert got[2] is not None
    assert want[2] is not None
    assert torch.equal(got[2][..., :-1], want[2][..., :-1])  # BᵀB: counts, exact
    finite = want[2][..., -1].isfinite()
    assert torch.equal(got[2][..., -1].isfinite(), finite)  # a NaN reaches Bᵀx in both
    torch.testing.assert_close(got[2][..., -1][finite], want[2][..., -1][finite])
    # eval (op by op, never compiled) quantizes to exactly what the compiled training step did
    evaluated = lq.quantize_step(x, basis, table, signed, legacy, False)
    assert torch.equal(evaluated[0], got[0])
    assert evaluated[2] is None


@pytest.mark.slow
def test_a_worker_running_every_bit_width_stays_compiled(fusing: None) -> None:
    """One process, the layer shapes of LeNet5 (conv and linear, weights and activations), a
    full and a last partial batch, at every W/A of the seed's grid: the compiled step never
    falls back (it once did, after three jobs: a graph per view shape, 8 graphs per function)."""
    gen = torch.Generator().manual_seed(11)
    weights = [torch.randn(50, 20, 5, 5, generator=gen), torch.randn(500, 800, generator=gen)]
    for w_bits, a_bits in [(1, 2), (2, 2), (3, 3), (4, 4)]:
        for w in weights:
            lq.LQWeightQuantizer(w_bits, w.shape[0], w.shape[0]).train()(w)
        for batch in (128, 96):
            act = lq.LQActQuantizer(a_bits).train()
            act(torch.randn(batch, 20, 12, 12, generator=gen).relu())
            act(torch.randn(batch, 800, generator=gen).relu())
        assert not lq._fused_system.failed, (w_bits, a_bits)


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_fused_quantizers_train_as_the_op_by_op_ones(device: str, fusing: None) -> None:
    """A training forward and backward of both quantizers, compiled (C++ on the CPU, Triton on
    CUDA) and op by op from the same state: equal outputs and gradients, QEM bases equal up to
    float rounding."""
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(16, 8, 3, 3, generator=gen).to(device).requires_grad_()
    a = torch.randn(4, 8, 6, 6, generator=gen).relu().to(device).requires_grad_()
    runs = []
    for fused in (True, False):
        fusion.set_enabled(fused)
        wq = lq.LQWeightQuantizer(2, 16, 16 * 9).to(device).train()
        aq = lq.LQActQuantizer(3).to(device).train()
        outs = [wq(w), aq(a), wq(w), aq(a)]  # two steps: the second uses the QEM-updated bases
        grads = torch.autograd.grad(sum((o * o.detach()).sum() for o in outs), [w, a])
        runs.append((outs, grads, wq.basis.clone(), aq.basis.clone()))
    fusion.set_enabled(True)
    (outs_f, grads_f, wb_f, ab_f), (outs_e, grads_e, wb_e, ab_e) = runs
    assert not lq._fused_system.failed
    for got, want in zip(outs_f[:2], outs_e[:2], strict=True):
        assert torch.equal(got, want)
    for got, want in zip(outs_f[2:], outs_e[2:], strict=True):
        torch.testing.assert_close(got, want)  # bases moved by sums that may round apart
    for got, want in zip(grads_f, grads_e, strict=True):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(wb_f, wb_e)
    torch.testing.assert_close(ab_f, ab_e)


@pytest.mark.parametrize("seed", range(5))
def test_encoding_picks_a_nearest_level_and_ties_go_down(seed: int) -> None:
    """§11.1 (3): outputs are levels, nearest ones; a value on a threshold takes the lower."""
    gen = torch.Generator().manual_seed(100 + seed)
    k = 1 + seed % 4
    basis = torch.rand(2, k, generator=gen) + 0.05  # (G, K)
    levels, _, thresholds = lq.sorted_levels(basis, True)
    assert bool((levels[:, 1:] >= levels[:, :-1]).all())
    x = torch.cat([torch.randn(2, 50, generator=gen), thresholds], dim=1)  # (G, 50 + L-1)
    y, idx, _, _ = lq.encode(x, basis, True)
    dist = (x.unsqueeze(-1) - levels.unsqueeze(1)).abs()  # (G, n, L)
    assert bool(((x - y).abs() <= dist.min(-1).values + 1e-6).all())
    on_threshold = idx[:, 50:]
    assert on_threshold.tolist() == [list(range(2**k - 1))] * 2
    # K = 1 weight exactly 0 maps to -v (§2.2).
    y0, _, _, _ = lq.encode(torch.zeros(1, 1), torch.tensor([[0.3]]), True)
    assert y0.item() == pytest.approx(-0.3)


def test_equal_levels_sort_higher_code_first() -> None:
    """§10 Q2: v = (0.5, 0.5) makes codes 1 and 2 both 0; the official sort puts code 2 first."""
    _, sort_id, _ = lq.sorted_levels(torch.tensor([[0.5, 0.5]]), True)
    assert sort_id[0].tolist() == [0, 2, 1, 3]


@pytest.mark.parametrize("seed", range(5))
def test_weight_solve_is_the_ridge_least_squares_of_the_loop(seed: int) -> None:
    """§3.2 and §11.1 (4): (BᵀB + δI)u = Bᵀx + δv_old, against numpy on the loop's codes."""
    gen = torch.Generator().manual_seed(200 + seed)
    k = 1 + seed % 4
    basis = torch.rand(4, k, generator=gen) * 0.3 + 0.01
    x = torch.randn(4, 64, generator=gen) * 0.5
    _, idx, _, qem_codes = lq.encode(x, basis, True)
    u, ok = lq.solve_basis(*lq.normal_equations(x, idx, qem_codes), basis, 1e-4)
    assert bool(ok.all())
    for g in range(4):
        _, _, codes = encode_loop(x[g].tolist(), basis[g].tolist(), True, True)
        expect = solve_loop(codes, x[g].tolist(), basis[g].tolist(), 1e-4)
        np.testing.assert_allclose(u[g].numpy(), expect, rtol=1e-4, atol=1e-6)
        if k == 1:  # §11.1 (6): (Σ|x| + δv)/(M + δ)
            closed = (x[g].abs().double().sum() + 1e-4 * basis[g, 0]) / (64 + 1e-4)
            assert u[g, 0].item() == pytest.approx(closed.item(), rel=1e-5)


def test_activation_k1_solution_is_the_mean_above_half_the_basis() -> None:
    """§11.1 (6): for K = 1 activations, u = mean of the x above v/2."""
    x = torch.rand(1, 500, generator=torch.Generator().manual_seed(3)) * 2
    v = torch.tensor([[1.349]])
    _, idx, _, qem_codes = lq.encode(x, v, False)
    u, ok = lq.solve_basis(*lq.normal_equations(x, idx, qem_codes), v, 0.0)
    assert bool(ok.all())
    assert u.item() == pytest.approx(x[x > 1.349 / 2].mean().item(), rel=1e-5)


def test_qem_and_plain_ema_never_increase_the_error_on_their_data() -> None:
    """§11.1 (5): ‖x - Bu‖² ≤ ‖x - Bv‖², and so does 0.9v + 0.1u (convexity)."""
    gen = torch.Generator().manual_seed(7)
    for k in (1, 2, 3, 4):
        basis = torch.rand(6, k, generator=gen) * 0.2 + 0.01
        x = torch.randn(6, 80, generator=gen) * 0.4
        _, idx, _, qem_codes = lq.encode(x, basis, True)
        u, _ = lq.solve_basis(*lq.normal_equations(x, idx, qem_codes), basis, 1e-4)
        b = qem_codes.gather(1, idx.unsqueeze(-1).expand(-1, -1, k)).double()  # (G, n, K)

        def err(v: torch.Tensor, b: torch.Tensor = b, x: torch.Tensor = x) -> torch.Tensor:
            return ((x.double() - (b * v.double().unsqueeze(1)).sum(-1)) ** 2).sum(1)

        assert bool((err(u) <= err(basis) + 1e-9).all())
        assert bool((err(0.9 * basis + 0.1 * u) <= err(basis) + 1e-9).all())
        y_re, _, _, _ = lq.encode(x, u, True)  # re-encoding cannot increase it further
        assert bool((((x - y_re).double() ** 2).sum(1) <= err(u) + 1e-6).all())


def test_debiased_ema_is_the_normalised_weighted_average_of_solutions() -> None:
    """§3.3 and §11.1 (7): basis_1 = u_1; basis_τ = Σ 0.1·0.9^{τ-s} u_s / (1 - 0.9^τ)."""
    gen = torch.Generator().manual_seed(11)
    basis = torch.full((2, 3), 123.0)  # the initial basis never appears
    biased, steps = torch.zeros(2, 3), torch.zeros(())
    us = [torch.randn(2, 3, generator=gen) for _ in range(5)]
    for tau, u in enumerate(us, start=1):
        basis, biased, steps = lq.moving_average(basis, biased, steps, u, 0.9, True)
        expect = sum(0.1 * 0.9 ** (tau - s) * us[s - 1].double() for s in range(1, tau + 1))
        _close(basis, (expect / (1 - 0.9**tau)).numpy())
    plain, _, _ = lq.moving_average(
        torch.ones(2), torch.zeros(2), steps, torch.zeros(2), 0.9, False
    )
    _close(plain, np.full(2, 0.9))


def test_eval_freezes_the_bases_and_is_deterministic() -> None:
    """§3.4 and §11.1 (8): no QEM or EMA change in eval; two eval forwards are identical."""
    wq = lq.LQWeightQuantizer(2, 4, 36).eval()
    aq = lq.LQActQuantizer(3).eval()
    w = torch.randn(4, 3, 3, 3)
    x = torch.rand(2, 3, 4, 4) * 2
    states = [{k: v.clone() for k, v in m.state_dict().items()} for m in (wq, aq)]
    out = [(wq(w), aq(x)) for _ in range(2)]
    assert torch.equal(out[0][0], out[1][0])
    assert torch.equal(out[0][1], out[1][1])
    for m, st in zip((wq, aq), states, strict=True):
        for k, v in m.state_dict().items():
            assert torch.equal(v, st[k]), k
    aq.train()
    aq(x)
    assert not torch.equal(aq.basis, states[1]["basis"])  # and training does update


def test_ste_gradients_and_no_basis_gradient() -> None:
    """§5 and §11.1 (9): weights identity (no clip), activations [x ≤ s_max]; bases are buffers."""
    wq = lq.LQWeightQuantizer(2, 2, 18).train()
    w = (torch.randn(2, 9) * 10).requires_grad_(True)  # far outside the levels: still identity
    g = torch.randn(2, 9)
    (wq(w) * g).sum().backward()
    assert w.grad is not None
    assert torch.equal(w.grad, g)
    aq = lq.LQActQuantizer(2).train()
    top = 1.349
    x = torch.tensor([0.0, 0.5, top, 1.35, 3.0], requires_grad=True)
    top32 = lq.sorted_levels(aq.basis.view(1, -1), False)[0][0, -1].item()
    x = torch.tensor([0.0, 0.5, top32, 1.35, 3.0], requires_grad=True)
    aq(x).sum().backward()
    assert x.grad is not None
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]  # equality passes (Q4)
    for m in (wq, aq):
        assert not list(m.parameters())
        assert {"basis", "biased", "steps"} <= set(dict(m.named_buffers()))


def test_singular_activation_system_skips_the_update() -> None:
    """§3.5 guard: all inputs below t_0, or only codes 00 and 11 → basis and EMA state unchanged."""
    aq = lq.LQActQuantizer(2).train()
    state = {k: v.clone() for k, v in aq.state_dict().items()}
    aq(torch.full((10,), 0.01))  # every element at level 0: BᵀB = 0
    assert all(torch.equal(v, state[k]) for k, v in aq.state_dict().items())
    aq(torch.tensor([0.0, 1.349, 1.349, 0.0]))  # only codes 00 and 11: BᵀB = [[2,2],[2,2]]
    assert all(torch.equal(v, state[k]) for k, v in aq.state_dict().items())
    aq(torch.tensor([0.0, 0.45, 0.9, 1.349]))  # a regular batch updates
    assert int(aq.steps) == 1
    unguarded = lq.LQActQuantizer(2, singular_guard=False).train()
    unguarded(torch.full((10,), 0.01))
    assert not bool(torch.isfinite(unguarded.basis).all())  # what the official code would do


def test_qem_can_be_switched_off_for_a_second_forward() -> None:
    """§10 D3: ``qem_enabled=False`` keeps the step's single update from being repeated."""
    wq = lq.LQWeightQuantizer(2, 2, 18).train()
    w = torch.randn(2, 9)
    wq(w)
    after_one = wq.basis.clone()
    wq.qem_enabled = False
    wq(w)
    assert torch.equal(wq.basis, after_one)


def test_quantizer_state_resumes_the_moving_average_exactly() -> None:
    """§3.3 checkpointing: ``basis``, ``biased`` and ``steps`` are state; a reloaded quantizer
    continues exactly as the uninterrupted one."""
    gen = torch.Generator().manual_seed(5)
    batches = [torch.rand(3, 4, 5, generator=gen) * 2 for _ in range(4)]
    weights = [torch.randn(6, 2, 3, 3, generator=gen) for _ in range(4)]
    run = (lq.LQActQuantizer(2).train(), lq.LQWeightQuantizer(3, 6, 54).train())
    for x, w in zip(batches[:2], weights[:2], strict=True):
        run[0](x)
        run[1](w)
    resumed = (lq.LQActQuantizer(2).train(), lq.LQWeightQuantizer(3, 6, 54).train())
    for fresh, old in zip(resumed, run, strict=True):
        assert {"basis", "biased", "steps"} <= set(old.state_dict())
        fresh.load_state_dict(old.state_dict())
    for x, w in zip(batches[2:], weights[2:], strict=True):
        assert torch.equal(run[0](x), resumed[0](x))
        assert torch.equal(run[1](w), resumed[1](w))
    for fresh, old in zip(resumed, run, strict=True):
        assert torch.equal(fresh.basis, old.basis)
        assert int(fresh.steps) == 4


def test_named_schedules_follow_the_official_scripts() -> None:
    """§7: ImageNet linear 0.1 → 1e-5, ImageNet steps 30/60/85/95/105, CIFAR-10 80/160/300."""
    lin = lq._lr_factor("imagenet_linear", 64, 0.1)
    assert lin(0) == pytest.approx(1.0)
    assert 0.1 * lin(64) == pytest.approx(1e-5)
    assert 0.1 * lin(32) == pytest.approx((0.1 - 1e-5) / 2 + 1e-5)
    step = lq._lr_factor("imagenet_step", 110, 0.1)
    assert [step(e) for e in (29, 30, 60, 85, 95, 105)] == pytest.approx(
        [1, 0.1, 1e-2, 1e-3, 1e-4, 1e-5]
    )
    cifar = lq._lr_factor("cifar10_step", 400, 0.02)
    assert [cifar(e) for e in (79, 80, 159, 160, 299, 300)] == pytest.approx(
        [1, 0.1, 0.1, 1e-2, 1e-2, 1e-3]
    )
    cos = lq._lr_factor("cosine", 10, 0.01)
    assert (cos(0), cos(5), cos(10)) == pytest.approx((1.0, 0.5, 0.0))


# --- export and the contract --------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_export_decodes_to_the_eval_weight_exactly(k: int) -> None:
    """§8: codes (bit j ↔ b_j = +1) + per-channel basis; QuantConv2d eval weight == dequantize."""
    torch.manual_seed(k)
    conv = nn.Conv2d(3, 8, 3)
    wq = lq.LQWeightQuantizer(k, 8, lq.weight_fan_out(conv))
    layer = QuantConv2d.from_float(conv, wq).train()
    for _ in range(3):  # a few QEM steps so bases differ per channel
        layer(torch.randn(2, 3, 8, 8))
    with torch.no_grad():
        wq.basis[0, 0] = -abs(wq.basis[0, 0])  # a negative entry: the exported code stays exact
    layer.eval()
    qw = layer.export_weight()
    assert qw.kind is CodebookKind.BASES
    assert qw.codebook.shape == (8, k)
    assert qw.grouping.size == 27
    assert int(qw.codes.max()) < 2**k
    assert qw.uniform_bits == k
    assert torch.equal(layer.quantized_weight(), dequantize(qw))
    assert torch.equal(wq.eval()(layer.weight), dequantize(qw))
    training_y = lq.encode(layer.weight.detach().reshape(8, -1), wq.basis, True)[0]
    torch.testing.assert_close(dequantize(qw).reshape(8, -1), training_y, rtol=0, atol=1e-6)


def test_storage_of_a_64_to_64_conv_at_two_bits() -> None:
    """§8 and §11.1 (11): K·N + 32·K·C_out = 77,824 bits."""
    conv = nn.Conv2d(64, 64, 3, bias=False)
    qw = lq.LQWeightQuantizer(2, 64, 576).export(conv.weight)
    assert qw.payload_bits() + 32 * qw.codebook.numel() == 77_824


def test_activation_quantizer_rebuilds_from_kind_config_and_state() -> None:
    """The artifact path: cls(**config) + load_state_dict reproduces eval outputs exactly."""
    aq = lq.LQActQuantizer(3, debias=False, legacy_lowest_code=False).train()
    for s in range(3):
        aq(torch.rand(4, 5, 6, generator=torch.Generator().manual_seed(s)) * 2)
    aq.eval()
    rebuilt = InputQuantizer.from_kind(aq.kind, aq.config())
    rebuilt.load_state_dict(aq.state_dict())
    rebuilt.eval()
    x = torch.rand(3, 5, 6) * 3
    assert torch.equal(rebuilt(x), aq(x))


# --- the method ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    return load_dataset("digits", image_size=28, augment=False)


def test_params_accept_the_seed_bitwidths_only() -> None:
    for w in (1, 2, 3, 4, 32):
        parse_params("lq_nets", {"w_bits": w})
    for a in (2, 3, 4, 32):
        parse_params("lq_nets", {"a_bits": a})
    for bad in ({"w_bits": 5}, {"a_bits": 1}, {"a_bits": 8}, {"qem_momentum": 1.0}):
        with pytest.raises(InvalidParams):
            parse_params("lq_nets", bad)
    defaults = parse_params("lq_nets", {})
    assert (defaults.w_bits, defaults.a_bits, defaults.qem_debias) == (2, 2, True)
    assert defaults.qem_ridge_w == 1e-4
    assert defaults.qem_ridge_a == 0.0
    parse_params("lq_nets", lq.SMALL_DATA_PRESET)
    parse_params("lq_nets", lq.CIFAR10_PRESET)


def test_lenet5_placement_first_last_float_and_inputs_quantized() -> None:
    """§6 default rule: conv1 and the last FC float; conv2, fc1 quantized, inputs quantized."""
    model = zoo.build("lenet5", num_classes=10, in_channels=1)
    lq.LQNets._insert_quantizers(model, parse_params("lq_nets", {"w_bits": 2, "a_bits": 2}))
    names = dict(quant_layers(model))
    assert sorted(names) == ["classifier.0", "features.3"]
    for layer in names.values():
        assert isinstance(layer.input_quantizer, lq.LQActQuantizer)
        assert isinstance(layer.weight_quantizer, lq.LQWeightQuantizer)
    assert names["features.3"].weight_quantizer.basis.shape == (50, 2)
    weights_only = zoo.build("lenet5", num_classes=10, in_channels=1)
    lq.LQNets._insert_quantizers(weights_only, parse_params("lq_nets", {"a_bits": 32}))
    assert all(layer.input_quantizer is None for _, layer in quant_layers(weights_only))


def test_preact_resnet18_placement_and_shared_stage_quantizers() -> None:
    """§6.2 and §11.1 (10): 19 quantized weights, 16 activation quantizers; a projection
    shortcut quantizes its input exactly as its block's conv1 does, in training too."""
    torch.manual_seed(0)
    model = zoo.build("preact_resnet18", num_classes=10)
    lq.LQNets._insert_quantizers(model, parse_params("lq_nets", {"w_bits": 2, "a_bits": 2}))
    layers = dict(quant_layers(model))
    assert len(layers) == 19
    assert "conv1" not in layers
    assert "fc" not in layers
    leaders = [
        layer.input_quantizer
        for layer in layers.values()
        if isinstance(layer.input_quantizer, lq.LQActQuantizer)
        and not layer.input_quantizer._leader
    ]
    assert len(leaders) == 16
    seen: dict[str, torch.Tensor] = {}

    def grab(name: str):
        def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
            seen[name] = out.detach().clone()

        return hook

    for stage in ("layer2", "layer3", "layer4"):
        layers[f"{stage}.0.conv1"].input_quantizer.register_forward_hook(grab(f"{stage}.c"))
        layers[f"{stage}.0.downsample.0"].input_quantizer.register_forward_hook(grab(f"{stage}.d"))
    model.train()
    x = torch.randn(2, 3, 32, 32)
    for mode in ("train", "train", "eval"):
        model.train(mode == "train")
        model(x)
        for stage in ("layer2", "layer3", "layer4"):
            assert torch.equal(seen[f"{stage}.c"], seen[f"{stage}.d"]), (mode, stage)
            lead = layers[f"{stage}.0.conv1"].input_quantizer
            follow = layers[f"{stage}.0.downsample.0"].input_quantizer
            assert torch.equal(lead.basis, follow.basis)


def test_w32_a32_is_refused_when_the_params_are_parsed() -> None:
    """Every W x A of the grid is accepted except W32/A32, which would quantize nothing: the
    params are refused up front (a 4xx at submission, not a failed job)."""
    for w, a in itertools.product((1, 2, 3, 4, 32), (2, 3, 4, 32)):
        if (w, a) != (32, 32):
            parse_params("lq_nets", {"w_bits": w, "a_bits": a})
    with pytest.raises(InvalidParams, match="quantizes nothing"):
        parse_params("lq_nets", {"w_bits": 32, "a_bits": 32})


GRID = [(w, a) for w in (1, 2, 3, 4, 32) for a in (2, 3, 4, 32) if (w, a) != (32, 32)]


@pytest.mark.parametrize(("w_bits", "a_bits"), GRID)
def test_every_grid_combination_trains_and_evaluates_on_its_grid(w_bits: int, a_bits: int) -> None:
    """Each accepted W x A: a training step moves every basis by QEM and gives gradients; in eval
    the quantized weights and activations take 2^K values at most."""
    torch.manual_seed(w_bits * 10 + a_bits)
    model = zoo.build("lenet5", num_classes=10, in_channels=1)
    params = parse_params("lq_nets", {"w_bits": w_bits, "a_bits": a_bits})
    lq.LQNets._insert_quantizers(model, params)
    quantizers = [
        m for m in model.modules() if isinstance(m, lq.LQWeightQuantizer | lq.LQActQuantizer)
    ]
    assert sum(isinstance(q, lq.LQWeightQuantizer) for q in quantizers) == (w_bits < 32) * 2
    assert sum(isinstance(q, lq.LQActQuantizer) for q in quantizers) == (a_bits < 32) * 2
    x = torch.rand(8, 1, 28, 28) * 2
    model.train()
    model(x).square().mean().backward()
    assert all(int(q.steps) == 1 for q in quantizers)
    seen: list[torch.Tensor] = []
    for q in quantizers:
        if isinstance(q, lq.LQActQuantizer):
            q.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    model.eval()
    with torch.no_grad():
        model(x)
    for out in seen:
        assert out.unique().numel() <= 2**a_bits
    for _, layer in quant_layers(model):
        rows = layer.quantized_weight().reshape(layer.weight.shape[0], -1)
        assert max(r.unique().numel() for r in rows) <= 2**w_bits


def test_w32_placement_float_weights_with_input_activation_sites() -> None:
    """W32/A: the weights stay float; each layer that would be quantized gets an input site
    with an LQ-Nets activation quantizer (§6); in the pre-activation ResNet the projection
    shortcuts follow their block's conv1 quantizer (§6.2) as with quantized weights."""
    model = zoo.build("lenet5", num_classes=10, in_channels=1)
    lq.LQNets._insert_quantizers(model, parse_params("lq_nets", {"w_bits": 32, "a_bits": 3}))
    assert not quant_layers(model)
    sites = dict(activation_sites(model))
    assert sorted(sites) == ["classifier.0", "features.3"]
    for site in sites.values():
        assert site.where == "input"
        assert isinstance(site.inner, nn.Conv2d | nn.Linear)
        assert isinstance(site.quantizer, lq.LQActQuantizer)
        assert site.quantizer.bits == 3
    resnet = zoo.build("preact_resnet18", num_classes=10)
    lq.LQNets._insert_quantizers(resnet, parse_params("lq_nets", {"w_bits": 32, "a_bits": 2}))
    quantizers = [s.quantizer for _, s in activation_sites(resnet)]
    assert len(quantizers) == 19
    assert sum(1 for q in quantizers if not q._leader) == 16
    for stage in ("layer2", "layer3", "layer4"):
        lead = resnet.get_submodule(f"{stage}.0.conv1").quantizer
        follower = resnet.get_submodule(f"{stage}.0.downsample.0").quantizer
        assert follower._leader == (lead,)


def test_w32_a2_digits_trains_exports_and_reloads_identically(
    digits: DataBundle, tmp_path: Path
) -> None:
    """End to end at W32/A2: float weights train, activation bases move by QEM, the .qpack holds
    no quantized weight, and the reloaded model gives the same logits with its activations on
    the 2-bit grid of the stored bases."""
    torch.manual_seed(0)
    model = zoo.build("lenet5", num_classes=10, in_channels=1)
    params = parse_params("lq_nets", {**FAST, "w_bits": 32, "a_bits": 2, "basis_init": "qem"})
    small = DataBundle(**{**vars(digits), "train": subset(digits.train, 0.3, seed=0)})
    before = {
        n: m.weight.detach().clone() for n, m in model.named_modules() if hasattr(m, "weight")
    }
    quantized = get_method("lq_nets").quantize(model, small, params, RunContext())
    assert not quantized.training
    sites = activation_sites(quantized)
    assert [n for n, _ in sites] == ["features.3", "classifier.0"]
    for name, site in sites:
        assert not torch.equal(site.inner.weight.detach(), before[name]), "weights trained"
        assert int(site.quantizer.steps) > 0
        assert not torch.equal(site.quantizer.basis, lq.initial_act_basis(2))
    x = torch.stack([digits.val[i][0] for i in range(16)])
    path = tmp_path / "w32a2.qpack"
    manifest = save_artifact(
        quantized,
        path,
        spec=ModelSpec("lenet5", 10, 1, (28, 28)),
        method="lq_nets",
        params=params.model_dump(),
    )
    assert manifest["layers"] == []
    assert [s["kind"] for s in manifest["activation_sites"]] == ["lq_nets_act"] * 2
    loaded = load_artifact(path)
    seen: dict[str, torch.Tensor] = {}
    for name, site in activation_sites(loaded):
        site.quantizer.register_forward_hook(
            lambda _m, _i, out, name=name: seen.__setitem__(name, out.detach())
        )
    with torch.no_grad():
        assert torch.equal(loaded(x), quantized(x))
    for name, site in activation_sites(loaded):
        levels = lq.sorted_levels(site.quantizer.basis.view(1, -1), False)[0][0]  # (4,)
        levels[0] = 0.0  # the official lowest activation value (§2.2 step 4)
        gap = (seen[name].reshape(-1, 1) - levels).abs().amin(-1)
        assert float(gap.max()) == 0.0


def test_w2a2_lenet5_exports_to_onnx_and_onnxruntime_agrees(tmp_path: Path) -> None:
    """The eval forward of the activation quantizer has no sort (levels ranked by comparisons):
    ``export_onnx`` writes the W2A2 model and onnxruntime computes its logits."""
    ort = pytest.importorskip("onnxruntime")
    from quantcore.export import export_onnx

    torch.manual_seed(0)
    model = zoo.build("lenet5", num_classes=10, in_channels=1)
    lq.LQNets._insert_quantizers(model, parse_params("lq_nets", {"w_bits": 2, "a_bits": 2}))
    model.train()
    for _ in range(3):  # QEM moves the bases off their initial values
        model(torch.rand(16, 1, 28, 28) * 3)
    model.eval()
    path = tmp_path / "lq.onnx"
    export_onnx(model, path, input_shape=(1, 28, 28))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(1)
    for batch in (1, 3):
        x = torch.randn(batch, 1, 28, 28, generator=gen) * 2
        (logits,) = session.run(["logits"], {"input": x.numpy()})
        with torch.no_grad():
            expected = model(x).numpy()
        np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    "extra", [{}, {"w_bits": 1, "basis_init": "qem", "qem_debias": False}, {"a_bits": 32}]
)
def test_lenet5_digits_trains_exports_on_grid_and_reloads_identically(
    extra: dict[str, Any], digits: DataBundle, tmp_path: Path
) -> None:
    """End to end: a few QAT steps on digits, codes on the grid, eval == contract, .qpack reload
    gives the same logits (the contract suite of tests/unit/test_methods.py, for lq_nets)."""
    torch.manual_seed(0)
    model = zoo.build("lenet5", num_classes=10, in_channels=1)
    params = parse_params("lq_nets", {**FAST, **extra})
    small = DataBundle(**{**vars(digits), "train": subset(digits.train, 0.3, seed=0)})
    before = {
        n: m.weight.detach().clone() for n, m in model.named_modules() if hasattr(m, "weight")
    }
    ctx = RunContext(checkpoint_dir=tmp_path / "ckpt")
    quantized = get_method("lq_nets").quantize(model, small, params, ctx)
    assert not quantized.training
    layers = quant_layers(quantized)
    assert layers
    for name, layer in layers:
        assert not torch.equal(layer.weight.detach(), before[name]), "weights trained"
        wq = layer.weight_quantizer
        assert isinstance(wq, lq.LQWeightQuantizer)
        assert int(wq.steps) > 0 or not params.qem_debias
        qw = layer.export_weight()
        assert qw.shape == tuple(layer.weight.shape)
        assert bool((qw.codes.long() < (2 ** qw.bits.long()).unsqueeze(1)).all())
        assert torch.equal(layer.quantized_weight(), dequantize(qw).to(layer.weight.dtype))
        levels = lq.sorted_levels(wq.basis, True)[0]  # (C_out, 2^K): every weight is a level
        w_q = dequantize(qw).reshape(qw.shape[0], -1)
        gap = (w_q.unsqueeze(-1) - levels.unsqueeze(1)).abs().amin(-1)
        assert float(gap.max()) <= 1e-6
    x = torch.stack([digits.val[i][0] for i in range(16)])
    path = tmp_path / "lq.qpack"
    save_artifact(
        quantized,
        path,
        spec=ModelSpec("lenet5", 10, 1, (28, 28)),
        method="lq_nets",
        params=params.model_dump(),
    )
    loaded = load_artifact(path)
    with torch.no_grad():
        assert float((loaded(x) - quantized(x)).abs().max()) <= 1e-5
    assert (tmp_path / "ckpt" / "lq_nets.ckpt").exists()


def test_cancel_then_resume_reproduces_the_uninterrupted_run(
    digits: DataBundle, tmp_path: Path
) -> None:
    """The shared loop's cancel and checkpoint: a run cancelled in epoch 2 and restarted with the
    same context ends with the same bases and logits as one that never stopped (§3.3: the EMA
    state is part of the checkpoint)."""
    small = DataBundle(**{**vars(digits), "train": subset(digits.train, 0.15, seed=1)})
    params = parse_params("lq_nets", {**FAST, "epochs": 2})
    x = torch.stack([digits.val[i][0] for i in range(8)])

    def run(ctx: RunContext) -> nn.Module:
        torch.manual_seed(0)
        model = zoo.build("lenet5", num_classes=10, in_channels=1)
        return get_method("lq_nets").quantize(model, small, params, ctx)

    reference = run(RunContext())
    fractions: list[float] = []

    def on_progress(p: Any) -> None:
        if p.stage == "lq_nets":
            fractions.append(p.fraction)

    ckpt = tmp_path / "ckpt"

    def cancel_in_second_epoch() -> bool:  # the epoch-1 checkpoint exists: stop at once
        return (ckpt / "lq_nets.ckpt").exists()

    with pytest.raises(Cancelled):
        run(RunContext(checkpoint_dir=ckpt, should_cancel=cancel_in_second_epoch))
    resumed = run(RunContext(checkpoint_dir=ckpt, on_progress=on_progress))
    assert fractions
    assert min(fractions) > 0.5  # it trained epoch 2 only: epoch 1 came from the checkpoint
    for (_, a), (_, b) in zip(quant_layers(reference), quant_layers(resumed), strict=True):
        assert torch.equal(a.weight_quantizer.basis, b.weight_quantizer.basis)
        assert torch.equal(a.input_quantizer.basis, b.input_quantizer.basis)
    with torch.no_grad():
        assert torch.equal(reference(x), resumed(x))
