"""The architecture registry: each family file decorates its factories with :func:`register`.

A factory takes keyword arguments ``num_classes`` and ``in_channels`` (and may take more, such as
the CIFAR ResNets' ``shortcut``) and returns a fresh, randomly initialised ``nn.Module``. The
registry derives what callers show from the decorator's arguments and the factory's docstring
(its first paragraph is the description), so no list of names is kept by hand. A duplicate name
raises.

:func:`build` is the one place where user input (name, class count, channel count) is checked:
an unknown name raises :class:`~quantcore.errors.UnknownName`, an out-of-range value
:class:`~quantcore.errors.InvalidParams`, each with a message naming the value and what is allowed.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from torch import nn

from quantcore.errors import InvalidParams, UnknownName

NUM_CLASSES_RANGE = (2, 100_000)
IN_CHANNELS_RANGE = (1, 64)

Factory = Callable[..., nn.Module]
F = TypeVar("F", bound=Factory)

_NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class ArchInfo:
    """What a caller (CLI, API, UI) shows about one architecture."""

    name: str
    title: str
    default_in_channels: int
    default_input_size: tuple[int, int]  # (H, W)
    description: str
    source: str


@dataclass(frozen=True)
class _Entry:
    info: ArchInfo
    factory: Factory


_ARCHITECTURES: dict[str, _Entry] = {}


def register(
    name: str,
    *,
    title: str,
    source: str,
    default_in_channels: int = 3,
    default_input_size: tuple[int, int] = (32, 32),
) -> Callable[[F], F]:
    """Register the decorated factory under ``name``; the factory is returned unchanged.

    The factory's docstring is required: its first paragraph becomes ``ArchInfo.description``.
    """

    def decorate(factory: F) -> F:
        if not _NAME_PATTERN.fullmatch(name):
            raise ValueError(f"architecture name {name!r} must match {_NAME_PATTERN.pattern}")
        if name in _ARCHITECTURES:
            raise ValueError(f"architecture name {name!r} is registered twice")
        doc = inspect.getdoc(factory)
        if not doc:
            raise ValueError(f"architecture factory for {name!r} needs a docstring")
        description = " ".join(doc.split("\n\n", 1)[0].split())
        info = ArchInfo(
            name=name,
            title=title,
            default_in_channels=default_in_channels,
            default_input_size=default_input_size,
            description=description,
            source=source,
        )
        _ARCHITECTURES[name] = _Entry(info=info, factory=factory)
        return factory

    return decorate


def list_architectures() -> list[ArchInfo]:
    """Every registered architecture, sorted by name."""
    return [_ARCHITECTURES[name].info for name in sorted(_ARCHITECTURES)]


def build(name: str, *, num_classes: int = 10, in_channels: int | None = None) -> nn.Module:
    """A fresh, randomly initialised ``name`` with ``num_classes`` outputs.

    ``in_channels=None`` means the architecture's default (1 for ``lenet5``, 3 for the others).
    Initialisation draws from torch's global RNG: seed it (``torch.manual_seed``) to reproduce.
    """
    entry = _ARCHITECTURES.get(name)
    if entry is None:
        known = sorted(_ARCHITECTURES)
        raise UnknownName(
            f"unknown architecture {name!r}; known architectures: {', '.join(known)}",
            {"name": name, "known": known},
        )
    _check_int("num_classes", num_classes, NUM_CLASSES_RANGE)
    if in_channels is None:
        in_channels = entry.info.default_in_channels
    _check_int("in_channels", in_channels, IN_CHANNELS_RANGE)
    return entry.factory(num_classes=num_classes, in_channels=in_channels)


def _check_int(param: str, value: object, bounds: tuple[int, int]) -> None:
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidParams(
            f"{param} must be an integer from {low} to {high}, got {value!r}",
            {
                "param": param,
                "value": value if isinstance(value, int) else repr(value),
                "min": low,
                "max": high,
            },
        )
