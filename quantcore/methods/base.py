"""The method interface: a name, a pydantic ``Params`` model, and one entry point."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict
from torch import nn

from quantcore import registry
from quantcore.context import RunContext
from quantcore.data import DataBundle
from quantcore.memory import FLOAT, Footprint, training_parts


class MethodParams(BaseModel):
    """Base of every method's parameters: unknown fields are an error, NaN/inf are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class Method(ABC):
    """A quantization method. Subclasses set the class attributes and implement ``quantize``."""

    name: ClassVar[str]
    title: ClassVar[str]
    paper: ClassVar[str]
    summary: ClassVar[str]
    Params: ClassVar[type[MethodParams]]
    # Named, documented parameter sets beside the paper defaults (e.g. a short schedule for small
    # data sets); each only sets the fields it names. Shown by the UI as one-click buttons.
    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not getattr(cls, "__abstractmethods__", None):
            registry.register(cls)

    @classmethod
    def memory_parts(cls, fp: Footprint, params: Any) -> dict[str, int]:
        """Bytes the method keeps alive at its peak on the device, by part, beside the float
        model the caller holds (``quantcore.memory.estimate`` adds that and the evaluation).

        The default is quantization-aware training with SGD and momentum at the params'
        ``batch_size``: a working copy of the model, and a float training step of it (gradients,
        one momentum buffer, what backward keeps). Methods whose peak differs override it."""
        batch = int(getattr(params, "batch_size", 128))
        return {"working model": (fp.params + fp.buffers) * FLOAT, **training_parts(fp, batch)}

    @abstractmethod
    def quantize(
        self, model: nn.Module, data: DataBundle, params: Any, ctx: RunContext
    ) -> nn.Module:
        """Quantize the float ``model`` (in place or a copy) and return the quantized model.

        The returned model holds ``QuantConv2d``/``QuantLinear`` layers whose ``export_weight()``
        gives the contract; it is left in eval mode on ``ctx.device``.
        """
