"""Quantized layers: ``QuantConv2d`` and ``QuantLinear`` wrap the float layers by module swap.

A quantized layer keeps its latent float ``weight`` (so it trains like any layer) and owns:

- ``weight_quantizer``: a :class:`WeightQuantizer`. In training mode the layer computes with
  ``weight_quantizer(weight)`` (the method's fake-quantized weight with the method's gradient); in
  eval mode with ``dequantize(weight_quantizer.export(weight))``, the contract itself, so what is
  evaluated is exactly what is exported and packed.
- ``input_quantizer`` (optional): an :class:`InputQuantizer` applied to the layer's input
  (activation quantization). Input quantizers are rebuilt from an artifact by their ``kind`` key.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from quantcore.qweight import QuantizedWeight, dequantize


class WeightQuantizer(nn.Module):
    """Turns a latent float weight into its quantized form. Methods subclass this."""

    def forward(self, w: Tensor) -> Tensor:
        """The fake-quantized weight used in training, with the method's gradient."""
        return dequantize(self.export(w)).to(w.dtype)

    def export(self, w: Tensor) -> QuantizedWeight:
        """The contract: codes, codebook and bits of ``w`` as this quantizer represents it."""
        raise NotImplementedError


class FrozenWeight(WeightQuantizer):
    """A quantizer that ignores the latent weight and returns a stored ``QuantizedWeight``.

    Used by the artifact loader: the model rebuilt from a ``.qpack`` has only the codes.
    """

    def __init__(self, qw: QuantizedWeight) -> None:
        super().__init__()
        self.qw = qw

    def forward(self, w: Tensor) -> Tensor:
        return dequantize(self.qw.to(w.device)).to(w.dtype)

    def export(self, w: Tensor) -> QuantizedWeight:
        return self.qw.to(w.device)


class InputQuantizer(nn.Module):
    """Quantizes a layer's input. Subclasses register under ``kind`` for artifact round trips.

    A subclass's state (parameters and buffers) travels in the artifact's tensors and its
    ``config()`` (JSON-able constructor keywords) in the manifest; ``cls(**config)`` followed by
    ``load_state_dict`` must rebuild a module that computes the same outputs in eval mode.
    """

    kind: ClassVar[str] = ""
    _by_kind: ClassVar[dict[str, type[InputQuantizer]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            if cls.kind in InputQuantizer._by_kind:
                raise ValueError(f"input quantizer kind {cls.kind!r} is registered twice")
            InputQuantizer._by_kind[cls.kind] = cls

    def config(self) -> dict[str, Any]:
        return {}

    @staticmethod
    def from_kind(kind: str, config: dict[str, Any]) -> InputQuantizer:
        try:
            cls = InputQuantizer._by_kind[kind]
        except KeyError:
            known = ", ".join(sorted(InputQuantizer._by_kind)) or "none"
            raise KeyError(f"unknown input quantizer kind {kind!r} (known: {known})") from None
        return cls(**config)


class _QuantMixin:
    """Shared behaviour of the quantized layers (mixed into nn.Conv2d / nn.Linear subclasses)."""

    weight: Any  # the wrapped layer's latent float weight (an nn.Parameter)
    weight_quantizer: WeightQuantizer
    input_quantizer: InputQuantizer | None
    training: bool
    _eval_cache: tuple[tuple[int, ...], Tensor] | None

    def __init__(
        self,
        *args: Any,
        weight_quantizer: WeightQuantizer,
        input_quantizer: InputQuantizer | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)  # the wrapped layer's class (nn.Conv2d / nn.Linear)
        self.weight_quantizer = weight_quantizer
        self.input_quantizer = input_quantizer
        self._eval_cache = None

    def export_weight(self) -> QuantizedWeight:
        with torch.no_grad():
            return self.weight_quantizer.export(self.weight)

    def _state_key(self) -> tuple[int, ...]:
        tensors = [
            self.weight,
            *self.weight_quantizer.parameters(),
            *self.weight_quantizer.buffers(),
        ]
        return tuple(v for t in tensors for v in (t._version, t.data_ptr()))

    def quantized_weight(self) -> Tensor:
        """The weight this layer computes with (see the module docstring)."""
        if self.training:
            self._eval_cache = None
            return self.weight_quantizer(self.weight)
        key = self._state_key()
        if self._eval_cache is None or self._eval_cache[0] != key:
            w = dequantize(self.export_weight()).to(self.weight.dtype)
            self._eval_cache = (key, w)
        return self._eval_cache[1]

    def _quantize_input(self, x: Tensor) -> Tensor:
        return x if self.input_quantizer is None else self.input_quantizer(x)


class QuantConv2d(_QuantMixin, nn.Conv2d):
    @classmethod
    def from_float(
        cls,
        conv: nn.Conv2d,
        weight_quantizer: WeightQuantizer,
        input_quantizer: InputQuantizer | None = None,
    ) -> QuantConv2d:
        q = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,  # type: ignore[arg-type]
            stride=conv.stride,  # type: ignore[arg-type]
            padding=conv.padding,  # type: ignore[arg-type]
            dilation=conv.dilation,  # type: ignore[arg-type]
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
            weight_quantizer=weight_quantizer,
            input_quantizer=input_quantizer,
        )
        q.weight = conv.weight
        q.bias = conv.bias  # type: ignore[assignment]
        return q

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self._quantize_input(x), self.quantized_weight(), self.bias)


class QuantLinear(_QuantMixin, nn.Linear):
    @classmethod
    def from_float(
        cls,
        linear: nn.Linear,
        weight_quantizer: WeightQuantizer,
        input_quantizer: InputQuantizer | None = None,
    ) -> QuantLinear:
        q = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
            weight_quantizer=weight_quantizer,
            input_quantizer=input_quantizer,
        )
        q.weight = linear.weight
        q.bias = linear.bias  # type: ignore[assignment]
        return q

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self._quantize_input(x), self.quantized_weight(), self.bias)


class QuantAct(nn.Module):
    """An activation site: quantizes the output (or the input) of the module it wraps.

    Used where activation quantization does not belong to one quantized layer's input: after a
    ReLU whose output several layers read (a residual block's output, which the next block's
    shortcut also sees), or at the input of a layer whose weight stays in float (e.g. LQ-Nets
    W32/A2). ``where="output"``: ``quantizer(inner(x))``; ``where="input"``:
    ``inner(quantizer(x))``. The artifact records each site by name, so the loaded model
    quantizes the same activations.
    """

    def __init__(self, inner: nn.Module, quantizer: InputQuantizer, where: str = "output") -> None:
        super().__init__()
        if where not in ("output", "input"):
            raise ValueError(f"where must be 'output' or 'input', got {where!r}")
        self.inner = inner
        self.quantizer = quantizer
        self.where = where

    def forward(self, x: Tensor) -> Tensor:
        if self.where == "input":
            return self.inner(self.quantizer(x))
        return self.quantizer(self.inner(x))


def activation_sites(model: nn.Module) -> list[tuple[str, QuantAct]]:
    """The activation sites of ``model``, outer ones before the sites nested inside them."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QuantAct)]


QuantLayer = QuantConv2d | QuantLinear
QUANT_LAYER_TYPES: tuple[type[nn.Module], ...] = (QuantConv2d, QuantLinear)


def quant_layers(model: nn.Module) -> list[tuple[str, QuantConv2d | QuantLinear]]:
    """The quantized layers of ``model`` in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QuantConv2d | QuantLinear)]


def float_state(model: nn.Module) -> dict[str, Tensor]:
    """The state entries kept in float: everything but quantized weights and their quantizers.

    A quantized layer's latent ``weight`` is replaced by its codes and codebook, and its weight
    quantizer's parameters and buffers are training state that the codes make redundant. Biases,
    BatchNorm, float layers and input quantizers' state all stay.
    """
    dropped: set[str] = set()
    for name, layer in quant_layers(model):
        prefix = f"{name}." if name else ""
        dropped.add(f"{prefix}weight")
        dropped.update(f"{prefix}weight_quantizer.{k}" for k in layer.weight_quantizer.state_dict())
    return {k: v for k, v in model.state_dict().items() if k not in dropped}
