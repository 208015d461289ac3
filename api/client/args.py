"""Argument types of the command line (``argparse`` ``type=`` functions): each turns one
option's text into a value, or raises ``ArgumentTypeError`` with what was expected."""

from __future__ import annotations

import argparse
import json
from typing import Any

Json = dict[str, Any]


def parse_param(text: str) -> tuple[str, Any]:
    """``KEY=VALUE``, the value read as JSON when it is JSON (``bits=4`` → 4), else a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


def params_json(text: str) -> Json:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object, e.g. '{\"bits\": 4}'")
    return value


def input_size(text: str) -> tuple[int, int]:
    """``28`` or ``28x32`` (height x width)."""
    try:
        height, _, width = text.lower().partition("x")
        return int(height), int(width or height)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH, got {text!r}") from None


def parse_search(text: str) -> tuple[str, list[Any]]:
    """``bits=1,2,4`` → ("bits", [1, 2, 4]); each value read as JSON where it parses."""
    param, sep, raw = text.partition("=")
    if not sep or not param or not raw:
        raise argparse.ArgumentTypeError(f"expected PARAM=V1,V2,... not {text!r}")
    return param, [parse_param(f"{param}={v}")[1] for v in raw.split(",")]


def _method_and(text: str, expected: str) -> tuple[str, str]:
    method, sep, rest = text.partition(":")
    if not sep or not method.strip() or not rest:
        raise argparse.ArgumentTypeError(f"expected METHOD:{expected}, got {text!r}")
    return method.strip(), rest


def parse_arm(text: str) -> tuple[str, str, list[Any]]:
    """``lq_nets:w_bits=1,2,3`` → ("lq_nets", "w_bits", [1, 2, 3]): another method to search."""
    expected = "PARAM=V1,V2,..."
    method, rest = _method_and(text, expected)
    try:
        param, values = parse_search(rest)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected METHOD:{expected}, got {text!r}") from None
    return method, param, values


def parse_arm_param(text: str) -> tuple[str, Json]:
    """``lq_nets:epochs=15`` → ("lq_nets", {"epochs": 15}): a fixed param of a searched method."""
    method, rest = _method_and(text, "KEY=VALUE")
    key, value = parse_param(rest)
    return method, {key: value}


def parse_arm_params(text: str) -> tuple[str, Json]:
    """``lq_nets:{"epochs": 15}`` → ("lq_nets", {"epochs": 15}): fixed params as JSON."""
    method, rest = _method_and(text, "JSON")
    return method, params_json(rest)
