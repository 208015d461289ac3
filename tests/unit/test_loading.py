"""Reading a user's weights file safely, and loading it into an architecture."""

from __future__ import annotations

import pathlib
import pickle
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from quantcore import loading
from quantcore.errors import InvalidModel, UnsafeModelFile
from quantcore.loading import load_into, load_model, read_state_dict


class _Exploit:
    """Pickles as a call to ``Path.touch(marker)``: unpickling it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., None], tuple[Path]]:
        return pathlib.Path.touch, (self.marker,)


def _small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 3))


def _assert_same(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(state) == sorted(expected)
    for key, value in expected.items():
        assert state[key].dtype == value.dtype, key
        assert torch.equal(state[key], value), key


@pytest.fixture
def net() -> nn.Module:
    model = _small_net()
    model(torch.randn(2, 1, 4, 4))  # moves BN running stats and num_batches_tracked off defaults
    return model


@pytest.fixture
def valid_pt(tmp_path: Path, net: nn.Module) -> Path:
    path = tmp_path / "weights.pt"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture
def valid_safetensors(tmp_path: Path, net: nn.Module) -> Path:
    path = tmp_path / "weights.safetensors"
    save_file(net.state_dict(), path)
    return path


# --- formats and layouts ---------------------------------------------------------------------


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_torch_save_state_dict_round_trips_exactly(
    tmp_path: Path, net: nn.Module, zip_format: bool
) -> None:
    path = tmp_path / "weights.bin"  # the name says nothing: the format is read from the bytes
    torch.save(net.state_dict(), path, _use_new_zipfile_serialization=zip_format)
    state = read_state_dict(path)
    _assert_same(state, net.state_dict())
    assert state["1.num_batches_tracked"].dtype == torch.int64


def test_safetensors_round_trips_exactly_whatever_the_file_name(
    tmp_path: Path, net: nn.Module
) -> None:
    path = tmp_path / "weights.pt"
    save_file(net.state_dict(), path)
    _assert_same(read_state_dict(path), net.state_dict())


@pytest.mark.parametrize("nest_key", ["state_dict", "model_state_dict", "model"])
def test_checkpoint_dict_nesting_the_state_dict_is_unwrapped(
    tmp_path: Path, net: nn.Module, nest_key: str
) -> None:
    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 7, "best_acc": 0.9, nest_key: net.state_dict()}, path)
    _assert_same(read_state_dict(path), net.state_dict())


def test_data_parallel_module_prefix_is_stripped(tmp_path: Path, net: nn.Module) -> None:
    path = tmp_path / "dp.pt"
    torch.save({"state_dict": nn.DataParallel(net).state_dict()}, path)
    _assert_same(read_state_dict(path), net.state_dict())


def test_module_prefix_is_kept_when_only_some_keys_have_it(tmp_path: Path) -> None:
    path = tmp_path / "mixed.pt"
    torch.save({"module.weight": torch.ones(2), "head.weight": torch.ones(2)}, path)
    assert set(read_state_dict(path)) == {"module.weight", "head.weight"}


@pytest.mark.parametrize(
    ("contents", "found"),
    [
        ({"epoch": 3, "optimizer": {"lr": 0.1}}, "'epoch' is a int"),
        (torch.ones(3), "a single tensor"),
        ([torch.ones(3)], "a list"),
        ({}, "an empty dict"),
    ],
    ids=["checkpoint-without-weights", "tensor", "list", "empty-dict"],
)
def test_contents_other_than_a_state_dict_are_named(
    tmp_path: Path, contents: object, found: str
) -> None:
    path = tmp_path / "other.pt"
    torch.save(contents, path)
    with pytest.raises(InvalidModel, match=found) as caught:
        read_state_dict(path)
    assert "model.state_dict()" in caught.value.message


def test_nan_or_inf_weights_are_rejected_by_key(tmp_path: Path, net: nn.Module) -> None:
    state = net.state_dict()
    state["0.weight"][0, 0, 0, 0] = float("nan")
    state["3.bias"][1] = float("inf")
    path = tmp_path / "nan.safetensors"
    save_file(state, path)
    with pytest.raises(InvalidModel, match=r"NaN.*0\.weight, 3\.bias") as caught:
        read_state_dict(path)
    assert caught.value.details["non_finite"] == ["0.weight", "3.bias"]


# --- files that would run code ----------------------------------------------------------------


def test_exploit_payload_runs_under_plain_pickle(tmp_path: Path) -> None:
    """The payload the safety tests use really does run when unpickled without protection."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_Exploit(marker)))
    assert marker.exists()


def _write_plain_pickle(path: Path, payload: _Exploit) -> None:
    with path.open("wb") as file:
        pickle.dump(payload, file)


def _write_protocol0_pickle(path: Path, payload: _Exploit) -> None:
    with path.open("wb") as file:
        pickle.dump(payload, file, protocol=0)  # text opcodes, no PROTO header


def _write_torch_zip(path: Path, payload: _Exploit) -> None:
    torch.save({"weight": torch.ones(2), "extra": payload}, path)


def _write_torch_legacy(path: Path, payload: _Exploit) -> None:
    torch.save(
        {"weight": torch.ones(2), "extra": payload}, path, _use_new_zipfile_serialization=False
    )


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize(
    "write",
    [_write_plain_pickle, _write_protocol0_pickle, _write_torch_zip, _write_torch_legacy],
    ids=lambda w: w.__name__,
)
def test_malicious_pickle_is_refused_without_running(
    tmp_path: Path, write: Callable[[Path, _Exploit], None]
) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    write(path, _Exploit(marker))
    with pytest.raises(UnsafeModelFile, match="nothing in it was run"):
        read_state_dict(path)
    assert not marker.exists()


class _NetWithSideEffect(nn.Module):
    """A custom module whose unpickling (``__setstate__``) would create a marker file."""

    def __init__(self, marker: Path) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)
        self.marker = marker

    def __setstate__(self, state: dict[str, object]) -> None:
        super().__setstate__(state)
        Path(str(state["marker"])).touch()


@pytest.mark.parametrize(
    "make", [lambda marker: _small_net(), _NetWithSideEffect], ids=["sequential", "custom"]
)
def test_whole_pickled_module_is_refused_with_state_dict_hint(
    tmp_path: Path, make: Callable[[Path], nn.Module]
) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "model.pt"
    torch.save(make(marker), path)
    with pytest.raises(UnsafeModelFile, match=r"model\.state_dict\(\)"):
        read_state_dict(path)
    assert not marker.exists()


def test_torch_export_program_is_not_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.export.load must never be called on an upload")

    monkeypatch.setattr(torch.export, "load", forbidden)
    program = torch.export.export(nn.Linear(3, 2).eval(), (torch.randn(1, 3),))
    path = tmp_path / "model.pt2"
    torch.export.save(program, path)
    with pytest.raises(InvalidModel, match=r"\.pt2 .*not supported yet"):
        read_state_dict(path)


# --- unreadable files -------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["valid_pt", "valid_safetensors"])
def test_truncated_file_is_not_readable(
    tmp_path: Path, fixture: str, request: pytest.FixtureRequest
) -> None:
    data = request.getfixturevalue(fixture).read_bytes()
    path = tmp_path / "truncated"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidModel, match="truncated"):
        read_state_dict(path)


@pytest.mark.parametrize("seed", range(3))
def test_random_bytes_are_not_readable(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "random.pt"
    path.write_bytes(random.Random(seed).randbytes(4096))
    with pytest.raises(InvalidModel, match="not a readable model file"):
        read_state_dict(path)


def test_empty_file_is_not_readable(tmp_path: Path) -> None:
    path = tmp_path / "empty.pt"
    path.touch()
    with pytest.raises(InvalidModel, match="empty"):
        read_state_dict(path)


def test_file_over_max_bytes_is_rejected_before_reading(
    valid_pt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the file was read")

    monkeypatch.setattr(loading, "_sniff_format", forbidden)
    size = valid_pt.stat().st_size
    with pytest.raises(InvalidModel, match=f"{size} bytes, over the limit of {size - 1}"):
        read_state_dict(valid_pt, max_bytes=size - 1)
    monkeypatch.undo()
    assert read_state_dict(valid_pt, max_bytes=size)


# --- load_into and load_model ------------------------------------------------------------------


def test_load_into_reports_missing_unexpected_and_misshaped_keys_together(net: nn.Module) -> None:
    state = dict(net.state_dict())
    del state["0.bias"]
    state["head.weight"] = torch.zeros(1)
    state["3.weight"] = torch.zeros(3, 8)
    target = _small_net()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(InvalidModel) as caught:
        load_into(target, state)
    assert caught.value.details == {
        "missing": ["0.bias"],
        "unexpected": ["head.weight"],
        "mismatched": [{"key": "3.weight", "expected": [3, 16], "got": [3, 8]}],
    }
    for text in ("0.bias", "head.weight", "3.weight (expected [3, 16], got [3, 8])"):
        assert text in caught.value.message
    _assert_same(target.state_dict(), before)  # nothing was loaded


def test_load_into_casts_floating_weights_to_the_model_dtype(net: nn.Module) -> None:
    state = {k: v.double() if v.is_floating_point() else v for k, v in net.state_dict().items()}
    target = _small_net().half()
    load_into(target, state)
    assert target[0].weight.dtype == torch.float16
    assert torch.equal(target[0].weight, net[0].weight.half())
    assert target[1].num_batches_tracked.dtype == torch.int64
    assert int(target[1].num_batches_tracked) == 1


def test_load_model_builds_zoo_architecture_and_loads_weights(tmp_path: Path) -> None:
    zoo = pytest.importorskip("quantcore.zoo")
    if not hasattr(zoo, "build"):
        pytest.skip("quantcore.zoo.build is not written yet")
    source = zoo.build("lenet5", num_classes=10, in_channels=1)
    path = tmp_path / "lenet5.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    model = load_model(path, "lenet5", num_classes=10, in_channels=1)
    assert not model.training
    _assert_same(model.state_dict(), source.state_dict())
