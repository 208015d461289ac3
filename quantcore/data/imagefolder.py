"""ImageNet-style image folders: ``root/train/<class>/*.png|jpg`` and ``root/val/<class>/*``.

Read with torchvision's ``ImageFolder`` (PIL, converted to RGB) and normalised with the ImageNet
constants. Train augmentation is ``RandomResizedCrop(image_size)`` + horizontal flip; validation
(and train with ``augment=False``) is ``Resize(image_size * 256 / 224)`` + ``CenterCrop``.
Both splits must hold the same class folders, so label ``i`` means the same class in each.

Images are opened only as the raster formats in ``IMAGE_FORMATS``, whatever their name says: a
file that Pillow would hand to an external program (EPS goes to Ghostscript) is refused.
``scan_images`` decodes every image of a split once, so a folder from an upload can be checked
before a job ever reads it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.datasets import ImageFolder

from quantcore.data.bundle import DataBundle
from quantcore.data.paths import resolve_root
from quantcore.errors import InvalidDataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_IMAGE_SIZE = 224
IMAGEFOLDER_HINT = "Pass root= a folder holding train/<class>/<images> and val/<class>/<images>."
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "PPM", "TIFF", "WEBP")  # what IMG_EXTENSIONS name


def _open_image(path: str) -> Image.Image:
    """Open ``path`` as one of ``IMAGE_FORMATS`` (never by another plugin) without decoding."""
    return Image.open(path, formats=IMAGE_FORMATS)


def _load_rgb(path: str) -> Image.Image:
    with _open_image(path) as image:
        return image.convert("RGB")


class LabelledImageFolder(ImageFolder):
    """``ImageFolder`` whose ``targets`` is a 1-D int64 tensor, like every dataset in a bundle."""

    def __init__(self, root: Path, transform: Any) -> None:
        super().__init__(str(root), transform=transform, loader=_load_rgb)
        labels = [label for _, label in self.samples]
        self.targets = torch.as_tensor(labels, dtype=torch.int64)  # type: ignore[assignment]


def _open_split(folder: Path, transform: Any) -> LabelledImageFolder:
    if not folder.is_dir():
        raise InvalidDataset(
            f"{folder} does not exist. {IMAGEFOLDER_HINT}", {"folder": str(folder)}
        )
    try:
        return LabelledImageFolder(folder, transform)
    except (FileNotFoundError, OSError) as exc:  # no class folders, or no images in them
        raise InvalidDataset(f"{folder}: {exc}", {"folder": str(folder)}) from exc


def _check_same_classes(train: ImageFolder, val: ImageFolder, root: Path) -> None:
    if train.classes == val.classes:
        return
    only_train = sorted(set(train.classes) - set(val.classes))
    only_val = sorted(set(val.classes) - set(train.classes))
    raise InvalidDataset(
        f"{root}: train/ and val/ must hold the same class folders; "
        f"only in train: {only_train or 'none'}, only in val: {only_val or 'none'}",
        {"only_in_train": only_train, "only_in_val": only_val},
    )


def load_imagefolder(
    root: Path | None = None, *, augment: bool = True, image_size: int | None = None
) -> DataBundle:
    """Load ``root/train`` and ``root/val`` as RGB images of ``image_size`` (default 224)."""
    base = resolve_root("imagefolder", root, hint=IMAGEFOLDER_HINT)
    size = image_size or DEFAULT_IMAGE_SIZE
    to_input = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    eval_transform = T.Compose([T.Resize(int(size * 256 / 224)), T.CenterCrop(size), *to_input])
    train_transform = (
        T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), *to_input])
        if augment
        else eval_transform
    )
    train = _open_split(base / "train", train_transform)
    val = _open_split(base / "val", eval_transform)
    _check_same_classes(train, val, base)
    return DataBundle(
        name="imagefolder",
        train=train,
        val=val,
        num_classes=len(train.classes),
        in_channels=3,
        input_size=(size, size),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        classes=tuple(train.classes),
    )


def scan_images(split: ImageFolder, *, max_pixels: int) -> Counter[tuple[int, int]]:
    """Decode every image of ``split``; return how many there are of each ``(height, width)``.

    Raises ``InvalidDataset`` naming the first file (relative to the dataset root, e.g.
    ``train/cat/3.png``) that is not a readable image or has more than ``max_pixels`` pixels.
    """
    base = Path(split.root).parent
    sizes: Counter[tuple[int, int]] = Counter()
    for path, _ in split.samples:
        name = Path(path).relative_to(base).as_posix()
        try:
            with _open_image(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise InvalidDataset(
                        f"{name}: {width}x{height} is more than {max_pixels} pixels; "
                        "resize the image",
                        {"file": name, "max_pixels": max_pixels},
                    )
                image.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            problem = str(exc).replace(path, name)  # never the server's path
            raise InvalidDataset(
                f"{name}: not a readable {'/'.join(IMAGE_FORMATS)} image ({problem})",
                {"file": name},
            ) from None
        sizes[(height, width)] += 1
    return sizes
