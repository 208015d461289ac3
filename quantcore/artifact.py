"""The ``.qpack`` artifact: a quantized model that is really as small as its bits say.

A ``.qpack`` is a zip with two members:

``manifest.json``
    ``format`` ("qpack"), ``format_version``, the architecture (zoo name, classes, input
    channels, input size), the method (registry key and params), one entry per quantized layer
    (name, layer type, weight shape, grouping, codebook kind, bitwidth — one number, or
    ``"per_group"`` —, its input quantizer's kind and config), the activation sites (name,
    ``where``, quantizer kind and config; see :class:`~quantcore.layers.QuantAct`) and the
    per-layer table and metrics recorded when it was written.
``tensors.safetensors``
    per quantized layer ``q/<layer>/codes`` (codes bit-packed into uint8 by
    :func:`quantcore.packing.pack_groups`), ``q/<layer>/codebook`` (float32; of per-group bases
    only the live scales, group-major, with ``codebook_width`` in the manifest) and, when its
    groups have different bitwidths, ``q/<layer>/bits`` (4-bit packed bitwidths); and
    ``f/<key>`` for every state entry kept in float (:func:`quantcore.layers.float_state`).

:func:`load_artifact` rebuilds the zoo architecture, swaps each recorded layer for a quantized
wrapper holding the stored codes (:class:`~quantcore.layers.FrozenWeight`), restores the float
state, and returns the model in eval mode; its outputs equal the in-memory quantized model's.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from quantcore.errors import InvalidArtifact, QuantcoreError
from quantcore.layers import (
    FrozenWeight,
    InputQuantizer,
    QuantAct,
    QuantConv2d,
    QuantLinear,
    activation_sites,
    float_state,
    quant_layers,
)
from quantcore.metrics import BITS_TABLE_BITS, CODEBOOK_DTYPE, size_report
from quantcore.packing import pack_codes, pack_groups, unpack_codes, unpack_groups
from quantcore.qweight import (
    CodebookKind,
    Grouping,
    QuantizedWeight,
    dequantize,
    live_bases_mask,
)
from quantcore.surgery import set_submodule

FORMAT = "qpack"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TENSORS = "tensors.safetensors"
MAX_MANIFEST_BYTES = 64 * 2**20
MAX_TENSORS_BYTES = 64 * 2**30


@dataclass(frozen=True)
class ModelSpec:
    """What rebuilds the float architecture: a zoo name and its constructor arguments."""

    arch: str
    num_classes: int
    in_channels: int
    input_size: tuple[int, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "input_size": list(self.input_size),
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> ModelSpec:
        h, w = data["input_size"]
        return ModelSpec(
            str(data["arch"]), int(data["num_classes"]), int(data["in_channels"]), (int(h), int(w))
        )


def save_artifact(
    model: nn.Module,
    path: str | Path,
    *,
    spec: ModelSpec,
    method: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``model`` (a quantized model) as a ``.qpack`` at ``path``; returns the manifest.

    ``provenance`` is the run's reproducibility manifest (``quantcore.provenance.manifest``):
    stored as it is, read back by ``read_manifest``.
    """
    tensors: dict[str, torch.Tensor] = {}
    layers = []
    for name, layer in quant_layers(model):
        qw = layer.export_weight().to("cpu")
        key = f"q/{name}"
        tensors[f"{key}/codes"] = pack_groups(qw.codes, qw.bits)
        live = live_bases_mask(qw)
        book = qw.codebook if live is None else qw.codebook[live]  # live: 1-D, group-major
        tensors[f"{key}/codebook"] = book.to(CODEBOOK_DTYPE).contiguous()
        uniform = qw.uniform_bits
        if uniform is None:
            tensors[f"{key}/bits"] = pack_codes(qw.bits, BITS_TABLE_BITS)
        iq = layer.input_quantizer
        layers.append(
            {
                "name": name,
                "type": "conv2d" if isinstance(layer, QuantConv2d) else "linear",
                "shape": list(qw.shape),
                "grouping": qw.grouping.to_json(),
                "codebook": str(qw.kind),
                "codebook_width": None if live is None else int(qw.codebook.shape[1]),
                "bits": uniform if uniform is not None else "per_group",
                "input_quantizer": None if iq is None else {"kind": iq.kind, "config": iq.config()},
            }
        )
    for key, value in float_state(model).items():
        tensors[f"f/{key}"] = value.detach().to("cpu").contiguous()
    report = size_report(model)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": spec.to_json(),
        "method": {"name": method, "params": dict(params)},
        "layers": layers,
        "activation_sites": [
            {
                "name": name,
                "where": site.where,
                "kind": site.quantizer.kind,
                "config": site.quantizer.config(),
            }
            for name, site in activation_sites(model)
        ],
        "sizes": {k: v for k, v in report.to_json().items() if k != "layers"},
        "layer_table": [r.to_json() for r in report.layers],
        "metrics": dict(metrics or {}),
        "provenance": dict(provenance or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w") as zf:
        zf.writestr(MANIFEST, json.dumps(manifest, indent=1), compress_type=zipfile.ZIP_DEFLATED)
        zf.writestr(TENSORS, st_save(tensors), compress_type=zipfile.ZIP_DEFLATED)
    tmp.replace(path)
    return manifest


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a ``.qpack``, validated for format and version."""
    with _open(path) as zf:
        return _manifest(zf, path)


def stored_bytes(path: str | Path) -> dict[str, int]:
    """Bytes each quantized layer's tensors take in the file (codes, codebook and bits table, by
    layer name), and ``""`` for the float parts; read from the tensor file's header only.

    These are the bytes written, before the zip's DEFLATE, which applies to the tensor file as a
    whole and cannot be split by layer.
    """
    with _open(path) as zf:
        try:
            with zf.open(TENSORS) as f:
                size = int.from_bytes(f.read(8), "little")
                if not 0 < size <= MAX_MANIFEST_BYTES:
                    raise InvalidArtifact(f"{path}: {TENSORS} has no readable header")
                header = json.loads(f.read(size))
        except KeyError:
            raise InvalidArtifact(f"{path} has no {TENSORS}: not a .qpack or truncated") from None
        except (zipfile.BadZipFile, OSError, EOFError, json.JSONDecodeError) as exc:
            raise InvalidArtifact(f"{path}: {TENSORS} is corrupt ({exc})") from None
    out: dict[str, int] = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        owner = key[2:].rsplit("/", 1)[0] if key.startswith("q/") else ""
        out[owner] = out.get(owner, 0) + int(end) - int(start)
    return out


def _open(path: str | Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except FileNotFoundError:
        raise InvalidArtifact(f"{path}: no such file") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidArtifact(f"{path} is not a .qpack (not a readable zip file: {exc})") from None


def _read_member(zf: zipfile.ZipFile, member: str, path: str | Path, limit: int) -> bytes:
    try:
        info = zf.getinfo(member)
    except KeyError:
        raise InvalidArtifact(f"{path} has no {member}: not a .qpack or truncated") from None
    if info.file_size > limit:
        raise InvalidArtifact(f"{path}: {member} is larger than {limit} bytes")
    try:
        return zf.read(member)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise InvalidArtifact(f"{path}: {member} is corrupt ({exc})") from None


def _manifest(zf: zipfile.ZipFile, path: str | Path) -> dict[str, Any]:
    raw = _read_member(zf, MANIFEST, path, MAX_MANIFEST_BYTES)
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArtifact(f"{path}: manifest.json is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InvalidArtifact(f"{path}: manifest.json does not describe a {FORMAT} artifact")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise InvalidArtifact(
            f"{path}: format version {version!r} is not supported (this quantcore reads "
            f"version {FORMAT_VERSION})",
            {"format_version": version, "supported": [FORMAT_VERSION]},
        )
    return manifest


def _quantized_weight(
    entry: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
) -> QuantizedWeight:
    key = f"q/{entry['name']}"
    shape = tuple(int(s) for s in entry["shape"])
    grouping = Grouping.from_json(entry["grouping"])
    grouping.check(shape)
    g = grouping.num_groups(shape)
    if entry["bits"] == "per_group":
        bits = unpack_codes(tensors[f"{key}/bits"], BITS_TABLE_BITS, g)
    else:
        bits = torch.full((g,), int(entry["bits"]), dtype=torch.uint8)
    codes = unpack_groups(tensors[f"{key}/codes"], bits, grouping.size)
    book = tensors[f"{key}/codebook"]
    width = entry.get("codebook_width")
    if width is not None:  # only the live scales of a per-group bases codebook were stored
        live = torch.arange(int(width)) < bits.long().unsqueeze(1)  # (G, K)
        if int(live.sum()) != book.numel():
            raise ValueError(
                f"layer {entry['name']}: {book.numel()} stored scales for "
                f"{int(live.sum())} live slots"
            )
        full = torch.zeros(g, int(width), dtype=book.dtype)
        full[live] = book
        book = full
    return QuantizedWeight(shape, grouping, codes, bits, book, CodebookKind(entry["codebook"]))


def load_artifact(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild the quantized model stored in a ``.qpack``, in eval mode on ``device``."""
    from quantcore import zoo

    with _open(path) as zf:
        manifest = _manifest(zf, path)
        blob = _read_member(zf, TENSORS, path, MAX_TENSORS_BYTES)
    try:
        tensors = st_load(blob)
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise InvalidArtifact(f"{path}: tensors.safetensors is corrupt ({exc})") from None
    try:
        spec = ModelSpec.from_json(manifest["model"])
        model = zoo.build(spec.arch, num_classes=spec.num_classes, in_channels=spec.in_channels)
        for site in manifest.get("activation_sites", []):  # outer sites first, as saved
            quantizer = InputQuantizer.from_kind(site["kind"], site["config"])
            inner = model.get_submodule(site["name"])
            set_submodule(model, site["name"], QuantAct(inner, quantizer, site["where"]))
        for entry in manifest["layers"]:
            qw = _quantized_weight(entry, tensors)
            float_layer = model.get_submodule(entry["name"])
            iq_spec = entry.get("input_quantizer")
            iq = InputQuantizer.from_kind(iq_spec["kind"], iq_spec["config"]) if iq_spec else None
            cls = QuantConv2d if entry["type"] == "conv2d" else QuantLinear
            if not isinstance(float_layer, nn.Conv2d | nn.Linear):
                raise ValueError(f"{entry['name']} is not a Conv2d/Linear layer in {spec.arch}")
            if tuple(float_layer.weight.shape) != qw.shape:
                raise ValueError(
                    f"layer {entry['name']} has shape {qw.shape} in the artifact "
                    f"but {tuple(float_layer.weight.shape)} in {spec.arch}"
                )
            layer = cls.from_float(float_layer, FrozenWeight(qw), iq)  # type: ignore[arg-type]
            with torch.no_grad():
                layer.weight.copy_(layer.weight_quantizer(layer.weight))
            set_submodule(model, entry["name"], layer)
        stored = {k[2:]: v for k, v in tensors.items() if k.startswith("f/")}
        expected = float_state(model)
        if set(stored) != set(expected):
            missing = sorted(set(expected) - set(stored))
            extra = sorted(set(stored) - set(expected))
            raise ValueError(
                f"float state does not match {spec.arch}: missing {missing[:10]}, "
                f"unexpected {extra[:10]}"
            )
        model.load_state_dict(stored, strict=False)
    except InvalidArtifact:
        raise
    except QuantcoreError as exc:  # e.g. an architecture this quantcore does not know
        raise InvalidArtifact(f"{path}: {exc.message}", exc.details) from None
    except (KeyError, ValueError, TypeError, RuntimeError, AttributeError) as exc:
        raise InvalidArtifact(
            f"{path}: the artifact does not describe a loadable model ({exc})", {"reason": str(exc)}
        ) from None
    return model.to(device).eval()


def dequantized_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The quantized model as a plain state dict of the original float architecture.

    Quantized layers' weights are replaced by their dequantized values; quantizer state is
    dropped and activation sites are unwrapped, so activation quantization is not part of this
    export: a float model loaded from it computes the same outputs as the quantized one only
    when no activation is quantized.
    """
    replaced = {f"{name}.weight": layer for name, layer in quant_layers(model)}
    quantizer_prefixes = tuple(
        f"{name}.{part}."
        for name in {n for n, _ in quant_layers(model)}
        for part in ("weight_quantizer", "input_quantizer")
    ) + tuple(f"{name}.quantizer." for name, _ in activation_sites(model))
    state: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key.startswith(quantizer_prefixes):
            continue
        layer = replaced.get(key)
        w = value if layer is None else dequantize(layer.export_weight()).to(value.dtype)
        state[key.replace(".inner.", ".")] = w.detach().cpu().contiguous()
    return state
