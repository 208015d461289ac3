# ruff: noqa: RUF002, RUF003  (the spec's notation: α, ρ, λ, −)
"""L-DNQ against ../shared/methods/l-dnq.md and ../shared/refvectors/l-dnq/ (README there).

Reference vectors come from the official functions (group A) and a transcription checked
against them (group B); the spec's §12 properties are tested on fresh seeded random inputs.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from quantcore import zoo
from quantcore.artifact import ModelSpec, load_artifact, save_artifact
from quantcore.context import RunContext
from quantcore.data import DataBundle, load_dataset, subset
from quantcore.data.tensors import TensorImageDataset
from quantcore.errors import Cancelled, InvalidParams
from quantcore.layers import QuantConv2d, quant_layers
from quantcore.methods import l_dnq as L
from quantcore.qweight import CodebookKind, dequantize
from quantcore.registry import get_method, parse_params
from quantcore.surgery import find_layers

REF = Path("/work/shared/refvectors/l-dnq")


def ref(name: str) -> Any:
    if not REF.exists():
        pytest.skip("L-DNQ reference vectors not present")
    return np.load(REF / name)


def t(a: Any) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a))


# ---------------------------------------------------------------------------------------------
# §2: the level set, rounding and ties
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kbits", L.KBITS)
def test_level_set_is_zero_plus_signed_powers_of_two(kbits: int) -> None:
    """§2.1 table: K levels, multipliers from levels_ties.npz, ⌈log₂K⌉-bit codes."""
    assert L.level_multipliers(kbits) == ref("levels_ties.npz")[f"k{kbits}_multipliers"].tolist()
    assert len(L.level_multipliers(kbits)) == kbits
    assert L.code_bits(kbits) == {3: 2, 5: 3, 7: 3, 9: 4, 11: 4}[kbits]


@pytest.mark.parametrize("kbits", [1, 2, 4, 13])
def test_other_level_counts_are_refused(kbits: int) -> None:
    with pytest.raises(NotImplementedError):
        L.level_multipliers(kbits)
    with pytest.raises(InvalidParams, match="kbits"):
        parse_params("l_dnq", {"kbits": kbits})


@pytest.mark.parametrize("kbits", L.KBITS)
def test_codes_match_official_quantize(kbits: int) -> None:
    """quantize.npz (official function): random and exact-tie inputs, α = 0.05."""
    d = ref("quantize.npz")
    for key in ("random", "ties"):
        got = L.level_codes(t(d[f"V_{key}"]), float(d["alpha"]), kbits, legacy_ties=True)
        assert got.long().tolist() == d[f"Q_{key}_k{kbits}"].tolist(), key


@pytest.mark.parametrize("kbits", L.KBITS)
def test_tie_rules_official_and_fixed(kbits: int) -> None:
    """levels_ties.npz: official strict/inclusive comparisons vs nearest-with-ties-to-zero."""
    d = ref("levels_ties.npz")
    x = t(d["tie_input"])
    official = L.level_codes(x, 1.0, kbits, legacy_ties=True).long().tolist()
    fixed = L.level_codes(x, 1.0, kbits, legacy_ties=False).long().tolist()
    assert official == d[f"k{kbits}_codes_official"].tolist()
    assert fixed == d[f"k{kbits}_codes_fixed"].tolist()


def test_spec_tie_table() -> None:
    """§12.2 'Levels and ties', α = 1, inputs [0.5, 1.5, 3, 6, 12, 20], negatives mirrored."""
    x = torch.tensor([0.5, 1.5, 3.0, 6.0, 12.0, 20.0], dtype=torch.float64)
    official = {
        3: [0, 1, 1, 1, 1, 1],
        5: [0, 0, 2, 2, 2, 2],
        7: [0, 0, 0, 4, 4, 4],
        9: [0, 0, 0, 0, 8, 8],
        11: [0, 1, 2, 4, 8, 16],
    }
    fixed = {5: [0, 1, 2, 2, 2, 2], 7: [0, 1, 2, 4, 4, 4], 9: [0, 1, 2, 4, 8, 8]}
    for k, row in official.items():
        assert L.level_codes(x, 1.0, k, legacy_ties=True).tolist() == row
        assert L.level_codes(-x, 1.0, k, legacy_ties=True).tolist() == [-c for c in row]
        assert L.level_codes(x, 1.0, k).tolist() == fixed.get(k, row)


@pytest.mark.parametrize(("kbits", "legacy"), list(itertools.product(L.KBITS, [False, True])))
def test_level_codes_match_the_loop_reference(kbits: int, legacy: bool) -> None:
    """Vectorised codes = the plain interval tests, on random values and exact ties (float64)."""
    gen = torch.Generator().manual_seed(kbits * 2 + legacy)
    for _ in range(5):
        alpha = float(torch.rand((), generator=gen, dtype=torch.float64)) + 0.01
        v = torch.randn(200, generator=gen, dtype=torch.float64) * alpha * 6
        ties = torch.tensor([0.5, 1.5, 3.0, 6.0, 12.0], dtype=torch.float64) * alpha
        v = torch.cat([v, ties, -ties, torch.zeros(1, dtype=torch.float64)])
        got = L.level_codes(v, alpha, kbits, legacy_ties=legacy)
        want = L.level_codes_reference(v, alpha, kbits, legacy_ties=legacy)
        assert got.long().tolist() == want.tolist()


@pytest.mark.parametrize("kbits", L.KBITS)
def test_fixed_rule_is_the_nearest_level(kbits: int) -> None:
    """§12.1(2): |v − α·m(v)| ≤ |v − α·m'| for every allowed m' (float32 inputs)."""
    gen = torch.Generator().manual_seed(kbits)
    v = torch.randn(500, generator=gen) * 3
    alpha = 0.37
    m = L.level_codes(v, alpha, kbits)
    levels = torch.tensor(L.level_multipliers(kbits), dtype=torch.float32) * alpha  # (K,)
    best = (v.unsqueeze(1) - levels).abs().min(1).values  # (500,)
    assert torch.all((v - alpha * m).abs() <= best + 1e-6)
    assert set(m.long().unique().tolist()) <= set(L.level_multipliers(kbits))


# ---------------------------------------------------------------------------------------------
# §2.4: the projection (α alternation restarted from α₀)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "outlier_"])
def test_projection_traces_match_projection_w8(prefix: str) -> None:
    """projection_w8.npz: α₀, codes at α₀, α/error trace, returned α and codes, every K."""
    d = ref("projection_w8.npz")
    w = t(d["w_outlier" if prefix else "w"])
    for row, kbits in enumerate(d["kbits"].tolist()):
        alpha0 = w.abs().mean()
        assert float(alpha0) == pytest.approx(d[f"{prefix}alpha0"][row], abs=1e-15)
        q0 = L.level_codes(w, alpha0, kbits, legacy_ties=True)
        assert q0.long().tolist() == d[f"{prefix}Q0"][row].tolist()
        p = L.project_levels(w, alpha0, kbits, legacy_ties=True)
        alphas, errors = d[f"{prefix}trace_alpha"][row], d[f"{prefix}trace_err"][row]
        steps = int((~np.isnan(alphas)).sum())
        np.testing.assert_allclose(p.alphas, alphas[:steps], atol=1e-12)
        np.testing.assert_allclose(p.errors, errors[:steps], atol=1e-12)
        assert float(p.alpha) == pytest.approx(d[f"{prefix}best_alpha"][row], abs=1e-12)
        assert p.codes.tolist() == d[f"{prefix}best_Q"][row].tolist()


def test_projection_worked_numbers() -> None:
    """§12.2: w, K = 3 → α 1.566667, Q [0,0,0,0,1,-1,1,0]; outlier K = 9 → error 0.695462."""
    w = torch.tensor([0.05, -0.12, 0.31, -0.47, 0.9, -1.6, 2.2, 0.0], dtype=torch.float64)
    p = L.project_levels(w, w.abs().mean(), 3)
    assert float(p.alpha) == pytest.approx(1.566667, abs=1e-6)
    assert p.codes.tolist() == [0, 0, 0, 0, 1, -1, 1, 0]
    assert p.errors[:3] == pytest.approx([3.236431, 1.861675, 1.180567], abs=1e-6)
    out = torch.tensor([0.01, -0.02, 0.05, -0.1, 0.2, -0.4, 0.8, 12.0], dtype=torch.float64)
    p = L.project_levels(out, out.abs().mean(), 9)
    assert p.codes.tolist() == [0, 0, 0, 0, 0, 0, 1, 8]
    assert p.error == pytest.approx(0.695462, abs=1e-6)


@pytest.mark.parametrize("kbits", L.KBITS)
def test_projection_matches_official_symmetric_projection(kbits: int) -> None:
    """symmetric_projection.npz (official function), (18, 4) inputs."""
    d = ref("symmetric_projection.npz")
    p = L.project_levels(
        t(d[f"V_k{kbits}"]), float(d[f"init_alpha_k{kbits}"]), kbits, legacy_ties=True
    )
    np.testing.assert_allclose((p.alpha * p.codes).numpy(), d[f"G_k{kbits}"], atol=1e-15)
    assert float(p.alpha) == pytest.approx(float(d[f"alpha_out_k{kbits}"]), abs=1e-14)


def test_projection_hand_example_from_alpha_0_1() -> None:
    """§12.2: K = 5 from α₀ = 0.1 → G = 0.163571·[0,−1,1,2,−2,0,0,−2], error 0.024621."""
    d = ref("symmetric_projection.npz")
    p = L.project_levels(t(d["V_small"]), float(d["init_alpha_small"]), 5, legacy_ties=True)
    np.testing.assert_allclose((p.alpha * p.codes).numpy(), d["G_small_k5"], atol=1e-15)
    assert p.codes.tolist() == [0, -1, 1, 2, -2, 0, 0, -2]
    assert p.error == pytest.approx(0.024621, abs=1e-6)


@pytest.mark.parametrize("kbits", L.KBITS)
def test_projection_properties_on_random_inputs(kbits: int) -> None:
    """§12.1(3, 4): Lloyd steps, never worse than rounding at α₀, the least visited candidate."""
    gen = torch.Generator().manual_seed(100 + kbits)
    for _ in range(10):
        v = torch.randn(13, 7, generator=gen, dtype=torch.float64) * 0.2
        alpha0 = v.abs().mean()
        p = L.project_levels(v, alpha0, kbits)
        q0 = L.level_codes(v, alpha0, kbits)
        assert p.error <= float(((v - alpha0 * q0) ** 2).sum()) + 1e-15
        assert p.error == min(p.errors)
        assert p.error == pytest.approx(float(((v - p.alpha * p.codes) ** 2).sum()), abs=1e-14)
        for prev, nxt in itertools.pairwise(p.alphas):  # each α refits the previous α's codes
            q = L.level_codes(v, prev, kbits)
            assert nxt == pytest.approx(float((v * q).sum() / (q * q).sum()), abs=1e-14)
        assert len(p.alphas) <= 11


def test_projection_with_all_zero_codes_keeps_alpha0() -> None:
    """B10: ⟨Q, Q⟩ = 0 would make α NaN; the α₀ candidate stays."""
    v = torch.full((4,), 0.01, dtype=torch.float64)
    p = L.project_levels(v, 1.0, 3)
    assert float(p.alpha) == 1.0
    assert p.codes.tolist() == [0, 0, 0, 0]
    assert math.isfinite(p.error)


# ---------------------------------------------------------------------------------------------
# §3: layer matrices and Hessians
# ---------------------------------------------------------------------------------------------


def test_hessian_accumulation_sums_one_more_batch_than_it_divides_by() -> None:
    """hessian_accumulation.npz: (h_0 + … + h_3) / 3 — the official 101/100 rule at 4/3."""
    d = ref("hessian_accumulation.npz")
    lin = nn.Linear(4, 1).double()
    per_batch = (
        L.batch_hessian(t(b), lin, layout="consistent", bias_row=True) for b in d["batches"]
    )
    used = int(d["n_batch_used"])
    h = L.accumulate_hessian(per_batch, num_batches=used + 1, divisor=used)
    np.testing.assert_allclose(h.numpy(), d["H"], atol=1e-14)


@pytest.mark.parametrize("stride", [1, 2])
def test_conv_hessian_layouts_match_admm_conv(stride: int) -> None:
    """admm_conv.npz: consistent (unfold, (c,i,j)) and official TF SAME (i,j,c) layouts."""
    d = ref("admm_conv.npz")
    conv = nn.Conv2d(2, 4, 3, stride=stride, padding=1, bias=False).double()
    suffix = "_stride2" if stride == 2 else ""
    for layout, key in (("consistent", "H_consistent"), ("tf_permuted", "H_official_tf_order")):
        h = L.batch_hessian(t(d["X"]), conv, layout=layout, bias_row=False)
        np.testing.assert_allclose(h.numpy(), d[key + suffix], atol=1e-14)


@pytest.mark.parametrize(("stride", "bias"), [(1, True), (2, False), (2, True)])
def test_consistent_hessian_gives_the_output_error(stride: int, bias: bool) -> None:
    """§12.1(8): tr(ΔᵀHΔ) = mean over samples × positions of the squared output change; PSD."""
    gen = torch.Generator().manual_seed(stride + 2 * bias)
    conv = nn.Conv2d(3, 5, 3, stride=stride, padding=1, bias=bias).double()
    x = torch.randn(6, 3, 9, 9, generator=gen, dtype=torch.float64)
    h = L.batch_hessian(x, conv, layout="consistent", bias_row=bias)
    assert torch.allclose(h, h.T)
    assert float(torch.linalg.eigvalsh(h).min()) > -1e-10
    dw = torch.randn(conv.weight.shape, generator=gen, dtype=torch.float64)
    db = torch.randn(5, generator=gen, dtype=torch.float64) if bias else None
    delta = dw.reshape(5, -1).T  # (27, 5)
    if bias:
        delta = torch.cat([delta, db.unsqueeze(0)], 0)  # (28, 5)
    out = F.conv2d(x, dw, db, stride=stride, padding=1)  # (N, O, h, w)
    want = (out**2).sum(1).mean()  # mean over samples and positions
    assert float(L.layer_error(delta, h)) == pytest.approx(float(want), rel=1e-10)


def test_linear_hessian_keeps_the_bias_entry() -> None:
    """§12.1(8): type F, H[-1, -1] = 101/100 with the official batch count and divisor."""
    lin = nn.Linear(3, 2).double()
    per_batch = (
        L.batch_hessian(
            torch.randn(2, 3, dtype=torch.float64), lin, layout="consistent", bias_row=True
        )
        for _ in range(120)
    )
    h = L.accumulate_hessian(per_batch, num_batches=101, divisor=100)
    assert float(h[-1, -1]) == pytest.approx(1.01, abs=1e-12)


def test_network_hessian_pass_records_the_layer_input() -> None:
    """collect_hessian hooks the layer's input in eval mode and stops the forward there."""
    torch.manual_seed(0)
    model = zoo.build("lenet5", num_classes=10, in_channels=1).double()
    layer = model.classifier[0]
    xs = [torch.randn(2, 1, 28, 28, dtype=torch.float64) for _ in range(3)]
    h = L.collect_hessian(
        model, layer, iter(xs), num_batches=3, divisor=2.0, layout="consistent", bias_row=True
    )
    feats = [model.flatten(model.features(x)) for x in xs]
    want = sum(L.batch_hessian(f, layer, layout="consistent", bias_row=True) for f in feats) / 2
    assert torch.allclose(h, want, atol=1e-12)
    assert model.training


# ---------------------------------------------------------------------------------------------
# §4: the per-layer ADMM solver
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kbits", [3, 5])
def test_admm_matches_official_conv_run(kbits: int) -> None:
    """admm_conv_k{3,5}.npz (official ADMM_quantization, type R): every iterate, the result."""
    d = ref(f"admm_conv_k{kbits}.npz")
    kernel = t(d["kernel"]).double()
    conv = nn.Conv2d(2, 4, 3, bias=False).double()
    conv.weight.data.copy_(kernel)
    w0 = L.unfold_weight(conv, bias_row=False)
    np.testing.assert_array_equal(w0.numpy(), d["W0_unfolded"])
    r = L.admm_quantize(w0, t(d["hessian"]), kbits, legacy_ties=True, record=True)
    assert r.iterations == int(d["n_admm_iters"]) == len(r.steps)
    assert r.alpha0 == pytest.approx(float(d["alpha0"]), abs=1e-15)
    assert r.rho == pytest.approx(float(d["rho"]), abs=1e-15)
    assert r.initial_error == pytest.approx(float(d["err_G0"]), abs=1e-12)
    assert r.error == pytest.approx(float(d["err_final"]), abs=1e-12)
    for i, step in enumerate(r.steps):
        np.testing.assert_allclose(step.v.numpy(), d["trace_V"][i], atol=1e-12)
        np.testing.assert_allclose(step.g.numpy(), d["trace_G"][i], atol=1e-12)
        assert step.proj_error == pytest.approx(d["trace_err"][i], abs=1e-12)
    g = (r.alpha * r.codes).T.reshape(kernel.shape)
    np.testing.assert_allclose(g.numpy(), d["quantized_kernel"], atol=1e-12)


def test_admm_matches_official_fc_run_with_bias() -> None:
    """admm_fc_k3.npz (official, type F, float32 inputs): the bias shares the weights' α."""
    d = ref("admm_fc_k3.npz")
    lin = nn.Linear(8, 5)
    lin.weight.data.copy_(t(d["weight"]))
    lin.bias.data.copy_(t(d["bias"]))
    w0 = L.unfold_weight(lin, bias_row=True).double()
    r = L.admm_quantize(w0, t(d["hessian"]).double(), 3, legacy_ties=True, record=True)
    assert r.iterations == int(d["n_admm_iters"])
    for i, step in enumerate(r.steps):  # the official run was float32 here: ≤ 6e-9 on G
        np.testing.assert_allclose(step.v.numpy(), d["trace_V"][i], atol=1e-6)
        np.testing.assert_allclose(step.g.numpy(), d["trace_G"][i], atol=1e-7)
    g = r.alpha * r.codes
    np.testing.assert_allclose(g[:-1].T.numpy(), d["quantized_weight"], atol=1e-7)
    np.testing.assert_allclose(g[-1].numpy(), d["quantized_bias"], atol=1e-7)


def test_admm_tiny_fc_every_iterate() -> None:
    """admm_tiny_fc.npz / §12.2: 9 iterations, iteration 7 rejected by the absolute 1e-3 rule."""
    d = ref("admm_tiny_fc.npz")
    lin = nn.Linear(2, 2).double()
    lin.weight.data.copy_(t(d["weight"]))
    lin.bias.data.copy_(t(d["bias"]))
    w0 = L.unfold_weight(lin, bias_row=True)
    np.testing.assert_array_equal(w0.numpy(), d["Wm"])
    h = L.batch_hessian(t(d["X"]), lin, layout="consistent", bias_row=True)
    np.testing.assert_allclose(h.numpy(), d["H"], atol=1e-15)
    r = L.admm_quantize(w0, h, 3, legacy_ties=True, record=True)
    assert (r.alpha0, r.rho) == (pytest.approx(0.325), pytest.approx(1.5))
    assert r.initial_error == pytest.approx(float(d["err0"]), abs=1e-14)
    assert r.iterations == 9
    for i, s in enumerate(r.steps):
        for attr, key in (("w", "iter_W"), ("v", "iter_V"), ("g", "iter_G"), ("dual", "iter_dual")):
            np.testing.assert_allclose(getattr(s, attr).numpy(), d[key][i], atol=1e-14)
        assert s.alpha == pytest.approx(d["iter_alpha"][i], abs=1e-14)
        assert s.prox_error == pytest.approx(d["iter_prox_err"][i], abs=1e-14)
        assert s.proj_error == pytest.approx(d["iter_proj_err"][i], abs=1e-14)
        assert s.improved == bool(d["iter_improved"][i])
    assert float(r.alpha) == pytest.approx(0.462632, abs=1e-6)
    assert r.codes.tolist() == d["best_Q"].tolist() == [[1, 1], [-1, 1], [1, -1]]
    assert r.error == pytest.approx(0.109904, abs=1e-6)
    # With a 1e-4 threshold iteration 7 (0.109069) would have been kept instead.
    assert L.admm_quantize(w0, h, 3, tol=1e-4).error == pytest.approx(0.109069, abs=1e-6)


def test_admm_fc_k7_acceptance_pattern() -> None:
    """admm_fc.npz: K = 7, iterations 1, 4, 5 accepted, error 0.1845 → 0.1610."""
    d = ref("admm_fc.npz")
    lin = nn.Linear(6, 3).double()
    lin.weight.data.copy_(t(d["weight"]))
    lin.bias.data.copy_(t(d["bias"]))
    h = L.batch_hessian(t(d["X"]), lin, layout="consistent", bias_row=True)
    np.testing.assert_allclose(h.numpy(), d["H"], atol=1e-14)
    r = L.admm_quantize(L.unfold_weight(lin, bias_row=True), h, 7, legacy_ties=True, record=True)
    assert r.alpha0 == pytest.approx(float(d["k7_alpha0"]), abs=1e-15)
    assert r.rho == pytest.approx(float(d["k7_rho"]), abs=1e-15)
    assert [s.improved for s in r.steps] == d["k7_iter_improved"].tolist()
    np.testing.assert_allclose([s.alpha for s in r.steps], d["k7_iter_alpha"], atol=1e-14)
    np.testing.assert_allclose([s.prox_error for s in r.steps], d["k7_iter_prox_err"], atol=1e-14)
    np.testing.assert_allclose([s.proj_error for s in r.steps], d["k7_iter_proj_err"], atol=1e-14)
    assert r.codes.tolist() == d["k7_best_Q"].tolist()
    assert float(r.alpha) == pytest.approx(float(d["k7_best_alpha"]), abs=1e-14)
    assert r.error == pytest.approx(float(d["k7_best_err"]), abs=1e-14)


@pytest.mark.parametrize(("layout", "prefix"), [("consistent", "consistent_"), ("tf", "official_")])
def test_admm_on_both_conv_layouts(layout: str, prefix: str) -> None:
    """admm_conv.npz: 5 iterations each; true output errors 0.2623 (consistent), 0.2443."""
    d = ref("admm_conv.npz")
    conv = nn.Conv2d(2, 4, 3, padding=1, bias=False).double()
    conv.weight.data.copy_(t(d["kernel"]))
    w0 = L.unfold_weight(conv, bias_row=False)
    h = t(d["H_consistent" if layout == "consistent" else "H_official_tf_order"])
    r = L.admm_quantize(w0, h, 3, legacy_ties=True, record=True)
    np.testing.assert_allclose(
        [s.proj_error for s in r.steps], d[f"{prefix}iter_proj_err"], atol=1e-14
    )
    assert r.initial_error == pytest.approx(float(d[f"{prefix}err0"]), abs=1e-14)
    g = (r.alpha * r.codes).T.reshape(4, 2, 3, 3)
    np.testing.assert_allclose(g.numpy(), d[f"{prefix}best_kernel"], atol=1e-14)
    true_err = float(L.layer_error(r.alpha * r.codes - w0, t(d["H_consistent"])))
    assert true_err == pytest.approx(float(d[f"{prefix}true_output_err"]), abs=1e-12)


@pytest.mark.parametrize("kbits", [3, 7, 11])
def test_admm_properties_on_random_layers(kbits: int) -> None:
    """§12.1(5-7): proximal residual, dual sum, best-iterate and stopping rules."""
    gen = torch.Generator().manual_seed(kbits)
    for _ in range(3):
        x = torch.relu(torch.randn(300, 10, generator=gen, dtype=torch.float64) + 0.1)
        h = x.T @ x / 300  # (10, 10)
        w0 = torch.randn(10, 6, generator=gen, dtype=torch.float64) * 0.3
        r = L.admm_quantize(w0, h, kbits, record=True)
        assert r.rho == float(h[0, 0])
        a = h + r.rho * torch.eye(10, dtype=torch.float64)
        g_prev, dual_prev, dual_sum = None, torch.zeros_like(w0), torch.zeros_like(w0)
        g_prev = r.alpha0 * L.level_codes(w0, r.alpha0, kbits)
        best, strikes = r.initial_error, 0
        for s in r.steps:
            resid = a @ s.w - (h @ w0 + r.rho * (g_prev - dual_prev))
            assert float(resid.norm()) <= 1e-8 * float((h @ w0).norm())
            dual_sum = dual_sum + s.w - s.g
            assert torch.allclose(s.dual, dual_sum, atol=1e-12)
            assert s.improved == (s.proj_error < best - 1e-3)
            best = s.proj_error if s.improved else best
            strikes = 0 if s.improved else strikes + 1
            g_prev, dual_prev = s.g, s.dual
        assert r.error == best <= r.initial_error
        assert strikes == 3 or r.iterations == 100
        levels = set(L.level_multipliers(kbits))
        assert set(r.codes.unique().tolist()) <= levels


def test_admm_survives_a_dead_first_feature() -> None:
    """B11: H[0,0] = 0 (dead input feature) still gives a finite grid result."""
    x = torch.relu(torch.randn(100, 5, dtype=torch.float64))
    x[:, 0] = 0
    h = x.T @ x / 100
    r = L.admm_quantize(torch.randn(5, 3, dtype=torch.float64), h, 3)
    assert r.rho > 0
    assert math.isfinite(r.error)
    assert math.isfinite(float(r.alpha))


@pytest.mark.parametrize("shape", ["tall", "wide", "square"])
def test_the_admm_memory_bound_holds_on_random_layers(shape: str) -> None:
    """admm_bytes (what the estimate counts for ADMM) against the measured tensor peak of a
    solve with its Hessian and weight, on a random layer of each aspect."""
    from quantcore.memory import TensorPeakMeter

    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    small, large = (
        int(torch.randint(20, 80, (), generator=gen)),
        int(torch.randint(300, 700, (), generator=gen)),
    )
    rows, outputs = {"tall": (large, small), "wide": (small, large), "square": (large, large)}[
        shape
    ]
    x = torch.randn(2 * rows, rows, generator=gen)
    w = torch.randn(rows, outputs, generator=gen) * 0.05
    h = (x.T @ x / (2 * rows)).double()  # (D, D) float64, as collect_hessian returns it
    with TensorPeakMeter(baseline=h.numel() * 8) as meter:  # H is alive throughout
        L.admm_quantize(w.double(), h, int(L.KBITS[int(torch.randint(0, 5, (), generator=gen))]))
    bound = L.admm_bytes(rows, outputs)
    assert 0.8 * bound <= meter.peak <= bound, (rows, outputs, meter.peak, bound)


# ---------------------------------------------------------------------------------------------
# The weight quantizer and its export
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kbits", L.KBITS)
def test_export_is_a_levels_codebook_that_dequantizes_to_the_grid(kbits: int) -> None:
    gen = torch.Generator().manual_seed(kbits)
    w = torch.randn(6, 3, 3, 3, generator=gen) * 0.1
    q = L.PowerOfTwoLevels(kbits, 0.04)
    qw = q.export(w)
    assert qw.kind is CodebookKind.LEVELS
    assert qw.codebook.shape == (1, kbits)
    levels = torch.tensor(L.level_multipliers(kbits), dtype=torch.float32) * q.alpha
    assert torch.equal(qw.codebook[0], levels)
    assert qw.bits.tolist() == [L.code_bits(kbits)]
    assert int(qw.codes.max()) < kbits
    want = q.alpha * L.level_codes(w, q.alpha, kbits)
    assert torch.equal(dequantize(qw), want)
    on_grid = dequantize(qw)  # a weight on the grid exports to itself, exactly
    assert torch.equal(dequantize(q.export(on_grid)), on_grid)


def test_quantized_layer_computes_with_the_exported_weight() -> None:
    conv = nn.Conv2d(3, 4, 3)
    layer = QuantConv2d.from_float(conv, L.PowerOfTwoLevels(5, 0.05))
    layer.eval()
    assert torch.equal(layer.quantized_weight(), dequantize(layer.export_weight()))
    layer.train()
    w = layer.quantized_weight()
    w.sum().backward()  # straight-through
    assert torch.equal(layer.weight.grad, torch.ones_like(layer.weight))


def test_a_frozen_weight_is_rounded_once_and_again_whenever_it_or_alpha_changes() -> None:
    """The memo of a weight without gradient: reused while nothing changed, never stale."""
    gen = torch.Generator().manual_seed(11)
    q = L.PowerOfTwoLevels(5, 0.05)

    def fresh(w: Tensor) -> Tensor:  # the straight-through values: w + (grid − w), as trained
        w = w.detach()
        return w + (q.alpha * L.level_codes(w, q.alpha, 5) - w)

    w = nn.Parameter(torch.randn(8, 4, generator=gen) * 0.1, requires_grad=False)
    first = q(w)
    assert torch.equal(first, fresh(w))
    assert q(w) is first  # nothing changed: the same tensor back, no rounding
    with torch.no_grad():
        w.copy_(torch.randn(8, 4, generator=gen) * 0.1)  # in place (load_state_dict does this)
    assert torch.equal(q(w), fresh(w))
    q.alpha.fill_(0.02)  # α changed in place
    assert torch.equal(q(w), fresh(w))
    w.data = torch.randn(8, 4, generator=gen) * 0.1  # new storage under the same Parameter
    assert torch.equal(q(w), fresh(w))
    other = nn.Parameter(w.detach().clone() * 2, requires_grad=False)  # another tensor
    assert torch.equal(q(other), fresh(other))
    w.requires_grad_(True)  # trainable again: the straight-through path, never the memo
    out = q(w)
    out.sum().backward()
    assert torch.equal(out, fresh(w))
    assert torch.equal(w.grad, torch.ones_like(w))


# ---------------------------------------------------------------------------------------------
# §5-§6: order, trainable sets, the stop rule
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "arch"), [("ResNet20", "resnet20B"), ("ResNet18-ImageNet", "resnet18")]
)
def test_layer_order_and_trainable_sets_match_the_official_lists(key: str, arch: str) -> None:
    """layer_order_and_trainable.json: order and the cascade's parameters after each layer."""
    if not REF.exists():
        pytest.skip("L-DNQ reference vectors not present")
    d = json.loads((REF / "layer_order_and_trainable.json").read_text())[key]
    if arch == "resnet20B":
        from quantcore.zoo.resnet_cifar import resnet20

        model = resnet20(shortcut="B")
    else:
        model = zoo.build(arch, num_classes=1000, in_channels=3)
    order = [n for n, _ in find_layers(model)]
    assert [f"module.{n}" for n in order] == d["layer_order"]
    for name in order:
        got = L.cascade_trainable(model, name)
        assert [f"module.{n}" for n in got] == d["trainable_after_quantizing"][f"module.{name}"]


def test_lenet_trainable_sets() -> None:
    """§6 on LeNet-5: later layers and the just-quantized layer's bias; float layers always."""
    model = zoo.build("lenet5", num_classes=10, in_channels=1)
    assert L.cascade_trainable(model, "classifier.2") == ["classifier.2.bias"]
    assert L.cascade_trainable(model, "features.3") == [
        "features.3.bias",
        "classifier.0.weight",
        "classifier.0.bias",
        "classifier.2.weight",
        "classifier.2.bias",
    ]
    with_float_first = L.cascade_trainable(model, "classifier.0", float_layers=["features.0"])
    assert with_float_first[:2] == ["features.0.weight", "features.0.bias"]


def test_rho_modes() -> None:
    """D2: ρ = rho_factor·H[0,0] (official) or rho_factor·mean(diag H)."""
    x = torch.randn(50, 4, dtype=torch.float64)
    h = x.T @ x / 50
    w0 = torch.randn(4, 2, dtype=torch.float64)
    assert L.admm_quantize(w0, h, 3, rho_factor=2.0).rho == pytest.approx(2 * float(h[0, 0]))
    got = L.admm_quantize(w0, h, 3, rho_mode="mean_diag").rho
    assert got == pytest.approx(float(h.diagonal().mean()))


def test_plateau_rule() -> None:
    """§12.1(10): constant loss stops at the 3rd check; a drop > gap after it resets."""
    rule = L.PlateauRule(1e-4, 3)
    assert [rule.check(0.5) for _ in range(3)] == [False, False, True]
    rule = L.PlateauRule(1e-4, 3)
    assert not rule.check(0.5)  # first check always strikes (0.5 > 0)
    assert not rule.check(0.4)  # dropped by 0.1 > 1e-4: reset
    assert rule.strikes == 0
    assert [rule.check(0.39995), rule.check(0.3999), rule.check(0.39985)] == [False, False, True]


# ---------------------------------------------------------------------------------------------
# The method end to end (lenet5 + digits 28x28, tiny settings)
# ---------------------------------------------------------------------------------------------

FAST = {
    "data_ratio": 0.05,
    "batch_size": 16,
    "hessian_batch_size": 8,
    "hessian_num_batches": 3,
    "hessian_divisor": 3.0,
    "admm_max_iter": 4,
    "cascade_max_epochs": 1,
}


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    return load_dataset("digits", image_size=28, augment=False)


def _run(digits: DataBundle, ctx: RunContext, **extra: Any) -> tuple[nn.Module, L.LDNQ]:
    torch.manual_seed(0)
    model = zoo.build("lenet5", num_classes=10, in_channels=1)
    method = L.LDNQ()
    params = parse_params("l_dnq", {**FAST, **extra})
    return method.quantize(model, digits, params, ctx), method


def test_fixed_targets_are_the_teachers_logits_where_they_cannot_change(
    digits: DataBundle,
) -> None:
    torch.manual_seed(0)
    teacher = zoo.build("lenet5", num_classes=10, in_channels=1)
    part = subset(digits.train, 0.1, seed=int(torch.randint(0, 1000, ())), balanced=False)
    ctx = RunContext()
    targets = L.fixed_targets(teacher, part, "train", 16, ctx)
    assert targets is not None
    x = torch.stack([part[i][0] for i in range(len(part))])
    torch.testing.assert_close(targets, teacher(x), rtol=1e-5, atol=1e-5)


def test_no_fixed_targets_with_augmentation_batch_statistics_or_too_many_logits(
    digits: DataBundle,
) -> None:
    ctx = RunContext()
    lenet = zoo.build("lenet5", num_classes=10, in_channels=1)
    part = subset(digits.train, 0.1, seed=0, balanced=False)
    images = digits.train.images  # type: ignore[attr-defined]
    flipped = TensorImageDataset(
        images, digits.train.targets, mean=(0.5,), std=(0.5,), augment=lambda x: x.flip(-1)
    )
    assert L.fixed_targets(lenet, subset(flipped, 0.1, seed=0), "train", 16, ctx) is None
    resnet = zoo.build("resnet20", num_classes=10, in_channels=1)  # BatchNorm
    assert L.fixed_targets(resnet, part, "train", 16, ctx) is None
    assert L.fixed_targets(resnet, part, "eval", 16, ctx) is not None  # running statistics
    tiny = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))  # 7,850 parameters
    big = subset(digits.train, 1.0, seed=0, balanced=False)  # > 7,850 / 10 images
    assert L.fixed_targets(tiny, big, "train", 64, ctx) is None
    assert L.fixed_targets(tiny, subset(digits.train, 0.3, seed=0), "train", 64, ctx) is not None


@pytest.mark.slow
def test_cached_targets_train_as_the_per_step_teacher(digits: DataBundle) -> None:
    """The cascade with the logits computed once ends where the per-step teacher's does, up to
    float rounding: the same batches, the same epochs."""
    runs = []
    for cache in (True, False):
        model, method = _run(
            digits, RunContext(), cascade_cache_targets=cache, cascade_max_epochs=2, data_ratio=0.1
        )
        runs.append((model.state_dict(), method.layer_records))
    (cached, rec_c), (direct, rec_d) = runs
    assert [r.cascade_epochs for r in rec_c] == [r.cascade_epochs for r in rec_d]
    for name, value in cached.items():
        torch.testing.assert_close(value, direct[name], rtol=1e-4, atol=1e-5, msg=name)


# ---------------------------------------------------------------------------------------------
# The frozen prefix: computed once per layer where nothing in it trains or depends on the batch
# ---------------------------------------------------------------------------------------------


def _cascade_split(
    model: nn.Module, name: str, *, split_bias: bool = True
) -> L.FrozenPrefix | None:
    """Quantize ``name`` as the method does, then split with the cascade's trainable set."""
    layer = model.get_submodule(name)
    L._swap_in(model, name, layer, L.PowerOfTwoLevels(3, 0.05))  # type: ignore[arg-type]
    return L.split_frozen_prefix(model, _cascade_parameters(model, name), split_bias=split_bias)


def _cascade_parameters(model: nn.Module, name: str) -> list[Tensor]:
    """What the cascade after ``name`` trains (§6)."""
    wanted = set(L.cascade_trainable(model, name))
    return [p for n, p in model.named_parameters() if n in wanted and p.requires_grad]


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_the_frozen_prefix_is_the_latest_cut_and_front_then_rest_is_the_network(
    mode: str,
) -> None:
    """LeNet5, layer by layer (§6: the layer just quantized trains only its bias): the front
    runs through that layer's weight and the max pooling after it, and the rest adds the bias
    first; without the bias split it ends before the layer. Front then rest is the network."""
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    model = zoo.build("lenet5", num_classes=10, in_channels=1).train(mode == "train")
    x = torch.randn(5, 1, 28, 28)
    expected = {  # layer → (cut with the bias split, cut without)
        "features.0": ("features_1", None),  # conv1 → pool | bias → ReLU; nothing before conv1
        "features.3": ("features_4", "features_2"),  # conv2 → pool | …; conv1 → pool → ReLU |
        "classifier.0": ("classifier_0", "flatten"),  # no pooling after a Linear
        "classifier.2": ("classifier_2", "classifier_1"),  # the rest adds fc2's bias only
    }
    for name, (cut, plain_cut) in expected.items():
        split = _cascade_split(model, name)
        assert split is not None
        assert (split.cut, split.bias) == (cut, name)
        plain = L.split_frozen_prefix(model, _cascade_parameters(model, name), split_bias=False)
        assert (plain.cut if plain else None) == plain_cut, name
        with torch.no_grad():
            torch.testing.assert_close(split.rest(split.front(x)), model(x))
            if plain is not None:
                assert torch.equal(plain.rest(plain.front(x)), model(x))
        assert model.get_submodule(name) in set(split.front.modules())  # the same objects
        assert model.get_submodule(name).bias in set(split.rest.parameters())


@pytest.mark.parametrize("arch", [a.name for a in zoo.list_architectures()])
def test_every_zoo_network_splits_into_a_front_and_rest_that_compute_it(arch: str) -> None:
    """Whatever the cut (none, the first conv, deep in the network), front then rest is the
    network: every architecture a user can upload traces, and the split loses nothing."""
    info = next(a for a in zoo.list_architectures() if a.name == arch)
    model = zoo.build(arch, num_classes=10, in_channels=info.default_in_channels).eval()
    x = torch.randn(2, info.default_in_channels, *info.default_input_size)
    layers = find_layers(model)
    for i in sorted({0, len(layers) // 2, len(layers) - 1}):
        split = _cascade_split(model, layers[i][0])
        plain = L.split_frozen_prefix(
            model, _cascade_parameters(model, layers[i][0]), split_bias=False
        )
        with torch.no_grad():
            if split is not None:
                torch.testing.assert_close(split.rest(split.front(x)), model(x))
            if plain is not None:
                assert torch.equal(plain.rest(plain.front(x)), model(x)), (arch, plain.cut)


def test_the_frozen_prefix_stops_at_batch_statistics_dropout_randomness_and_a_second_tensor() -> (
    None
):
    class Net(nn.Module):
        def __init__(self, middle: nn.Module, *, noise: bool = False, skip: bool = False) -> None:
            super().__init__()
            self.a = nn.Conv2d(1, 4, 3)
            self.middle = middle
            self.b = nn.Conv2d(4, 4, 3)
            self.fc = nn.Linear(4 * 4 * 4, 3)
            self.noise, self.skip = noise, skip

        def forward(self, x: Tensor) -> Tensor:
            y = self.middle(self.a(x))
            if self.noise:
                y = y + torch.rand_like(y)
            z = self.b(y)
            if self.skip:
                z = z + y[:, :, 1:-1, 1:-1]  # y crosses the cut beside z
            return self.fc(z.flatten(1))

    def cut(net: nn.Module) -> str | None:
        split = L.split_frozen_prefix(net, list(net.fc.parameters()))  # only fc trains
        return split.cut if split else None

    x = torch.randn(2, 1, 8, 8)
    assert cut(Net(nn.ReLU())) == "flatten"
    assert cut(Net(nn.BatchNorm2d(4)).train()) == "a"  # batch statistics (and running ones)
    assert cut(Net(nn.BatchNorm2d(4)).eval()) == "flatten"  # frozen running statistics
    assert cut(Net(nn.Dropout(0.5)).train()) == "a"
    assert cut(Net(nn.Dropout(0.5)).eval()) == "flatten"
    assert cut(Net(nn.ReLU(), noise=True)) == "middle"
    skip = Net(nn.ReLU(), skip=True)
    assert cut(skip) == "flatten"  # the add joins them again
    split = L.split_frozen_prefix(skip, list(skip.fc.parameters()))
    assert split is not None
    with torch.no_grad():
        assert torch.equal(split.rest(split.front(x)), skip(x))
    skip_b = Net(nn.ReLU(), skip=True)  # b trains: y and a(x) cannot both cross
    assert L.split_frozen_prefix(skip_b, [*skip_b.b.parameters(), *skip_b.fc.parameters()]).cut == (
        "middle"
    )

    class Branchy(nn.Module):  # data-dependent control flow: not traceable, no split
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(x if x.sum() > 0 else -x)

    assert L.split_frozen_prefix(Branchy(), []) is None


def test_a_trainable_bias_is_added_behind_the_cut_after_the_max_pooling() -> None:
    """§6 trains the just-quantized layer's bias, not its weight: the front computes the layer
    without the bias and through the max pooling after a conv (max(y + b) = max(y) + b), the
    rest adds the bias. The logits and every gradient are those of the network, on fresh
    random weights and inputs. Other pooling or a Linear's (last-dim) bias end the front at the
    layer; a pooled value read twice ends it there."""

    class Net(nn.Module):
        def __init__(self, pool: nn.Module, *, twice: bool = False) -> None:
            super().__init__()
            self.a = nn.Conv2d(2, 3, 3)  # 10 → 8
            self.pool = pool  # 8 → 4
            self.fc = nn.Linear(3 * 2 * 2, 5)
            self.twice = twice

        def forward(self, x: Tensor) -> Tensor:
            y = self.pool(self.a(x))
            z = F.max_pool2d(y, 2)  # 4 → 2
            if self.twice:
                z = z + y[:, :, ::2, ::2]  # the pooled value read again beyond the cut
            return self.fc(F.relu(z).flatten(1))

    def split(net: Net) -> L.FrozenPrefix | None:
        net.a.weight.requires_grad_(False)
        return L.split_frozen_prefix(net, [net.a.bias, *net.fc.parameters()])

    torch.manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    x = torch.randn(4, 2, 10, 10)
    net = Net(nn.MaxPool2d(2))
    cut = split(net)
    assert cut is not None
    assert (cut.cut, cut.bias) == ("max_pool2d", "a")  # through both max poolings
    with torch.no_grad():
        expected = F.max_pool2d(F.max_pool2d(F.conv2d(x, net.a.weight), 2), 2)
        torch.testing.assert_close(cut.front(x), expected)
    grads = []
    for forward in (net, lambda v: cut.rest(cut.front(v))):
        net.zero_grad()
        forward(x).square().sum().backward()
        grads.append([p.grad.clone() for p in (net.a.bias, net.fc.weight, net.fc.bias)])
    for ours, theirs in zip(*grads, strict=True):
        torch.testing.assert_close(ours, theirs)

    assert split(Net(nn.AvgPool2d(2))).cut == "a"  # an average is not exact: bias next
    twice = Net(nn.MaxPool2d(2), twice=True)
    cut = split(twice)
    assert cut is not None
    assert cut.cut == "pool"  # read twice: both readers take it with the bias added
    with torch.no_grad():
        torch.testing.assert_close(cut.rest(cut.front(x)), twice(x))
    assert split(Net(nn.MaxPool2d(2, return_indices=True))).cut == "a"  # (values, indices)
    trains = Net(nn.MaxPool2d(2))  # the weight trains too: nothing to cut off
    assert L.split_frozen_prefix(trains, [*trains.a.parameters(), *trains.fc.parameters()]) is None

    class Dense(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(6, 8)
            self.fc = nn.Linear(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(F.max_pool1d(self.a(x), 2))  # pools over the bias's own axis

    dense = Dense()
    dense.a.weight.requires_grad_(False)
    cut = L.split_frozen_prefix(dense, [dense.a.bias, *dense.fc.parameters()])
    assert cut is not None
    assert (cut.cut, cut.bias) == ("a", "a")
    v = torch.randn(3, 6)
    with torch.no_grad():
        torch.testing.assert_close(cut.rest(cut.front(v)), dense(v))


def test_subset_outputs_are_the_fronts_output_in_subset_order_within_the_budget(
    digits: DataBundle,
) -> None:
    model = zoo.build("lenet5", num_classes=10, in_channels=1)
    split = _cascade_split(model, "features.0")  # conv1 without its bias, pooled
    assert split is not None
    assert split.cut == "features_1"
    part = subset(digits.train, 0.1, seed=int(torch.randint(0, 1000, ())), balanced=False)
    x = torch.stack([part[i][0] for i in range(len(part))])
    need = len(part) * 20 * 12 * 12 * 4  # (N, 20, 12, 12) float32
    out = L.subset_outputs(split.front, part, 16, need, RunContext())
    assert out is not None
    assert out.is_contiguous(memory_format=torch.channels_last)  # CPU maps: faster convs
    with torch.no_grad():
        torch.testing.assert_close(out, split.front(x), rtol=1e-5, atol=1e-6)
    assert L.subset_outputs(split.front, part, 16, need - 1, RunContext()) is None


@pytest.mark.slow
@pytest.mark.parametrize("targets", [True, False])
def test_the_cached_prefix_trains_as_the_whole_network(digits: DataBundle, targets: bool) -> None:
    """The cascade on the cached front ends where the whole network's does, up to float
    rounding: the same batches, the same epochs (with cached targets and with the teacher)."""
    runs = []
    for cache in (True, False):
        model, method = _run(
            digits,
            RunContext(),
            cascade_cache_prefix=cache,
            cascade_cache_targets=targets,
            cascade_max_epochs=3,
            data_ratio=0.1,
            batch_size=64,  # at 16 a step's spare memory holds only the fc layers' fronts
        )
        fronts = {  # each layer without its bias (and conv's max pooling): all four
            "features.0": "features_1",
            "features.3": "features_4",
            "classifier.0": "classifier_0",
            "classifier.2": "classifier_2",
        }
        assert method.cached_fronts == (fronts if cache else {})
        runs.append((model.state_dict(), method.layer_records))
    (cached, rec_c), (direct, rec_d) = runs
    assert [r.cascade_steps for r in rec_c] == [r.cascade_steps for r in rec_d]
    for name, value in cached.items():
        torch.testing.assert_close(value, direct[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
def test_the_prefix_cache_does_not_raise_the_peak(digits: DataBundle) -> None:
    """The cache takes only what the whole network's training step needs beyond the rest's, so
    the run's tensor peak (which the estimate bounds) stays where it is without the cache."""
    from quantcore.memory import TensorPeakMeter, module_bytes

    peaks = []
    for cache in (True, False):
        torch.manual_seed(0)
        model = zoo.build("lenet5", num_classes=10, in_channels=1)
        method = L.LDNQ()
        params = parse_params(
            "l_dnq",
            {**FAST, "data_ratio": 1.0, "batch_size": 128, "cascade_cache_prefix": cache},
        )
        with TensorPeakMeter(baseline=module_bytes(model)) as meter:
            method.quantize(model, digits, params, RunContext())
        assert bool(method.cached_fronts) == cache
        peaks.append(meter.peak)
    cached, plain = peaks
    assert cached <= plain * 1.01, (cached, plain)


def test_method_is_registered_with_a_valid_schema() -> None:
    method = get_method("l_dnq")
    schema = method.Params.model_json_schema()["properties"]
    for field, spec in schema.items():
        assert spec.get("description"), field
        if spec.get("type") in ("number", "integer"):
            with pytest.raises(InvalidParams, match=field):
                parse_params("l_dnq", {field: math.nan})
            if "maximum" in spec:
                with pytest.raises(InvalidParams, match=field):
                    parse_params("l_dnq", {field: spec["maximum"] + 1})


@pytest.mark.slow
def test_lenet_end_to_end_exports_and_round_trips(digits: DataBundle, tmp_path: Path) -> None:
    """Every layer quantized (first and last too), on its grid, frozen; exact artifact reload."""
    events: list[Any] = []
    model, method = _run(digits, RunContext(on_progress=events.append))
    assert not model.training
    layers = quant_layers(model)
    assert [n for n, _ in layers] == ["features.0", "features.3", "classifier.0", "classifier.2"]
    assert [r.layer for r in method.layer_records] == [n for n, _ in layers]
    for (name, layer), rec in zip(layers, method.layer_records, strict=True):
        qw = layer.export_weight()
        assert qw.codebook.shape == (1, 3)
        assert float(layer.weight_quantizer.alpha) == pytest.approx(rec.alpha, rel=1e-7)
        assert torch.equal(layer.quantized_weight(), dequantize(qw))
        assert torch.equal(layer.weight, dequantize(qw)), name  # unchanged by later cascades
        assert 1 <= rec.cascade_epochs <= FAST["cascade_max_epochs"]
        assert rec.admm_error <= rec.admm_initial_error
    assert any(e.metrics.get("cascade_epoch") for e in events)
    x = torch.stack([digits.val[i][0] for i in range(16)])
    path = tmp_path / "l_dnq.qpack"
    spec = ModelSpec("lenet5", 10, 1, (28, 28))
    save_artifact(
        model, path, spec=spec, method="l_dnq", params=parse_params("l_dnq", FAST).model_dump()
    )
    loaded = load_artifact(path)
    assert (loaded(x) - model(x)).abs().max() <= 1e-5


@pytest.mark.slow
def test_cancelled_run_resumes_at_the_next_layer(digits: DataBundle, tmp_path: Path) -> None:
    """Checkpoint between layers: a redelivered run continues and ends as an uninterrupted one."""
    done: list[float] = []

    def on_progress(p: Any) -> None:
        if p.stage == "l_dnq" and "cascade_epochs" in p.metrics:
            done.append(p.metrics["layer"])

    ctx = RunContext(
        checkpoint_dir=tmp_path, on_progress=on_progress, should_cancel=lambda: len(done) >= 2
    )
    with pytest.raises(Cancelled):
        _run(digits, ctx, cascade=False)
    finished: list[float] = []
    ctx = RunContext(
        checkpoint_dir=tmp_path,
        on_progress=lambda p: (
            finished.append(p.metrics["layer"]) if "cascade_epochs" in p.metrics else None
        ),
    )
    resumed, method = _run(digits, ctx, cascade=False)
    assert finished == [3, 4]  # layers 1 and 2 came from the checkpoint
    assert len(method.layer_records) == 4
    straight, _ = _run(digits, RunContext(), cascade=False)
    x = torch.stack([digits.val[i][0] for i in range(8)])
    assert torch.equal(resumed(x), straight(x))
