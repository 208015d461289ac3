"""The method interface: a name, a pydantic ``Params`` model, and one entry point."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict
from torch import nn

from quantcore import registry
from quantcore.context import RunContext
from quantcore.data import DataBundle


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

    @abstractmethod
    def quantize(
        self, model: nn.Module, data: DataBundle, params: Any, ctx: RunContext
    ) -> nn.Module:
        """Quantize the float ``model`` (in place or a copy) and return the quantized model.

        The returned model holds ``QuantConv2d``/``QuantLinear`` layers whose ``export_weight()``
        gives the contract; it is left in eval mode on ``ctx.device``.
        """
