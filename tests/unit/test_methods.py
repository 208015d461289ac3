"""The contract every registered method keeps (one suite, parametrized over the registry).

A new method is tested by registering it; FAST_PARAMS may shrink its schedule for this suite.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from quantcore import zoo
from quantcore.artifact import ModelSpec, load_artifact, save_artifact
from quantcore.context import RunContext
from quantcore.data import DataBundle, load_dataset
from quantcore.errors import InvalidParams, UnknownName
from quantcore.layers import quant_layers
from quantcore.qweight import dequantize
from quantcore.registry import get_method, list_methods, parse_params

FAST_PARAMS: dict[str, dict[str, Any]] = {
    "uniform": {},
    "alq": {
        "outer_iterations": 1,
        "epochs_basis": 1,
        "epochs_coord": 0,
        "epochs_prune": 1,
        "top_k": 0.05,
        "posttrain": False,
        "batch_size": 512,
    },
    "lq_nets": {
        "epochs": 1,
        "batch_size": 128,
        "lr": 0.01,
        "lr_schedule": "cosine",
        "basis_init": "qem",
    },
    "qnets": {
        "epochs": 1,
        "act_bits": 2,
        "act_epochs": 1,
        "joint_epochs": 1,
        "batch_size": 128,
        "calib_samples": 256,
    },
    "l_dnq": {
        "data_ratio": 0.05,
        "batch_size": 16,
        "hessian_batch_size": 8,
        "hessian_num_batches": 3,
        "hessian_divisor": 3.0,
        "admm_max_iter": 4,
        "cascade_max_epochs": 1,
    },
}
METHOD_NAMES = [m.name for m in list_methods()]


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    return load_dataset("digits", image_size=28, augment=False)


def test_registry_lists_every_method_with_a_schema() -> None:
    assert "uniform" in METHOD_NAMES
    for info in list_methods():
        assert info.title
        assert info.paper
        props = info.params_schema["properties"]
        for field, schema in props.items():
            assert schema.get("description"), f"{info.name}.{field} has no description"
            assert "default" in schema, f"{info.name}.{field} has no default"


def test_unknown_method_names_the_known_ones() -> None:
    with pytest.raises(UnknownName, match="uniform"):
        get_method("no_such_method")


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_params_reject_unknown_fields_and_non_finite_numbers(name: str) -> None:
    with pytest.raises(InvalidParams, match="not_a_param"):
        parse_params(name, {"not_a_param": 1})
    schema = get_method(name).Params.model_json_schema()["properties"]
    for field, spec in schema.items():
        if spec.get("type") in ("number", "integer"):
            with pytest.raises(InvalidParams, match=field):
                parse_params(name, {field: math.nan})
            if "maximum" in spec:
                with pytest.raises(InvalidParams, match=field):
                    parse_params(name, {field: spec["maximum"] + 1})


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_method_output_honours_the_contract_and_round_trips(
    name: str, device: str, digits: DataBundle, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = zoo.build("lenet5", num_classes=10, in_channels=1)
    params = parse_params(name, FAST_PARAMS.get(name, {}))
    ctx = RunContext(device=torch.device(device))
    quantized = get_method(name).quantize(model, digits, params, ctx)
    assert not quantized.training
    # The method follows the caller's device: every tensor of the result lives there.
    for tensor_name, tensor in [*quantized.named_parameters(), *quantized.named_buffers()]:
        assert tensor.device.type == device, tensor_name
    layers = quant_layers(quantized)
    assert layers, "a method must leave quantized layers"
    for layer_name, layer in layers:
        qw = layer.export_weight()
        assert qw.shape == tuple(layer.weight.shape), layer_name
        assert bool((qw.codes.long() < (2 ** qw.bits.long()).unsqueeze(1)).all()), layer_name
        # The eval weight IS the contract, exactly.
        assert torch.equal(layer.quantized_weight(), dequantize(qw).to(layer.weight.dtype))

    x = torch.stack([digits.val[i][0] for i in range(16)])
    path = tmp_path / f"{name}.qpack"
    spec = ModelSpec("lenet5", 10, 1, (28, 28))
    save_artifact(quantized, path, spec=spec, method=name, params=params.model_dump())
    with torch.no_grad():
        logits = quantized(x.to(device))
        # Reloaded on the device it was made on, the model computes the same logits.
        assert (load_artifact(path, device)(x.to(device)) - logits).abs().max() <= 1e-5
        # The artifact holds no device: reloaded on the CPU it is the same model as the
        # quantized one moved to the CPU. (Not compared with the GPU's logits: its convolutions
        # round differently, TF32 among them, and a hard activation step can then flip.)
        on_cpu = load_artifact(path)(x)
        assert (on_cpu - quantized.cpu()(x)).abs().max() <= 1e-5


def test_every_preset_is_valid_params_of_its_method() -> None:
    for info in list_methods():
        for label, preset in info.presets.items():
            params = parse_params(info.name, preset)  # raises InvalidParams when a field is off
            dumped = params.model_dump(mode="json")
            for field, value in preset.items():
                assert dumped[field] == value, (info.name, label, field)
