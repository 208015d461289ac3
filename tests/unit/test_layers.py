"""Quantized layers: the eval weight is the contract, training uses the quantizer's gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from quantcore.errors import NothingQuantized
from quantcore.layers import QuantConv2d, QuantLinear, float_state, quant_layers
from quantcore.methods.uniform import MinMaxQuantizer
from quantcore.qweight import dequantize
from quantcore.surgery import find_layers, quantize_model


class _OutOfOrder(nn.Module):
    """Registers its layers in an order different from the forward order."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 3)
        self.stem = nn.Conv2d(1, 2, 3)
        self.middle = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.middle(self.stem(x).flatten(1))))


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 12),
        nn.ReLU(),
        nn.Linear(12, 5),
    )


def test_eval_forward_uses_exactly_the_exported_weight() -> None:
    conv = QuantConv2d.from_float(nn.Conv2d(3, 5, 3, padding=1), MinMaxQuantizer(3, True)).eval()
    lin = QuantLinear.from_float(nn.Linear(7, 4), MinMaxQuantizer(2, False)).eval()
    x, v = torch.randn(2, 3, 6, 6), torch.randn(3, 7)
    assert torch.equal(conv(x), F.conv2d(x, dequantize(conv.export_weight()), conv.bias, padding=1))
    assert torch.equal(lin(v), F.linear(v, dequantize(lin.export_weight()), lin.bias))


def test_eval_weight_follows_in_place_weight_updates() -> None:
    lin = QuantLinear.from_float(nn.Linear(6, 3), MinMaxQuantizer(4, True)).eval()
    x = torch.randn(2, 6)
    before = lin(x)
    with torch.no_grad():
        lin.weight.mul_(3)
    after = lin(x)
    assert not torch.equal(before, after)
    assert torch.equal(after, F.linear(x, dequantize(lin.export_weight()), lin.bias))


def test_training_forward_passes_the_quantizer_gradient_to_the_latent_weight() -> None:
    lin = QuantLinear.from_float(nn.Linear(6, 3), MinMaxQuantizer(2, True)).train()
    x = torch.randn(4, 6)
    lin(x).sum().backward()
    # Straight-through: d(sum(x W_q^T))/dW = sum over the batch of x, for every output row.
    torch.testing.assert_close(lin.weight.grad, x.sum(0).expand(3, 6))


def test_surgery_keeps_first_and_last_layers_in_float_by_default() -> None:
    model = _mlp()
    names = quantize_model(model, lambda _n, _m: MinMaxQuantizer(4, True))
    assert names == ["2", "6"]
    assert isinstance(model[0], nn.Conv2d)
    assert not isinstance(model[0], QuantConv2d)
    assert type(model[8]) is nn.Linear
    assert [n for n, _ in quant_layers(model)] == ["2", "6"]


def test_surgery_flag_quantizes_every_layer_and_skip_excludes_by_name() -> None:
    model = _mlp()
    names = quantize_model(
        model, lambda _n, _m: MinMaxQuantizer(4, True), keep_first_last=False, skip=["6"]
    )
    assert names == ["0", "2", "8"]


def test_surgery_preserves_outputs_at_8_bits_closely_and_shares_parameters() -> None:
    model = _mlp().eval()
    x = torch.randn(3, 1, 8, 8)
    reference = model(x)
    bias = model[2].bias
    quantize_model(model, lambda _n, _m: MinMaxQuantizer(8, True))
    assert model[2].bias is bias
    torch.testing.assert_close(model.eval()(x), reference, atol=0.05, rtol=0.05)


def test_surgery_that_swaps_nothing_raises() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with pytest.raises(NothingQuantized, match="first and last stay in float"):
        quantize_model(model, lambda _n, _m: MinMaxQuantizer(4, True))


def test_network_order_from_an_example_input() -> None:
    model = _OutOfOrder()
    assert [n for n, _ in find_layers(model)] == ["head", "stem", "middle"]
    x = torch.randn(1, 1, 6, 6)
    assert [n for n, _ in find_layers(model, x)] == ["stem", "middle", "head"]
    assert quantize_model(model, lambda _n, _m: MinMaxQuantizer(4, True), example_input=x) == [
        "middle"
    ]


def test_float_state_drops_only_quantized_weights() -> None:
    model = _mlp()
    before = set(model.state_dict())
    quantize_model(model, lambda _n, _m: MinMaxQuantizer(4, True))
    assert set(float_state(model)) == before - {"2.weight", "6.weight"}
