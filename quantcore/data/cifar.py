"""CIFAR-10 from the "python version" batches, unpickled without running any code.

The batches (``data_batch_1`` .. ``data_batch_5``, ``test_batch``, optional ``batches.meta``)
are pickles. ``SafeUnpickler`` resolves only the globals that rebuild numpy arrays, so a hostile
file fails with ``InvalidDataset`` before anything it names is called. Allowed:

- ``numpy.core.multiarray._reconstruct`` / ``numpy._core.multiarray._reconstruct``,
  ``numpy.ndarray``, ``numpy.dtype``: arrays pickled with protocols 0-4 (the original files);
- ``numpy.core.numeric._frombuffer`` / ``numpy._core.numeric._frombuffer``: protocol 5 arrays;
- ``numpy.core.multiarray.scalar`` / ``numpy._core.multiarray.scalar``: numpy scalars;
- ``_codecs.encode``: how Python 3 writes ``bytes`` in protocols below 3.

Train augmentation is the standard one (zero-pad 4, random 32x32 crop, horizontal flip), done per
batch with tensor ops.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantcore.data.bundle import DataBundle
from quantcore.data.paths import resolve_root
from quantcore.data.tensors import TensorImageDataset, square_size
from quantcore.data.transforms import Compose, RandomCrop, RandomHorizontalFlip
from quantcore.errors import InvalidDataset

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
CIFAR10_HINT = (
    "Pass root= the extracted cifar-10-batches-py folder (data_batch_1..5, test_batch) "
    "or the folder containing it."
)
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
_SIDE, _CHANNELS, _NUM_CLASSES = 32, 3, 10

_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }
)


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and plain containers, and nothing else."""

    def __init__(self, file: io.BufferedIOBase, *, source: str) -> None:
        super().__init__(file, encoding="bytes")  # CIFAR's batches were written by Python 2
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise InvalidDataset(
                f"{self.source}: refusing to unpickle {module}.{name}: a dataset pickle may only "
                "hold numpy arrays, lists, dicts, numbers and strings",
                {"file": self.source, "global": f"{module}.{name}"},
            )
        return super().find_class(module, name)


def safe_unpickle(path: Path) -> Any:
    """Unpickle ``path`` with ``SafeUnpickler``; any failure becomes ``InvalidDataset``."""
    try:
        with path.open("rb") as f:
            return SafeUnpickler(f, source=str(path)).load()
    except InvalidDataset:
        raise
    except OSError as exc:
        raise InvalidDataset(f"{path}: cannot be read ({exc})", {"file": str(path)}) from exc
    except Exception as exc:  # a corrupt pickle raises almost anything
        raise InvalidDataset(
            f"{path}: not a readable CIFAR batch pickle ({type(exc).__name__}: {exc})",
            {"file": str(path)},
        ) from exc


def _get(batch: dict, key: str) -> Any:
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    return None


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = safe_unpickle(path)
    if not isinstance(batch, dict):
        raise InvalidDataset(
            f"{path}: expected a dict with 'data' and 'labels', got {type(batch).__name__}",
            {"file": str(path)},
        )
    data, labels = _get(batch, "data"), _get(batch, "labels")
    if data is None or labels is None:
        raise InvalidDataset(f"{path}: missing the 'data' or 'labels' entry", {"file": str(path)})
    flat = _SIDE * _SIDE * _CHANNELS
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise InvalidDataset(
            f"{path}: 'data' must be a uint8 array shaped (N, {flat})", {"file": str(path)}
        )
    if data.shape[1] != flat:
        raise InvalidDataset(
            f"{path}: 'data' rows hold {data.shape[1]} values, a 32x32 RGB image needs {flat}",
            {"file": str(path)},
        )
    try:
        targets = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise InvalidDataset(f"{path}: 'labels' are not integers", {"file": str(path)}) from exc
    if len(targets) != len(data):
        raise InvalidDataset(
            f"{path}: {len(targets)} labels for {len(data)} images", {"file": str(path)}
        )
    if len(targets) and (targets.min() < 0 or targets.max() >= _NUM_CLASSES):
        raise InvalidDataset(
            f"{path}: labels must lie in 0..{_NUM_CLASSES - 1}, "
            f"found {targets.min()}..{targets.max()}",
            {"file": str(path)},
        )
    return data.reshape(-1, _CHANNELS, _SIDE, _SIDE), targets  # rows are R, G, B planes


def _batches_folder(root: Path) -> Path:
    for folder in (root, root / "cifar-10-batches-py"):
        if (folder / TEST_BATCH).is_file():
            return folder
    return root


def _read_classes(folder: Path) -> tuple[str, ...]:
    meta_path = folder / META
    if not meta_path.is_file():
        return CIFAR10_CLASSES
    names = _get(safe_unpickle(meta_path), "label_names") or []
    decoded = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    return decoded if len(decoded) == _NUM_CLASSES else CIFAR10_CLASSES


def load_cifar10(
    root: Path | None = None, *, augment: bool = True, image_size: int | None = None
) -> DataBundle:
    """CIFAR-10 from ``root``; train gets pad-4 random crop + flip when ``augment``."""
    folder = _batches_folder(resolve_root("cifar10", root, hint=CIFAR10_HINT))
    missing = [n for n in (*TRAIN_BATCHES, TEST_BATCH) if not (folder / n).is_file()]
    if missing:
        raise InvalidDataset(
            f"{folder}: missing CIFAR-10 batch file(s) {', '.join(missing)}. {CIFAR10_HINT}",
            {"folder": str(folder), "missing": missing},
        )
    parts = [_read_batch(folder / n) for n in TRAIN_BATCHES]
    x_train = torch.from_numpy(np.concatenate([p[0] for p in parts]))  # (N, 3, 32, 32) uint8
    y_train = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    x_val_np, y_val_np = _read_batch(folder / TEST_BATCH)
    x_val, y_val = torch.from_numpy(x_val_np.copy()), torch.from_numpy(y_val_np)
    size = square_size(image_size, (_SIDE, _SIDE))
    train_augment = (
        Compose([RandomCrop(size, padding=4), RandomHorizontalFlip()]) if augment else None
    )
    return DataBundle(
        name="cifar10",
        train=TensorImageDataset(
            x_train, y_train, mean=CIFAR10_MEAN, std=CIFAR10_STD, size=size, augment=train_augment
        ),
        val=TensorImageDataset(x_val, y_val, mean=CIFAR10_MEAN, std=CIFAR10_STD, size=size),
        num_classes=_NUM_CLASSES,
        in_channels=_CHANNELS,
        input_size=size,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        classes=_read_classes(folder),
    )
