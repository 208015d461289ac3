"""What a loaded dataset looks like to the rest of quantcore: ``DataBundle`` and ``DatasetInfo``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from quantcore.errors import InvalidParams


class EpochShuffle(Sampler[int]):
    """A random order that depends only on ``(seed, epoch)``.

    The training loop calls ``set_epoch`` before each epoch, so a run resumed from a checkpoint
    sees exactly the batches the uninterrupted run would have seen.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=gen).tolist())


@dataclass(frozen=True)
class DatasetInfo:
    """How the UI and CLI describe one loadable dataset.

    ``needs_root`` is true when ``load_dataset`` must be given ``root`` on this machine: the
    dataset has no default location, or its default location does not exist here.
    """

    name: str
    title: str
    needs_root: bool
    default_root: str | None
    description: str
    shape: DatasetShape | None = None  # fixed built-ins only; uploads are measured when loaded


@dataclass(frozen=True)
class DatasetShape:
    """What a fixed built-in holds, known without loading it (at its default image size)."""

    num_classes: int
    in_channels: int
    input_size: tuple[int, int]
    num_train: int
    num_val: int


@dataclass
class DataBundle:
    """A train and a validation split plus what a model needs to know about them.

    Both splits yield ``(image, label)`` with ``image`` a normalised float tensor shaped
    ``(in_channels, *input_size)`` and expose ``targets``, a 1-D int64 tensor of labels.
    ``mean``/``std`` are the per-channel constants the images were normalised with.
    """

    name: str
    train: Dataset
    val: Dataset
    num_classes: int
    in_channels: int
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] | None = None

    def loaders(
        self,
        batch_size: int,
        *,
        shuffle_train: bool = True,
        seed: int = 0,
        num_workers: int = 0,
        drop_last: bool = False,
    ) -> tuple[DataLoader, DataLoader]:
        """Return ``(train_loader, val_loader)``.

        The train order of epoch ``e`` is a permutation seeded by ``(seed, e)`` (see
        :class:`EpochShuffle`), so the same seed gives the same batches, also after a resume;
        the loader's generator, seeded with ``seed``, fixes the per-worker augmentation seeds.
        ``drop_last`` applies to the train loader only; validation always sees every sample.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidParams(
                f"batch_size must be a positive integer, got {batch_size!r}",
                {"batch_size": batch_size},
            )
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise InvalidParams(
                f"num_workers must be a non-negative integer, got {num_workers!r}",
                {"num_workers": num_workers},
            )
        generator = torch.Generator()
        generator.manual_seed(seed)
        sampler = EpochShuffle(len(self.train), seed) if shuffle_train else None  # type: ignore[arg-type]
        train_loader = DataLoader(
            self.train,
            batch_size=batch_size,
            sampler=sampler,
            generator=generator,
            num_workers=num_workers,
            drop_last=drop_last,
        )
        val_loader = DataLoader(
            self.val, batch_size=batch_size, shuffle=False, num_workers=num_workers
        )
        return train_loader, val_loader
