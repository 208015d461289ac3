"""Quantization Networks: the staircase, its gradients, bias init, export and the method.

References: shared/methods/quantization-networks.md (§ numbers and checkable properties P1-P15)
and the official-code vectors in shared/refvectors/qnets/ (README there for layouts, tolerances).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from quantcore import zoo
from quantcore.artifact import ModelSpec, load_artifact, save_artifact
from quantcore.context import RunContext
from quantcore.data import DataBundle, load_dataset, subset
from quantcore.errors import Cancelled, InvalidParams
from quantcore.layers import QuantLinear, activation_sites, quant_layers
from quantcore.methods import qnets as qn
from quantcore.qweight import dequantize
from quantcore.registry import get_method, list_methods, parse_params
from quantcore.surgery import quantize_model

REF = Path(__file__).resolve().parents[3] / ".." / "shared" / "refvectors" / "qnets"
if not REF.exists():  # the shared folder sits next to the checkout
    REF = Path("/work/shared/refvectors/qnets")
F64 = torch.float64


def _load(name: str) -> dict[str, np.ndarray]:
    with np.load(REF / f"{name}.npz") as d:
        return {k: d[k] for k in d.files}


@pytest.fixture(scope="module")
def wref() -> dict[str, np.ndarray]:
    return _load("weight_quantizer")


@pytest.fixture(scope="module")
def aref() -> dict[str, np.ndarray]:
    return _load("activation_quantizer")


@pytest.fixture(scope="module")
def cref() -> dict[str, np.ndarray]:
    return _load("clustering")


@pytest.fixture(scope="module")
def tref() -> dict[str, np.ndarray]:
    return _load("training_sequence")


def _t(a: np.ndarray | float) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=F64)


def _close64(actual: torch.Tensor, expected: np.ndarray) -> None:
    np.testing.assert_allclose(actual.detach().numpy(), expected, rtol=1e-10, atol=1e-9)


def _soft_and_grads(x, alpha, beta, b, levels, t, grad, clamp=qn.CLAMP, offset=None):
    """y and the gradients of sum(g * y) for x, alpha, beta (all float64 leaves)."""
    ls = qn.LevelSet(tuple(int(v) for v in levels))
    x = _t(x).requires_grad_(True)
    a = _t(alpha).requires_grad_(True)
    be = _t(beta).requires_grad_(True)
    s = torch.tensor(ls.steps, dtype=F64)
    o = ls.offset if offset is None else offset
    y = qn.soft_quantize(x, a, be, _t(b), s, o, t, clamp=clamp, grad=grad)
    return y, x, a, be


# --- P1: level sets ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(qn.WEIGHT_LEVEL_SETS))
def test_level_set_constants_follow_p1(name: str) -> None:
    """P1: n = |Y|-1 steps, s_i > 0, sum s = Y_n - Y_0, o = -Y_0 = sum(s)/2 (symmetric sets)."""
    ls = qn.LevelSet(qn.WEIGHT_LEVEL_SETS[name])
    assert ls.n == len(ls.values) - 1 == len(ls.steps)
    assert all(s > 0 for s in ls.steps)
    assert sum(ls.steps) == ls.values[-1] - ls.values[0]
    assert ls.offset == -ls.values[0] == sum(ls.steps) / 2
    assert ls.bits == math.ceil(math.log2(len(ls.values)))


def test_level_set_examples_and_activation_sets() -> None:
    """P1 examples; activation sets {0..2^k-1} have o = 0 (§2.1)."""
    assert qn.LevelSet(qn.WEIGHT_LEVEL_SETS["pm4"]).steps == (2, 1, 1, 1, 1, 2)
    assert qn.LevelSet(qn.WEIGHT_LEVEL_SETS["pm4"]).offset == 4
    assert qn.LevelSet(qn.WEIGHT_LEVEL_SETS["binary"]).steps == (2,)
    assert qn.LevelSet(qn.WEIGHT_LEVEL_SETS["uniform4"]).values == tuple(range(-7, 8))
    for k in (1, 2, 3, 4):
        ls = qn.LevelSet(qn.activation_levels(k))
        assert ls.values == tuple(range(2**k))
        assert ls.offset == 0
        assert ls.steps == (1,) * (2**k - 1)
    with pytest.raises(ValueError, match="ascending"):
        qn.LevelSet((0, 0, 1))


def test_binary_n1_equals_official_two_sigmoid_encoding() -> None:
    """P1/P5: Y={-1,1}, b=0 is the same function as Y={-1,0,1}, b=(0,0), soft and hard."""
    x = torch.linspace(-1, 1, 41, dtype=F64)
    for t in (1.0, 5.0, 50.0):
        y1, *_ = _soft_and_grads(x, 1.0, 1.0, [0.0], (-1, 1), t, "exact")
        y2, *_ = _soft_and_grads(x, 1.0, 1.0, [0.0, 0.0], (-1, 0, 1), t, "exact")
        torch.testing.assert_close(y1, y2, rtol=0, atol=1e-14)
    one = _t(1.0)
    h1 = qn.hard_quantize(x, one, one, _t([0.0]), _t([-1, 1]))
    h2 = qn.hard_quantize(x, one, one, _t([0.0, 0.0]), _t([-1, 0, 1]))
    assert torch.equal(h1, h2)


# --- reference vectors: the official weight quantizer -------------------------------------------


CASES_W = [
    "bin_official",
    "bin_n1",
    "ter_half",
    "ter_paper",
    "ter_asym",
    "pm2_mid",
    "pm4_mid",
    "pm4_km",
    "pm3_mid",
]


@pytest.mark.parametrize("case", CASES_W)
def test_weight_quantizer_matches_official_vectors(wref, case: str) -> None:
    """weight_quantizer.npz: soft (cap 2000), hard, dL/dw (T=1 surrogate, exact), dL/da, dL/db."""
    assert list(wref["cases"]) == CASES_W
    levels, b = wref[f"{case}_Y"], wref[f"{case}_b"]
    w, g = wref[f"{case}_wg"]
    alpha, beta = float(wref["alpha"]), float(wref["beta"])
    for ti, t in enumerate(wref["T"]):
        t_eff = min(float(t), qn.T_CAP)
        for gi, grad in enumerate(("surrogate_t1", "exact")):
            y, x, a, be = _soft_and_grads(w, alpha, beta, b, levels, t_eff, grad)
            (y * _t(g)).sum().backward()
            _close64(y, wref[f"{case}_y"][ti])
            _close64(x.grad, wref[f"{case}_gw"][gi, ti])
            _close64(a.grad, wref[f"{case}_gab"][0, ti])
            _close64(be.grad, wref[f"{case}_gab"][1 + gi, ti])
    hard = qn.hard_quantize(_t(w), _t(alpha), _t(beta), _t(b), _t(levels))
    assert torch.equal(hard, _t(wref[f"{case}_y"][6]))


@pytest.mark.parametrize("case", ["bin_n1", "ter_paper", "pm4_km", "pm3_mid"])
def test_weight_quantizer_module_float32_matches_vectors(wref, case: str) -> None:
    """The float32 module: README float32 tolerance, temperature cap inside the module."""
    levels, b = wref[f"{case}_Y"], wref[f"{case}_b"]
    w, g = wref[f"{case}_wg"]
    alpha, beta = float(wref["alpha"]), float(wref["beta"])
    q = qn.QNetsWeightQuantizer([int(v) for v in levels])
    q.set_scales(beta, alpha, torch.tensor(b))
    for ti, t in enumerate(wref["T"]):
        q.set_temperature(float(t))  # 2500 must behave as 2000
        wt = torch.tensor(w, dtype=torch.float32, requires_grad=True)
        y = q(wt)
        q.alpha.grad = q.beta.grad = None
        (y * torch.tensor(g, dtype=torch.float32)).sum().backward()
        for actual, expected, row in (
            (y, wref[f"{case}_y"][ti], wref[f"{case}_y"][ti]),
            (wt.grad, wref[f"{case}_gw"][1, ti], wref[f"{case}_gw"][1, ti]),
            # The scalars are sums: their float32 row is the summed terms g*y/alpha, g*w*D~.
            (q.alpha.grad, wref[f"{case}_gab"][0, ti], g * wref[f"{case}_y"][ti] / alpha),
            (q.beta.grad, wref[f"{case}_gab"][2, ti], wref[f"{case}_gw"][1, ti] * w / beta),
        ):
            scale = float(
                np.abs(row).sum() if row.size > 1 and np.ndim(expected) == 0 else np.abs(row).max()
            )
            np.testing.assert_allclose(
                actual.detach().double().numpy(), expected, rtol=1e-5, atol=1e-5 * scale
            )
    hard = dequantize(q.export(torch.tensor(w, dtype=torch.float32)))
    expected_hard = torch.tensor(wref[f"{case}_y"][6], dtype=torch.float32)
    assert torch.equal(hard, expected_hard)


def test_init_case_matches_official_first_iteration(wref) -> None:
    """weight_quantizer.npz init case (P13): beta0, alpha0, soft, dL/dw, dL/da, dL/db, hard."""
    w = _t(wref["init_w"])
    q = qn.QNetsWeightQuantizer([int(v) for v in wref["init_Y"]]).double()
    beta0, _ = qn.init_weight_thresholds(w, q.level_set)
    q.set_scales(beta0, 1.0 / beta0, _t(wref["init_b"]))
    _close64(q.beta, wref["init_beta0"][0])
    _close64(q.alpha, wref["init_alpha0"][0])
    assert float((q.beta.detach() * w).abs().max()) == pytest.approx(1.25 * 4, rel=1e-15)  # P13
    for ti, t in enumerate(wref["init_T"]):
        q.set_temperature(float(t))
        q.alpha.grad = q.beta.grad = None
        wl = w.clone().requires_grad_(True)
        y = q(wl)
        (y * _t(wref["init_g"])).sum().backward()
        _close64(y, wref["init_y_soft"][ti])
        _close64(wl.grad, wref["init_gw_exact"][ti])
        _close64(q.alpha.grad, wref["init_galpha"][ti])
        _close64(q.beta.grad, wref["init_gbeta_exact"][ti])
    hard = qn.hard_quantize(w, q.alpha.detach(), q.beta.detach(), q.thresholds, q.levels.double())
    _close64(hard, wref["init_y_hard"])
    # P13: the extreme weights map to +-0.8 max|w|.
    assert float(hard.abs().max()) == pytest.approx(0.8 * float(w.abs().max()), rel=1e-12)


def test_p8_realistic_scales(wref) -> None:
    """P8: max|w| = 0.2, ternary, b = +-0.5, T = 10: the spec's numbers and the vectors."""
    w = _t(wref["p8_w"])
    beta0, _ = qn.init_weight_thresholds(w, qn.LevelSet((-1, 0, 1)), center_band=True)
    assert beta0 == pytest.approx(6.25)
    assert float(wref["p8_beta0"][0]) == pytest.approx(beta0)
    y, x, a, be = _soft_and_grads(w, 1 / beta0, beta0, [-0.5, 0.5], (-1, 0, 1), 10.0, "exact")
    (y * _t([0.0, 0.0, 1.0])).sum().backward()
    _close64(y, wref["p8_y_soft"])
    _close64(x.grad, wref["p8_dy_dw"])
    _close64(a.grad, wref["p8_dy_dalpha"])
    _close64(be.grad, wref["p8_dy_dbeta"])
    assert float(y[2].detach()) == pytest.approx(0.021227, abs=1e-6)
    assert float(x.grad[2]) == pytest.approx(1.155806, abs=1e-6)
    assert float(a.grad) == pytest.approx(0.132668, abs=1e-6)
    assert float(be.grad) == pytest.approx(0.009246, abs=1e-6)
    hard = qn.hard_quantize(w, _t(0.16), _t(6.25), _t([-0.5, 0.5]), _t([-1, 0, 1]))
    assert set(hard.tolist()) <= {-0.16, 0.0, 0.16}


# --- reference vectors: the official activation module and the fork's backward -----------------


@pytest.mark.parametrize("case", ["a1_cfg", "a2_mid", "a2_km", "a3_mid", "a_nonunit"])
def test_activation_quantizer_matches_official_and_fork_vectors(aref, case: str) -> None:
    """activation_quantizer.npz: soft, hard, dL/dx, dL/da, dL/db (official and fork backward)."""
    levels, b = aref[f"{case}_Y"], aref[f"{case}_b"]
    x, g = aref[f"{case}_xg"]
    alpha, beta = float(aref["alpha"]), float(aref["beta"])
    for ti, t in enumerate(aref["T"]):
        for gi, grad in enumerate(("official_act", "fork_t1")):
            y, xl, a, be = _soft_and_grads(x, alpha, beta, b, levels, float(t), grad)
            (y * _t(g)).sum().backward()
            _close64(y, aref[f"{case}_y"][ti])
            _close64(xl.grad, aref[f"{case}_gx"][gi, ti])
            _close64(a.grad, aref[f"{case}_gab"][2 * gi, ti])
            _close64(be.grad, aref[f"{case}_gab"][2 * gi + 1, ti])
    hard = qn.hard_quantize(_t(x), _t(alpha), _t(beta), _t(b), _t(levels))
    assert torch.equal(hard, _t(aref[f"{case}_y"][5]))


def test_activation_module_eval_is_the_hard_step_and_survives_config_round_trip(aref) -> None:
    """The artifact rebuilds the module from config() + state and gets the same hard step."""
    x = torch.tensor(aref["a2_km_xg"][0], dtype=torch.float32)
    q = qn.QNetsActQuantizer([0, 1, 2, 3])
    q.set_scales(float(aref["beta"]), float(aref["alpha"]), torch.tensor(aref["a2_km_b"]))
    q.set_temperature(20.0)
    q.eval()
    expected = torch.tensor(aref["a2_km_y"][5], dtype=torch.float32)
    assert torch.equal(q(x), expected)
    rebuilt = qn.QNetsActQuantizer.from_kind(q.kind, q.config())
    rebuilt.load_state_dict(q.state_dict())
    rebuilt.eval()
    assert torch.equal(rebuilt(x), expected)
    q.train()
    soft = q(x)
    scale = float(np.abs(aref["a2_km_y"][2]).max())
    np.testing.assert_allclose(
        soft.detach().double(), aref["a2_km_y"][2], rtol=1e-5, atol=1e-5 * scale
    )


# --- checkable properties (§12) ------------------------------------------------------------------

P2_X = [-1.0, -0.6, -0.5, -0.4, -0.1, 0.0, 0.1, 0.3, 0.45, 0.5, 0.55, 0.6, 1.0]


def test_p2_hard_step_ties_go_to_the_lower_level() -> None:
    """P2 example A2: ternary, b = +-0.5, strict '>'."""
    one = _t(1.0)
    hard = qn.hard_quantize(_t(P2_X), one, one, _t([-0.5, 0.5]), _t([-1, 0, 1]))
    assert hard.tolist() == [-1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1]


def test_p3_soft_table_and_threshold_midpoints() -> None:
    """P3: the soft ternary values at T = 1, 5, 10, 20 and the unclamped T = 10 values."""
    table = {
        1: [-0.440034, -0.275239, -0.231059, -0.185970, -0.046969, 0, 0.046969, 0.140140,
            0.208618, 0.231059, 0.253272, 0.275239, 0.440034],
        5: [-0.923589, -0.618389, -0.493307, -0.366554, -0.071777, 0, 0.071777, 0.250955,
            0.429246, 0.493307, 0.556956, 0.618389, 0.923589],
        10: [-0.993262, -0.731013, -0.499955, -0.268818, -0.015514, 0, 0.015514, 0.118868,
             0.377466, 0.499955, 0.622414, 0.731013, 0.993262],
        20: [-0.999909, -0.880752, -0.499955, -0.119158, -0.000290, 0, 0.000290, 0.017941,
             0.268896, 0.499955, 0.731013, 0.880752, 0.999909],
    }  # fmt: skip
    for t, row in table.items():
        y, *_ = _soft_and_grads(P2_X, 1.0, 1.0, [-0.5, 0.5], (-1, 0, 1), float(t), "exact")
        np.testing.assert_allclose(y.detach().numpy(), row, atol=1e-6)
    y, *_ = _soft_and_grads(
        [1.0, 0.6, 0.55], 1.0, 1.0, [-0.5, 0.5], (-1, 0, 1), 10.0, "exact", None
    )
    np.testing.assert_allclose(y.detach().numpy(), [0.993307, 0.731042, 0.622432], atol=1e-6)
    y, *_ = _soft_and_grads(P2_X, 1.0, 1.0, [-0.5, 0.5], (-1, 0, 1), 1000.0, "exact")
    hard = qn.hard_quantize(_t(P2_X), _t(1.0), _t(1.0), _t([-0.5, 0.5]), _t([-1, 0, 1]))
    off = torch.tensor([x not in (-0.5, 0.5) for x in P2_X])
    assert float((y.detach() - hard)[off].abs().max()) <= 1e-4  # P3b: saturation at +-0.999909
    assert float(y[2].detach()) == pytest.approx(-0.499955, abs=1e-6)


def test_p5_binary_is_tanh() -> None:
    """P5: Y = {-1, 1}, b = 0: y = alpha tanh(T beta x / 2) and the spec's T = 5, 10 rows."""
    x = [-0.3, -0.1, 0.0, 0.05, 0.2]
    rows = {5: [-0.635149, -0.244919, 0, 0.124353, 0.462117],
            10: [-0.905148, -0.462117, 0, 0.244919, 0.761594]}  # fmt: skip
    for t, row in rows.items():
        y, *_ = _soft_and_grads(x, 1.0, 1.0, [0.0], (-1, 1), float(t), "exact")
        np.testing.assert_allclose(y.detach().numpy(), row, atol=1e-6)
        torch.testing.assert_close(y.detach(), torch.tanh(t * _t(x) / 2), rtol=0, atol=1e-14)


def test_p6_pm4_midpoint_thresholds() -> None:
    """P6: {-4,-2,-1,0,1,2,4} with level-midpoint thresholds, hard and T = 10."""
    x = [-5, -3.2, -2.9, -1.4, -0.6, -0.4, 0.4, 0.6, 1.6, 2.9, 3.1, 5]
    b = [-3, -1.5, -0.5, 0.5, 1.5, 3]
    levels = qn.WEIGHT_LEVEL_SETS["pm4"]
    hard = qn.hard_quantize(_t(x), _t(1.0), _t(1.0), _t(b), _t(levels))
    assert hard.tolist() == [-4, -4, -2, -1, -1, 0, 0, 1, 2, 2, 4, 4]
    y, *_ = _soft_and_grads(x, 1.0, 1.0, b, levels, 10.0, "exact")
    expected = [-3.999637, -3.761322, -2.537610, -1.268727, -0.731091, -0.268818, 0.268818,
                0.731091, 1.730922, 2.537610, 3.461845, 3.999637]  # fmt: skip
    np.testing.assert_allclose(y.detach().numpy(), expected, atol=1e-6)
    at_b, *_ = _soft_and_grads(b, 1.0, 1.0, b, levels, 10.0, "exact")
    mids = [-2.999728, -1.499864, -0.499955, 0.499955, 1.499864, 2.999728]
    np.testing.assert_allclose(at_b.detach().numpy(), mids, atol=1e-6)


def test_p7_exact_gradients_and_finite_differences() -> None:
    """P7: ternary b = +-0.5, T = 10: dy/dx, dy/da, dy/db; pure mode matches finite differences."""
    x = [0.0, 0.3, 0.5, 1.0]
    y, xl, a, be = _soft_and_grads(x, 1.0, 1.0, [-0.5, 0.5], (-1, 0, 1), 10.0, "exact")
    dx = torch.autograd.grad(y.sum(), xl, retain_graph=True)[0]
    np.testing.assert_allclose(dx.numpy(), [0.132961, 1.053288, 2.500454, 0.066935], atol=1e-6)
    for i, (da, db) in enumerate(zip([0, 0.118868, 0.499955, 0.993262],
                                     [0, 0.315986, 1.250227, 0.066935], strict=True)):  # fmt: skip
        ga, gb = torch.autograd.grad(y[i], (a, be), retain_graph=True)
        assert float(ga) == pytest.approx(da, abs=1e-6)
        assert float(gb) == pytest.approx(db, abs=1e-6)
    y, xl, *_ = _soft_and_grads([1.0], 1.0, 1.0, [-0.5, 0.5], (-1, 0, 1), 10.0, "exact", None)
    (dx,) = torch.autograd.grad(y.sum(), xl)
    assert float(dx) == pytest.approx(0.066484, abs=1e-6)  # no clamp: no leaky floor
    gen = torch.Generator().manual_seed(11)
    xs = torch.rand(50, generator=gen, dtype=F64) * 3 - 1.5
    for grad_args in ((10.0, None), (3.0, None)):
        t, clamp = grad_args

        def f(x, a, b, t=t, clamp=clamp):
            s = torch.ones(2, dtype=F64)
            return qn.soft_quantize(x, a, b, _t([-0.5, 0.5]), s, 1.0, t, clamp=clamp)

        inputs = (xs.clone().requires_grad_(), _t(0.7).requires_grad_(), _t(1.3).requires_grad_())
        assert torch.autograd.gradcheck(f, inputs)


def test_p9_binary_surrogate_t1() -> None:
    """P9: D~ = T sum s sigma(bw-b)(1-sigma): 350 at bw = 0 (T = 700), 329.0 at bw = 0.5."""
    for bw, expected in ((0.0, 350.0), (0.5, 329.0)):
        y, xl, *_ = _soft_and_grads([bw], 1.0, 1.0, [0.0], (-1, 1), 700.0, "surrogate_t1")
        (dx,) = torch.autograd.grad(y.sum(), xl)
        assert float(dx) == pytest.approx(expected, abs=0.05)
    y, xl, *_ = _soft_and_grads([0.5], 1.0, 1.0, [0.0], (-1, 1), 700.0, "exact")
    (dx,) = torch.autograd.grad(y.sum(), xl)
    assert float(dx) == pytest.approx(0.064, abs=5e-4)  # the exact one at the clamped argument


# --- random inputs against a loop reference -------------------------------------------------------


def _loop_reference(x, alpha, beta, b, levels, t, grad, clamp):
    """Plain-Python staircase: (y, dy/dx, hard) per element, float64."""
    s = [hi - lo for lo, hi in itertools.pairwise(levels)]
    o = -levels[0]
    out = []
    for xv in x:
        u = beta * xv
        soft, d = 0.0, 0.0
        for bi, si in zip(b, s, strict=True):
            z = t * (u - bi)
            zc = z if clamp is None else min(max(z, -clamp), clamp)
            soft += si / (1 + math.exp(-zc))
            z1 = z if grad in ("exact", "official_act") else u - bi
            z1 = z1 if clamp is None else min(max(z1, -clamp), clamp)
            sig = 1 / (1 + math.exp(-z1))
            if grad in ("exact", "surrogate_t1"):
                d += si * sig * (1 - sig)
            else:
                d += si * sig * (1 - si * sig)
        d = d if grad == "fork_t1" else t * d
        k = sum(1 for bi in b if u > bi)
        out.append((alpha * (soft - o), alpha * beta * d, alpha * levels[k]))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_staircase_matches_loop_reference_on_random_inputs(seed: int) -> None:
    """Random level sets, thresholds, scales, T and gradient variants against the loop."""
    rng = np.random.default_rng(100 + seed)
    names = sorted(qn.WEIGHT_LEVEL_SETS)
    levels = list(qn.WEIGHT_LEVEL_SETS[names[seed % len(names)]])
    if seed % 3 == 2:
        levels = list(qn.activation_levels(1 + seed % 3))
    n = len(levels) - 1
    b = sorted(rng.uniform(levels[0], levels[-1], n).tolist())
    alpha, beta, t = rng.uniform(0.2, 2), rng.uniform(0.5, 3), float(rng.choice([1, 7, 60]))
    grad = ["exact", "surrogate_t1", "official_act", "fork_t1"][seed % 4]
    clamp = None if seed % 5 == 4 else qn.CLAMP
    x = (rng.uniform(levels[0] - 1, levels[-1] + 1, 64) / beta).tolist()
    y, xl, *_ = _soft_and_grads(x, alpha, beta, b, levels, t, grad, clamp)
    (dx,) = torch.autograd.grad(y.sum(), xl)
    hard = qn.hard_quantize(_t(x), _t(alpha), _t(beta), _t(b), _t(levels))
    ref = np.array(_loop_reference(x, alpha, beta, b, levels, t, grad, clamp))
    np.testing.assert_allclose(y.detach().numpy(), ref[:, 0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx.numpy(), ref[:, 1], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(hard.numpy(), ref[:, 2])
    # P4: monotone in x for every T; odd for symmetric levels and thresholds.
    grid = torch.linspace(levels[0] - 1, levels[-1] + 1, 401, dtype=F64) / beta
    ys, *_ = _soft_and_grads(grid, alpha, beta, b, levels, t, grad, clamp)
    assert bool((ys.diff() >= -1e-12).all())
    if levels[0] == -levels[-1]:
        sym = sorted([-v for v in b[: n // 2]] + list(b[: n // 2]))
        sym = sym + ([0.0] if n % 2 else [])
        sym = sorted(sym)
        ya, *_ = _soft_and_grads(grid, alpha, beta, sym, levels, t, grad, clamp)
        yb, *_ = _soft_and_grads(-grid, alpha, beta, sym, levels, t, grad, clamp)
        torch.testing.assert_close(ya, -yb, rtol=0, atol=1e-12)


def test_temperature_schedule_is_t0_times_epoch_with_cap() -> None:
    """§6, P12: T = T0 * epoch (from 1), weights capped at 2000; resumable with the scheduler."""
    assert [qn.temperature_at(e, 5.0) for e in (1, 2, 55)] == [5.0, 10.0, 275.0]
    assert qn.temperature_at(35, 20.0, qn.T_CAP) == 700.0
    assert qn.temperature_at(200, 20.0, qn.T_CAP) == 2000.0
    wq, aq = qn.QNetsWeightQuantizer([-1, 0, 1]), qn.QNetsActQuantizer([0, 1])
    opt = torch.optim.SGD([wq.alpha], lr=1.0)
    sched = qn.TemperatureSchedule(opt, [2], 0.1, [(wq, 0, 2000.0), (aq, 3, None)], 10.0)
    assert (float(wq.temperature), float(aq.temperature)) == (10.0, 40.0)
    for _ in range(2):
        opt.step()
        sched.step()
    assert (float(wq.temperature), float(aq.temperature)) == (30.0, 60.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    state = sched.state_dict()
    wq2, aq2 = qn.QNetsWeightQuantizer([-1, 0, 1]), qn.QNetsActQuantizer([0, 1])
    opt2 = torch.optim.SGD([wq2.alpha], lr=1.0)
    sched2 = qn.TemperatureSchedule(opt2, [2], 0.1, [(wq2, 0, 2000.0), (aq2, 3, None)], 10.0)
    sched2.load_state_dict(state)
    assert (float(wq2.temperature), float(aq2.temperature)) == (30.0, 60.0)


# --- bias init: k-means (§4, P10, P11) ------------------------------------------------------------


def test_p10_example_f_centres_thresholds_and_hard_weights(cref) -> None:
    """P10 / clustering.npz example F: beta0 = 1.25, centres, centre-midpoint b, hard weights."""
    w = _t(cref["exF_w"])
    ls = qn.LevelSet((-1, 0, 1))
    beta0, b = qn.init_weight_thresholds(w, ls)
    assert beta0 == pytest.approx(1.25)
    centres, _ = qn.kmeans_1d(beta0 * w, 3)
    np.testing.assert_allclose(centres.numpy(), cref["exF_centers"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(b.numpy(), [-0.541667, 0.520833], atol=1e-6)
    for thresholds in (b, _t(cref["exF_b_gap"])):
        hard = qn.hard_quantize(w, _t(0.8), _t(1.25), thresholds, _t([-1, 0, 1]))
        np.testing.assert_allclose(hard.numpy(), [-0.8, -0.8, 0, 0, 0, 0.8, 0.8], atol=1e-15)
    _, band = qn.init_weight_thresholds(w, ls, center_band=True)
    hard = qn.hard_quantize(w, _t(0.8), _t(1.25), band, _t([-1, 0, 1]))
    np.testing.assert_allclose(hard.numpy(), [-0.8, -0.8, -0.8, 0, 0.8, 0.8, 0.8], atol=1e-15)


SETS = {
    "ter": (-1, 0, 1),
    "pm2": (-2, -1, 0, 1, 2),
    "pm4": (-4, -2, -1, 0, 1, 2, 4),
    "pm3": tuple(range(-3, 4)),
    "bin2": (-1, 1),
}


@pytest.mark.parametrize("data", ["gauss", "laplace"])
def test_seeded_layers_match_converged_kmeans(cref, data: str) -> None:
    """clustering.npz layers: beta0 rtol 1e-6; b within 0.06 beta units or inertia within 0.5%."""
    assert list(cref["set_names"]) == list(SETS)
    w = torch.tensor(cref[f"w_{data}"]).double()
    for si, (sn, levels) in enumerate(SETS.items()):
        ls = qn.LevelSet(levels)
        beta0 = qn.BETA_MARGIN * ls.top / float(w.abs().max())
        assert beta0 == pytest.approx(cref["beta0"][int(data == "laplace"), si], rel=1e-6)
        scaled = beta0 * w
        b = qn.kmeans_thresholds(scaled, ls)  # generic k-means, also for bin2
        ref_b = cref[f"{data}_{sn}_b"][1, 0]
        _centres, inertia = qn.kmeans_1d(scaled, len(levels))
        ref_c = torch.tensor(cref[f"{data}_{sn}_centers"][1]).double()
        ref_inertia = float(qn._inertia(scaled.sort().values, ref_c.sort().values))
        close = float(np.abs(b.numpy() - ref_b).max()) <= 0.06
        assert close or inertia <= 1.005 * ref_inertia, (sn, b, ref_b)
    # The weight init's binary rule: b = 0 exactly, no clustering (§10 row 1).
    _, b = qn.init_weight_thresholds(w, qn.LevelSet((-1, 1)))
    assert b.tolist() == [0.0]


def test_p11_gaussian_thresholds_are_lloyd_max(cref) -> None:
    """P11: 100k N(0,1) samples: beta0 and converged b (<= 5e-4 of the official converged run)."""
    g = torch.tensor(np.random.default_rng(0).standard_normal(100000))
    for i, sn in enumerate(["bin2", "ter", "pm2", "pm4"]):
        ls = qn.LevelSet(SETS[sn])
        beta0 = qn.BETA_MARGIN * ls.top / float(g.abs().max())
        assert beta0 == pytest.approx(cref["p11_beta0"][i], rel=1e-6)
        b = qn.kmeans_thresholds(beta0 * g, ls)
        np.testing.assert_allclose(b.numpy(), cref[f"p11_{sn}_b"][1], atol=5e-4)
    ls = qn.LevelSet(SETS["pm4"])
    beta0, b = qn.init_weight_thresholds(g, ls)
    raw = (b / beta0).numpy()
    np.testing.assert_allclose(np.abs(raw), [1.62, 0.88, 0.28, 0.28, 0.88, 1.62], atol=0.02)


def test_center_band_forces_the_two_thresholds_around_zero() -> None:
    """§4.1: pm4 keeps b_1, b_2, b_5, b_6 from k-means and forces b_3, b_4 = -+0.05."""
    w = torch.tensor(np.random.default_rng(3).standard_normal(3000))
    ls = qn.LevelSet(SETS["pm4"])
    _, b = qn.init_weight_thresholds(w, ls)
    _, band = qn.init_weight_thresholds(w, ls, center_band=True)
    assert band[2:4].tolist() == [-0.05, 0.05]
    assert torch.equal(band[[0, 1, 4, 5]], b[[0, 1, 4, 5]])
    _, ter = qn.init_weight_thresholds(w, qn.LevelSet((-1, 0, 1)), center_band=True)
    assert ter.tolist() == [-0.05, 0.05]


def test_fork_activation_init_reproduces_the_beta_bug(cref) -> None:
    """clustering.npz fork activation init: q' after trimming, beta0 = alpha0 = 1, b in p/q'."""
    x = torch.tensor(cref["act_x"])
    for sn, levels in (("a1", (0, 1)), ("a2", (0, 1, 2, 3))):
        beta0, alpha0, b, q = qn.init_activation_thresholds(
            x, qn.LevelSet(levels), trim=0.0027, legacy_fork=True
        )
        scalars = cref[f"act_{sn}_fork_scalars"]
        assert q == pytest.approx(scalars[1], rel=1e-6)
        assert (beta0, alpha0) == (scalars[2], scalars[3]) == (1.0, 1.0)
        np.testing.assert_allclose(b.numpy(), cref[f"act_{sn}_fork_b"][1], atol=0.06)
    beta0, alpha0, b, q = qn.init_activation_thresholds(x, qn.LevelSet((0, 1, 2, 3)))
    assert q == pytest.approx(float(x.max()))
    assert beta0 == pytest.approx(1.25 * 3 / q)
    assert alpha0 * beta0 == pytest.approx(1.0)


def test_kmeans_is_a_lloyd_fixed_point_and_finds_small_optima() -> None:
    """Each centre is its cluster's mean (Voronoi partition); on tiny data the inertia is the
    optimum over every contiguous partition (loop reference)."""
    for seed in range(5):
        rng = np.random.default_rng(40 + seed)
        x = torch.tensor(rng.standard_normal(9)).sort().values
        k = 3
        centres, inertia = qn.kmeans_1d(x, k, seed=seed)
        mids = (centres[1:] + centres[:-1]) / 2
        assign = torch.bucketize(x, mids, right=True)
        for j in range(k):
            assert float(centres[j]) == pytest.approx(float(x[assign == j].mean()), abs=1e-12)
        best = math.inf
        for cuts in itertools.combinations(range(1, len(x)), k - 1):
            parts = np.split(x.numpy(), cuts)
            best = min(best, sum(float(((p - p.mean()) ** 2).sum()) for p in parts))
        assert inertia == pytest.approx(best, rel=1e-9)


def test_zero_layers_and_dead_sites_stay_at_zero() -> None:
    """An all-zero weight or a site that only ever sees 0 maps to the zero level."""
    for name in ("ternary", "pm4", "uniform4"):
        ls = qn.LevelSet(qn.WEIGHT_LEVEL_SETS[name])
        w = torch.zeros(5, 3)
        beta0, b = qn.init_weight_thresholds(w, ls)
        one = _t(1.0)
        assert qn.hard_quantize(w.double(), one, _t(beta0), b, _t(ls.values)).eq(0).all()
    beta0, alpha0, b, q = qn.init_activation_thresholds(torch.zeros(100), qn.LevelSet((0, 1, 2, 3)))
    assert q == 0.0
    assert (
        qn.hard_quantize(torch.zeros(3, dtype=F64), _t(alpha0), _t(beta0), b, _t([0, 1, 2, 3]))
        .eq(0)
        .all()
    )


def test_calibration_pass_sets_each_site_from_its_float_inputs() -> None:
    """§11 calibration: weights hard, activations float; beta0 = 1.25 Y_n / max, k-means b."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))

    def wf(_name: str, layer: nn.Module) -> qn.QNetsWeightQuantizer:
        wq = qn.QNetsWeightQuantizer((-1, 0, 1))
        wq.init_from_weight(layer.weight)
        return wq

    quantize_model(model, wf, input_quantizer=lambda *_: qn.QNetsActQuantizer([0, 1, 2, 3]))
    aqs = [layer.input_quantizer for _, layer in quant_layers(model)]
    batches = [(torch.randn(16, 4), torch.zeros(16, dtype=torch.long)) for _ in range(4)]
    params = qn.QNetsParams(calib_samples=40, kmeans_restarts=3)
    qn.QNets._calibrate(model, aqs, batches, params, RunContext())
    with torch.no_grad():  # the site's inputs: 3 batches (48 >= 40 samples), float activations
        x = torch.cat([b[0] for b in batches[:3]])
        layer = model[2]
        values = torch.relu(model[0](x))
        assert layer.input_quantizer is aqs[0]
    beta0, alpha0, b, _ = qn.init_activation_thresholds(
        values.flatten(), qn.LevelSet((0, 1, 2, 3)), restarts=3, seed=0
    )
    assert float(aqs[0].beta.detach()) == pytest.approx(beta0)
    assert float(aqs[0].alpha.detach()) == pytest.approx(alpha0)
    assert beta0 == pytest.approx(1.25 * 3 / float(values.max()))
    torch.testing.assert_close(aqs[0].thresholds, b.float())


# --- export: the contract ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(qn.WEIGHT_LEVEL_SETS))
def test_export_dequantizes_to_the_hard_step_exactly(name: str) -> None:
    """§8, P15: ceil(log2 |Y|)-bit codes, codebook alpha*Y; dequantize(export(w)) == hard step."""
    torch.manual_seed(1)
    layer = nn.Linear(40, 30)
    levels = qn.WEIGHT_LEVEL_SETS[name]
    wq = qn.QNetsWeightQuantizer(levels)
    wq.init_from_weight(layer.weight)
    with torch.no_grad():
        wq.alpha.mul_(1.37)  # a trained alpha, not 1/beta0
    qw = wq.export(layer.weight)
    assert qw.kind == "levels"
    assert int(qw.bits[0]) == math.ceil(math.log2(len(levels)))
    assert bool((qw.codes.long() < 2 ** int(qw.bits[0])).all())
    hard = qn.hard_quantize(layer.weight, wq.alpha, wq.beta, wq.thresholds, wq.levels)
    assert torch.equal(dequantize(qw), hard.detach())
    codes = (wq.beta * layer.weight).detach().unsqueeze(-1) > wq.thresholds  # loop-free reference
    assert torch.equal(qw.codes.long().reshape(30, 40), codes.sum(-1))
    ql = QuantLinear.from_float(layer, wq)
    ql.eval()
    x = torch.randn(5, 40)
    plain = nn.Linear(40, 30)
    with torch.no_grad():
        plain.weight.copy_(hard)
        plain.bias.copy_(layer.bias)
    assert torch.equal(ql(x), plain(x))  # P15


def test_hard_mode_and_leaf_mode() -> None:
    """Phase-2 'hard' forward is the exported weight without gradient; leaf mode records w_hat."""
    w = torch.randn(6, 5, requires_grad=True)
    wq = qn.QNetsWeightQuantizer((-1, 0, 1))
    wq.init_from_weight(w)
    wq.mode = "hard"
    assert torch.equal(wq(w), dequantize(wq.export(w)))
    assert not wq(w).requires_grad
    wq.mode, wq.leaf = "soft", True
    out = wq(w)
    assert out.is_leaf
    assert out.requires_grad
    (y, leaf), *rest = wq.take_pending()
    assert leaf is out
    assert not rest
    assert y.grad_fn is not None
    assert wq.take_pending() == []


# --- the official training loop (training_sequence.npz) ------------------------------------------


def _sequence_model(tref, seq: str):
    fcs = [nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 4)]
    for i, fc in enumerate(fcs):
        with torch.no_grad():
            fc.weight.copy_(torch.tensor(tref[f"{seq}_fc{i}.weight"][0]))
            fc.bias.copy_(torch.tensor(tref[f"{seq}_fc{i}.bias"][0]))
    aqs: list[qn.QNetsActQuantizer] = []
    mods: list[nn.Module] = []
    for i, fc in enumerate(fcs):
        mods.append(fc)
        if i < 3:
            mods.append(nn.ReLU())
            if seq == "seqC":
                aq = qn.QNetsActQuantizer([0, 1, 2, 3], grad="official_act")
                beta0 = tref["seqC_act_ab"][0, i, 1]
                aq.set_scales(beta0, 1.0 / beta0, torch.tensor(tref["seqC_act_biases"][i]))
                aqs.append(aq)
                mods.append(aq)
    return nn.Sequential(*mods), aqs


@pytest.mark.parametrize("seq", ["seqA", "seqB", "seqC"])
def test_training_sequence_matches_the_official_loop(tref, seq: str) -> None:
    """training_sequence.npz: three official iterations (clip on dL/dw_hat, chain rule, SGD)."""
    t, lr, max_norm = (float(v) for v in tref[f"{seq}_scalars"])
    levels = {"seqA": (-1, 0, 1), "seqB": qn.WEIGHT_LEVEL_SETS["pm4"], "seqC": (-1, 0, 1)}[seq]
    grad = "surrogate_t1" if seq == "seqA" else "exact"
    model, aqs = _sequence_model(tref, seq)
    biases = tref[f"{seq}_biases"]

    def factory(name: str, layer: nn.Module) -> qn.QNetsWeightQuantizer:
        i = len(wqs)
        wq = qn.QNetsWeightQuantizer(levels, grad=grad)
        beta0 = 1.25 * levels[-1] / float(layer.weight.detach().abs().max())
        wq.set_scales(beta0, 1.0 / beta0, torch.tensor(biases[i]))
        wq.set_temperature(t)
        wq.leaf = True
        wqs.append(wq)
        return wq

    wqs: list[qn.QNetsWeightQuantizer] = []
    quantize_model(model, factory)
    for aq in aqs:
        aq.set_temperature(t)
    qlayers = [layer for _, layer in quant_layers(model)]
    scale_ids = {id(p) for q in wqs for p in (q.alpha, q.beta)}
    net = [p for p in model.parameters() if id(p) not in scale_ids]
    latent = {id(layer.weight) for layer in qlayers}
    opt = qn.ClippedChainSGD(
        [
            {"params": net, "weight_decay": 1e-4},  # activation alpha/beta here, as the W+A script
            {"params": [p for q in wqs for p in (q.alpha, q.beta)], "weight_decay": 0.0},
        ],
        lr=lr,
        momentum=0.9,
        weight_quantizers=wqs,
        clip_params=[p for p in net if id(p) not in latent],
        max_norm=max_norm,
    )
    x, target = torch.tensor(tref[f"{seq}_x"]), torch.tensor(tref[f"{seq}_target"])
    fcs = [m for m in model.modules() if isinstance(m, nn.Linear)]

    def close(actual: torch.Tensor, expected: np.ndarray) -> None:
        np.testing.assert_allclose(actual.detach().double().numpy(), expected, rtol=1e-5, atol=1e-6)

    model.train()
    for it in range(3):
        loss = F.cross_entropy(model(x), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        leaves = [q._pending[0][1] for q in wqs]
        pre = [leaf.grad.clone() for leaf in leaves]
        grads = pre + [p.grad for p in opt.clip_params if p.grad is not None]
        norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
        close(loss, tref[f"{seq}_loss_norm"][0, it])
        assert norm == pytest.approx(tref[f"{seq}_loss_norm"][1, it], rel=1e-5)
        used = [(float(q.alpha.detach()), float(q.beta.detach())) for q in wqs]
        opt.step()
        for li, (q, layer) in enumerate(zip(wqs, qlayers, strict=True)):
            ref = tref[f"{seq}_qlayers"][li, it]
            close(leaves[li], ref[0])
            close(pre[li], ref[1])
            close(leaves[li].grad, ref[2])
            close(layer.weight.grad, ref[3])
            ab = tref[f"{seq}_alpha_beta"][it, li]
            np.testing.assert_allclose(used[li], ab[:2], rtol=1e-5, atol=1e-6)
            close(q.alpha.grad, ab[2])
            close(q.beta.grad, ab[3])
            close(q.alpha, ab[4])
            close(q.beta, ab[5])
        for i, fc in enumerate(fcs):
            close(fc.weight, tref[f"{seq}_fc{i}.weight"][it + 1])
            close(fc.bias, tref[f"{seq}_fc{i}.bias"][it + 1])
        for si, aq in enumerate(aqs):
            close(torch.stack([aq.alpha, aq.beta]), tref["seqC_act_ab"][it + 1, si])


# --- the method end to end ------------------------------------------------------------------------

FAST = {
    "weight_levels": "pm4",
    "act_bits": 2,
    "epochs": 1,
    "act_epochs": 1,
    "joint_epochs": 1,
    "batch_size": 128,
    "calib_samples": 256,
}


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    """digits 28x28 with a fifth of its training set, to keep three phases fast."""
    full = load_dataset("digits", image_size=28, augment=False)
    return dataclasses.replace(full, train=subset(full.train, 0.2, seed=0))


def test_params_defaults_are_the_papers() -> None:
    """§10 row 12: lr 1e-3, milestones 30/45, 55 epochs, T0 = 5, wd 1e-4, clip 5, cap 2000."""
    p = qn.QNetsParams()
    assert (p.lr, p.milestones, p.epochs, p.t0, p.weight_decay) == (1e-3, [30, 45], 55, 5.0, 1e-4)
    assert (p.max_grad_norm, p.t_cap, p.momentum, p.center_band, p.clamp) == (
        5.0, 2000.0, 0.9, False, True,
    )  # fmt: skip
    for preset in qn.PRESETS.values():
        qn.QNetsParams(**preset)


def test_params_keep_the_registry_contract() -> None:
    """tests/unit/test_methods.py's params checks, for qnets before it is registered there."""
    info = next(i for i in list_methods() if i.name == "qnets")
    assert info.title
    assert info.paper
    props = info.params_schema["properties"]
    for field, schema in props.items():
        assert schema.get("description"), field
        assert "default" in schema, field
    with pytest.raises(InvalidParams, match="not_a_param"):
        parse_params("qnets", {"not_a_param": 1})
    for field, spec in props.items():
        if spec.get("type") in ("number", "integer"):
            with pytest.raises(InvalidParams, match=field):
                parse_params("qnets", {field: math.nan})
            if "maximum" in spec:
                with pytest.raises(InvalidParams, match=field):
                    parse_params("qnets", {field: spec["maximum"] + 1})
    with pytest.raises(InvalidParams, match="milestones"):
        parse_params("qnets", {"milestones": [0]})
    with pytest.raises(InvalidParams, match="weight_levels"):
        parse_params("qnets", {"weight_levels": "quinary"})


def test_method_trains_exports_and_round_trips(
    digits: DataBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Weights then activations then both on lenet5/digits: phases and temperatures (§6, §10
    row 8), the contract, the grids and the artifact's logits."""
    seen: set[tuple[str, str, float]] = set()
    wforward, aforward = qn.QNetsWeightQuantizer.forward, qn.QNetsActQuantizer.forward

    def wrecord(self, w):
        if self.training:
            seen.add(("w", self.mode, float(self.temperature) if self.mode == "soft" else 0.0))
        return wforward(self, w)

    def arecord(self, x):
        if self.training:
            seen.add(("a", "off" if self.passthrough else "soft", float(self.temperature)))
        return aforward(self, x)

    groups: list[list[tuple[int, float, float]]] = []  # per phase: (size, lr, weight decay)
    real_train = qn.train

    def record_train(*args, **kwargs):
        opt = kwargs["optimizer"]
        groups.append([(len(g["params"]), g["lr"], g["weight_decay"]) for g in opt.param_groups])
        return real_train(*args, **kwargs)

    monkeypatch.setattr(qn, "train", record_train)
    monkeypatch.setattr(qn.QNetsWeightQuantizer, "forward", wrecord)
    monkeypatch.setattr(qn.QNetsActQuantizer, "forward", arecord)
    torch.manual_seed(0)
    model = zoo.build("lenet5", num_classes=10, in_channels=1)
    first = model.features[0].weight.detach().clone()
    params = parse_params("qnets", {**FAST, "scale_lr_mult": 0.5, "lr": 2e-3})
    quantized = get_method("qnets").quantize(model, digits, params, RunContext())
    # Optimizer groups: network (wd) + alpha/beta (no wd, lr * scale_lr_mult); phase 2 has only
    # the activation alpha/beta of the two sites; phase 3 everything.
    n_net = len(list(model.parameters())) - 8  # 2 layers x (weight + act) x (alpha, beta)
    assert groups == [
        [(n_net, 2e-3, 1e-4), (4, 1e-3, 0.0)],
        [(4, 1e-3, 0.0)],
        [(n_net, 2e-3, 1e-4), (8, 1e-3, 0.0)],
    ]
    # Phase 1: soft weights at T0, activations off; phase 2: hard weights, soft activations at
    # T0; phase 3: soft both, T continuing (T0 * 2). Temperatures are T0 * epoch (T0 = 5).
    weights = {e for e in seen if e[0] == "w"}
    assert weights == {("w", "soft", 5.0), ("w", "hard", 0.0), ("w", "soft", 10.0)}
    acts = {e for e in seen if e[0] == "a" and e[1] == "soft"}
    assert acts == {("a", "soft", 5.0), ("a", "soft", 10.0)}
    assert not quantized.training
    layers = quant_layers(quantized)
    assert [n for n, _ in layers] == ["features.3", "classifier.0"]  # first and last stay float
    assert not torch.equal(quantized.features[0].weight, first)  # phases 1 and 3 train it
    # Activation sites (§5.2): after the ReLUs that feed conv2 and fc1; not after the ReLU that
    # feeds the float classifier.
    sites = activation_sites(quantized)
    assert [n for n, _ in sites] == ["features.2", "features.5"]
    for _, site in sites:
        assert isinstance(site.quantizer, qn.QNetsActQuantizer)
        assert not site.quantizer.passthrough
    for name, layer in layers:
        wq = layer.weight_quantizer
        assert layer.input_quantizer is None
        qw = layer.export_weight()
        assert int(qw.bits[0]) == 3
        assert qw.codebook.shape == (1, 7)
        assert torch.equal(qw.codebook[0], (wq.alpha.detach() * wq.levels).float())
        assert torch.equal(layer.quantized_weight(), dequantize(qw)), name
        assert set(layer.quantized_weight().unique().tolist()) <= set(qw.codebook[0].tolist())
    x = torch.stack([digits.val[i][0] for i in range(16)])
    with torch.no_grad():
        for _, site in sites:  # activation grid: the eval quantizer lies on alpha * Y
            aq = site.quantizer
            out = aq(torch.rand(1000) * 5)
            assert set(out.unique().tolist()) <= set(aq.codebook().tolist())
    path = tmp_path / "qnets.qpack"
    spec = ModelSpec("lenet5", 10, 1, (28, 28))
    save_artifact(quantized, path, spec=spec, method="qnets", params=params.model_dump())
    loaded = load_artifact(path)
    with torch.no_grad():
        assert float((loaded(x) - quantized(x)).abs().max()) <= 1e-5


@pytest.mark.slow
def test_cancelled_run_resumes_to_the_same_model(digits: DataBundle, tmp_path: Path) -> None:
    """A run cancelled in phase 3 and restarted from its checkpoints ends where an
    uninterrupted run ends (shared train loop: checkpoints per phase, temperature in the
    scheduler state)."""
    params = parse_params("qnets", {**FAST, "joint_epochs": 2})
    x = torch.stack([digits.val[i][0] for i in range(16)])

    def run(ctx: RunContext) -> torch.Tensor:
        torch.manual_seed(0)
        model = zoo.build("lenet5", num_classes=10, in_channels=1)
        quantized = get_method("qnets").quantize(model, digits, params, ctx)
        with torch.no_grad():
            return quantized(x)

    reference = run(RunContext())
    epochs_done: list[str] = []  # cancel in phase 3's second epoch, after its first checkpoint
    ctx = RunContext(
        checkpoint_dir=tmp_path,
        on_progress=lambda p: epochs_done.append(p.stage) if "val_top1" in p.metrics else None,
        should_cancel=lambda: "qnets_joint" in epochs_done,
    )
    with pytest.raises(Cancelled):
        run(ctx)
    assert (tmp_path / "qnets_joint.ckpt").exists()
    resumed = run(RunContext(checkpoint_dir=tmp_path))
    assert torch.equal(resumed, reference)


def test_activations_are_quantized_even_without_an_activation_phase(
    digits: DataBundle, tmp_path: Path
) -> None:
    """act_bits > 0 with act_epochs = joint_epochs = 0: the result quantizes activations with
    their calibrated initial quantizers, exactly as the artifact reloads them."""
    params = parse_params("qnets", {**FAST, "act_bits": 3, "act_epochs": 0, "joint_epochs": 0})
    torch.manual_seed(0)
    quantized = get_method("qnets").quantize(
        zoo.build("lenet5", num_classes=10, in_channels=1), digits, params, RunContext()
    )
    assert len(activation_sites(quantized)) == 2
    assert all(not site.quantizer.passthrough for _, site in activation_sites(quantized))
    path = tmp_path / "qnets.qpack"
    save_artifact(
        quantized,
        path,
        spec=ModelSpec("lenet5", 10, 1, (28, 28)),
        method="qnets",
        params=params.model_dump(),
    )
    x = torch.stack([digits.val[i][0] for i in range(16)])
    with torch.no_grad():
        assert float((load_artifact(path)(x) - quantized(x)).abs().max()) <= 1e-5
