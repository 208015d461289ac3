"""The .qpack artifact: exact round trip, honest size, clear errors on bad files."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from quantcore import zoo
from quantcore.artifact import (
    ModelSpec,
    load_artifact,
    read_manifest,
    save_artifact,
    stored_bytes,
)
from quantcore.data import load_dataset
from quantcore.errors import InvalidArtifact
from quantcore.layers import FrozenWeight, InputQuantizer, quant_layers
from quantcore.methods.uniform import MinMaxQuantizer
from quantcore.metrics import size_report
from quantcore.qweight import CodebookKind, Grouping, QuantizedWeight
from quantcore.surgery import find_layers, quantize_model
from quantcore.training import evaluate

LENET = ModelSpec("lenet5", 10, 1, (28, 28))


class ClipInput(InputQuantizer):
    """A test input quantizer with a learned parameter, a buffer and a config value."""

    kind = "test_clip_round"

    def __init__(self, steps: int = 3) -> None:
        super().__init__()
        self.steps = steps
        self.top = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("offset", torch.tensor(0.0))

    def config(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.top / self.steps
        return torch.round(torch.minimum((x - self.offset).clamp(min=0), self.top) / scale) * scale


def _lenet(bits: int = 2, per_channel: bool = True, keep_first_last: bool = True) -> nn.Module:
    torch.manual_seed(0)
    model = zoo.build("lenet5", num_classes=10, in_channels=1)
    quantize_model(
        model, lambda _n, _m: MinMaxQuantizer(bits, per_channel), keep_first_last=keep_first_last
    )
    return model.eval()


def _alq_like_bases(shape: tuple[int, ...], seed: int) -> QuantizedWeight:
    """A multi-bit layer whose groups have 0..6 bits, as ALQ leaves them: pixelwise groups
    for a conv, two sub-rows per output unit for a linear layer."""
    gen = torch.Generator().manual_seed(seed)
    if len(shape) == 4:
        grouping = Grouping((0, 2, 3, 1), shape[1])
    else:
        grouping = Grouping((0, 1), shape[1] // 2)
    g = grouping.num_groups(shape)
    bits = torch.randint(0, 7, (g,), generator=gen, dtype=torch.uint8)
    high = (2 ** bits.long()).unsqueeze(1)
    codes = (torch.rand(g, grouping.size, generator=gen) * high).long().clamp(max=high - 1)
    book = torch.rand(g, 6, generator=gen) * torch.tensor([1, 0.5, 0.25, 0.12, 0.06, 0.03])
    return QuantizedWeight(shape, grouping, codes.to(torch.uint8), bits, book, CodebookKind.BASES)


@pytest.mark.parametrize(
    ("bits", "per_channel", "keep"),
    [(2, True, True), (4, False, False), (1, True, False), (8, True, True)],
)
def test_loaded_artifact_computes_the_same_logits(
    tmp_path: Path, bits: int, per_channel: bool, keep: bool
) -> None:
    model = _lenet(bits, per_channel, keep)
    path = tmp_path / "m.qpack"
    save_artifact(model, path, spec=LENET, method="uniform", params={"bits": bits})
    loaded = load_artifact(path)
    assert not loaded.training
    x = torch.randn(8, 1, 28, 28)
    assert (loaded(x) - model(x)).abs().max() <= 1e-5
    assert [n for n, _ in quant_layers(loaded)] == [n for n, _ in quant_layers(model)]


def test_per_group_bitwidths_and_input_quantizers_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = zoo.build("lenet5", num_classes=10, in_channels=1)
    quantize_model(
        model,
        lambda _n, m: FrozenWeight(_alq_like_bases(tuple(m.weight.shape), seed=m.weight.numel())),
        input_quantizer=lambda _n, _m: ClipInput(steps=5),
        keep_first_last=False,
    )
    with torch.no_grad():
        for _, layer in quant_layers(model):
            layer.input_quantizer.top.fill_(2.5)
            layer.input_quantizer.offset.fill_(-0.1)
    model.eval()
    path = tmp_path / "bases.qpack"
    manifest = save_artifact(model, path, spec=LENET, method="test", params={})
    assert {e["bits"] for e in manifest["layers"]} == {"per_group"}
    loaded = load_artifact(path)
    x = torch.randn(4, 1, 28, 28)
    assert (loaded(x) - model(x)).abs().max() <= 1e-5
    for (_, a), (_, b) in zip(quant_layers(loaded), quant_layers(model), strict=True):
        assert torch.equal(a.export_weight().codes.long(), b.export_weight().codes.long())
        assert torch.equal(a.export_weight().bits.long(), b.export_weight().bits.long())
        assert a.input_quantizer.steps == 5


@pytest.mark.parametrize(
    ("arch", "spec", "bits"),
    [
        ("lenet5", LENET, 2),
        ("resnet20", ModelSpec("resnet20", 10, 3, (32, 32)), 4),
    ],
)
def test_file_is_within_five_percent_of_the_theoretical_size(
    tmp_path: Path, arch: str, spec: ModelSpec, bits: int
) -> None:
    model = zoo.build(arch, num_classes=10, in_channels=spec.in_channels)
    quantize_model(model, lambda _n, _m: MinMaxQuantizer(bits, True))
    path = tmp_path / "m.qpack"
    save_artifact(model, path, spec=spec, method="uniform", params={"bits": bits})
    report = size_report(model)
    size = path.stat().st_size
    assert size <= report.quantized_bytes * 1.05 + 4096
    assert size < report.float_bytes / 2  # it really is smaller
    assert report.quantized_bytes < report.float_bytes


def test_quantized_accuracy_equals_artifact_accuracy(tmp_path: Path) -> None:
    data = load_dataset("digits", image_size=28, augment=False)
    model = _lenet(bits=3)
    path = tmp_path / "m.qpack"
    save_artifact(model, path, spec=LENET, method="uniform", params={"bits": 3})
    _, val = data.loaders(64)
    in_memory = evaluate(model, val)
    from_file = evaluate(load_artifact(path), val)
    assert from_file == in_memory


def test_manifest_records_version_layers_and_table(tmp_path: Path) -> None:
    path = tmp_path / "m.qpack"
    save_artifact(
        _lenet(), path, spec=LENET, method="uniform", params={"bits": 2}, metrics={"top1": 12.5}
    )
    manifest = read_manifest(path)
    assert manifest["format_version"] == 1
    assert manifest["model"]["arch"] == "lenet5"
    assert manifest["method"] == {"name": "uniform", "params": {"bits": 2}}
    assert [e["name"] for e in manifest["layers"]] == [
        n for n, _ in find_layers(zoo.build("lenet5"))
    ][1:-1]
    assert manifest["layers"][0]["bits"] == 2
    row = manifest["layer_table"][0]
    assert row["levels"] == 4
    assert 0 < row["rel_error"] < 1
    assert manifest["metrics"]["top1"] == 12.5


def _rewrite(src: Path, dst: Path, change: Any) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            zout.writestr(item, change(item.filename, data))


def test_bad_files_raise_invalid_artifact(tmp_path: Path) -> None:
    good = tmp_path / "good.qpack"
    save_artifact(_lenet(), good, spec=LENET, method="uniform", params={})
    truncated = tmp_path / "truncated.qpack"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    random_bytes = tmp_path / "random.qpack"
    random_bytes.write_bytes(torch.randint(0, 256, (5000,), dtype=torch.uint8).numpy().tobytes())
    future = tmp_path / "future.qpack"

    def bump(name: str, data: bytes) -> bytes:
        if name != "manifest.json":
            return data
        manifest = json.loads(data)
        manifest["format_version"] = 99
        return json.dumps(manifest).encode()

    _rewrite(good, future, bump)
    broken_tensors = tmp_path / "broken.qpack"
    _rewrite(good, broken_tensors, lambda n, d: d[:100] if n.endswith("safetensors") else d)
    unknown_arch = tmp_path / "arch.qpack"
    _rewrite(
        good,
        unknown_arch,
        lambda n, d: d.replace(b'"lenet5"', b'"nonet"') if n == "manifest.json" else d,
    )
    cases = {
        truncated: "not a readable zip",
        random_bytes: "not a readable zip",
        future: "format version 99",
        broken_tensors: "corrupt",
        unknown_arch: "nonet",
        tmp_path / "missing.qpack": "no such file",
    }
    for path, message in cases.items():
        with pytest.raises(InvalidArtifact, match=message):
            load_artifact(path)


def test_size_report_counts_payload_codebooks_and_float_parts() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 10), nn.Linear(10, 4), nn.Linear(4, 3))
    quantize_model(model, lambda _n, _m: MinMaxQuantizer(3, True))
    report = size_report(model)
    (layer,) = report.layers
    assert layer.payload_bytes == math.ceil(40 * 3 / 8)  # 15
    assert layer.codebook_bytes == 4 * 2 * 4  # a scale and a zero point per channel
    assert layer.bits_table_bytes == 0
    floats = (5 * 10 + 10) + 4 + (4 * 3 + 3)  # first layer, the bias, last layer
    assert report.float_parts_bytes == 4 * floats
    assert report.quantized_bytes == 4 * floats + 15 + 32
    assert report.float_bytes == 4 * (floats + 40)
    assert report.average_bits == 3.0


@pytest.mark.parametrize("kind", ["affine", "bases"])
def test_tensor_bytes_written_equal_the_theoretical_size(tmp_path: Path, kind: str) -> None:
    """Every byte the size report counts is a tensor byte in the file, and nothing else is;
    of per-group bases (ALQ) only the live scales count and are written."""
    model = zoo.build("resnet20", num_classes=10, in_channels=3)
    if kind == "affine":
        quantize_model(model, lambda _n, _m: MinMaxQuantizer(3, True))
    else:
        quantize_model(
            model,
            lambda _n, m: FrozenWeight(_alq_like_bases(tuple(m.weight.shape), m.weight.numel())),
        )
        qw = quant_layers(model)[0][1].export_weight()
        assert size_report(model).layers[0].codebook_bytes == 4 * int(qw.bits.long().sum())
    path = tmp_path / "m.qpack"
    save_artifact(
        model, path, spec=ModelSpec("resnet20", 10, 3, (32, 32)), method="uniform", params={}
    )
    with zipfile.ZipFile(path) as zf:
        blob = zf.read("tensors.safetensors")
    header_len = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + header_len])
    written = sum(
        e["data_offsets"][1] - e["data_offsets"][0]
        for k, e in header.items()
        if k != "__metadata__"
    )
    assert written == size_report(model).quantized_bytes
    per_layer = stored_bytes(path)
    report = size_report(model)
    assert per_layer.pop("") == report.float_parts_bytes
    assert per_layer == {r.name: r.total_bytes for r in report.layers}


def test_dequantized_state_dict_loads_into_the_float_architecture() -> None:
    from quantcore.artifact import dequantized_state_dict
    from quantcore.loading import load_into

    model = _lenet(bits=3)
    state = dequantized_state_dict(model)
    float_model = zoo.build("lenet5", num_classes=10, in_channels=1)
    load_into(float_model, state)  # strict: same keys and shapes as the original architecture
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(float_model.eval()(x), model(x))


def test_activation_sites_round_trip_and_unwrap_in_the_float_export(tmp_path: Path) -> None:
    """Sites after a ReLU (output) and before a float layer (input), one nested in another."""
    from quantcore.artifact import dequantized_state_dict
    from quantcore.layers import QuantAct, activation_sites
    from quantcore.loading import load_into
    from quantcore.surgery import add_activation_sites

    model = _lenet(bits=3)
    relus = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    first, last = find_layers(model)[0][0], "classifier"
    add_activation_sites(model, relus, lambda _n, _m: ClipInput(steps=3))
    add_activation_sites(model, [first], lambda _n, _m: ClipInput(steps=7), where="input")
    add_activation_sites(model, [last], lambda _n, _m: ClipInput(steps=9))  # wraps sites inside
    with torch.no_grad():
        for _, site in activation_sites(model):
            site.quantizer.top.fill_(3.0)
    model.eval()
    names = [n for n, _ in activation_sites(model)]
    assert names[0] == first
    assert f"{last}.inner.{relus[-1].split('.', 1)[1]}" in names

    path = tmp_path / "sites.qpack"
    manifest = save_artifact(model, path, spec=LENET, method="test", params={})
    assert [s["name"] for s in manifest["activation_sites"]] == names
    loaded = load_artifact(path)
    x = torch.randn(4, 1, 28, 28)
    assert (loaded(x) - model(x)).abs().max() <= 1e-5
    assert [type(m) for _, m in activation_sites(loaded)] == [QuantAct] * len(names)
    assert [s.where for _, s in activation_sites(loaded)] == [
        s.where for _, s in activation_sites(model)
    ]

    float_model = zoo.build("lenet5", num_classes=10, in_channels=1)
    load_into(float_model, dequantized_state_dict(model))  # strict: the original key names
