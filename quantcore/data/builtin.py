"""The datasets quantcore can load by name: ``load_dataset`` and ``list_datasets``.

Each entry pairs what the UI shows (``DatasetInfo``) with the function that loads it. Every loader
takes ``(root, *, augment, image_size)`` and reads only local files: nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from quantcore.data.bundle import DataBundle, DatasetInfo, DatasetShape
from quantcore.data.cifar import load_cifar10
from quantcore.data.digits import load_digits
from quantcore.data.idx import FASHION_MNIST_ROOT, MNIST_ROOT, load_fashion_mnist, load_mnist
from quantcore.data.imagefolder import load_imagefolder
from quantcore.data.npz import load_npz
from quantcore.errors import InvalidParams, UnknownName

Loader = Callable[..., DataBundle]
MAX_IMAGE_SIZE = 4096


@dataclass(frozen=True)
class _Source:
    info: DatasetInfo
    load: Loader


_SOURCES: tuple[_Source, ...] = (
    _Source(
        DatasetInfo(
            name="digits",
            title="Digits (scikit-learn)",
            needs_root=False,
            default_root=None,
            description="1,797 grayscale 8x8 handwritten digits, 10 classes, shipped with "
            "scikit-learn; fixed stratified 80/20 split. image_size=28 fits MNIST models.",
            shape=DatasetShape(10, 1, (8, 8), 1437, 360),
        ),
        load_digits,
    ),
    _Source(
        DatasetInfo(
            name="mnist",
            title="MNIST",
            needs_root=True,
            default_root=MNIST_ROOT,
            description="70,000 grayscale 28x28 handwritten digits, 10 classes, from the four "
            "IDX files (optionally .gz).",
            shape=DatasetShape(10, 1, (28, 28), 60_000, 10_000),
        ),
        load_mnist,
    ),
    _Source(
        DatasetInfo(
            name="fashion-mnist",
            title="Fashion-MNIST",
            needs_root=True,
            default_root=FASHION_MNIST_ROOT,
            description="70,000 grayscale 28x28 clothing images, 10 classes, from the four IDX "
            "files; Debian's dataset-fashion-mnist package installs them.",
            shape=DatasetShape(10, 1, (28, 28), 60_000, 10_000),
        ),
        load_fashion_mnist,
    ),
    _Source(
        DatasetInfo(
            name="cifar10",
            title="CIFAR-10",
            needs_root=True,
            default_root=None,
            description="60,000 RGB 32x32 images, 10 classes, from the python-version batches; "
            "train augmented with pad-4 random crop and flip.",
            shape=DatasetShape(10, 3, (32, 32), 50_000, 10_000),
        ),
        load_cifar10,
    ),
    _Source(
        DatasetInfo(
            name="imagefolder",
            title="Image folder (ImageNet-style)",
            needs_root=True,
            default_root=None,
            description="RGB images in train/<class>/ and val/<class>/, resized to image_size "
            "(default 224) with ImageNet normalisation.",
        ),
        load_imagefolder,
    ),
    _Source(
        DatasetInfo(
            name="npz",
            title="NumPy archive (.npz)",
            needs_root=True,
            default_root=None,
            description="An .npz file with x_train, y_train, x_val, y_val; uint8 or float "
            "images, integer labels 0..K-1.",
        ),
        load_npz,
    ),
)


def _normalise_name(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def _find(name: str) -> _Source:
    wanted = _normalise_name(name) if isinstance(name, str) else name
    for source in _SOURCES:
        if source.info.name == wanted:
            return source
    known = [s.info.name for s in _SOURCES]
    raise UnknownName(
        f"unknown dataset {name!r}; known datasets: {', '.join(known)}",
        {"name": str(name), "known": known},
    )


def list_datasets() -> list[DatasetInfo]:
    """Describe every loadable dataset; ``needs_root`` reflects whether the default exists here."""
    infos = []
    for source in _SOURCES:
        info = source.info
        if info.default_root is not None:
            info = replace(info, needs_root=not Path(info.default_root).is_dir())
        infos.append(info)
    return infos


def load_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    augment: bool = True,
    image_size: int | None = None,
) -> DataBundle:
    """Load dataset ``name`` (see ``list_datasets``) from ``root`` or its default location.

    ``augment`` turns on the dataset's standard train augmentation (validation never is).
    ``image_size`` resizes images to a square of that side; by default they keep their native
    size (224 for ``imagefolder``). Raises ``UnknownName``, ``InvalidParams`` or
    ``InvalidDataset`` with a message that says what to change.
    """
    source = _find(name)
    if image_size is not None and (
        isinstance(image_size, bool)
        or not isinstance(image_size, int)
        or not 1 <= image_size <= MAX_IMAGE_SIZE
    ):
        raise InvalidParams(
            f"image_size must be an integer in 1..{MAX_IMAGE_SIZE} or None, got {image_size!r}",
            {"image_size": repr(image_size), "allowed": f"1..{MAX_IMAGE_SIZE}"},
        )
    path = Path(root).expanduser() if root is not None else None
    return source.load(path, augment=augment, image_size=image_size)
