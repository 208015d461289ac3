"""Read model weights from a user's file without ever running code in it.

Formats are told apart by content, never by the file name:

- **safetensors**: an 8-byte little-endian header length, then a JSON header starting with ``{``.
  Read with ``safetensors.torch.load_file`` (no code path can run anything).
- **torch.save zip** (starts with ``PK``, holds ``<name>/data.pkl``) and **legacy torch.save**
  (a bare pickle stream): read with ``torch.load(weights_only=True)``, whose unpickler only
  builds tensors and plain containers. Any instruction it refuses (a global such as
  ``os.system``, a pickled ``nn.Module`` class, ...) is reported as :class:`UnsafeModelFile`;
  the refused code never runs. The file is passed to ``torch.load`` as an open handle, so its
  name cannot steer torch into another reader.
- **torch.export ``.pt2``** and **TorchScript** zips hold programs, not state dicts: refused with
  :class:`InvalidModel`. ``torch.export.load`` is never called (it falls back to full unpickling
  when the safe load fails; see ARCHITECTURE.md, "Safe loading").

Anything else (empty, truncated, random bytes, another kind of zip) is :class:`InvalidModel`
("not a readable model file"), never a raw torch or safetensors exception. Bytes that start like
a pickle but that the weights-only unpickler refuses are :class:`UnsafeModelFile`: a file that
cannot be proven harmless is treated as unsafe.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import re
import struct
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from quantcore.errors import InvalidModel, UnsafeModelFile

__all__ = ["load_into", "load_model", "read_state_dict"]

# Where common training scripts nest the weights inside a checkpoint dict, in lookup order.
_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model")
_DATA_PARALLEL_PREFIX = "module."
# safetensors refuses headers above 100 MB itself; a larger length means "not safetensors".
_MAX_SAFETENSORS_HEADER = 100_000_000
# Enough to recognise any format; a pickle without a PROTO opcode must stop within it.
_SNIFF_BYTES = 64 * 1024
_SHOWN_KEYS = 5  # keys listed in a message; ``details`` always lists all of them
_SAVE_HINT = "Save model.state_dict() instead (with torch.save or safetensors)."

_Format = Literal["safetensors", "torch"]


def read_state_dict(path: str | Path, *, max_bytes: int | None = None) -> dict[str, Tensor]:
    """Read a state dict (parameter name -> tensor, on CPU) from a user's weights file.

    Accepts a plain state dict, or a checkpoint dict nesting one under ``"state_dict"``,
    ``"model_state_dict"`` or ``"model"``. A ``"module."`` prefix (``nn.DataParallel``) is
    stripped when every key has it. Non-floating tensors (e.g. ``num_batches_tracked``) are kept
    as they are.

    Raises:
        UnsafeModelFile: loading the file would need code or objects beyond tensors and plain
            containers (a malicious pickle, a pickled ``nn.Module``); nothing in it was run.
        InvalidModel: the file is larger than ``max_bytes`` (checked before reading), is not a
            readable model file, holds something other than a state dict, or holds NaN/inf in a
            floating tensor.
    """
    path = Path(path)
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise InvalidModel(
            f"the model file is {size} bytes, over the limit of {max_bytes} bytes",
            {"size": size, "max_bytes": max_bytes},
        )
    if size == 0:
        raise InvalidModel("the model file is empty", {"size": 0})

    if _sniff_format(path, size) == "safetensors":
        contents: Any = _read_safetensors(path)
    else:
        contents = _read_torch_file(path)
    state = _find_state_dict(contents)
    _check_tensors(state)
    return _strip_data_parallel_prefix(state)


def load_into(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Load ``state`` into ``model`` strictly, after checking every key first.

    Floating tensors are cast to the dtype of the model's entry they replace; other tensors are
    copied as they are. Nothing is loaded unless every key fits.

    Raises:
        InvalidModel: some keys are missing, unexpected or mis-shaped. The message summarises
            all three kinds; ``details`` lists them in full (``missing``, ``unexpected``, and
            ``mismatched`` as ``{"key", "expected", "got"}`` with shapes as lists).
    """
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = [
        {"key": key, "expected": list(target.shape), "got": list(state[key].shape)}
        for key, target in expected.items()
        if key in state and state[key].shape != target.shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys: {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_preview(unexpected)}")
        if mismatched:
            shapes = (f"{m['key']} (expected {m['expected']}, got {m['got']})" for m in mismatched)
            parts.append(f"mis-shaped keys: {_preview(list(shapes))}")
        raise InvalidModel(
            "the weights do not fit the architecture: " + "; ".join(parts),
            {"missing": missing, "unexpected": unexpected, "mismatched": mismatched},
        )

    prepared = {
        key: value.to(expected[key].dtype)
        if value.is_floating_point() and expected[key].is_floating_point()
        else value
        for key, value in state.items()
    }
    try:
        model.load_state_dict(prepared, strict=True)
    except RuntimeError as error:  # a module hook refusing values the checks above let through
        raise InvalidModel(
            "the weights could not be loaded into the architecture", {"reason": str(error)}
        ) from error


def load_model(
    path: str | Path,
    arch: str,
    *,
    num_classes: int,
    in_channels: int | None = None,
    max_bytes: int | None = None,
) -> nn.Module:
    """Build the zoo architecture ``arch``, load the weights at ``path`` into it, return it in eval.

    Raises what :func:`read_state_dict`, :func:`load_into` and ``zoo.build`` raise.
    """
    from quantcore import zoo  # lazily: the zoo imports model code this module does not need

    model = zoo.build(arch, num_classes=num_classes, in_channels=in_channels)
    state = read_state_dict(path, max_bytes=max_bytes)
    load_into(model, state)
    return model.eval()


# --- telling formats apart ------------------------------------------------------------------


def _sniff_format(path: Path, size: int) -> _Format:
    """Name the reader for ``path`` from its first bytes, or raise if none fits."""
    with path.open("rb") as file:
        head = file.read(_SNIFF_BYTES)
    if head.startswith(b"PK"):
        _check_torch_zip(path)
        return "torch"
    if len(head) >= 9 and head[8:9] == b"{":
        (header_len,) = struct.unpack("<Q", head[:8])
        if header_len <= _MAX_SAFETENSORS_HEADER:
            if header_len > size - 8:
                raise InvalidModel(
                    "the safetensors file is truncated: its header says "
                    f"{header_len} bytes but the file ends after {size - 8}",
                    {"format": "safetensors", "size": size},
                )
            return "safetensors"
    if _starts_with_pickle(head):
        return "torch"  # a legacy (non-zip) torch.save file, or a plain pickle
    raise _not_readable("it is neither safetensors, a torch.save zip, nor a torch.save pickle")


def _check_torch_zip(path: Path) -> None:
    """Raise unless the zip at ``path`` is a ``torch.save`` archive (not .pt2, not TorchScript)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [name.rstrip("/") for name in archive.namelist()]
    except (zipfile.BadZipFile, EOFError, ValueError) as error:
        raise _not_readable(f"it is a truncated or corrupt zip archive ({error})") from error
    basenames = {name.rsplit("/", 1)[-1] for name in names}
    if "archive_format" in basenames:
        raise InvalidModel(
            ".pt2 (torch.export) programs are not supported yet for weights loading. " + _SAVE_HINT,
            {"format": "pt2"},
        )
    if "constants.pkl" in basenames:
        raise InvalidModel(
            "the file is a TorchScript archive (a compiled program), not a state dict. "
            + _SAVE_HINT,
            {"format": "torchscript"},
        )
    if not any(name.count("/") == 1 and name.endswith("/data.pkl") for name in names):
        raise _not_readable("it is a zip archive but not one written by torch.save")


def _starts_with_pickle(head: bytes) -> bool:
    """Whether ``head``, the file's first bytes, starts a pickle stream.

    A PROTO opcode (protocol 2 to 5) opens every torch.save pickle. Older protocols are recognised
    by parsing ``head`` up to its first STOP: ``pickletools.genops`` only parses opcodes, never
    imports or calls anything, and reading from bytes in memory bounds what a forged length costs.
    """
    if len(head) >= 2 and head[0] == pickle.PROTO[0] and 2 <= head[1] <= pickle.HIGHEST_PROTOCOL:
        return True
    try:
        return any(op.name == "STOP" for op, _arg, _pos in pickletools.genops(io.BytesIO(head)))
    except (ValueError, EOFError, OverflowError, struct.error):
        return False


# --- reading --------------------------------------------------------------------------------


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(path, device="cpu")
    except Exception as error:  # safetensors raises its own error types; none may escape raw
        raise _not_readable(f"it is a corrupt safetensors file ({error})") from error


def _read_torch_file(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True``, turning every failure into a domain error."""
    with path.open("rb") as file:
        try:
            return torch.load(file, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise _refused(str(error)) from None
        except Exception as error:  # truncated archives, bad records: torch raises many types
            reason = str(error).split("\n", 1)[0] or type(error).__name__
            raise _not_readable(
                f"it is a truncated or corrupt torch.save file ({reason})"
            ) from None


def _refused(torch_message: str) -> UnsafeModelFile:
    """The error for a pickle that the weights-only unpickler refused to build."""
    found = re.search(r"GLOBAL (\S+) (?:was not an allowed global|whose module)", torch_message)
    name = found.group(1) if found else None
    if name is not None and name.startswith("torch.nn."):
        message = (
            f"the file holds a full pickled nn.Module ({name}), not a state dict; loading it "
            f"would run code, so it was refused and nothing in it was run. {_SAVE_HINT}"
        )
    elif name is not None:
        message = (
            f"the file was refused: loading it would call or import {name!r}, which a weights "
            f"file never needs and which can run code; nothing in it was run. {_SAVE_HINT}"
        )
    else:
        message = (
            "the file was refused: it holds pickle instructions that the weights-only reader "
            "does not accept, so it is not a torch.save file of tensors and loading it could "
            f"run code; nothing in it was run. {_SAVE_HINT}"
        )
    details = {"global": name} if name is not None else {"reason": _torch_reason(torch_message)}
    return UnsafeModelFile(message, details)


def _torch_reason(torch_message: str) -> str:
    """The weights-only unpickler's own reason: the paragraph before torch's closing advice."""
    paragraphs = [p.strip() for p in torch_message.split("\n\n") if p.strip()]
    reasons = [p for p in paragraphs if not p.startswith("Check the documentation")]
    return reasons[-1] if reasons else torch_message


def _not_readable(why: str) -> InvalidModel:
    return InvalidModel(f"not a readable model file: {why}", {"reason": why})


# --- what the file holds ----------------------------------------------------------------------


def _find_state_dict(contents: Any) -> dict[str, Tensor]:
    """The state dict in ``contents`` (itself, or nested in a checkpoint dict), else raise."""
    state = _as_state_dict(contents)
    if state is None and isinstance(contents, Mapping):
        for key in _CHECKPOINT_KEYS:
            state = _as_state_dict(contents.get(key))
            if state is not None:
                break
    if state is None:
        raise InvalidModel(
            "the file does not hold a state dict (parameter names mapped to tensors): it holds "
            f"{_describe(contents)}. {_SAVE_HINT}",
            {"found": type(contents).__name__},
        )
    return state


def _as_state_dict(value: Any) -> dict[str, Tensor] | None:
    if not isinstance(value, Mapping) or not value:
        return None
    if all(isinstance(k, str) and isinstance(v, Tensor) for k, v in value.items()):
        return dict(value)
    return None


def _describe(value: Any) -> str:
    """A short phrase naming what a file holds, for error messages."""
    if isinstance(value, Tensor):
        return f"a single tensor of shape {list(value.shape)}"
    if isinstance(value, Mapping):
        if not value:
            return "an empty dict"
        bad = next(
            (k, v) for k, v in value.items() if not (isinstance(k, str) and isinstance(v, Tensor))
        )
        nested = ", ".join(repr(k) for k in _CHECKPOINT_KEYS)
        return (
            f"a dict whose values are not all tensors ({bad[0]!r} is a "
            f"{type(bad[1]).__name__}) and no all-tensor state dict under {nested}"
        )
    return f"a {type(value).__name__}"


def _check_tensors(state: Mapping[str, Tensor]) -> None:
    """Raise unless every tensor is dense and every floating tensor is finite."""
    unusual = [key for key, t in state.items() if t.layout is not torch.strided or t.is_quantized]
    if unusual:
        raise InvalidModel(
            f"only dense float or integer tensors are supported; not: {_preview(unusual)}",
            {"unsupported": unusual},
        )
    non_finite = [
        key
        for key, t in state.items()
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all())
    ]
    if non_finite:
        raise InvalidModel(
            f"the weights hold NaN or infinite values, which cannot be quantized: "
            f"{_preview(non_finite)}",
            {"non_finite": non_finite},
        )


def _strip_data_parallel_prefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
    if all(key.startswith(_DATA_PARALLEL_PREFIX) for key in state):
        return {key.removeprefix(_DATA_PARALLEL_PREFIX): value for key, value in state.items()}
    return state


def _preview(items: Iterable[str]) -> str:
    """The first few items joined for a message, with a count of the rest."""
    items = list(items)
    shown = ", ".join(items[:_SHOWN_KEYS])
    rest = len(items) - _SHOWN_KEYS
    return f"{shown} and {rest} more" if rest > 0 else shown
