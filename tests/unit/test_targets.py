"""The accuracy-target search agrees with an exhaustive sweep and runs far fewer jobs."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.targets import Outcome, Target, answer, exhaustive, next_values, pareto


def _search(target: Target, outcomes: list[Outcome], parallel: int) -> tuple[int | None, int]:
    """Run the search as the service does: a round of jobs, then the next; (answer, jobs run)."""
    known: dict[int, Outcome] = {}
    while batch := next_values(target, len(outcomes), known, parallel):
        assert not set(batch) & set(known), "a value is never run twice"
        assert len(batch) <= parallel
        known.update({i: outcomes[i] for i in batch})
    return answer(target, len(outcomes), known), len(known)


@st.composite
def sweeps(draw: st.DrawFn, strict: bool) -> list[Outcome]:
    """Outcomes along a size knob: bytes strictly growing; accuracy strictly growing, or (not
    strict) never falling, with plateaus, capped just above float."""
    n = draw(st.integers(1, 40))
    float_top1 = draw(st.floats(50, 100))
    low = 0.01 if strict else 0.0
    steps = draw(st.lists(st.floats(low, 5), min_size=n, max_size=n))
    growth = draw(st.lists(st.integers(1, 10_000), min_size=n, max_size=n))
    top1, size, out = draw(st.floats(0, 50)), draw(st.integers(100, 1000)), []
    for step, grow in zip(steps, growth, strict=True):
        top1 = top1 + step if strict else min(top1 + step, float_top1 + 1)
        size += grow
        out.append(Outcome(top1=top1, float_top1=float_top1, quantized_bytes=size))
    return out


@settings(max_examples=300, deadline=None)
@given(sweeps(strict=False), st.floats(0, 60), st.integers(1, 8))
def test_smallest_within_matches_the_exhaustive_sweep(
    outcomes: list[Outcome], drop: float, parallel: int
) -> None:
    target = Target("smallest_within", drop)
    found, runs = _search(target, outcomes, parallel)
    assert found == exhaustive(target, outcomes)
    rounds = math.ceil(math.log(len(outcomes) + 1, parallel + 1)) + 1
    assert runs <= rounds * parallel


@settings(max_examples=300, deadline=None)
@given(sweeps(strict=True), st.integers(0, 400_000), st.integers(1, 8))
def test_most_accurate_under_matches_the_exhaustive_sweep(
    outcomes: list[Outcome], budget: int, parallel: int
) -> None:
    target = Target("most_accurate_under", budget)
    found, runs = _search(target, outcomes, parallel)
    assert found == exhaustive(target, outcomes)
    rounds = math.ceil(math.log(len(outcomes) + 1, parallel + 1)) + 1
    assert runs <= rounds * parallel


def test_bisection_on_eight_bitwidths_runs_three_or_four_jobs() -> None:
    float_top1 = 90.0
    by_bits = [10.0, 40.0, 80.0, 88.5, 89.6, 89.9, 90.0, 90.0]  # 1..8 bits
    outcomes = [Outcome(t, float_top1, 1000 * (b + 1)) for b, t in enumerate(by_bits)]
    found, runs = _search(Target("smallest_within", 1.0), outcomes, parallel=1)
    assert found == 4  # 5 bits: 89.6 is within 1 point of 90
    assert runs <= 4


def test_no_value_meets_an_impossible_target() -> None:
    outcomes = [Outcome(50.0 + i, 90.0, 100 * (i + 1)) for i in range(6)]
    assert _search(Target("smallest_within", 0.5), outcomes, 2)[0] is None
    assert _search(Target("most_accurate_under", 50), outcomes, 2)[0] is None


def test_an_unfinished_search_has_no_answer() -> None:
    with pytest.raises(ValueError, match="not ended"):
        answer(Target("smallest_within", 1.0), 5, {})


def test_the_pareto_front_drops_dominated_results() -> None:
    results = {
        "a": Outcome(70.0, 90.0, 100),
        "b": Outcome(65.0, 90.0, 200),  # bigger and worse than a
        "c": Outcome(85.0, 90.0, 300),
        "d": Outcome(85.0, 90.0, 400),  # as good as c, bigger
        "e": Outcome(89.0, 90.0, 500),
    }
    assert pareto(results.items()) == ["a", "c", "e"]
