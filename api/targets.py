"""Accuracy-target search: which child jobs to run next, and when the answer is known.

A target job asks for "the smallest model within X points of float" or "the most accurate model
under Y bytes" over one method's size knob (bits, levels, target bitwidth), given as values
ordered from the smallest model to the largest. Along that order the model's size grows and its
accuracy is taken to grow too (the monotone assumption every quantization sweep relies on), so
whether a value meets the target is monotone:

- smallest within X points: no … no yes … yes: the answer is the first "yes";
- most accurate under Y bytes: yes … yes no … no: the answer is the last "yes".

Either way one boundary is searched for, by a (k+1)-ary search that probes k values at a time,
k being how many child jobs may run in parallel (k = 1 is bisection). Every finished child is
kept: the report shows the whole Pareto set, not only the winner.

A search may cover several methods at once ("arms": the job's own method and knob, then others,
each with its own ordered values). Each arm is searched on its own as above, since the monotone
assumption holds along one knob, not across methods; the arms share each round's ``parallel``
slots (:func:`next_round`), and the answer is the best of the arms' answers (:func:`winner`).
Nothing here touches the database or the queue; ``api.target_jobs`` and the worker drive it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Goal = Literal["smallest_within", "most_accurate_under"]


@dataclass(frozen=True)
class Target:
    goal: Goal
    limit: float  # points of top-1 below float, or bytes

    def met(self, outcome: Outcome) -> bool:
        if self.goal == "smallest_within":
            return outcome.float_top1 - outcome.top1 <= self.limit
        return outcome.quantized_bytes <= self.limit


@dataclass(frozen=True)
class Outcome:
    """What one finished child job measured."""

    top1: float
    float_top1: float
    quantized_bytes: int


@dataclass(frozen=True)
class Boundary:
    """The search state over ``n`` ordered values: the boundary lies in ``[low, high]``.

    ``low`` is the first index not known to be on the "before" side and ``high`` the first index
    known to be on the "after" side (``n`` when none is known yet).
    """

    low: int
    high: int


def _after(target: Target, outcome: Outcome) -> bool:
    """Whether an outcome lies after the boundary along the size order."""
    met = target.met(outcome)
    return met if target.goal == "smallest_within" else not met


def boundary(target: Target, n: int, known: Mapping[int, Outcome]) -> Boundary:
    """Narrow ``[0, n]`` with every finished value (monotone: one side, then the other)."""
    low, high = 0, n
    for index in sorted(known):
        if _after(target, known[index]):
            high = min(high, index)
        else:
            low = max(low, index + 1)
    return Boundary(low, max(low, high))


def open_values(target: Target, n: int, known: Mapping[int, Outcome]) -> list[int]:
    """The values not run yet that may still hold the boundary (none: the answer is known)."""
    span = boundary(target, n, known)
    return [i for i in range(span.low, span.high) if i not in known]


def next_values(target: Target, n: int, known: Mapping[int, Outcome], parallel: int) -> list[int]:
    """The values to run next (indices into the ordered values); empty once the answer is known.

    ``parallel`` values are probed at once, spread evenly over the open interval, so each round
    cuts it into ``parallel + 1`` parts.
    """
    if parallel < 1:
        raise ValueError("parallel must be at least 1")
    candidates = open_values(target, n, known)
    if not candidates:
        return []
    k = min(parallel, len(candidates))
    step = len(candidates) / (k + 1)
    last = len(candidates) - 1
    return sorted({candidates[min(int(step * (j + 1)), last)] for j in range(k)})


def answer(target: Target, n: int, known: Mapping[int, Outcome]) -> int | None:
    """The winning index once the search has ended (None: no value meets the target).

    Smallest within X points: the first value that meets it. Most accurate under Y bytes: the
    most accurate value that fits among those run, the smaller one on a tie (under the monotone
    assumption that is the last value that fits, or an equally accurate smaller one).
    """
    span = boundary(target, n, known)
    if span.low != span.high:
        raise ValueError("the search has not ended: run next_values first")
    if target.goal == "smallest_within":
        return span.high if span.high < n else None
    return _most_accurate({i: o for i, o in known.items() if target.met(o)})


def _most_accurate(outcomes: Mapping[int, Outcome]) -> int | None:
    if not outcomes:
        return None
    return min(outcomes, key=lambda i: (-outcomes[i].top1, outcomes[i].quantized_bytes, i))


def exhaustive(target: Target, outcomes: Sequence[Outcome]) -> int | None:
    """The answer from every value's outcome: what the search must agree with."""
    meeting = {i: o for i, o in enumerate(outcomes) if target.met(o)}
    if target.goal == "smallest_within":
        return min(meeting, key=lambda i: (meeting[i].quantized_bytes, i)) if meeting else None
    return _most_accurate(meeting)


# --- several arms ------------------------------------------------------------------------------

Pick = tuple[int, int]  # (arm, index into that arm's ordered values)


def next_round(
    target: Target, sizes: Sequence[int], known: Sequence[Mapping[int, Outcome]], parallel: int
) -> list[Pick]:
    """The children to run next over several arms (``sizes[a]`` values each, ``known[a]`` run);
    empty once every arm's answer is known.

    The ``parallel`` slots go one at a time to the arm with work that has the fewest slots so far
    (ties: more values still open, then the lower arm), never more to an arm than it has open
    values; so every arm with work moves each round when ``parallel`` allows it, and a slot an
    arm cannot use goes to another. Each arm then probes its slots with :func:`next_values`. With
    one arm this is ``next_values`` itself.
    """
    if parallel < 1:
        raise ValueError("parallel must be at least 1")
    if len(sizes) != len(known):
        raise ValueError("one known mapping per arm")
    left = [len(open_values(target, n, k)) for n, k in zip(sizes, known, strict=True)]
    slots = [0] * len(sizes)
    for _ in range(parallel):
        hungry = [a for a in range(len(sizes)) if slots[a] < left[a]]
        if not hungry:
            break
        slots[min(hungry, key=lambda a: (slots[a], -left[a], a))] += 1
    return [
        (a, i) for a, k in enumerate(slots) if k for i in next_values(target, sizes[a], known[a], k)
    ]


def best(target: Target, candidates: Mapping[Pick, Outcome]) -> Pick | None:
    """The best of outcomes that meet the target, from different arms: the smallest (ties: the
    more accurate), or the most accurate (ties: the smaller); then the lower arm and index."""
    if not candidates:
        return None
    if target.goal == "smallest_within":
        return min(
            candidates, key=lambda p: (candidates[p].quantized_bytes, -candidates[p].top1, p)
        )
    return min(candidates, key=lambda p: (-candidates[p].top1, candidates[p].quantized_bytes, p))


def winner(
    target: Target, sizes: Sequence[int], known: Sequence[Mapping[int, Outcome]]
) -> tuple[Pick | None, list[int | None]]:
    """Once :func:`next_round` is empty: the overall winner and each arm's own answer."""
    per_arm = [answer(target, n, k) for n, k in zip(sizes, known, strict=True)]
    found = {(a, i): known[a][i] for a, i in enumerate(per_arm) if i is not None}
    return best(target, found), per_arm


def exhaustive_arms(target: Target, arms: Sequence[Sequence[Outcome]]) -> Pick | None:
    """The answer from every value of every arm: what a search over several arms must find."""
    meeting = {
        (a, i): o
        for a, outcomes in enumerate(arms)
        for i, o in enumerate(outcomes)
        if target.met(o)
    }
    return best(target, meeting)


def pareto(outcomes: Iterable[tuple[str, Outcome]]) -> list[str]:
    """Keys of the outcomes no other beats on both size and accuracy, smallest first."""
    items = sorted(outcomes, key=lambda kv: (kv[1].quantized_bytes, -kv[1].top1))
    front: list[str] = []
    best = float("-inf")
    for key, outcome in items:
        if outcome.top1 > best:
            front.append(key)
            best = outcome.top1
    return front
