"""Resolve the ``root`` a dataset is read from, with errors that say where we looked."""

from __future__ import annotations

from pathlib import Path

from quantcore.errors import InvalidDataset


def resolve_root(
    name: str,
    root: str | Path | None,
    *,
    default: str | None = None,
    hint: str = "",
    expect: str = "dir",
) -> Path:
    """Return the path to read dataset ``name`` from, or raise ``InvalidDataset``.

    ``root`` wins over ``default``; with neither the dataset cannot be found. ``expect`` is
    ``"dir"`` or ``"file"``. ``hint`` is appended to the message (e.g. which package provides it).
    """
    suffix = f" {hint}" if hint else ""
    if root is None:
        if default is None:
            kind = "folder" if expect == "dir" else "file"
            raise InvalidDataset(
                f"dataset {name!r} needs root= (the {kind} to read it from).{suffix}",
                {"dataset": name},
            )
        path = Path(default)
    else:
        path = Path(root).expanduser()
    if not path.exists():
        raise InvalidDataset(
            f"dataset {name!r}: {str(path)!r} does not exist.{suffix}",
            {"dataset": name, "path": str(path)},
        )
    if expect == "dir" and not path.is_dir():
        raise InvalidDataset(
            f"dataset {name!r}: {str(path)!r} is not a folder.{suffix}",
            {"dataset": name, "path": str(path)},
        )
    if expect == "file" and not path.is_file():
        raise InvalidDataset(
            f"dataset {name!r}: {str(path)!r} is not a file.{suffix}",
            {"dataset": name, "path": str(path)},
        )
    return path
