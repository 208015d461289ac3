"""Tests for quantcore.data: the dataset loaders, their validation, and seeded subsets."""

from __future__ import annotations

import builtins
import gzip
import os
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from quantcore.data import DataBundle, list_datasets, load_dataset, subset
from quantcore.data import idx as idx_module
from quantcore.data.idx import read_idx
from quantcore.data.tensors import TensorImageDataset
from quantcore.data.transforms import RandomCrop, RandomHorizontalFlip
from quantcore.errors import InvalidDataset, InvalidParams, UnknownName

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_TYPE_CODES = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}


# --- helpers -----------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode ``array`` as an IDX file: zero, zero, type code, ndim, big-endian dims, data."""
    code = IDX_TYPE_CODES[array.dtype.str[1:]]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    data = idx_bytes(array)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def make_idx_folder(folder: Path, *, n_train: int = 30, n_val: int = 10, gz: bool = True) -> Path:
    """Write a tiny MNIST-layout folder with random 28x28 images and labels 0..9."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_val)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return folder


def write_cifar_batch(path: Path, n: int, *, seed: int, protocol: int = 5) -> None:
    rng = np.random.default_rng(seed)
    batch = {
        b"batch_label": b"fake",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
    }
    with path.open("wb") as f:
        pickle.dump(batch, f, protocol=protocol)


def make_cifar_folder(folder: Path, *, per_batch: int = 4, protocol: int = 5) -> Path:
    """Five train batches of ``per_batch`` images, a test batch of 6, and batches.meta."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        write_cifar_batch(folder / f"data_batch_{i}", per_batch, seed=i, protocol=protocol)
    write_cifar_batch(folder / "test_batch", 6, seed=99, protocol=protocol)
    names = [f"class{i}".encode() for i in range(10)]
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump({b"label_names": names, b"num_vis": 3072}, f, protocol=protocol)
    return folder


class _RunsOnUnpickle:
    """A pickle payload that calls ``func(arg)`` when loaded by a plain unpickler."""

    def __init__(self, func: object, arg: str) -> None:
        self.func, self.arg = func, arg

    def __reduce__(self) -> tuple:
        return self.func, (self.arg,)


def hostile_pickle(marker: Path, how: str) -> bytes:
    if how == "exec":
        payload = _RunsOnUnpickle(builtins.exec, f"open({str(marker)!r}, 'w').close()")
    else:
        payload = _RunsOnUnpickle(os.system, f"touch '{marker}'")
    return pickle.dumps({b"data": payload, b"labels": [0]})


def make_image_folder(root: Path, splits: dict[str, list[str]], per_class: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for split, classes in splits.items():
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def save_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def valid_npz_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.integers(0, 256, (12, 6, 6), dtype=np.uint8),
        "y_train": np.array([0, 1, 2] * 4, dtype=np.int64),
        "x_val": rng.integers(0, 256, (5, 6, 6), dtype=np.uint8),
        "y_val": np.array([0, 1, 2, 3, 4], dtype=np.int64),
    }


def assert_targets(bundle: DataBundle) -> None:
    for split in (bundle.train, bundle.val):
        targets = torch.as_tensor(split.targets)
        assert targets.dtype == torch.int64
        assert targets.shape == (len(split),)


# --- catalogue ---------------------------------------------------------------------------------


def test_list_datasets_names_every_loader_once() -> None:
    names = [info.name for info in list_datasets()]
    assert sorted(names) == ["cifar10", "digits", "fashion-mnist", "imagefolder", "mnist", "npz"]
    infos = {info.name: info for info in list_datasets()}
    assert not infos["digits"].needs_root
    assert infos["cifar10"].needs_root
    assert infos["fashion-mnist"].default_root == str(FASHION_MNIST)
    assert infos["fashion-mnist"].needs_root == (not FASHION_MNIST.is_dir())
    assert all(info.title and info.description for info in infos.values())


@pytest.mark.parametrize("name", ["digits", "fashion-mnist"])
def test_a_builtins_declared_shape_is_what_loading_gives(name: str) -> None:
    info = next(i for i in list_datasets() if i.name == name)
    if info.needs_root:
        pytest.skip(f"{name} is not installed here (make setup installs it)")
    assert info.shape is not None
    data = load_dataset(name)
    assert (data.num_classes, data.in_channels, data.input_size) == (
        info.shape.num_classes,
        info.shape.in_channels,
        info.shape.input_size,
    )
    assert (len(data.train), len(data.val)) == (info.shape.num_train, info.shape.num_val)


def test_unknown_dataset_name_lists_the_known_ones() -> None:
    with pytest.raises(UnknownName) as excinfo:
        load_dataset("imagenet-22k")
    assert "imagenet-22k" in excinfo.value.message
    for name in ("digits", "fashion-mnist", "cifar10", "npz"):
        assert name in excinfo.value.message
    assert "digits" in excinfo.value.details["known"]


@pytest.mark.parametrize("image_size", [0, -3, 2.5, True, 100_000])
def test_bad_image_size_is_invalid_params(image_size: object) -> None:
    with pytest.raises(InvalidParams, match="image_size"):
        load_dataset("digits", image_size=image_size)  # type: ignore[arg-type]


# --- digits ------------------------------------------------------------------------------------


def test_digits_split_is_stratified_and_deterministic() -> None:
    first, second = load_dataset("digits"), load_dataset("Digits")
    assert (len(first.train), len(first.val)) == (1437, 360)
    assert torch.equal(first.train.targets, second.train.targets)
    assert torch.equal(first.val.images, second.val.images)
    train_share = torch.bincount(first.train.targets) / len(first.train)
    val_share = torch.bincount(first.val.targets) / len(first.val)
    assert torch.allclose(train_share, val_share, atol=0.01)
    assert (first.num_classes, first.in_channels, first.input_size) == (10, 1, (8, 8))
    assert_targets(first)


def test_digits_are_normalised_with_train_statistics() -> None:
    bundle = load_dataset("digits")
    train_loader, _ = bundle.loaders(len(bundle.train), shuffle_train=False)
    images, labels = next(iter(train_loader))
    assert images.shape == (1437, 1, 8, 8)
    assert labels.dtype == torch.int64
    assert abs(float(images.mean())) < 1e-4
    assert float(images.std()) == pytest.approx(1.0, abs=1e-3)


def test_digits_image_size_resizes_for_lenet() -> None:
    bundle = load_dataset("digits", image_size=28)
    image, label = bundle.val[0]
    assert image.shape == (1, 28, 28)
    assert bundle.input_size == (28, 28)
    assert isinstance(label, int)


# --- IDX (MNIST family) ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_round_trips_every_element_type(tmp_path: Path, dtype: str, suffix: str) -> None:
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    if dtype == "u1":
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    loaded = read_idx(write_idx(tmp_path / f"a.idx{suffix}", array))
    np.testing.assert_array_equal(loaded, array)
    assert loaded.dtype.isnative


def _corrupt_idx(kind: str) -> bytes:
    good = idx_bytes(np.zeros((3, 4, 4), dtype=np.uint8))
    return {
        "empty": b"",
        "bad magic": b"\x1f\x8b" + good[2:],
        "unknown type": good[:2] + b"\x07" + good[3:],
        "zero dims": b"\x00\x00\x08\x00",
        "short header": good[:9],
        "short body": good[:-5],
        "trailing": good + b"\x00\x00",
    }[kind]


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("empty", "only 0 bytes"),
        ("bad magic", "bad magic number"),
        ("unknown type", "unknown IDX element type 0x07"),
        ("zero dims", "0 dimensions"),
        ("short header", "truncated header"),
        ("short body", "truncated"),
        ("trailing", "trailing bytes"),
    ],
)
def test_corrupt_idx_names_the_file_and_the_fault(tmp_path: Path, kind: str, says: str) -> None:
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(_corrupt_idx(kind))
    with pytest.raises(InvalidDataset, match=says) as excinfo:
        read_idx(path)
    assert str(path) in excinfo.value.message
    assert excinfo.value.details["file"] == str(path)


def test_truncated_gzip_idx_is_invalid_dataset(tmp_path: Path) -> None:
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    data = gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8)))
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidDataset, match="gzip") as excinfo:
        read_idx(path)
    assert str(path) in excinfo.value.message


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_loads_from_an_idx_folder(tmp_path: Path, gz: bool) -> None:
    bundle = load_dataset("mnist", root=make_idx_folder(tmp_path / "mnist", gz=gz))
    assert (len(bundle.train), len(bundle.val)) == (30, 10)
    assert (bundle.num_classes, bundle.in_channels, bundle.input_size) == (10, 1, (28, 28))
    assert bundle.mean == (0.1307,)
    assert bundle.std == (0.3081,)
    assert bundle.train.images.dtype == torch.uint8
    raw = bundle.train.images[3].float() / 255
    image, label = bundle.train[3]
    torch.testing.assert_close(image, (raw - 0.1307) / 0.3081)
    assert label == 3
    assert_targets(bundle)


def test_idx_label_count_must_match_image_count(tmp_path: Path) -> None:
    folder = make_idx_folder(tmp_path / "mnist")
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(7, dtype=np.uint8))
    with pytest.raises(InvalidDataset, match=r"7 labels but t10k-images-idx3-ubyte\.gz holds 10"):
        load_dataset("mnist", root=folder)


def test_idx_missing_file_is_named(tmp_path: Path) -> None:
    folder = make_idx_folder(tmp_path / "mnist")
    (folder / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(InvalidDataset, match="train-labels-idx1-ubyte"):
        load_dataset("mnist", root=folder)


def test_missing_fashion_mnist_root_points_to_the_debian_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nowhere"
    monkeypatch.setattr(idx_module, "FASHION_MNIST_ROOT", str(missing))
    with pytest.raises(InvalidDataset) as excinfo:
        load_dataset("fashion-mnist")
    assert str(missing) in excinfo.value.message
    assert "dataset-fashion-mnist" in excinfo.value.message


def test_missing_root_for_dataset_without_default_says_so() -> None:
    with pytest.raises(InvalidDataset, match="needs root"):
        load_dataset("cifar10")


@pytest.mark.slow
@pytest.mark.skipif(
    not FASHION_MNIST.is_dir(),
    reason=f"{FASHION_MNIST} is absent (install Debian's dataset-fashion-mnist to run this)",
)
def test_real_fashion_mnist_loads_and_normalises() -> None:
    bundle = load_dataset("fashion-mnist")
    assert (len(bundle.train), len(bundle.val)) == (60000, 10000)
    assert bundle.num_classes == 10
    assert bundle.train[0][0].shape == (1, 28, 28)
    train_loader, _ = bundle.loaders(1000, seed=0)
    images, labels = next(iter(train_loader))
    assert abs(float(images.mean())) < 0.1
    assert float(images.std()) == pytest.approx(1.0, abs=0.15)
    assert int(labels.max()) <= 9
    assert_targets(bundle)


# --- CIFAR-10 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_loads_fake_batches(tmp_path: Path, protocol: int) -> None:
    folder = make_cifar_folder(tmp_path / "cifar-10-batches-py", protocol=protocol)
    bundle = load_dataset("cifar10", root=tmp_path, augment=False)  # the parent folder works too
    assert (len(bundle.train), len(bundle.val)) == (20, 6)
    assert (bundle.num_classes, bundle.in_channels, bundle.input_size) == (10, 3, (32, 32))
    assert bundle.classes == tuple(f"class{i}" for i in range(10))
    with (folder / "data_batch_2").open("rb") as f:
        raw = pickle.load(f)
    expected = torch.from_numpy(raw[b"data"][1].reshape(3, 32, 32)).float() / 255
    mean = torch.tensor(bundle.mean).view(3, 1, 1)
    std = torch.tensor(bundle.std).view(3, 1, 1)
    image, label = bundle.train[4 + 1]
    torch.testing.assert_close(image, (expected - mean) / std)
    assert label == raw[b"labels"][1]
    assert_targets(bundle)


def test_cifar10_augments_train_only(tmp_path: Path) -> None:
    make_cifar_folder(tmp_path)
    plain = load_dataset("cifar10", root=tmp_path, augment=False)
    augmented = load_dataset("cifar10", root=tmp_path, augment=True)
    torch.manual_seed(0)
    train_batch = torch.stack([augmented.train[i][0] for i in range(20)])
    plain_batch = torch.stack([plain.train[i][0] for i in range(20)])
    assert train_batch.shape == plain_batch.shape
    assert not torch.equal(train_batch, plain_batch)
    torch.testing.assert_close(augmented.val[2][0], plain.val[2][0])


@pytest.mark.parametrize("how", ["exec", "os.system"])
def test_hostile_cifar_pickle_is_refused_and_never_runs(tmp_path: Path, how: str) -> None:
    folder = make_cifar_folder(tmp_path)
    marker = tmp_path / "pwned"
    (folder / "data_batch_3").write_bytes(hostile_pickle(marker, how))
    with pytest.raises(InvalidDataset, match="refusing to unpickle") as excinfo:
        load_dataset("cifar10", root=folder)
    assert "data_batch_3" in excinfo.value.message
    assert not marker.exists()
    # The payload is live: a plain unpickler would have run it.
    control = tmp_path / "control"
    pickle.loads(hostile_pickle(control, how))
    assert control.exists()


def test_cifar_batch_with_wrong_row_length_is_invalid(tmp_path: Path) -> None:
    folder = make_cifar_folder(tmp_path)
    with (folder / "test_batch").open("wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(InvalidDataset, match="100 values"):
        load_dataset("cifar10", root=folder)


def test_cifar_missing_batch_is_listed(tmp_path: Path) -> None:
    folder = make_cifar_folder(tmp_path)
    (folder / "data_batch_4").unlink()
    with pytest.raises(InvalidDataset, match="data_batch_4"):
        load_dataset("cifar10", root=folder)


def test_random_crop_takes_a_window_of_the_padded_image() -> None:
    images = torch.rand(16, 3, 8, 8)
    torch.manual_seed(1)
    out = RandomCrop(8, padding=2)(images)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    offsets = set()
    for b in range(16):
        matches = [
            (top, left)
            for top in range(5)
            for left in range(5)
            if torch.equal(out[b], padded[b, :, top : top + 8, left : left + 8])
        ]
        assert matches, f"sample {b} is not a window of its padded image"
        offsets.add(matches[0])
    assert len(offsets) > 1


def test_random_flip_mirrors_some_samples_and_keeps_others() -> None:
    images = torch.rand(64, 1, 4, 4)
    torch.manual_seed(0)
    out = RandomHorizontalFlip()(images)
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, images, strict=True)]
    kept = [torch.equal(o, i) for o, i in zip(out, images, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert any(flipped)
    assert any(kept)


# --- image folders -----------------------------------------------------------------------------


def test_imagefolder_loads_train_and_val(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path, {"train": ["cat", "dog"], "val": ["cat", "dog"]})
    bundle = load_dataset("imagefolder", root=root, image_size=16)
    assert (len(bundle.train), len(bundle.val)) == (4, 4)
    assert bundle.classes == ("cat", "dog")
    assert (bundle.num_classes, bundle.in_channels, bundle.input_size) == (2, 3, (16, 16))
    assert bundle.train[0][0].shape == (3, 16, 16)
    assert bundle.val[3][1] == 1
    assert_targets(bundle)


def test_imagefolder_defaults_to_224(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path, {"train": ["a"], "val": ["a"]}, per_class=1)
    bundle = load_dataset("imagefolder", root=root, augment=False)
    assert bundle.input_size == (224, 224)
    assert bundle.val[0][0].shape == (3, 224, 224)


def test_imagefolder_class_lists_must_match(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path, {"train": ["cat", "dog"], "val": ["cat", "fox"]})
    with pytest.raises(InvalidDataset, match="same class folders") as excinfo:
        load_dataset("imagefolder", root=root)
    assert excinfo.value.details == {"only_in_train": ["dog"], "only_in_val": ["fox"]}


def test_imagefolder_without_val_is_invalid(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path, {"train": ["cat"]})
    with pytest.raises(InvalidDataset, match="val"):
        load_dataset("imagefolder", root=root)


# --- npz ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "channels"), [("NHW", 1), ("NCHW", 1), ("NCHW", 3), ("NHWC", 3), ("NHWC", 1)]
)
def test_npz_accepts_every_documented_layout(tmp_path: Path, layout: str, channels: int) -> None:
    rng = np.random.default_rng(0)
    shape_of = {"NHW": (6, 5), "NCHW": (channels, 6, 5), "NHWC": (6, 5, channels)}[layout]
    arrays = {
        "x_train": rng.random((10, *shape_of)).astype(np.float32),
        "y_train": np.array([0, 1] * 5),
        "x_val": rng.random((4, *shape_of)).astype(np.float32),
        "y_val": np.array([0, 1, 6, 1]),
    }
    bundle = load_dataset("npz", root=save_npz(tmp_path / "d.npz", **arrays))
    assert bundle.in_channels == channels
    assert bundle.input_size == (6, 5)
    assert bundle.num_classes == 7
    assert bundle.train[0][0].shape == (channels, 6, 5)
    assert_targets(bundle)


def test_npz_uint8_is_scaled_and_stats_come_from_x_train(tmp_path: Path) -> None:
    arrays = valid_npz_arrays()
    bundle = load_dataset("npz", root=save_npz(tmp_path / "d.npz", **arrays))
    x = arrays["x_train"].astype(np.float64) / 255
    assert bundle.mean == pytest.approx((x.mean(),))
    assert bundle.std == pytest.approx((x.std(),))
    train_loader, _ = bundle.loaders(12, shuffle_train=False)
    images, _ = next(iter(train_loader))
    assert abs(float(images.mean())) < 1e-5
    assert bundle.num_classes == 5


def _npz_case(case: str) -> dict[str, np.ndarray]:
    arrays = valid_npz_arrays()
    if case == "missing key":
        del arrays["y_val"]
    elif case == "wrong ndim":
        arrays["x_train"] = np.zeros((12, 36), np.uint8)
    elif case == "bad channels":
        arrays["x_train"] = np.zeros((12, 5, 6, 6), np.uint8)
    elif case == "mismatched n":
        arrays["y_train"] = np.zeros(11, np.int64)
    elif case == "negative label":
        arrays["y_val"] = np.array([0, 1, -1, 2, 0])
    elif case == "nan":
        arrays["x_val"] = np.full((5, 6, 6), np.nan, np.float32)
    elif case == "inf":
        arrays["x_train"] = np.zeros((12, 6, 6), np.float64)
        arrays["x_train"][0, 0, 0] = np.inf
    elif case == "strings":
        arrays["x_train"] = np.full((12, 6, 6), "a")
    elif case == "float labels":
        arrays["y_train"] = arrays["y_train"].astype(np.float32)
    elif case == "int32 images":
        arrays["x_val"] = arrays["x_val"].astype(np.int32)
    elif case == "shape mismatch":
        arrays["x_val"] = np.zeros((5, 7, 7), np.uint8)
    elif case == "2-d labels":
        arrays["y_val"] = arrays["y_val"].reshape(5, 1)
    elif case == "empty":
        arrays["x_val"] = np.zeros((0, 6, 6), np.uint8)
        arrays["y_val"] = np.zeros(0, np.int64)
    return arrays


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("missing key", "missing array(s) y_val"),
        ("wrong ndim", "[x_train]: has shape (12, 36)"),
        ("bad channels", "C in"),
        ("mismatched n", "[y_train]: holds 11 labels but x_train holds 12"),
        ("negative label", "[y_val]: holds negative label -1"),
        ("nan", "[x_val]: holds 180 NaN or infinite"),
        ("inf", "[x_train]: holds 1 NaN or infinite"),
        ("strings", "not a number type"),
        ("float labels", "labels must be integers"),
        ("int32 images", "must be uint8"),
        ("shape mismatch", "same shape"),
        ("2-d labels", "labels must be 1-D"),
        ("empty", "is empty"),
    ],
)
def test_npz_problems_are_reported_with_what_to_change(
    tmp_path: Path, case: str, says: str
) -> None:
    path = save_npz(tmp_path / "d.npz", **_npz_case(case))
    with pytest.raises(InvalidDataset, match=re.escape(says)) as excinfo:
        load_dataset("npz", root=path)
    assert str(path) in excinfo.value.message


def test_npz_object_array_is_refused_without_unpickling(tmp_path: Path) -> None:
    arrays = valid_npz_arrays()
    arrays["y_train"] = np.array([0, 1, "x"] * 4, dtype=object)
    path = save_npz(tmp_path / "d.npz", **arrays)
    with pytest.raises(InvalidDataset, match=r"\[y_train\]: is an object array"):
        load_dataset("npz", root=path)


@pytest.mark.parametrize(
    "content", [b"not a zip at all", b"PK\x03\x04broken", pickle.dumps({"x_train": 1})]
)
def test_npz_that_is_not_an_archive_is_invalid(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "d.npz"
    path.write_bytes(content)
    with pytest.raises(InvalidDataset, match=r"d\.npz"):
        load_dataset("npz", root=path)


def test_npz_root_must_be_a_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidDataset, match="not a file"):
        load_dataset("npz", root=tmp_path)


# --- bundles and loaders -----------------------------------------------------------------------


def _tiny_bundle(n: int = 40) -> DataBundle:
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone()
    targets = torch.arange(n) % 4
    train = TensorImageDataset(images, targets, mean=(0.0,), std=(1.0,))
    val = TensorImageDataset(images[:10], targets[:10], mean=(0.0,), std=(1.0,))
    return DataBundle("tiny", train, val, 4, 1, (2, 2), (0.0,), (1.0,))


def _order(loader: torch.utils.data.DataLoader) -> list[int]:
    return [int(v) for images, _ in loader for v in images[:, 0, 0, 0]]


def test_loaders_shuffle_reproducibly_with_the_seed() -> None:
    bundle = _tiny_bundle()
    first = _order(bundle.loaders(8, seed=3)[0])
    assert first == _order(bundle.loaders(8, seed=3)[0])
    assert first != _order(bundle.loaders(8, seed=4)[0])
    assert sorted(first) == list(range(40))
    assert _order(bundle.loaders(8, shuffle_train=False)[0]) == list(range(40))
    assert _order(bundle.loaders(8, seed=3)[1]) == list(range(10))


def test_loaders_drop_last_applies_to_train_only() -> None:
    train_loader, val_loader = _tiny_bundle().loaders(6, drop_last=True)
    assert len(train_loader) == 6
    assert len(val_loader) == 2


@pytest.mark.parametrize("batch_size", [0, -1, 1.5])
def test_loaders_reject_bad_batch_size(batch_size: object) -> None:
    with pytest.raises(InvalidParams, match="batch_size"):
        _tiny_bundle().loaders(batch_size)  # type: ignore[arg-type]


def test_batched_fetch_equals_single_fetch(tmp_path: Path) -> None:
    bundle = load_dataset("mnist", root=make_idx_folder(tmp_path), image_size=20)
    batch = bundle.train.__getitems__([5, 0, 7])
    for (image, label), i in zip(batch, [5, 0, 7], strict=True):
        single_image, single_label = bundle.train[i]
        torch.testing.assert_close(image, single_image)
        assert label == single_label


# --- subsets -----------------------------------------------------------------------------------


class _Labels(torch.utils.data.Dataset):
    """A dataset that is only its labels."""

    def __init__(self, labels: list[int]) -> None:
        self.targets = torch.tensor(labels, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> int:
        return int(self.targets[index])


labels_strategy = st.lists(st.integers(0, 9), min_size=1, max_size=300)
fraction_strategy = st.floats(0.0, 1.0, exclude_min=True)


@settings(max_examples=60, deadline=None)
@given(labels=labels_strategy, fraction=fraction_strategy, seed=st.integers(0, 2**31))
def test_balanced_subset_takes_the_same_count_per_class(
    labels: list[int], fraction: float, seed: int
) -> None:
    dataset = _Labels(labels)
    part = subset(dataset, fraction, seed=seed)
    classes, sizes = torch.unique(dataset.targets, return_counts=True)
    per_class = max(1, round(fraction * len(labels) / len(classes)))
    picked = torch.as_tensor(part.indices)
    assert len(set(part.indices)) == len(part.indices)
    assert int(picked.min()) >= 0
    assert int(picked.max()) < len(labels)
    assert torch.equal(part.targets, dataset.targets[picked])
    counts = {int(c): int((part.targets == c).sum()) for c in classes}
    for c, size in zip(classes.tolist(), sizes.tolist(), strict=True):
        assert counts[c] == min(per_class, size)
    assert len(part) == sum(min(per_class, s) for s in sizes.tolist())
    assert subset(dataset, fraction, seed=seed).indices == part.indices


@settings(max_examples=60, deadline=None)
@given(labels=labels_strategy, fraction=fraction_strategy, seed=st.integers(0, 2**31))
def test_uniform_subset_has_the_requested_size(
    labels: list[int], fraction: float, seed: int
) -> None:
    dataset = _Labels(labels)
    part = subset(dataset, fraction, seed=seed, balanced=False)
    assert len(part) == max(1, round(fraction * len(labels)))
    assert len(set(part.indices)) == len(part.indices)
    assert all(0 <= i < len(labels) for i in part.indices)
    assert subset(dataset, fraction, seed=seed, balanced=False).indices == part.indices


@pytest.mark.parametrize("balanced", [True, False])
def test_subset_seeds_give_different_samples(balanced: bool) -> None:
    dataset = _Labels([i % 10 for i in range(1000)])
    first = subset(dataset, 0.1, seed=0, balanced=balanced).indices
    assert first != subset(dataset, 0.1, seed=1, balanced=balanced).indices


def test_one_percent_of_fashion_sized_labels_is_balanced() -> None:
    dataset = _Labels([i % 10 for i in range(60000)])
    part = subset(dataset, 0.01, seed=0)
    assert torch.bincount(part.targets).tolist() == [60] * 10


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan"), "0.5", True])
def test_subset_fraction_out_of_range_is_invalid_params(fraction: object) -> None:
    with pytest.raises(InvalidParams, match="fraction"):
        subset(_Labels([0, 1]), fraction, seed=0)  # type: ignore[arg-type]


def test_balanced_subset_needs_targets() -> None:
    dataset = torch.utils.data.TensorDataset(torch.zeros(5))
    with pytest.raises(InvalidDataset, match="targets"):
        subset(dataset, 0.5, seed=0)
    assert len(subset(dataset, 0.5, seed=0, balanced=False)) == 2


def test_subset_of_a_bundle_split_loads_in_batches() -> None:
    bundle = load_dataset("digits")
    part = subset(bundle.train, 0.05, seed=0)
    images, labels = next(iter(torch.utils.data.DataLoader(part, batch_size=len(part))))
    assert images.shape == (len(part), 1, 8, 8)
    assert torch.equal(labels, part.targets)
