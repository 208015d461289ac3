# ruff: noqa: RUF002, RUF003  (the spec's notation: α, β, −)
"""ALQ against ../shared/methods/alq.md (§ numbers) and ../shared/refvectors/alq/ (`_fixed` files;
`_code` only for the legacy flags). Tolerances from the refvectors README: 1e-5 on α and ŵ, B and
masks equal; α compared as α ⊙ mask."""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from quantcore import zoo
from quantcore.artifact import ModelSpec, load_artifact, save_artifact
from quantcore.context import RunContext
from quantcore.data import DataBundle, load_dataset
from quantcore.data.subset import subset
from quantcore.errors import Cancelled, InvalidParams
from quantcore.layers import QuantLinear, quant_layers
from quantcore.methods import alq
from quantcore.primitives import levels_from_bases
from quantcore.qweight import dequantize
from quantcore.registry import get_method, list_methods, parse_params

REF = Path(__file__).resolve().parents[4] / "shared" / "refvectors" / "alq"
needs_ref = pytest.mark.skipif(not REF.is_dir(), reason="ALQ reference vectors not present")


def _npz(name: str) -> dict[str, np.ndarray]:
    return dict(np.load(REF / name))


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def _mb(w: np.ndarray | torch.Tensor, structure: str, s: int, i_max: int) -> alq.MultiBitQuantizer:
    w = _t(w) if isinstance(w, np.ndarray) else w
    return alq.MultiBitQuantizer(w, structure, s, i_max)


def _assert_layer(q: alq.MultiBitQuantizer, d: dict, prefix: str, w_key: str = "w") -> None:
    """Compare a quantizer with a refvector snapshot in the code's [O, G/O, I, ·] layout."""
    g, i = q.alpha.shape
    mask = d[f"{prefix}mask"].reshape(g, i) if f"{prefix}mask" in d else q.mask.numpy()
    assert (q.mask.numpy() == mask).all()
    np.testing.assert_allclose(
        q.alpha.numpy() * mask, d[f"{prefix}alpha"].reshape(g, i) * mask, atol=1e-5
    )
    if f"{prefix}B" in d:
        assert (q.beta.numpy() == d[f"{prefix}B"].reshape(g, i, -1)).all()
    np.testing.assert_allclose(q.w_hat.numpy(), d[f"{prefix}{w_key}"], atol=1e-5)
    if f"{prefix}w_FP" in d:
        np.testing.assert_allclose(
            q.grouping.merge(q.w_ref, q.shape).numpy(), d[f"{prefix}w_FP"], atol=1e-5
        )


# ---------------------------------------------------------------------------------------------
# §2.2 groupings, §2.3 structure rules


def test_groupings_follow_the_index_maps_of_section_2_2() -> None:
    w = torch.randn(4, 3, 2, 5)
    k = alq.structure_grouping(w.shape, alq.Structure.KERNELWISE).split(w)
    assert torch.equal(k[2 * 3 + 1], w[2, 1].reshape(-1))
    p = alq.structure_grouping(w.shape, alq.Structure.PIXELWISE).split(w)
    assert torch.equal(p[2 * 10 + 1 * 5 + 3], w[2, :, 1, 3])  # group o·KH·KW + h·KW + w
    c = alq.structure_grouping(w.shape, alq.Structure.CHANNELWISE).split(w)
    assert torch.equal(c[3], w[3].reshape(-1))
    fc = torch.randn(5, 12)
    s = alq.structure_grouping(fc.shape, alq.Structure.SUBCHANNELWISE, 3).split(fc)
    assert torch.equal(s[4 * 3 + 2], fc[4, 8:12])


def test_subchannels_that_do_not_divide_in_features_are_invalid_params() -> None:
    with pytest.raises(InvalidParams, match="subchannels=3"):
        alq.structure_grouping((5, 10), alq.Structure.SUBCHANNELWISE, 3)


def test_official_structures_of_lenet5_vgg_small_and_resnet18() -> None:
    lenet = [(20, 1, 5, 5), (50, 20, 5, 5), (500, 800), (10, 500)]
    assert alq.layer_structures(lenet, 6, 512) == [
        ("kernelwise", 1),
        ("kernelwise", 1),
        ("subchannelwise", 2),
        ("subchannelwise", 1),
    ]
    vgg = [(128, 3, 3, 3), (128, 128, 3, 3), (256, 128, 3, 3), (256, 256, 3, 3)]
    vgg += [(512, 256, 3, 3), (512, 512, 3, 3), (1024, 8192), (1024, 1024), (10, 1024)]
    got = alq.layer_structures(vgg, 6, 512)
    assert got == [("channelwise", 1)] + [("pixelwise", 1)] * 5 + [
        ("subchannelwise", 16),
        ("subchannelwise", 2),
        ("subchannelwise", 2),
    ]
    resnet = [(64, 3, 7, 7), (64, 64, 3, 3), (128, 64, 1, 1), (1000, 512)]
    assert alq.layer_structures(resnet, 8, 512) == [
        ("channelwise", 1),
        ("pixelwise", 1),
        ("pixelwise", 1),
        ("subchannelwise", 2),
    ]


def test_default_rule_avoids_pixelwise_groups_not_larger_than_i_max() -> None:
    shapes = [(8, 3, 3, 3), (32, 1, 3, 3), (32, 4, 1, 1)]  # depthwise, then a tiny 1x1
    assert alq.layer_structures(shapes, 6, 512)[1:] == [("kernelwise", 1), ("channelwise", 1)]


# ---------------------------------------------------------------------------------------------
# §3 initialisation


def test_init_worked_example_of_section_3() -> None:
    w = torch.tensor([[0.9, -0.4, 0.3, -1.2, 0.05]])
    alpha, beta, mask = alq.greedy_init(w, 2)
    torch.testing.assert_close(alpha[0], torch.tensor([0.40, 0.65]), atol=1e-6, rtol=0)
    assert beta[0].tolist() == [[1, 1, -1, -1, -1], [1, -1, 1, -1, 1]]
    assert mask.all()
    w_hat = (alpha[0, :, None] * beta[0].float()).sum(0)
    torch.testing.assert_close(
        w_hat, torch.tensor([1.05, -0.25, 0.25, -1.05, 0.25]), atol=1e-6, rtol=0
    )


@needs_ref
@pytest.mark.parametrize(
    "case",
    [
        "worked_n5_I2",
        "randn_n25_I6_seed0",
        "randn_n9_I3_seed1",
        "randn_n64_I8_seed2",
        "early_stop_n3_I3",
        "small_n2_I4",
    ],
)
def test_init_matches_transform_bin_basis(case: str) -> None:
    """init_transform_bin_basis.npz."""
    d = _npz("init_transform_bin_basis.npz")
    alpha, beta, mask = alq.greedy_init(_t(d[f"{case}__w"])[None], int(d[f"{case}__I_max"]))
    dim = int(d[f"{case}__dim"])
    assert int(mask.sum()) == dim
    assert bool(mask[0, :dim].all())
    np.testing.assert_allclose(alpha[0, :dim].numpy(), d[f"{case}__alpha"], atol=1e-5)
    assert (beta[0, :dim].numpy() == d[f"{case}__beta"]).all()
    w_hat = (alpha[0, :, None] * beta[0].float()).sum(0)
    np.testing.assert_allclose(w_hat.numpy(), d[f"{case}__w_hat"], atol=1e-5)


@needs_ref
@pytest.mark.parametrize("structure", ["kernelwise", "pixelwise", "channelwise"])
def test_conv_layer_init_matches_reference(structure: str) -> None:
    """init_layers.npz, conv cases (I_max 3)."""
    d = _npz("init_layers.npz")
    q = _mb(d["conv_w"], structure, 1, 3)
    _assert_layer(q, d, f"conv_{structure}__", "w_hat")
    assert q.bitwidth_terms()[0] / q.bitwidth_terms()[1] == float(d[f"conv_{structure}__avg_bit"])


@needs_ref
def test_fc_layer_init_matches_reference() -> None:
    """init_layers.npz, FC with 3 subchannels."""
    d = _npz("init_layers.npz")
    _assert_layer(_mb(d["fc_w"], "subchannelwise", 3, 3), d, "fc_subc3__", "w_hat")


def _random_groups(gen: torch.Generator, g: int, n: int) -> torch.Tensor:
    w = torch.randn(g, n, generator=gen) * torch.rand(g, 1, generator=gen)
    w[0] = 0  # an all-zero group (P1)
    w[1] = torch.where(w[1] >= 0, 1.0, -1.0) * 0.3  # a group the first basis fits exactly
    return w


@pytest.mark.parametrize(("n", "i_max"), [(9, 3), (25, 6), (40, 8), (16, 1)])
def test_batched_init_equals_per_group_loop(n: int, i_max: int) -> None:
    gen = torch.Generator().manual_seed(n * 10 + i_max)
    w = _random_groups(gen, 12, n)
    alpha, beta, mask = alq.greedy_init(w, i_max)
    for g in range(w.shape[0]):
        a_ref, b_ref = alq.greedy_init_reference(w[g], i_max)
        k = len(a_ref)
        assert int(mask[g].sum()) == k
        assert bool(mask[g, :k].all())
        torch.testing.assert_close(alpha[g, :k], a_ref, atol=1e-6, rtol=1e-5)
        assert torch.equal(beta[g, :k].float(), b_ref)
        assert not alpha[g, k:].any()
        assert not beta[g, k:].any()


@pytest.mark.parametrize("seed", range(4))
def test_init_properties_of_section_12_1(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    n = [9, 25, 64, 147][seed]
    w = _random_groups(gen, 10, n)
    w[2, :3] = 0.0  # sign(0) = +1 on the first basis
    errors = []
    for i_max in range(1, 7):
        alpha, beta, mask = alq.greedy_init(w, i_max)
        bf = beta.float()
        assert bool((mask.sum(1) <= min(i_max, n)).all())
        assert bool((alpha[mask] > 0).all())
        live = torch.where(mask, alpha, math.inf)
        assert bool((live[:, 1:] >= live[:, :-1]).all())  # ascending
        assert bool((bf.abs()[mask] == 1).all())
        assert not bf[~mask].any()
        w_hat = (alpha[..., None] * bf).sum(1)
        resid = w - w_hat
        proj = (bf @ resid.unsqueeze(-1)).squeeze(-1).abs()  # (G, I)
        bound = 1e-5 * w.norm(dim=1, keepdim=True) * math.sqrt(n)
        assert bool((proj <= bound).all())
        errors.append(resid.norm(dim=1))
        if i_max == 1:
            live_rows = mask[:, 0]
            torch.testing.assert_close(alpha[live_rows, 0], w[live_rows].abs().mean(1))
            first = torch.where(w[live_rows] >= 0, 1.0, -1.0)
            assert torch.equal(bf[live_rows, 0], first)
    assert not mask[0].any()  # the zero group has I = 0
    for a, b in itertools.pairwise(errors):
        assert bool((b <= a + 1e-6).all())


def test_init_on_a_zero_layer_does_not_crash() -> None:
    q = alq.MultiBitQuantizer(torch.zeros(3, 2, 5, 5), "kernelwise", 1, 6)
    assert not q.mask.any()
    assert not q.w_hat.any()
    assert int(q.export().bits.max()) == 0


# ---------------------------------------------------------------------------------------------
# §5.2 basis search and refit


def test_level_table_and_search_of_section_12_2() -> None:
    levels, codes = levels_from_bases(torch.tensor([0.40, 0.65]))
    torch.testing.assert_close(levels, torch.tensor([-1.05, -0.25, 0.25, 1.05]))
    assert codes.tolist() == [0, 1, 2, 3]
    w = torch.tensor([[0.9, -0.4, 0.3, -1.2, 0.05]])
    beta = alq.search_basis(w, torch.tensor([[0.40, 0.65]]), torch.ones(1, 2, dtype=torch.bool))
    assert beta[0].tolist() == [[1, 1, -1, -1, -1], [1, -1, 1, -1, 1]]


def test_search_and_refit_worked_example() -> None:
    """§5.2 worked example (also `ex1` of basis_step_direct.npz)."""
    target = torch.tensor([[1.0, 0.2, -0.4, -1.1]])
    h = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    beta = alq.search_basis(target, torch.tensor([[0.3, 0.8]]), mask)
    assert beta[0].tolist() == [[1, -1, 1, -1], [1, 1, -1, -1]]
    alpha = alq.refit_alpha(beta, h, target, mask)
    torch.testing.assert_close(alpha[0], torch.tensor([0.38, 0.70]), atol=1e-5, rtol=0)
    w_hat = (alpha[0, :, None] * beta[0].float()).sum(0)
    torch.testing.assert_close(w_hat, torch.tensor([1.08, 0.32, -0.32, -1.08]), atol=1e-5, rtol=0)


@needs_ref
def test_basis_step_direct_reference() -> None:
    """basis_step_direct.npz: ex1 and ex2 (a masked slot, random P and H)."""
    d = _npz("basis_step_direct.npz")
    for ex, g, i in (("ex1", 1, 2), ("ex2", 6, 3)):
        a_in = _t(d[f"{ex}__alpha_in"]).reshape(g, i)
        mask = _t(d[f"{ex}__mask"]).reshape(g, i) if ex == "ex2" else torch.ones(1, 2, dtype=bool)
        n = d[f"{ex}__w_FP"].size // g
        target = _t(d[f"{ex}__w_FP"]).reshape(g, n) - _t(d[f"{ex}__pseudo_grad"]).reshape(
            g, n
        ) / _t(d[f"{ex}__pseudo_hessian"]).reshape(g, n)
        beta = alq.search_basis(target, a_in, mask)
        assert (beta.numpy() == d[f"{ex}__B_after_search"].reshape(g, i, n)).all()
        h = _t(d[f"{ex}__pseudo_hessian"]).reshape(g, n)
        alpha, beta = alq.normalise_signs(alq.refit_alpha(beta, h, target, mask), beta)
        np.testing.assert_allclose(
            alpha.numpy(), d[f"{ex}__alpha_after_refit"].reshape(g, i), atol=1e-5
        )
        assert (beta.numpy() == d[f"{ex}__B_after_refit"].reshape(g, i, n)).all()
        w_hat = (alpha[..., None] * beta.float()).sum(1)
        np.testing.assert_allclose(
            w_hat.numpy().reshape(-1), d[f"{ex}__w_hat"].reshape(-1), atol=1e-5
        )


@pytest.mark.parametrize("seed", range(3))
def test_search_equals_exhaustive_loop_and_is_optimal(seed: int) -> None:
    """§12.1 item 4, against the loop that enumerates every code (first minimum wins)."""
    gen = torch.Generator().manual_seed(seed)
    g, i, n = 7, [2, 4, 6][seed], 11
    alpha = torch.rand(g, i, generator=gen) * 0.2
    mask = torch.rand(g, i, generator=gen) > 0.3
    mask[0] = False  # a fully pruned group: all β zero
    target = torch.randn(g, n, generator=gen) * 0.3
    beta = alq.search_basis(target, alpha, mask)
    assert torch.equal(beta, alq.search_basis_reference(target, alpha, mask))
    w_new = ((alpha * mask)[..., None] * beta.float()).sum(1)
    levels, _ = levels_from_bases(alpha * mask)  # (G, 2^I)
    best = (target.unsqueeze(-1) - levels.unsqueeze(1)).abs().min(-1).values
    assert bool(((target - w_new).abs() <= best + 1e-7).all())
    assert not beta[~mask].any()


def test_refit_is_the_ridge_least_squares_minimiser() -> None:
    """§12.1 item 5: B diag(H)(Bᵀα − w*) + 1e-6·α ≈ 0 on valid slots; pruned α = 0."""
    gen = torch.Generator().manual_seed(7)
    g, i, n = 6, 4, 20
    mask = torch.rand(g, i, generator=gen) > 0.25
    beta = (torch.where(torch.rand(g, i, n, generator=gen) > 0.5, 1, -1) * mask[..., None]).to(
        torch.int8
    )
    h = torch.rand(g, n, generator=gen) + 0.1
    target = torch.randn(g, n, generator=gen)
    alpha = alq.refit_alpha(beta, h, target, mask)
    b = beta.double()
    resid = (b.transpose(1, 2) @ alpha.double().unsqueeze(-1)).squeeze(-1) - target.double()
    grad = (b @ (h.double() * resid).unsqueeze(-1)).squeeze(-1) + 1e-6 * alpha.double()
    assert float(grad[mask].abs().max()) < 1e-4
    assert not alpha[~mask].any()
    a2, b2 = alq.normalise_signs(alpha, beta)
    assert bool((a2 >= 0).all())
    torch.testing.assert_close(
        (a2[..., None] * b2.float()).sum(1), (alpha[..., None] * beta.float()).sum(1)
    )


# ---------------------------------------------------------------------------------------------
# §4-§6 the optimizer steps


def test_first_coordinate_step_worked_example() -> None:
    """§5.1: α 0.5, g_α −0.2, lr 0.01, t = 1 → 0.50999998; §12.1 item 7."""
    q = alq.MultiBitQuantizer(torch.tensor([[1.0, -1.0]]), "subchannelwise", 1, 1)
    q.alpha.fill_(0.5)
    q.beta.copy_(torch.tensor([[[1, 0]]], dtype=torch.int8))  # β·g = g_0
    q.coordinate_step(torch.tensor([[-0.2, 0.7]]), 0.01)
    assert abs(float(q.alpha[0, 0]) - 0.50999998) < 1e-7
    assert int(q.step) == int(q.step_alpha) == 1


def test_importance_and_projection_worked_numbers() -> None:
    """§12.2: D = −0.0005 + 0.0025 = 0.002; v = [1e-4, 4e-4, 0, 5e-4] → v_α = 1e-3."""
    d = alq.pruning_importance(torch.tensor(0.5), torch.tensor(0.001), torch.tensor(0.02))
    assert abs(float(d) - 0.002) < 1e-9
    q = alq.MultiBitQuantizer(torch.tensor([[0.3, -0.2, 0.1, -0.4]]), "subchannelwise", 1, 2)
    q.v.copy_(torch.tensor([[1e-4, 4e-4, 0.0, 5e-4]]))
    q.v_max.copy_(q.v)
    q.project_states()
    torch.testing.assert_close(q.v_alpha[0][q.mask[0]], torch.full((2,), 1e-3))
    torch.testing.assert_close(q.v_max_alpha, q.v_alpha)


def _sequence_layers(d: dict) -> dict[str, alq.MultiBitQuantizer]:
    return {"A": _mb(d["w0_A"], "kernelwise", 1, 3), "B": _mb(d["w0_B"], "subchannelwise", 2, 3)}


def _assert_states(q: alq.MultiBitQuantizer, d: dict, prefix: str) -> None:
    _assert_layer(q, d, prefix)
    g, i = q.alpha.shape
    mask = q.mask.numpy()
    for mine, theirs in (("m", "exp_avg"), ("v", "exp_avg_sq"), ("v_max", "max_exp_avg_sq")):
        got = q.grouping.merge(getattr(q, mine), q.shape).numpy()
        np.testing.assert_allclose(got, d[prefix + theirs], atol=1e-7, rtol=1e-5)
    for mine, theirs in (
        ("m_alpha", "exp_avg_alpha"),
        ("v_alpha", "exp_avg_sq_alpha"),
        ("v_max_alpha", "max_exp_avg_sq_alpha"),
    ):
        got = getattr(q, mine).numpy() * mask
        np.testing.assert_allclose(
            got, d[prefix + theirs].reshape(g, i) * mask, atol=1e-7, rtol=1e-5
        )
    assert int(q.step) == int(d[prefix + "step"]) == int(q.step_alpha)
    assert int(q.step_alpha) == int(d[prefix + "step_alpha"])


@needs_ref
@pytest.mark.parametrize("variant", ["fixed", "code"])
def test_optimizer_sequence(variant: str) -> None:
    """optimizer_sequence_{fixed,code}.npz: 11 calls; `code` with both legacy flags on."""
    d = _npz(f"optimizer_sequence_{variant}.npz")
    legacy = variant == "code"
    layers = _sequence_layers(d)
    for name, q in layers.items():
        _assert_layer(q, d, f"s00_init__{name}__")
    gen = torch.Generator().manual_seed(0)
    for k, mode in enumerate(d["plan"], 1):
        grads = {n: _t(d[f"s{k:02d}__grad_{n}"]) for n in layers}
        if mode == "prune":
            before = sum(int(q.mask.sum()) for q in layers.values())
            removed = alq.prune_step(
                list(layers.values()),
                list(grads.values()),
                0.01,
                1.0,
                0.25,
                gen,
                legacy_importance_bug=legacy,
            )
            assert removed == int(before * 0.25)  # ⌊30·0.25⌋ = 7, then ⌊23·0.25⌋ = 5
        for name, q in layers.items():
            if mode == "coordinate":
                q.coordinate_step(grads[name], 0.01)
            elif mode in ("basis", "ste"):
                q.basis_step(grads[name], 0.01, ste=mode == "ste", legacy_sign_bug=legacy)
            _assert_states(q, d, f"s{k:02d}_{mode}__{name}__")
            assert not q.alpha[~q.mask].any()  # §12.1 item 2
            assert not q.beta[~q.mask].any()


@needs_ref
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_optimizer_sequence_on_cuda_follows_the_input_device() -> None:
    d = _npz("optimizer_sequence_fixed.npz")
    cpu = _sequence_layers(d)
    gpu = {
        n: _mb(_t(d[f"w0_{n}"]).cuda(), *cfg)
        for n, cfg in (("A", ("kernelwise", 1, 3)), ("B", ("subchannelwise", 2, 3)))
    }
    for k, mode in enumerate(d["plan"], 1):
        grads = {n: _t(d[f"s{k:02d}__grad_{n}"]) for n in cpu}
        if mode == "prune":
            for layers, dev in ((cpu, "cpu"), (gpu, "cuda")):
                qs = list(layers.values())
                gs = [g.to(dev) for g in grads.values()]
                alq.prune_step(qs, gs, 0.01, 1.0, 0.25, torch.Generator().manual_seed(0))
            continue
        for layers, dev in ((cpu, "cpu"), (gpu, "cuda")):
            for name, q in layers.items():
                if mode == "coordinate":
                    q.coordinate_step(grads[name].to(dev), 0.01)
                else:
                    q.basis_step(grads[name].to(dev), 0.01, ste=mode == "ste")
    for name in cpu:
        assert gpu[name].w_hat.device.type == "cuda"
        assert torch.equal(gpu[name].mask.cpu(), cpu[name].mask)
        torch.testing.assert_close(gpu[name].w_hat.cpu(), cpu[name].w_hat, atol=1e-5, rtol=0)


@needs_ref
def test_legacy_sign_bug_diverges_from_fixed_at_the_first_basis_step() -> None:
    d = _npz("optimizer_sequence_fixed.npz")
    layers = _sequence_layers(d)
    for k in range(1, 4):
        for name, q in layers.items():
            g = _t(d[f"s{k:02d}__grad_{name}"])
            if k < 3:
                q.coordinate_step(g, 0.01)
            else:
                q.basis_step(g, 0.01, legacy_sign_bug=True)
    code = _npz("optimizer_sequence_code.npz")
    assert not np.array_equal(code["s03_basis__A__B"], d["s03_basis__A__B"]) or not np.array_equal(
        code["s03_basis__B__B"], d["s03_basis__B__B"]
    )
    for name, q in layers.items():
        assert (q.beta.numpy() == code[f"s03_basis__{name}__B"].reshape(q.beta.shape)).all()


@needs_ref
def test_first_basis_step_targets_the_pretrained_weights() -> None:
    """first_basis_step_pixelwise.npz: basis, coordinate, basis, ste (D3)."""
    d = _npz("first_basis_step_pixelwise.npz")
    q = _mb(d["w0"], "pixelwise", 1, 3)
    _assert_layer(q, d, "init__", "w_hat")
    assert torch.equal(q.grouping.merge(q.w_ref, q.shape), _t(d["w0"]))
    for k, mode in enumerate(["basis", "coordinate", "basis", "ste"], 1):
        g = _t(d[f"s{k}__grad"])
        if mode == "coordinate":
            q.coordinate_step(g, 0.01)
        else:
            q.basis_step(g, 0.01, ste=mode == "ste")
        _assert_layer(q, d, f"s{k}_{mode}__")


@needs_ref
def test_prune_preselect_top_k_half() -> None:
    """prune_preselect_topk05.npz: two warm-up coordinate calls, then one pruning call."""
    d = _npz("prune_preselect_topk05.npz")
    layers = _sequence_layers(_npz("optimizer_sequence_fixed.npz"))
    for warm in ("warm0", "warm1"):
        for name, q in layers.items():
            q.coordinate_step(_t(d[f"{warm}__grad_{name}"]), 0.01)
    for name, q in layers.items():
        _assert_layer(q, {**d, f"before__{name}__w": q.w_hat.numpy()}, f"before__{name}__")
    alpha_before = {n: q.alpha.clone() for n, q in layers.items()}
    beta_before = {n: q.beta.clone() for n, q in layers.items()}
    n_before = sum(q.bitwidth_terms()[0] for q in layers.values())
    total = sum(q.bitwidth_terms()[1] for q in layers.values())
    removed = alq.prune_step(
        list(layers.values()),
        [_t(d[f"prune__grad_{n}"]) for n in layers],
        0.01,
        0.5,
        0.4,
        torch.Generator().manual_seed(0),
    )
    assert removed == 6  # pool 6 + 9 = 15, ⌊15·0.4⌋
    n_after = sum(q.bitwidth_terms()[0] for q in layers.values())
    for name, q in layers.items():
        _assert_layer(q, d, f"after__{name}__")
        kept = q.mask
        assert torch.equal(q.alpha[kept], alpha_before[name][kept])  # unpruned α, β unchanged
        assert torch.equal(q.beta[kept], beta_before[name][kept])
    # §12.1 item 8: the weighted bitwidth drops by exactly Σ n_g / N over removed slots
    removed_weights = 0  # from the reference masks: Σ over removed slots of n_g
    for name, q in layers.items():
        gone = int(d[f"before__{name}__mask"].sum()) - int(d[f"after__{name}__mask"].sum())
        removed_weights += gone * q.grouping.size
    assert (n_before - n_after) / total == removed_weights / total


def test_lenet5_schedule_and_first_pruning_call() -> None:
    """§12.1 item 9: M_p = 160/391; a first call on 12,180 slots prunes 24 or 25."""
    m_p = alq.pruning_rate_per_step(0.8, 0.005, 1, math.ceil(50000 / 128))
    assert abs(m_p - 160 / 391) < 1e-12
    torch.manual_seed(0)
    model = zoo.build("lenet5", num_classes=10, in_channels=1)
    shapes = [
        tuple(m.weight.shape) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    plan = alq.layer_structures(shapes, 6, 512)
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    qs = [alq.MultiBitQuantizer(w, s, k, 6) for w, (s, k) in zip(weights, plan, strict=True)]
    assert sum(int(q.mask.sum()) for q in qs) == 12180
    grads = [torch.randn(w.shape) * 1e-3 for w in weights]
    removed = alq.prune_step(qs, grads, 1.238e-6, 0.005, m_p, torch.Generator().manual_seed(1))
    assert removed in (24, 25)
    assert sum(int(q.mask.sum()) for q in qs) == 12180 - removed


def test_empty_pool_prunes_nothing() -> None:
    q = alq.MultiBitQuantizer(torch.randn(2, 8), "subchannelwise", 1, 2)
    assert alq.prune_step([q], [torch.randn(2, 8)], 1e-3, 0.01, 0.5, torch.Generator()) == 0
    assert bool(q.mask.all())


# ---------------------------------------------------------------------------------------------
# Export through the contract, storage (§9)


def test_export_dequantizes_exactly_to_the_weight_with_pruned_holes() -> None:
    gen = torch.Generator().manual_seed(3)
    q = alq.MultiBitQuantizer(torch.randn(6, 2, 3, 3, generator=gen), "kernelwise", 1, 4)
    q.prune(torch.tensor([1, 2, 4 * 3 + 0, 4 * 5 + 0, 4 * 5 + 1, 4 * 5 + 2, 4 * 5 + 3]))
    q.refresh()
    qw = q.export()
    assert qw.kind == "bases"
    assert qw.bits.tolist()[:6] == [2, 4, 4, 3, 4, 0]
    assert torch.equal(dequantize(qw), q.w_hat)
    assert bool((qw.codes.long() < (2 ** qw.bits.long()).unsqueeze(1)).all())
    ref = (q.alpha[..., None] * q.beta.float()).sum(1)  # Σ mask α β
    torch.testing.assert_close(q.groups(dequantize(qw)), ref, atol=1e-7, rtol=0)
    live = q.mask[0].nonzero().squeeze(1)  # slots 0 and 3 live in group 0
    for k, slot in enumerate(live.tolist()):
        bit = (qw.codes[0].long() >> k) & 1
        assert torch.equal(bit * 2 - 1, q.beta[0, slot].long())
        assert float(qw.codebook[0, k]) == float(q.alpha[0, slot])


def test_storage_formula_on_the_hand_built_state() -> None:
    """§12.1 item 10: one group n = 8 with I = 2 and one bias → (16 + 64 + 32)/8 = 14 bytes."""
    lin = nn.Linear(8, 1)
    wq = alq.MultiBitQuantizer(torch.randn(1, 8), "subchannelwise", 1, 2)
    model = nn.Sequential(QuantLinear.from_float(lin, wq))
    assert int(wq.mask.sum()) == 2
    assert alq.storage_bytes(model)["storage_bytes"] == 14.0
    assert alq.storage_bytes(model)["bases_only_bytes"] == 2.0


# ---------------------------------------------------------------------------------------------
# The method end to end (lenet5 + digits 28x28)

# Proposed FAST_PARAMS entry for tests/unit/test_methods.py: 6 steps on the full `digits`.
FAST = {
    "outer_iterations": 1,
    "epochs_basis": 1,
    "epochs_coord": 0,
    "epochs_prune": 1,
    "top_k": 0.05,
    "posttrain": False,
    "batch_size": 512,
}


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    return load_dataset("digits", image_size=28, augment=False)


@pytest.fixture(scope="module")
def small_digits(digits: DataBundle) -> DataBundle:
    return dataclasses.replace(digits, train=subset(digits.train, 0.05, seed=0))


def _lenet() -> nn.Module:
    torch.manual_seed(0)
    return zoo.build("lenet5", num_classes=10, in_channels=1)


def test_small_data_preset_is_valid_and_shorter_than_the_paper_schedule() -> None:
    preset = alq.ALQParams(**alq.SMALL_DATA_PRESET)
    assert len(alq._schedule(preset)) < len(alq._schedule(alq.ALQParams()))
    paper = alq._schedule(alq.ALQParams())
    assert len(paper) == 4 * 31 + 50 + 20  # §7.1: 31 epochs per outer iteration, POSTTRAIN 70
    assert abs(paper[30].lr - 1e-3 * 0.8**30) < 1e-15  # pruning at the last coordinate lr
    assert paper[30].mode == "prune"


def test_params_follow_the_registry_contract() -> None:
    """The checks of tests/unit/test_methods.py on ALQ's Params (it registers on import)."""
    info = next(i for i in list_methods() if i.name == "alq")
    props = info.params_schema["properties"]
    for field, spec in props.items():
        assert spec.get("description"), field
        assert "default" in spec, field
    with pytest.raises(InvalidParams, match="not_a_param"):
        parse_params("alq", {"not_a_param": 1})
    for field, spec in props.items():
        if spec.get("type") in ("number", "integer"):
            with pytest.raises(InvalidParams, match=field):
                parse_params("alq", {field: math.nan})
            if "maximum" in spec:
                with pytest.raises(InvalidParams, match=field):
                    parse_params("alq", {field: spec["maximum"] + 1})
    defaults = parse_params("alq", {})
    assert (defaults.i_max, defaults.lr, defaults.prune_ratio, defaults.top_k) == (
        6,
        1e-3,
        0.8,
        0.005,
    )
    assert not defaults.legacy_importance_bug
    assert not defaults.legacy_sign_bug


def test_method_honours_the_contract_and_round_trips(digits: DataBundle, tmp_path: Path) -> None:
    """The contract suite of tests/unit/test_methods.py with FAST, plus ALQ's own checks."""
    params = parse_params("alq", FAST)
    reports = []
    ctx = RunContext(on_progress=reports.append)
    model = get_method("alq").quantize(_lenet(), digits, params, ctx)
    assert not model.training
    layers = quant_layers(model)
    assert [n for n, _ in layers] == ["features.0", "features.3", "classifier.0", "classifier.2"]
    bits = 0
    for name, layer in layers:
        qw = layer.export_weight()
        assert qw.shape == tuple(layer.weight.shape), name
        assert bool((qw.codes.long() < (2 ** qw.bits.long()).unsqueeze(1)).all()), name
        assert torch.equal(layer.quantized_weight(), dequantize(qw).to(layer.weight.dtype))
        bits += qw.payload_bits()
    assert bits < 6 * sum(layer.weight.numel() for _, layer in layers)  # pruning happened
    assert reports[-1].stage == "done"
    assert reports[-1].metrics["average_bits"] == bits / sum(q.weight.numel() for _, q in layers)
    x = torch.stack([digits.val[i][0] for i in range(16)])
    path = tmp_path / "alq.qpack"
    spec = ModelSpec("lenet5", 10, 1, (28, 28))
    save_artifact(model, path, spec=spec, method="alq", params=params.model_dump())
    loaded = load_artifact(path)
    with torch.no_grad():
        assert float((loaded(x) - model(x)).abs().max()) <= 1e-5


def test_target_bitwidth_stops_pruning_as_soon_as_it_is_reached(small_digits: DataBundle) -> None:
    """§6.3 extension: each call prunes about pr/T = 4% of the slots; 6 bits reach 5.5 early."""
    params = alq.ALQParams(
        **{
            **FAST,
            "epochs_basis": 0,
            "top_k": 0.05,
            "prune_ratio": 0.36,
            "target_bitwidth": 5.5,
            "batch_size": 8,
        }
    )
    steps = len(small_digits.loaders(params.batch_size)[0])
    reports = []
    ctx = RunContext(on_progress=reports.append)
    model = alq.ALQ().quantize(_lenet(), small_digits, params, ctx)
    pruned = [r.metrics["average_bits"] for r in reports if r.stage == "prune"]
    assert 1 <= len(pruned) < steps  # stopped before the end of the pruning epoch
    assert pruned[-1] <= 5.5
    assert all(b > 5.5 for b in pruned[:-1])
    qs = [layer.weight_quantizer for _, layer in quant_layers(model)]
    assert alq.average_bitwidth(qs) == pruned[-1]  # type: ignore[arg-type]


@pytest.mark.slow
def test_resume_after_cancel_gives_the_same_model(small_digits: DataBundle, tmp_path: Path) -> None:
    params = alq.ALQParams(
        **{
            **FAST,
            "epochs_coord": 1,
            "posttrain": True,
            "posttrain_ste_epochs": 1,
            "posttrain_coord_epochs": 1,
            "batch_size": 32,
        }
    )
    full = alq.ALQ().quantize(_lenet(), small_digits, params, RunContext())
    calls = {"n": 0}

    def cancel_late() -> bool:
        calls["n"] += 1
        return calls["n"] > 7

    ctx = RunContext(checkpoint_dir=tmp_path, should_cancel=cancel_late)
    with pytest.raises(Cancelled):
        alq.ALQ().quantize(_lenet(), small_digits, params, ctx)
    resumed = alq.ALQ().quantize(
        _lenet(), small_digits, params, RunContext(checkpoint_dir=tmp_path)
    )
    x = torch.stack([small_digits.val[i][0] for i in range(8)])
    with torch.no_grad():
        assert torch.equal(full(x), resumed(x))
