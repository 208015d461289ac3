"""A dataset uploaded as one ``.npz`` archive: ``x_train``, ``y_train``, ``x_val``, ``y_val``.

Images may be shaped ``(N, H, W)``, ``(N, C, H, W)`` or ``(N, H, W, C)`` with ``C`` 1 or 3 (when
both axis 1 and axis 3 could be channels, axis 1 is taken). They are uint8 (divided by 255) or
floating point (used as they are, stored as float32). Labels are integers ``0..K-1``; the class
count is the largest label over both splits plus one. Mean and std are computed per channel from
``x_train``, a constant channel getting std 1. No augmentation: nothing is known of the domain.
The archive is read with ``allow_pickle=False``, and every problem is an ``InvalidDataset`` that
names the array and says what to change.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np
import torch

from quantcore.data.bundle import DataBundle
from quantcore.data.paths import resolve_root
from quantcore.data.tensors import TensorImageDataset, square_size
from quantcore.data.transforms import to_unit_float
from quantcore.errors import InvalidDataset

REQUIRED_KEYS = ("x_train", "y_train", "x_val", "y_val")
MAX_CLASSES = 100_000
NPZ_HINT = "Pass root= the path of an .npz archive with x_train, y_train, x_val and y_val."
_CHANNELS = (1, 3)
_STATS_CHUNK = 4096


def _bad(path: Path, problem: str, key: str | None = None) -> InvalidDataset:
    where = f"{path} [{key}]" if key else str(path)
    details = {"file": str(path), **({"key": key} if key else {})}
    return InvalidDataset(f"{where}: {problem}", details)


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        archive = np.load(path, allow_pickle=False)
    except ValueError as exc:  # a pickle, or a file numpy cannot recognise
        raise _bad(path, f"not an .npz archive numpy can read without pickle ({exc})") from exc
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise _bad(path, f"cannot be read as an .npz archive ({exc})") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise _bad(path, "holds a single .npy array; save an archive with np.savez(...)")
    with archive:
        missing = [k for k in REQUIRED_KEYS if k not in archive.files]
        if missing:
            raise _bad(
                path,
                f"missing array(s) {', '.join(missing)}; the archive holds "
                f"{', '.join(archive.files) or 'nothing'}, and needs {', '.join(REQUIRED_KEYS)}",
            )
        arrays = {}
        for key in REQUIRED_KEYS:
            try:
                arrays[key] = archive[key]
            except ValueError as exc:
                if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
                    raise _bad(
                        path, "is an object array (dtype=object); save numeric arrays", key
                    ) from exc
                raise _bad(path, f"cannot be read ({exc})", key) from exc
            except Exception as exc:  # a truncated or corrupt member
                raise _bad(path, f"cannot be read ({type(exc).__name__}: {exc})", key) from exc
    return arrays


def _images(x: np.ndarray, key: str, path: Path) -> torch.Tensor:
    """Validate one image array and return it as a ``(N, C, H, W)`` tensor."""
    if x.dtype.kind == "O":
        raise _bad(path, "is an object array (dtype=object); save numeric arrays", key)
    if x.dtype.kind not in "uif":
        raise _bad(
            path, f"has dtype {x.dtype}, not a number type; images must be uint8 or float", key
        )
    if x.dtype.kind in "ui" and x.dtype != np.uint8:
        raise _bad(
            path,
            f"has dtype {x.dtype}; integer images must be uint8 (0..255), other scales must be "
            "saved as float",
            key,
        )
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] in _CHANNELS:
        pass
    elif x.ndim == 4 and x.shape[3] in _CHANNELS:
        x = x.transpose(0, 3, 1, 2)
    else:
        raise _bad(
            path,
            f"has shape {x.shape}; expected (N, H, W), (N, C, H, W) or (N, H, W, C) with C in "
            f"{{1, 3}}",
            key,
        )
    if x.shape[0] == 0 or 0 in x.shape[2:]:
        raise _bad(path, f"is empty (shape {x.shape})", key)
    if x.dtype.kind == "f":
        x = x.astype(np.float32)
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        if bad:
            raise _bad(
                path, f"holds {bad} NaN or infinite value(s) (or values too big for float32)", key
            )
    return torch.from_numpy(np.ascontiguousarray(x))


def _labels(y: np.ndarray, key: str, count: int, path: Path) -> torch.Tensor:
    """Validate one label array against its image count; return it as int64."""
    if y.dtype.kind not in "iu":
        hint = (
            " (cast with y.astype(np.int64) if they are whole numbers)"
            if y.dtype.kind == "f"
            else ""
        )
        raise _bad(path, f"has dtype {y.dtype}; labels must be integers{hint}", key)
    if y.ndim != 1:
        raise _bad(path, f"has shape {y.shape}; labels must be 1-D (N,), e.g. y.ravel()", key)
    if len(y) != count:
        x_key = key.replace("y_", "x_")
        raise _bad(path, f"holds {len(y)} labels but {x_key} holds {count} images", key)
    if y.min() < 0:
        raise _bad(path, f"holds negative label {y.min()}; labels must be 0..K-1", key)
    if y.max() >= MAX_CLASSES:
        raise _bad(path, f"holds label {y.max()}; at most {MAX_CLASSES} classes are supported", key)
    return torch.from_numpy(y.astype(np.int64))


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of ``images`` ``(N, C, H, W)`` in model scale, in float64."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for start in range(0, images.shape[0], _STATS_CHUNK):
        chunk = to_unit_float(images[start : start + _STATS_CHUNK]).double()  # (n, C, H, W)
        total += chunk.sum(dim=(0, 2, 3))
        total_sq += chunk.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    var = (total_sq / count - mean.square()).clamp_min(0.0)
    std = [math.sqrt(v) or 1.0 for v in var.tolist()]
    return tuple(mean.tolist()), tuple(std)


def load_npz(
    root: Path | None = None, *, augment: bool = True, image_size: int | None = None
) -> DataBundle:
    """Load an ``.npz`` dataset from the file ``root``; ``augment`` is ignored."""
    del augment
    path = resolve_root("npz", root, expect="file", hint=NPZ_HINT)
    arrays = _read_arrays(path)
    x_train = _images(arrays["x_train"], "x_train", path)
    x_val = _images(arrays["x_val"], "x_val", path)
    if x_train.shape[1:] != x_val.shape[1:]:
        raise _bad(
            path,
            f"x_train images are (C, H, W) = {tuple(x_train.shape[1:])} but x_val images are "
            f"{tuple(x_val.shape[1:])}; both splits need the same shape",
        )
    y_train = _labels(arrays["y_train"], "y_train", len(x_train), path)
    y_val = _labels(arrays["y_val"], "y_val", len(x_val), path)
    num_classes = int(max(y_train.max(), y_val.max())) + 1
    mean, std = channel_stats(x_train)
    size = square_size(image_size, x_train.shape[2:])
    return DataBundle(
        name="npz",
        train=TensorImageDataset(x_train, y_train, mean=mean, std=std, size=size),
        val=TensorImageDataset(x_val, y_val, mean=mean, std=std, size=size),
        num_classes=num_classes,
        in_channels=x_train.shape[1],
        input_size=size,
        mean=mean,
        std=std,
    )
