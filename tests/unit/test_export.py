"""ONNX export: the file onnxruntime runs computes the quantized model's logits at any batch size.

Reference: the quantized model's own eval forward (``dequantize(export_weight())`` weights, see
quantcore/layers.py); the export must match it within 1e-4 and hold the dequantized weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from quantcore import zoo
from quantcore.context import RunContext
from quantcore.data import load_dataset
from quantcore.errors import InvalidParams
from quantcore.export import export_onnx
from quantcore.layers import InputQuantizer, quant_layers
from quantcore.methods.uniform import MinMaxQuantizer
from quantcore.qweight import dequantize
from quantcore.registry import get_method, parse_params
from quantcore.surgery import quantize_model

LENET_INPUT = (1, 28, 28)
TOLERANCE = 1e-4


class ClipRoundInput(InputQuantizer):
    """A traceable activation quantizer: clip to [0, top], round to ``steps`` levels."""

    kind = "test_export_clip_round"

    def __init__(self, steps: int = 3) -> None:
        super().__init__()
        self.steps = steps
        self.top = nn.Parameter(torch.tensor(1.5))

    def config(self) -> dict[str, int]:
        return {"steps": self.steps}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.top / self.steps
        return torch.round(torch.minimum(x.clamp(min=0), self.top) / scale) * scale


class DataDependentInput(InputQuantizer):
    """Branches in Python on a tensor value: runs eagerly, but torch.export cannot trace it."""

    kind = "test_export_data_dependent"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.max() > 1:
            return torch.round(x)
        return x


def _logits_match(model: nn.Module, path: Path, input_shape: tuple[int, int, int]) -> None:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(1)
    for batch in (1, 3):
        x = torch.randn(batch, *input_shape, generator=gen)
        (logits,) = session.run(["logits"], {"input": x.numpy()})
        with torch.no_grad():
            expected = model(x).numpy()
        assert logits.shape == expected.shape
        np.testing.assert_allclose(logits, expected, rtol=0, atol=TOLERANCE)


@pytest.fixture(scope="module")
def lenet_uniform() -> nn.Module:
    torch.manual_seed(0)
    digits = load_dataset("digits", image_size=28, augment=False)
    model = zoo.build("lenet5", num_classes=10, in_channels=1)
    params = parse_params("uniform", {"bits": 2})
    return get_method("uniform").quantize(model, digits, params, RunContext())


@pytest.fixture(scope="module")
def lenet_onnx(lenet_uniform: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "lenet5.onnx"
    export_onnx(lenet_uniform, path, input_shape=LENET_INPUT)
    return path


def test_lenet5_export_matches_quantized_logits_at_batch_1_and_3(
    lenet_uniform: nn.Module, lenet_onnx: Path
) -> None:
    _logits_match(lenet_uniform, lenet_onnx, LENET_INPUT)


def test_lenet5_export_is_a_valid_single_file_model_with_a_dynamic_batch(lenet_onnx: Path) -> None:
    onnx.checker.check_model(str(lenet_onnx), full_check=True)
    proto = onnx.load(str(lenet_onnx))
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    in_dims = proto.graph.input[0].type.tensor_type.shape.dim
    out_dims = proto.graph.output[0].type.tensor_type.shape.dim
    assert in_dims[0].dim_param
    assert not in_dims[0].HasField("dim_value")
    assert [d.dim_value for d in in_dims[1:]] == list(LENET_INPUT)
    assert out_dims[0].dim_param == in_dims[0].dim_param
    assert list(lenet_onnx.parent.iterdir()) == [lenet_onnx]  # no external-data side file


def test_lenet5_export_holds_the_dequantized_weights_as_constants(
    lenet_uniform: nn.Module, lenet_onnx: Path
) -> None:
    constants = [numpy_helper.to_array(t) for t in onnx.load(str(lenet_onnx)).graph.initializer]
    layers = quant_layers(lenet_uniform)
    assert layers
    for name, layer in layers:
        w = dequantize(layer.export_weight()).numpy()
        found = any(c.shape == w.shape and np.array_equal(c, w) for c in constants)
        found = found or any(c.shape == w.T.shape and np.array_equal(c, w.T) for c in constants)
        assert found, f"the dequantized weight of {name} is not a constant of the graph"


def test_export_leaves_the_model_unchanged(lenet_uniform: nn.Module, tmp_path: Path) -> None:
    lenet_uniform.train()
    before = {k: v.clone() for k, v in lenet_uniform.state_dict().items()}
    try:
        export_onnx(lenet_uniform, tmp_path / "m.onnx", input_shape=LENET_INPUT, opset=18)
        assert lenet_uniform.training
        after = lenet_uniform.state_dict()
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert all(
            isinstance(layer.weight, nn.Parameter) for _, layer in quant_layers(lenet_uniform)
        )
    finally:
        lenet_uniform.eval()
    assert onnx.load(str(tmp_path / "m.onnx")).opset_import[0].version == 18


def test_resnet20_export_matches_quantized_logits_at_batch_1_and_3(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = zoo.build("resnet20", num_classes=10, in_channels=3)
    # Calibrated BatchNorm statistics keep the logits at a trained model's scale (not ~100s, where
    # float32 rounding alone approaches the tolerance).
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(16, 3, 32, 32))
    quantize_model(model, lambda _name, _layer: MinMaxQuantizer(4, per_channel=True))
    model.eval()
    path = tmp_path / "resnet20.onnx"
    export_onnx(model, path, input_shape=(3, 32, 32))
    onnx.checker.check_model(str(path), full_check=True)
    _logits_match(model, path, (3, 32, 32))


def test_traceable_input_quantizers_are_exported(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = zoo.build("lenet5", num_classes=10, in_channels=1)
    quantize_model(
        model,
        lambda _name, _layer: MinMaxQuantizer(2, per_channel=True),
        input_quantizer=lambda _name, _layer: ClipRoundInput(),
    )
    model.eval()
    path = tmp_path / "act.onnx"
    export_onnx(model, path, input_shape=LENET_INPUT)
    _logits_match(model, path, LENET_INPUT)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "Round" in ops  # the activation quantization is in the graph


def test_an_input_quantizer_torch_export_cannot_trace_is_named(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = zoo.build("lenet5", num_classes=10, in_channels=1)
    quantize_model(
        model,
        lambda _name, _layer: MinMaxQuantizer(2, per_channel=True),
        input_quantizer=lambda name, _layer: DataDependentInput() if name == "features.3" else None,
    )
    model.eval()
    path = tmp_path / "bad.onnx"
    with pytest.raises(InvalidParams, match=r"features\.3 \(test_export_data_dependent\)") as err:
        export_onnx(model, path, input_shape=LENET_INPUT)
    assert err.value.details["layers"] == ["features.3"]
    assert not path.exists()
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("input_shape", [(28, 28), (1, 0, 28), (1.0, 28, 28), "1x28x28"])
def test_a_malformed_input_shape_is_refused(
    lenet_uniform: nn.Module, tmp_path: Path, input_shape: object
) -> None:
    with pytest.raises(InvalidParams, match="input_shape"):
        export_onnx(lenet_uniform, tmp_path / "m.onnx", input_shape=input_shape)  # type: ignore[arg-type]


def test_an_input_shape_the_model_cannot_take_is_refused(
    lenet_uniform: nn.Module, tmp_path: Path
) -> None:
    with pytest.raises(InvalidParams, match=r"\(3, 28, 28\)"):
        export_onnx(lenet_uniform, tmp_path / "m.onnx", input_shape=(3, 28, 28))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("opset", [0, 10_000, True])
def test_an_opset_out_of_range_is_refused(
    lenet_uniform: nn.Module, tmp_path: Path, opset: int
) -> None:
    with pytest.raises(InvalidParams, match="opset"):
        export_onnx(lenet_uniform, tmp_path / "m.onnx", input_shape=LENET_INPUT, opset=opset)
