"""Model surgery: swap Conv2d/Linear layers for quantized wrappers; find activation sites."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

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


# Modules whose output is their input, reshaped or as it is (Dropout in eval mode).
_PASS_THROUGH = (nn.Identity, nn.Flatten, nn.Unflatten, nn.modules.dropout._DropoutNd)
_MAX_POOLS = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
_RELUS = (nn.ReLU, nn.ReLU6)


@dataclass(frozen=True)
class ReluSite:
    """A ReLU module of a traced model seen as an activation site.

    ``name`` is the module whose output the site is: the ReLU itself, or the max-pool module that
    is the only module reading the ReLU's output (max pooling commutes with any non-decreasing
    quantizer, and quantizing after the pool sees the values the next layer reads). ``relu`` is
    the ReLU module; ``readers`` the modules that read the site's output, in call order, looking
    through pass-through modules (Identity, Flatten, Unflatten, Dropout). Tensors that forward
    code uses outside modules (``out + identity``, ``torch.flatten``) are not seen.
    """

    name: str
    relu: str
    readers: tuple[str, ...]


def relu_sites(model: nn.Module, example_input: Tensor) -> list[ReluSite]:
    """The ReLU (and ReLU6) modules that one eval forward of ``example_input`` calls, in call order.

    Each module is one site (see :class:`ReluSite`); a ReLU module called at several places is
    one site over all its outputs and is never moved onto a pool. Trace the float model: the
    quantized wrappers are not leaf modules.
    """
    leaves = [(n, m) for n, m in model.named_modules() if next(m.children(), None) is None]
    calls: list[tuple[str, nn.Module, tuple[int, ...], int]] = []  # (name, module, inputs, output)
    alive: list[object] = []  # every traced tensor stays referenced, so no id() is reused

    def remember(name: str) -> Callable[[nn.Module, tuple[object, ...], object], None]:
        def hook(module: nn.Module, inputs: tuple[object, ...], output: object) -> None:
            if isinstance(output, Tensor):
                alive.extend((inputs, output))
                ins = tuple(id(t) for t in inputs if isinstance(t, Tensor))
                calls.append((name, module, ins, id(output)))

        return hook

    handles = [m.register_forward_hook(remember(n)) for n, m in leaves]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    origin: dict[int, int] = {}  # tensor id -> id of the tensor it passes through unchanged
    produced: list[tuple[str, nn.Module, set[int], int]] = []
    for name, module, ins, out in calls:
        sources = {origin.get(i, i) for i in ins}
        if isinstance(module, _PASS_THROUGH) and len(ins) == 1:
            origin[out] = next(iter(sources))
            continue
        origin[out] = out
        produced.append((name, module, sources, out))

    def readers(i: int) -> list[int]:
        return [j for j in range(i + 1, len(produced)) if produced[i][3] in produced[j][2]]

    calls_of: dict[str, list[int]] = {}
    for i, (name, _, _, _) in enumerate(produced):
        calls_of.setdefault(name, []).append(i)
    sites = []
    for relu, indices in calls_of.items():
        if not isinstance(produced[indices[0]][1], _RELUS):
            continue
        site, read = relu, [j for i in indices for j in readers(i)]
        if len(indices) == 1 and len(read) == 1:
            pool = produced[read[0]]
            if isinstance(pool[1], _MAX_POOLS) and len(calls_of[pool[0]]) == 1:
                site, read = pool[0], readers(read[0])
        names = tuple(dict.fromkeys(produced[j][0] for j in read))
        sites.append(ReluSite(site, relu, names))
    return sites
