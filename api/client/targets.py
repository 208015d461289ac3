"""The ``target`` of an accuracy-target search, for :meth:`api.client.Client.submit`.

    from api.client import Client, search_arm, search_target

    lq_nets = search_arm("lq_nets", "w_bits", [1, 2, 3, 4], params={"epochs": 15})
    target = search_target("bits", range(1, 9), within=1.0, parallel=3, also=[lq_nets])
    job = client.submit(model_id, "uniform", dataset="digits", target=target)
    outcome = client.wait(job["id"])["target"]["outcome"]  # winner_method, winner_value, ...

Standard library only, like the rest of this package.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def search_arm(
    method: str, param: str, values: Iterable[Any], params: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Another method for a search to try beside the job's own: ``method``'s ``param`` over
    ``values`` (ordered from the smallest model to the largest), its other params fixed to
    ``params``."""
    return {"method": method, "params": dict(params or {}), "param": param, "values": list(values)}


def search_target(
    param: str,
    values: Iterable[Any],
    *,
    within: float | None = None,
    under: float | None = None,
    parallel: int = 2,
    also: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """A search over the job's own ``param`` (and the methods in ``also``, each from
    :func:`search_arm`): the smallest model ``within`` points of float top-1, or the most
    accurate one of at most ``under`` bytes; ``parallel`` child jobs at once, over all methods.
    """
    if (within is None) == (under is None):
        raise ValueError("give exactly one of within (points of top-1) and under (bytes)")
    goal, limit = (
        ("smallest_within", within) if within is not None else ("most_accurate_under", under)
    )
    target: dict[str, Any] = {
        "goal": goal,
        "limit": limit,
        "param": param,
        "values": list(values),
        "parallel": parallel,
    }
    arms = [dict(arm) for arm in also]
    if arms:  # left out otherwise: a one-method search reads as it always has
        target["other_methods"] = arms
    return target
