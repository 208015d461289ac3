"""The method registry: every ``Method`` subclass registers itself under its ``name``.

The registry derives what callers show (name, title, paper, the JSON schema of ``Params``); a
method writes none of that by hand. The key equals the method's file name
(``quantcore/methods/uniform.py`` → ``"uniform"``) and a duplicate name raises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quantcore.errors import InvalidParams, UnknownName

if TYPE_CHECKING:
    from quantcore.methods.base import Method

_METHODS: dict[str, type[Method]] = {}


@dataclass(frozen=True)
class MethodInfo:
    name: str
    title: str
    paper: str
    summary: str
    params_schema: dict[str, Any]
    presets: dict[str, dict[str, Any]]


def register(cls: type[Method]) -> None:
    """Called by ``Method.__init_subclass__``; not meant to be called by hand."""
    module_key = cls.__module__.rpartition(".")[2]
    if cls.__module__.startswith("quantcore.methods.") and module_key != cls.name:
        raise ValueError(f"method {cls.name!r} must live in quantcore/methods/{cls.name}.py")
    if cls.name in _METHODS:
        raise ValueError(f"method name {cls.name!r} is registered twice")
    _METHODS[cls.name] = cls


def _load_builtin() -> None:
    import quantcore.methods  # noqa: F401  (importing the package registers its methods)


def get_method(name: str) -> Method:
    _load_builtin()
    try:
        return _METHODS[name]()
    except KeyError:
        raise UnknownName(
            f"unknown method {name!r}; known methods: {', '.join(sorted(_METHODS))}",
            {"name": name, "known": sorted(_METHODS)},
        ) from None


def list_methods() -> list[MethodInfo]:
    _load_builtin()
    return [
        MethodInfo(
            c.name, c.title, c.paper, c.summary, c.Params.model_json_schema(), dict(c.presets)
        )
        for c in sorted(_METHODS.values(), key=lambda c: c.name)
    ]


def parse_params(name: str, raw: dict[str, Any] | None) -> Any:
    """Validate ``raw`` against a method's ``Params``; errors become :class:`InvalidParams`."""
    from pydantic import ValidationError

    method = get_method(name)
    try:
        return method.Params.model_validate(raw or {})
    except ValidationError as exc:
        problems = [
            {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
            for e in exc.errors(include_url=False)
        ]
        text = "; ".join(f"{p['field'] or 'params'}: {p['message']}" for p in problems)
        raise InvalidParams(
            f"invalid parameters for {name}: {text}", {"errors": problems}
        ) from None
