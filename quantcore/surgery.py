"""Model surgery: find the Conv2d/Linear layers and swap them for quantized wrappers."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from quantcore.errors import NothingQuantized
from quantcore.layers import (
    QUANT_LAYER_TYPES,
    InputQuantizer,
    QuantAct,
    QuantConv2d,
    QuantLinear,
    WeightQuantizer,
)

WeightQuantizerFactory = Callable[[str, nn.Module], WeightQuantizer]
InputQuantizerFactory = Callable[[str, nn.Module], InputQuantizer | None]


def find_layers(
    model: nn.Module, example_input: Tensor | None = None
) -> list[tuple[str, nn.Module]]:
    """The float Conv2d and Linear layers of ``model``, in network order.

    Without ``example_input`` the order is registration order (``named_modules``), which is the
    forward order for every zoo architecture. With it, the order is that of the first call in one
    forward pass (layers never called are dropped), for models registered out of order.
    """
    layers: list[tuple[str, nn.Module]] = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear) and not isinstance(m, QUANT_LAYER_TYPES)
    ]
    if example_input is None:
        return layers
    order: dict[str, int] = {}

    def remember(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: object) -> None:
            order.setdefault(name, len(order))

        return hook

    hooks = [m.register_forward_pre_hook(remember(name)) for name, m in layers]
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(example_input)
        model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    return sorted(((n, m) for n, m in layers if n in order), key=lambda nm: order[nm[0]])


def select_layers(
    layers: Sequence[tuple[str, nn.Module]],
    *,
    keep_first_last: bool = True,
    skip: Sequence[str] = (),
) -> list[tuple[str, nn.Module]]:
    """The layers to quantize: all but ``skip``, and by default not the first and last one."""
    chosen = list(layers)
    if keep_first_last:
        chosen = chosen[1:-1]
    return [(n, m) for n, m in chosen if n not in set(skip)]


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def quantize_model(
    model: nn.Module,
    weight_quantizer: WeightQuantizerFactory,
    *,
    input_quantizer: InputQuantizerFactory | None = None,
    keep_first_last: bool = True,
    skip: Sequence[str] = (),
    example_input: Tensor | None = None,
) -> list[str]:
    """Swap the chosen layers of ``model`` (in place) for quantized wrappers.

    ``weight_quantizer(name, layer)`` builds each layer's weight quantizer from the float layer;
    ``input_quantizer(name, layer)`` (optional) its input quantizer or None. Returns the swapped
    layers' names in network order; raises :class:`NothingQuantized` when there are none.
    """
    layers = find_layers(model, example_input)
    chosen = select_layers(layers, keep_first_last=keep_first_last, skip=skip)
    if not chosen:
        raise NothingQuantized(
            f"no layer to quantize: the model has {len(layers)} Conv2d/Linear layers"
            + (" and the first and last stay in float" if keep_first_last else ""),
            {"layers": [n for n, _ in layers], "keep_first_last": keep_first_last},
        )
    for name, layer in chosen:
        wq = weight_quantizer(name, layer)
        iq = input_quantizer(name, layer) if input_quantizer else None
        wrapper_cls = QuantConv2d if isinstance(layer, nn.Conv2d) else QuantLinear
        wrapped = wrapper_cls.from_float(layer, wq, iq)  # type: ignore[arg-type]
        wrapped.train(layer.training)
        set_submodule(model, name, wrapped)
    return [n for n, _ in chosen]


def add_activation_sites(
    model: nn.Module,
    names: Sequence[str],
    quantizer: InputQuantizerFactory,
    *,
    where: str = "output",
) -> list[str]:
    """Wrap each module in ``names`` (in place) in a :class:`QuantAct` site.

    ``quantizer(name, module)`` builds the site's quantizer (None skips the site). Names are
    paths in ``model`` as it is when called; wrapping a module moves its children under
    ``<name>.inner``. Returns the names of the sites added.
    """
    added = []
    for name in names:
        module = model.get_submodule(name)
        q = quantizer(name, module)
        if q is None:
            continue
        set_submodule(model, name, QuantAct(module, q, where))
        added.append(name)
    return added
