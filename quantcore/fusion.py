"""Small hot functions run as one fused kernel through ``torch.compile``, eagerly where it fails.

A quantizer's forward is a handful of element-wise passes and reductions over a whole activation
tensor. Run op by op, each pass reads and writes the tensor again (CPU) or is one more kernel
launch (GPU); compiled, they fuse into one loop (Inductor's C++ on the CPU, Triton on CUDA). On
ResNet-20 the LQ-Nets activation sweep runs about 5x faster on the CPU that way.

:class:`Fused` wraps such a function, with an op-by-op ``eager`` twin for when it cannot be
compiled (by default the function itself). It compiles on first use (dynamic shapes, one graph),
and if compiling or running the compiled code fails (no C++ compiler, no Triton, an unsupported
device, more kinds of call of one function than torch.compile keeps) it logs one warning and
runs ``eager`` from then on: the results are the same up to float rounding in reductions, which
every caller must tolerate. Each kind of call (a bool argument's value, a dimension of size 1 or
not, a view's base shape, a dtype, a device, grad mode) is its own graph: keep those few per
function (pass non-view tensors: ``t.detach()`` of a view is one). A long-running worker meets
many, so the first compile raises ``torch.compiler.config.recompile_limit`` (8 graphs per
function by default) to :data:`RECOMPILE_LIMIT`.

Under a torch dispatch mode (the CPU worker's ``quantcore.memory.TensorPeakMeter``) Dynamo
compiles nothing, so the compiled code runs with the modes set aside and its outputs are then
shown to them, which lets a memory meter count them.

``QUANTCORE_FUSE=0`` in the environment (read at import) or :func:`set_enabled` turns compiling
off for the whole process, e.g. for short test runs where compile time would dominate.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable
from typing import Generic, ParamSpec, TypeVar

import torch
from torch.utils import _python_dispatch  # private, stable: the only way to see the modes
from torch.utils import _pytree as pytree

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

_enabled = os.environ.get("QUANTCORE_FUSE", "1") != "0"
RECOMPILE_LIMIT = 32  # graphs kept per compiled function (torch's default: 8)


def set_enabled(enabled: bool) -> bool:
    """Turn compiling on or off for every :class:`Fused` function; returns the previous setting."""
    global _enabled
    previous, _enabled = _enabled, enabled
    return previous


class Fused(Generic[P, R]):
    """``fn`` compiled with ``torch.compile(dynamic=True, fullgraph=True)`` on first call.

    Runs ``eager`` (default: ``fn``) instead, for good, after the first failure; also while
    compiling is disabled and inside an outer ``torch.compile``/``torch.export`` trace.
    """

    def __init__(self, fn: Callable[P, R], eager: Callable[P, R] | None = None) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.eager = eager if eager is not None else fn
        self._compiled: Callable[P, R] | None = None
        self._failed = False
        self._lock = threading.Lock()

    @property
    def failed(self) -> bool:
        """True once compiling or running the compiled code failed (``eager`` runs)."""
        return self._failed

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        if not _enabled or self._failed or torch.compiler.is_compiling():
            return self.eager(*args, **kwargs)
        try:
            with self._lock:  # one wrapper; torch.compile compiles lazily, on its first call
                if self._compiled is None:
                    _keep_more_graphs()
                    self._compiled = torch.compile(self.fn, dynamic=True, fullgraph=True)
            if not _python_dispatch.is_in_torch_dispatch_mode():
                return self._compiled(*args, **kwargs)
            # Under a dispatch mode (the CPU worker's TensorPeakMeter) Dynamo compiles nothing.
            # Run the compiled code with the modes set aside, then show them the outputs
            # through a view each, so a memory meter counts their storages. The fused kernels
            # allocate little else.
            with _python_dispatch._disable_current_modes():
                out = self._compiled(*args, **kwargs)
            pytree.tree_map_only(torch.Tensor, lambda t: t.view_as(t), out)
            return out
        except Exception as exc:  # any compiler or toolchain error: the eager twin is the fallback
            self._failed = True
            log.warning(
                "torch.compile of %s failed (%s: %s); running it op by op from now on",
                getattr(self.fn, "__qualname__", self.fn),
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
            )
            return self.eager(*args, **kwargs)


def _keep_more_graphs() -> None:
    """Raise torch.compile's graphs-per-function limit to :data:`RECOMPILE_LIMIT` (never lower
    it; a torch without the setting keeps its own)."""
    config = getattr(torch.compiler, "config", None)
    if config is not None and isinstance(getattr(config, "recompile_limit", None), int):
        config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
