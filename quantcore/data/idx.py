"""MNIST and Fashion-MNIST from IDX files (the format of LeCun's MNIST distribution).

An IDX file is a big-endian header, then the raw array:

    bytes 0-1   zero
    byte  2     element type: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
                0x0E float64
    byte  3     number of dimensions d
    4 * d       each dimension as a big-endian uint32
    rest        the elements, row-major, big-endian

``read_idx`` checks every part of that and names the file and the fault when one is wrong. Each
of the four files may be gzipped (``.gz``). Images stay uint8 in memory; the datasets convert and
normalise per batch. No augmentation: the methods' official code trains MNIST models without it.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from quantcore.data.bundle import DataBundle
from quantcore.data.paths import resolve_root
from quantcore.data.tensors import TensorImageDataset, square_size
from quantcore.errors import InvalidDataset

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
MNIST_ROOT = "/usr/share/datasets/mnist"
FASHION_MNIST_HINT = (
    "On Debian and Ubuntu the package `dataset-fashion-mnist` installs it there "
    "(apt install dataset-fashion-mnist); or pass root= a folder with the four IDX files."
)
MNIST_HINT = (
    "Pass root= a folder holding train-images-idx3-ubyte, train-labels-idx1-ubyte, "
    "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (each optionally .gz)."
)

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

_IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_NUM_CLASSES = 10


def _bad(path: Path, problem: str, **details: object) -> InvalidDataset:
    return InvalidDataset(f"{path}: {problem}", {"file": str(path), **details})


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise _bad(path, f"the gzip stream is corrupt or truncated ({exc})") from exc
    except OSError as exc:
        raise _bad(path, f"cannot be read ({exc})") from exc


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a native-endian numpy array.

    Raises ``InvalidDataset`` naming the file for a bad magic number, an unknown element type, a
    truncated header or body, or bytes left over after the body.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise _bad(path, f"only {len(raw)} bytes; an IDX file starts with a 4-byte magic number")
    if raw[0] != 0 or raw[1] != 0:
        raise _bad(
            path,
            f"bad magic number 0x{raw[:4].hex()}: an IDX file starts with two zero bytes "
            "(is this really an IDX file, or gzipped without a .gz name?)",
        )
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_TYPES:
        raise _bad(path, f"unknown IDX element type 0x{type_code:02x}", type_code=type_code)
    if ndim == 0:
        raise _bad(path, "the header declares 0 dimensions")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise _bad(
            path, f"truncated header: {ndim} dimensions need {header_len} bytes, got {len(raw)}"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header_len])
    dtype = _IDX_TYPES[type_code]
    count = math.prod(dims)
    expected, actual = count * dtype.itemsize, len(raw) - header_len
    if actual != expected:
        problem = "truncated" if actual < expected else "has trailing bytes"
        raise _bad(
            path,
            f"{problem}: dimensions {dims} of {dtype.name} need {expected} data bytes, "
            f"the file holds {actual}",
            dims=list(dims),
        )
    array = np.frombuffer(raw, dtype=dtype, count=count, offset=header_len).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # a writable, native-endian copy


def _find_file(folder: Path, stem: str) -> Path:
    """Locate ``stem`` in ``folder`` (or ``folder/raw``), gzipped or not, '-idx' or '.idx'."""
    names = dict.fromkeys((stem, stem.replace("-idx", ".idx")))
    candidates = [
        where / f"{name}{suffix}"
        for where in (folder, folder / "raw")
        for name in names
        for suffix in ("", ".gz")
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise InvalidDataset(
        f"{folder}: no {stem} or {stem}.gz found (also looked in {folder / 'raw'})",
        {"folder": str(folder), "file": stem},
    )


def _read_split(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images_name, labels_name = _SPLIT_FILES[split]
    images_path, labels_path = _find_file(folder, images_name), _find_file(folder, labels_name)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise _bad(
            images_path,
            f"expected uint8 images shaped (N, H, W), got {images.dtype} {images.shape}",
        )
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise _bad(
            labels_path, f"expected integer labels shaped (N,), got {labels.dtype} {labels.shape}"
        )
    if len(labels) != len(images):
        raise _bad(
            labels_path,
            f"holds {len(labels)} labels but {images_path.name} holds {len(images)} images",
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= _NUM_CLASSES):
        raise _bad(
            labels_path,
            f"labels must lie in 0..{_NUM_CLASSES - 1}, found {labels.min()}..{labels.max()}",
        )
    x = torch.from_numpy(images).unsqueeze(1)  # (N, 1, H, W) uint8
    return x, torch.from_numpy(labels.astype(np.int64))


def load_idx_folder(
    name: str,
    folder: Path,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    classes: tuple[str, ...],
    image_size: int | None = None,
) -> DataBundle:
    """Build a bundle from a folder with the four MNIST-layout IDX files."""
    x_train, y_train = _read_split(folder, "train")
    x_val, y_val = _read_split(folder, "val")
    if x_train.shape[1:] != x_val.shape[1:]:
        raise InvalidDataset(
            f"{folder}: train images are {tuple(x_train.shape[2:])} but test images are "
            f"{tuple(x_val.shape[2:])}",
            {"folder": str(folder)},
        )
    size = square_size(image_size, x_train.shape[2:])
    return DataBundle(
        name=name,
        train=TensorImageDataset(x_train, y_train, mean=mean, std=std, size=size),
        val=TensorImageDataset(x_val, y_val, mean=mean, std=std, size=size),
        num_classes=_NUM_CLASSES,
        in_channels=1,
        input_size=size,
        mean=mean,
        std=std,
        classes=classes,
    )


def load_mnist(
    root: Path | None = None, *, augment: bool = True, image_size: int | None = None
) -> DataBundle:
    """MNIST from ``root`` (default /usr/share/datasets/mnist); no augmentation."""
    del augment
    folder = resolve_root("mnist", root, default=MNIST_ROOT, hint=MNIST_HINT)
    return load_idx_folder(
        "mnist",
        folder,
        mean=MNIST_MEAN,
        std=MNIST_STD,
        classes=tuple(str(d) for d in range(10)),
        image_size=image_size,
    )


def load_fashion_mnist(
    root: Path | None = None, *, augment: bool = True, image_size: int | None = None
) -> DataBundle:
    """Fashion-MNIST from ``root`` (default Debian's /usr/share/datasets/fashion-mnist)."""
    del augment
    folder = resolve_root(
        "fashion-mnist", root, default=FASHION_MNIST_ROOT, hint=FASHION_MNIST_HINT
    )
    return load_idx_folder(
        "fashion-mnist",
        folder,
        mean=FASHION_MNIST_MEAN,
        std=FASHION_MNIST_STD,
        classes=FASHION_MNIST_CLASSES,
        image_size=image_size,
    )
