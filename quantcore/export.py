"""ONNX export of a quantized model: its dequantized float weights in a plain, portable graph.

:func:`export_onnx` writes one self-contained ``.onnx`` file (no external-data side file) with one
input ``input`` ``(batch, C, H, W)`` and one output ``logits`` ``(batch, classes)``, the batch
dimension dynamic. Every quantized layer becomes a plain float ``Conv``/``Gemm`` whose weight
constant is ``dequantize(layer.export_weight())``, exactly the weight the layer computes with in
eval mode; everything kept in float (biases, BatchNorm, float layers) is exported as it is. An
input (activation) quantizer is exported as ops in front of its layer when ``torch.export`` can
trace its eval forward; when it cannot, :class:`~quantcore.errors.InvalidParams` names the layer.
The graph is float32 and computes what the quantized model computes in eval, up to float
rounding (the exporter folds BatchNorm into the preceding convolution).

Route. The quantized model itself is not traced: its eval weight is cached per the latent
weight's storage (``data_ptr``), which ``torch.export``'s fake tensors do not have, and the
quantizers' export (codes, codebooks) is not graph material anyway. Instead a copy is built in
which each quantized layer is replaced by a plain ``nn.Conv2d``/``nn.Linear`` holding the
dequantized weight (and, where present, its input quantizer in front); that copy is exported.

Exporter. ``torch.onnx.export(..., dynamo=True)``: the ``torch.export``-based exporter, PyTorch's
default since 2.9. It needs the ``onnx`` and ``onnxscript`` packages (pure Python and wheels,
nothing fetched at run time, so it works offline) and takes the dynamic batch as a
``torch.export.Dim``. The TorchScript exporter (``dynamo=False``) also works with torch 2.14 but
warns that it is deprecated and will be removed, so it is not used. The default opset is the
exporter's own (20 with torch 2.14.1); an older one is reached through onnxscript's version
converter, which can fail quietly (the model then keeps opset 18): the written file is checked to
carry the requested opset, else :class:`~quantcore.errors.InvalidParams`.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from quantcore.errors import InvalidParams
from quantcore.layers import QuantConv2d, QuantLinear, quant_layers
from quantcore.qweight import dequantize
from quantcore.surgery import set_submodule

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
EXAMPLE_BATCH = 2  # not 1: torch.export specialises a size-1 dimension to a constant
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the exporter colours its messages


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    input_shape: tuple[int, int, int],
    opset: int | None = None,
) -> None:
    """Write ``model`` (a quantized model, run in eval mode) to ``path`` as an ONNX file.

    ``input_shape`` is one sample's ``(channels, height, width)``; the batch dimension of
    ``input`` and ``logits`` is dynamic. ``opset`` is the ONNX operator set (default: the
    exporter's). Raises :class:`InvalidParams` for a bad ``input_shape`` or ``opset``, or an input
    quantizer that cannot be exported. ``model`` itself is not changed.
    """
    shape = _check_input_shape(input_shape)
    max_opset = _max_opset()
    if opset is not None and (
        isinstance(opset, bool) or not isinstance(opset, int) or not 7 <= opset <= max_opset
    ):
        raise InvalidParams(
            f"opset must be an integer from 7 to {max_opset}, got {opset!r}",
            {"opset": opset, "minimum": 7, "maximum": max_opset},
        )
    plain = plain_float_model(model)
    gen = torch.Generator().manual_seed(0)  # the caller's global RNG stays untouched
    example = torch.randn(EXAMPLE_BATCH, *shape, generator=gen)  # (B, C, H, W)
    quantizer_inputs = _check_runs(plain, example)
    try:
        program = _export(plain, example, opset)
    except Exception as exc:  # the exporter raises many types; sort out whose fault it is
        blame = _unexportable_input_quantizers(plain, quantizer_inputs, opset)
        if not blame:
            raise
        names = ", ".join(f"{name} ({kind})" for name, kind, _ in blame)
        raise InvalidParams(
            f"cannot export to ONNX: the input quantizer{'s' if len(blame) > 1 else ''} of "
            f"layer{'s' if len(blame) > 1 else ''} {names} cannot be exported "
            f"({blame[0][2]}); export the model without input quantization, or make the "
            "quantizer's eval forward traceable by torch.export with operations ONNX supports",
            {
                "layers": [name for name, _, _ in blame],
                "kinds": [kind for _, kind, _ in blame],
                "reasons": [reason for _, _, reason in blame],
            },
        ) from exc
    got = _default_opset(program.model_proto)
    if opset is not None and got != opset:
        raise InvalidParams(
            f"cannot export to ONNX opset {opset}: the exporter could only produce opset {got}",
            {"opset": opset, "produced": got},
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        program.save(tmp, external_data=False)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def plain_float_model(model: nn.Module) -> nn.Module:
    """A float32 CPU copy of ``model`` in eval mode with plain layers holding dequantized weights.

    Each ``QuantConv2d``/``QuantLinear`` becomes an ``nn.Conv2d``/``nn.Linear`` whose weight is
    ``dequantize(export_weight())``; a layer with an input quantizer becomes
    :class:`QuantizedInputLayer` (the quantizer, then the plain layer). Weight quantizers are
    not copied.
    """
    layers = quant_layers(model)
    weights = {}
    with torch.no_grad():
        for name, layer in layers:
            weights[name] = dequantize(layer.export_weight()).to(layer.weight.dtype)
    # deepcopy takes what the memo already maps as is: the weight quantizers (which may hold
    # training state that cannot be copied) and the eval caches come out as None in the copy.
    memo: dict[int, Any] = {}
    for _, layer in layers:
        for obj in (layer.weight_quantizer, layer._eval_cache):
            if obj is not None:
                memo[id(obj)] = None
    plain = copy.deepcopy(model, memo)
    for name, _ in layers:
        quant = plain.get_submodule(name)
        assert isinstance(quant, QuantConv2d | QuantLinear)  # deepcopy keeps the module types
        float_layer = _float_layer(quant, weights[name])
        iq = quant.input_quantizer
        set_submodule(
            plain, name, float_layer if iq is None else QuantizedInputLayer(iq, float_layer)
        )
    return plain.to("cpu", torch.float32).eval().requires_grad_(False)


class QuantizedInputLayer(nn.Module):
    """A plain layer whose input first goes through the quantized layer's input quantizer."""

    def __init__(self, input_quantizer: nn.Module, layer: nn.Module) -> None:
        super().__init__()
        self.input_quantizer = input_quantizer
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(self.input_quantizer(x))


def _float_layer(quant: QuantConv2d | QuantLinear, weight: Tensor) -> nn.Module:
    """The plain ``nn.Conv2d``/``nn.Linear`` of ``quant``'s configuration with ``weight``."""
    bias = quant.bias is not None
    layer: nn.Conv2d | nn.Linear
    if isinstance(quant, QuantConv2d):
        layer = nn.Conv2d(
            quant.in_channels,
            quant.out_channels,
            quant.kernel_size,  # type: ignore[arg-type]
            stride=quant.stride,  # type: ignore[arg-type]
            padding=quant.padding,  # type: ignore[arg-type]
            dilation=quant.dilation,  # type: ignore[arg-type]
            groups=quant.groups,
            bias=bias,
            padding_mode=quant.padding_mode,
            device="meta",
        )
    else:
        layer = nn.Linear(quant.in_features, quant.out_features, bias=bias, device="meta")
    layer.weight = nn.Parameter(weight.detach().to("cpu", copy=True), requires_grad=False)
    if quant.bias is not None:
        layer.bias = nn.Parameter(quant.bias.detach().to("cpu", copy=True), requires_grad=False)
    return layer


def _check_input_shape(input_shape: Any) -> tuple[int, int, int]:
    ok = (
        isinstance(input_shape, tuple | list)
        and len(input_shape) == 3
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in input_shape)
    )
    if not ok:
        raise InvalidParams(
            "input_shape must be one sample's (channels, height, width), three positive "
            f"integers, got {input_shape!r}",
            {"input_shape": repr(input_shape)},
        )
    c, h, w = input_shape
    return c, h, w


def _check_runs(plain: nn.Module, example: Tensor) -> dict[str, Tensor]:
    """Run ``plain`` once on ``example``; returns what each input quantizer saw, by layer name.

    A shape the model cannot take is the caller's mistake: InvalidParams, not an exporter trace.
    """
    seen: dict[str, Tensor] = {}

    def remember(name: str) -> Any:
        def hook(_module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            seen.setdefault(name, inputs[0].detach())

        return hook

    hooks = [
        m.register_forward_pre_hook(remember(name))
        for name, m in plain.named_modules()
        if isinstance(m, QuantizedInputLayer)
    ]
    try:
        with torch.no_grad():
            plain(example)
    except RuntimeError as exc:
        raise InvalidParams(
            f"the model does not run on inputs of shape {tuple(example.shape[1:])} "
            f"(channels, height, width): {exc}",
            {"input_shape": list(example.shape[1:])},
        ) from None
    finally:
        for h in hooks:
            h.remove()
    return seen


def _export(module: nn.Module, example: Tensor, opset: int | None) -> Any:
    """The ``torch.onnx.ONNXProgram`` of ``module`` with a dynamic batch dimension."""
    batch = torch.export.Dim("batch", min=1)
    return torch.onnx.export(
        module,
        (example,),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamo=True,
        dynamic_shapes=({0: batch},),
        external_data=False,
        verbose=False,
    )


def _unexportable_input_quantizers(
    plain: nn.Module, inputs: dict[str, Tensor], opset: int | None
) -> list[tuple[str, str, str]]:
    """``(layer, kind, first error line)`` of each input quantizer that fails to export alone."""
    failed = []
    for name, m in plain.named_modules():
        if not isinstance(m, QuantizedInputLayer) or name not in inputs:
            continue
        try:
            _export(m.input_quantizer, inputs[name], opset)
        except Exception as exc:  # whatever the exporter raised is the reason
            kind = getattr(m.input_quantizer, "kind", "") or type(m.input_quantizer).__name__
            failed.append((name, kind, _root_cause(exc)))
    return failed


def _root_cause(exc: BaseException) -> str:
    """The innermost exception's type and first line: the exporter wraps the real reason."""
    seen = [exc]
    while (nxt := seen[-1].__cause__ or seen[-1].__context__) is not None and len(seen) < 20:
        seen.append(nxt)
    root = seen[-1]
    lines = [line.strip() for line in _ANSI.sub("", str(root)).splitlines() if line.strip()]
    return f"{type(root).__name__}: {lines[0] if lines else ''}"[:300]


def _default_opset(proto: Any) -> int | None:
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def _max_opset() -> int:
    import onnx  # a dependency of the exporter; imported here so quantcore loads without it

    return int(onnx.defs.onnx_opset_version())
