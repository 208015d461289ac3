"""quantcore.zoo: the registry contract for every architecture, then each one against its spec.

Specs: ../methods/alq.md §2.3 and §8 (LeNet5, VGG-Small, torchvision ResNet-18/34);
../methods/lq-nets.md §6.2, §6.4, §10 P6 and §11.1 #10 (pre-activation ResNet-18, VGG-Small);
../methods/quantization-networks.md §5 and §8 (ResNet-20, activation sites).
"""

from __future__ import annotations

import functools
import inspect
from collections import Counter
from dataclasses import FrozenInstanceError
from typing import Any

import pytest
import torch
import torchvision
from hypothesis import given
from hypothesis import strategies as st
from torch import fx, nn

from quantcore import zoo
from quantcore.errors import InvalidParams, UnknownName
from quantcore.zoo.lenet import lenet5
from quantcore.zoo.registry import register
from quantcore.zoo.resnet_cifar import ZeroPadShortcut, resnet20

ARCHS = zoo.list_architectures()

# name → (default in_channels, default input size): ARCHITECTURE.md "Architectures (zoo)".
EXPECTED_DEFAULTS = {
    "lenet5": (1, (28, 28)),
    "vgg_small": (3, (32, 32)),
    "vgg_small_lqnets": (3, (32, 32)),
    "resnet20": (3, (32, 32)),
    "resnet20b": (3, (32, 32)),
    "resnet32": (3, (32, 32)),
    "resnet56": (3, (32, 32)),
    "preact_resnet18": (3, (224, 224)),
    "resnet18": (3, (224, 224)),
    "resnet34": (3, (224, 224)),
    "resnet50": (3, (224, 224)),
    "alexnet": (3, (224, 224)),
}


@functools.cache
def _built(name: str, in_channels: int) -> nn.Module:
    """One shared, seeded 7-class build per (name, in_channels); tests only read it."""
    torch.manual_seed(0)
    return zoo.build(name, num_classes=7, in_channels=in_channels).eval()


def _weight_layers(model: nn.Module) -> list[nn.Conv2d | nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _alq_weight_shapes(model: nn.Module) -> list[tuple[int, ...]]:
    """Quantized tensors as the ALQ scripts select them: ``weight`` with dim > 1, in order."""
    return [
        tuple(p.shape) for name, p in model.named_parameters() if "weight" in name and p.dim() > 1
    ]


def _forward_cases() -> list[Any]:
    """Every architecture with 1 and 3 input channels; the 224x224 nets forward once in the fast
    suite (with the non-default channel count, which exercises the first-conv swap)."""
    cases = []
    for info in ARCHS:
        for in_channels in (1, 3):
            large = info.default_input_size[0] * info.default_input_size[1] > 64 * 64
            slow = large and in_channels == info.default_in_channels
            marks = [pytest.mark.slow] if slow else []
            cases.append(
                pytest.param(info, in_channels, marks=marks, id=f"{info.name}-in{in_channels}")
            )
    return cases


# --- the registry contract, for every architecture ---------------------------------------------


def test_registry_holds_the_architectures_the_product_promises() -> None:
    assert {a.name: (a.default_in_channels, a.default_input_size) for a in ARCHS} == (
        EXPECTED_DEFAULTS
    )
    assert [a.name for a in ARCHS] == sorted(EXPECTED_DEFAULTS)


@pytest.mark.parametrize("info", ARCHS, ids=lambda a: a.name)
def test_arch_info_describes_and_cites_its_source(info: zoo.ArchInfo) -> None:
    assert info.title
    assert info.description
    assert info.source
    with pytest.raises(FrozenInstanceError):
        info.title = "changed"  # type: ignore[misc]


@pytest.mark.parametrize(("info", "in_channels"), _forward_cases())
def test_forward_at_default_input_size_gives_logits(info: zoo.ArchInfo, in_channels: int) -> None:
    """Also: Conv2d/Linear layers are registered in the order the forward pass calls them (what
    ``quantcore.surgery.find_layers`` relies on)."""
    model = _built(info.name, in_channels)
    layers = _weight_layers(model)
    called: list[nn.Module] = []
    hooks = [m.register_forward_pre_hook(lambda m, _x: called.append(m)) for m in layers]
    x = torch.randn(2, in_channels, *info.default_input_size)
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for hook in hooks:
            hook.remove()
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    assert [id(m) for m in called] == [id(m) for m in layers]


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("info", ARCHS, ids=lambda a: a.name)
def test_first_conv_reads_in_channels_and_last_layer_gives_num_classes(
    info: zoo.ArchInfo, in_channels: int
) -> None:
    layers = _weight_layers(_built(info.name, in_channels))
    assert isinstance(layers[0], nn.Conv2d)
    assert layers[0].in_channels == in_channels
    assert isinstance(layers[-1], nn.Linear)
    assert layers[-1].out_features == 7


def test_defaults_are_ten_classes_and_the_architecture_channel_count() -> None:
    lenet, vgg = zoo.build("lenet5"), zoo.build("vgg_small")
    assert _weight_layers(lenet)[0].in_channels == 1
    assert _weight_layers(vgg)[0].in_channels == 3
    assert _weight_layers(lenet)[-1].out_features == 10


@pytest.mark.parametrize("info", ARCHS, ids=lambda a: a.name)
def test_every_relu_is_its_own_module_called_once(info: zoo.ArchInfo) -> None:
    """No functional relu, no in-place ReLU, and no ReLU module shared by two sites, so an
    activation quantizer placed after a ReLU module quantizes exactly one site."""
    model = _built(info.name, info.default_in_channels)
    graph = fx.symbolic_trace(model).graph
    functional = [
        n.target for n in graph.nodes if n.op != "call_module" and "relu" in str(n.target).lower()
    ]
    assert functional == []
    relus = {name: m for name, m in model.named_modules() if isinstance(m, nn.ReLU)}
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module" and n.target in relus)
    assert relus
    assert calls == dict.fromkeys(relus, 1)
    assert not any(m.inplace for m in relus.values())


@pytest.mark.parametrize(
    ("name", "sites"),
    [
        ("resnet18", 17),  # quantization-networks.md §5.2: stem + 2 per block x 8
        ("resnet20", 19),  # quantization-networks.md §5.2: stem + 2 per block x 9
        # lq-nets.md §11.1 #10: 16 activation quantizers, each after its own ReLU, plus the
        # last stage's BN-ReLU that feeds the float classifier
        ("preact_resnet18", 17),
    ],
)
def test_relu_sites_match_the_activation_quantizer_sites_of_the_specs(
    name: str, sites: int
) -> None:
    model = _built(name, 3)
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == sites


def test_build_is_fresh_and_reproducible_under_a_seed() -> None:
    torch.manual_seed(1)
    a = zoo.build("resnet20")
    torch.manual_seed(1)
    b = zoo.build("resnet20")
    c = zoo.build("resnet20")
    a_state, b_state = a.state_dict(), b.state_dict()
    assert all(torch.equal(a_state[k], b_state[k]) for k in a_state)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
    assert a.conv1.weight is not b.conv1.weight


# --- errors and the registry ---------------------------------------------------------------------


def test_unknown_name_raises_unknown_name_listing_the_known_names() -> None:
    with pytest.raises(UnknownName) as excinfo:
        zoo.build("resnet21")
    err = excinfo.value
    assert err.code == "unknown_name"
    assert "'resnet21'" in err.message
    for info in ARCHS:
        assert info.name in err.message
    assert err.details == {"name": "resnet21", "known": sorted(EXPECTED_DEFAULTS)}


@pytest.mark.parametrize("bad", [1, 0, -3, 100_001, True, 2.5, "10"])
def test_num_classes_out_of_range_raises_invalid_params(bad: object) -> None:
    with pytest.raises(InvalidParams) as excinfo:
        zoo.build("lenet5", num_classes=bad)  # type: ignore[arg-type]
    assert "num_classes" in excinfo.value.message
    assert repr(bad) in excinfo.value.message
    assert "from 2 to 100000" in excinfo.value.message
    assert excinfo.value.details["min"] == 2
    assert excinfo.value.details["max"] == 100_000


@pytest.mark.parametrize("bad", [0, -1, 65, 3.0])
def test_in_channels_out_of_range_raises_invalid_params(bad: object) -> None:
    with pytest.raises(InvalidParams, match=r"in_channels must be an integer from 1 to 64, got"):
        zoo.build("resnet20", in_channels=bad)  # type: ignore[arg-type]


@given(st.integers().filter(lambda n: not 2 <= n <= 100_000))
def test_any_num_classes_outside_the_range_is_refused(bad: int) -> None:
    with pytest.raises(InvalidParams, match=str(bad)):
        zoo.build("lenet5", num_classes=bad)


def test_range_bounds_are_accepted() -> None:
    model = zoo.build("lenet5", num_classes=2, in_channels=64)
    assert model(torch.randn(2, 64, 28, 28)).shape == (2, 2)


def test_registry_rejects_a_duplicate_name() -> None:
    def impostor(*, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
        """Not LeNet5."""
        return nn.Identity()

    with pytest.raises(ValueError, match="registered twice"):
        register("lenet5", title="Impostor", source="none")(impostor)
    assert isinstance(_weight_layers(zoo.build("lenet5"))[0], nn.Conv2d)


def test_registry_rejects_a_factory_without_docstring() -> None:
    def undocumented(*, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
        return nn.Identity()

    with pytest.raises(ValueError, match="docstring"):
        register("zz_undocumented", title="x", source="y")(undocumented)
    assert "zz_undocumented" not in {a.name for a in zoo.list_architectures()}


def test_description_is_the_first_paragraph_of_the_factory_docstring() -> None:
    (info,) = [a for a in ARCHS if a.name == "lenet5"]
    first_paragraph = inspect.getdoc(lenet5).split("\n\n")[0]  # type: ignore[union-attr]
    assert info.description == " ".join(first_paragraph.split())


# --- LeNet5 and VGG-Small (ALQ), alq.md §2.3 and §8 ----------------------------------------------


def test_lenet5_has_the_alq_parameter_count() -> None:
    """alq.md §8: 431,080 parameters; 430,500 quantized weights; 580 biases."""
    model = zoo.build("lenet5")
    assert _num_params(model) == 431_080
    assert sum(m.weight.numel() for m in _weight_layers(model)) == 430_500
    assert sum(m.bias.numel() for m in _weight_layers(model)) == 580


def test_lenet5_has_the_alq_layer_shapes_and_order() -> None:
    """alq.md §2.3 (shapes in named_parameters order) and §8 (conv, pool, ReLU order)."""
    model = zoo.build("lenet5")
    assert _alq_weight_shapes(model) == [(20, 1, 5, 5), (50, 20, 5, 5), (500, 800), (10, 500)]
    assert [type(m) for m in model.features] == [
        nn.Conv2d, nn.MaxPool2d, nn.ReLU, nn.Conv2d, nn.MaxPool2d, nn.ReLU
    ]  # fmt: skip
    assert [type(m) for m in model.classifier] == [nn.Linear, nn.ReLU, nn.Linear]
    assert all(m.bias is not None for m in _weight_layers(model))


def test_lenet5_state_dict_keys_are_the_official_codes() -> None:
    """github.com/zqu1992/ALQ lenet5.py: ``features`` and ``classifier`` Sequentials."""
    assert list(zoo.build("lenet5").state_dict()) == [
        "features.0.weight", "features.0.bias", "features.3.weight", "features.3.bias",
        "classifier.0.weight", "classifier.0.bias", "classifier.2.weight", "classifier.2.bias",
    ]  # fmt: skip


def test_vgg_small_has_the_alq_layer_shapes_and_order() -> None:
    """alq.md §2.3 / §8: six 3x3 convs with bias, conv → pool → BN → ReLU in pooled stages,
    FC 8192→1024→1024→10 with BN1d."""
    model = zoo.build("vgg_small")
    assert _alq_weight_shapes(model) == [
        (128, 3, 3, 3), (128, 128, 3, 3), (256, 128, 3, 3), (256, 256, 3, 3),
        (512, 256, 3, 3), (512, 512, 3, 3), (1024, 8192), (1024, 1024), (10, 1024),
    ]  # fmt: skip
    conv, pool, bn, relu = nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d, nn.ReLU
    assert [type(m) for m in model.features] == [
        conv, bn, relu, conv, pool, bn, relu,
        conv, bn, relu, conv, pool, bn, relu,
        conv, bn, relu, conv, pool, bn, relu,
    ]  # fmt: skip
    assert [type(m) for m in model.classifier] == [
        nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear
    ]  # fmt: skip
    for m in _weight_layers(model)[:6]:
        assert (m.kernel_size, m.padding, m.bias is not None) == ((3, 3), (1, 1), True)


def test_vgg_small_has_the_alq_parameter_budget() -> None:
    """alq.md §8: 14,022,016 quantized weights, 3,850 biases, 3,840 BN channels (7,680 affine)."""
    model = zoo.build("vgg_small")
    layers = _weight_layers(model)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d)]
    assert sum(m.weight.numel() for m in layers) == 14_022_016
    assert sum(m.bias.numel() for m in layers) == 3_850
    assert sum(m.num_features for m in bns) == 3_840
    assert all(m.affine and m.momentum == 0.1 for m in bns)
    assert _num_params(model) == 14_022_016 + 3_850 + 7_680


def test_vgg_small_lqnets_has_bias_free_convs_and_a_single_fc_head() -> None:
    """lq-nets.md §6.4 (cifar10-vgg-small.py): conv0 + 5 convs, no bias, conv → pool → BN-ReLU
    in pooled stages, one float FC 8192→10."""
    model = zoo.build("vgg_small_lqnets")
    layers = _weight_layers(model)
    assert [tuple(m.weight.shape) for m in layers] == [
        (128, 3, 3, 3), (128, 128, 3, 3), (256, 128, 3, 3), (256, 256, 3, 3),
        (512, 256, 3, 3), (512, 512, 3, 3), (10, 8192),
    ]  # fmt: skip
    assert [m.bias is None for m in layers] == [True] * 6 + [False]
    assert list(model.features.named_children())[:7] == [
        ("conv0", model.features.conv0), ("bn0", model.features.bn0),
        ("relu0", model.features.relu0), ("conv1", model.features.conv1),
        ("pool1", model.features.pool1), ("bn1", model.features.bn1),
        ("relu1", model.features.relu1),
    ]  # fmt: skip


# --- CIFAR ResNets, quantization-networks.md §5.1 and §8 ------------------------------------------


def test_resnet20_has_the_quantization_networks_parameter_count() -> None:
    """quantization-networks.md §8: 269,722 parameters = 267,264 weights in the 18 middle layers
    + 1,072 in the first conv and the FC + 1,386 BN affine parameters and FC bias."""
    model = zoo.build("resnet20")
    layers = _weight_layers(model)
    assert _num_params(model) == 269_722
    assert len(layers) == 20
    assert sum(m.weight.numel() for m in layers[1:-1]) == 267_264
    assert layers[0].weight.numel() + layers[-1].weight.numel() == 1_072


@pytest.mark.parametrize(("name", "params"), [("resnet32", 464_154), ("resnet56", 853_018)])
def test_deeper_cifar_resnets_have_he_et_al_sizes(name: str, params: int) -> None:
    """He et al. 2016, Table 6: 0.46M (ResNet-32) and 0.85M (ResNet-56), option-A shortcuts."""
    assert _num_params(zoo.build(name)) == params


def test_option_a_shortcut_subsamples_and_zero_pads_channels_on_both_sides() -> None:
    x = torch.randn(2, 16, 8, 8)
    out = ZeroPadShortcut(16, 32, stride=2)(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert not out[:, :8].any()
    assert not out[:, 24:].any()


def test_option_b_shortcut_adds_a_1x1_projection_with_bn() -> None:
    model = resnet20(shortcut="B")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    projections = [m for m in convs if m.kernel_size == (1, 1)]
    assert [(m.in_channels, m.out_channels, m.stride) for m in projections] == [
        (16, 32, (2, 2)),
        (32, 64, (2, 2)),
    ]
    # two 1x1 convs (512 + 2,048 weights) and their BN (2 * (32 + 64) affine parameters)
    assert _num_params(model) == 269_722 + 2_560 + 192
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_unknown_shortcut_option_raises_invalid_params() -> None:
    with pytest.raises(InvalidParams, match="shortcut must be one of A, B, got 'C'"):
        resnet20(shortcut="C")  # type: ignore[arg-type]


# --- pre-activation ResNet-18 (LQ-Nets), lq-nets.md §6.2, §10 P6, §11.1 #10 ----------------------


def test_preact_resnet18_has_the_lqnets_quantizable_layers() -> None:
    """§11.1 #10: 19 quantized tensors (16 block 3x3 convs + 3 projections) besides the float
    stem conv and FC."""
    layers = _weight_layers(_built("preact_resnet18", 3))
    stem, middle, fc = layers[0], layers[1:-1], layers[-1]
    assert (stem.kernel_size, stem.stride, stem.out_channels) == ((7, 7), (2, 2), 64)
    assert isinstance(fc, nn.Linear)
    assert (fc.in_features, fc.bias is not None) == (512, True)
    assert len(middle) == 19
    assert sum(m.kernel_size == (3, 3) for m in middle) == 16
    projections = [m for m in middle if m.kernel_size == (1, 1)]
    assert [(m.in_channels, m.out_channels, m.stride) for m in projections] == [
        (64, 128, (2, 2)),
        (128, 256, (2, 2)),
        (256, 512, (2, 2)),
    ]
    assert all(m.bias is None for m in layers[:-1])


def test_preact_resnet18_preactivates_only_later_blocks_and_ends_stages_with_bn_relu() -> None:
    """§6.2: first blocks read an already BN-ReLU'd tensor; other blocks start with BN-ReLU;
    every stage ends with BN → ReLU."""
    model = _built("preact_resnet18", 3)
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        first, second, bn_last, relu_last = stage
        assert isinstance(first.preact, nn.Identity)
        assert [type(m) for m in second.preact] == [nn.BatchNorm2d, nn.ReLU]
        assert (type(bn_last), type(relu_last)) == (nn.BatchNorm2d, nn.ReLU)


def test_preact_residual_branch_ends_in_bn_and_the_sum_is_not_rectified() -> None:
    """§10 P6: the branch ends with BN before the addition; no ReLU after it."""
    block = _built("preact_resnet18", 3).layer1[1]
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        branch = block.bn2(block.conv2(block.relu1(block.bn1(block.conv1(block.preact(x))))))
        out = block(x)
    assert torch.equal(out, branch + x)
    assert (out < 0).any()


# --- torchvision nets -----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "params"), [("resnet18", 11_689_512), ("resnet34", 21_797_672)])
def test_torchvision_resnets_have_the_alq_parameter_counts(name: str, params: int) -> None:
    """alq.md §8 table: total FP32 parameters for 1000 classes."""
    assert _num_params(zoo.build(name, num_classes=1000)) == params


@pytest.mark.parametrize(
    ("name", "reference"),
    [("resnet18", torchvision.models.resnet18), ("alexnet", torchvision.models.alexnet)],
)
def test_torchvision_builds_equal_torchvision_under_the_same_seed(
    name: str, reference: object
) -> None:
    torch.manual_seed(3)
    ours = zoo.build(name, num_classes=7).state_dict()
    torch.manual_seed(3)
    theirs = reference(weights=None, num_classes=7).state_dict()  # type: ignore[operator]
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize("name", ["resnet18", "alexnet"])
def test_in_channels_swaps_only_the_first_conv(name: str) -> None:
    one, three = _built(name, 1), _built(name, 3)
    first_one, first_three = _weight_layers(one)[0], _weight_layers(three)[0]
    assert first_one.weight.shape[1] == 1
    config = ("out_channels", "kernel_size", "stride", "padding", "dilation", "groups")
    assert [getattr(first_one, a) for a in config] == [getattr(first_three, a) for a in config]
    assert (first_one.bias is None) == (first_three.bias is None)
    shapes_one = {k: v.shape for k, v in one.state_dict().items()}
    shapes_three = {k: v.shape for k, v in three.state_dict().items()}
    differing = {k for k in shapes_one if shapes_one[k] != shapes_three[k]}
    assert differing == {next(iter(shapes_one))}


def test_torchvision_builds_download_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the zoo tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    for name in ("resnet18", "resnet34", "resnet50", "alexnet"):
        zoo.build(name)


def test_resnet20b_has_the_layer_order_of_the_l_dnq_reference() -> None:
    """../shared/refvectors/l-dnq/layer_order_and_trainable.json, without DataParallel's prefix."""
    import json
    from pathlib import Path

    from quantcore.surgery import find_layers

    reference = Path(__file__).resolve().parents[3] / "shared/refvectors/l-dnq"
    path = reference / "layer_order_and_trainable.json"
    if not path.exists():
        pytest.skip("../shared is not beside the checkout")
    order = json.loads(path.read_text())["ResNet20"]["layer_order"]
    model = zoo.build("resnet20b")
    x = torch.randn(1, 3, 32, 32)
    assert [n for n, _ in find_layers(model, x)] == [n.removeprefix("module.") for n in order]
