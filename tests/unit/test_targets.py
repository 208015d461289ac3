"""The accuracy-target search agrees with an exhaustive sweep and runs far fewer jobs."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.targets import (
    Outcome,
    Pick,
    Target,
    answer,
    exhaustive,
    exhaustive_arms,
    next_round,
    next_values,
    pareto,
    winner,
)


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


# --- several methods at once -----------------------------------------------------------------


def _search_arms(
    target: Target, arms: list[list[Outcome]], parallel: int
) -> tuple[Pick | None, int]:
    """A search over several arms as the service runs it: (the winner, rounds run)."""
    known: list[dict[int, Outcome]] = [{} for _ in arms]
    rounds = 0
    while batch := next_round(target, [len(a) for a in arms], known, parallel):
        assert len(batch) <= parallel
        assert len(set(batch)) == len(batch)
        for a, i in batch:
            assert i not in known[a], "a value is never run twice"
            known[a][i] = arms[a][i]
        rounds += 1
    found, per_arm = winner(target, [len(a) for a in arms], known)
    assert per_arm == [answer(target, len(a), k) for a, k in zip(arms, known, strict=True)]
    return found, rounds


def _round_bound(arms: list[list[Outcome]], parallel: int) -> int:
    """Every arm that gets a slot in a round shrinks like a bisection at least, and when there
    are at least as many slots as arms every arm with work gets one each round."""
    alone = [math.ceil(math.log2(len(a) + 1)) + 1 for a in arms]
    return max(alone) if parallel >= len(arms) else sum(alone)


@settings(max_examples=300, deadline=None)
@given(st.lists(sweeps(strict=False), min_size=1, max_size=4), st.floats(0, 60), st.integers(1, 8))
def test_a_search_over_several_methods_finds_the_smallest_of_all_that_are_within(
    arms: list[list[Outcome]], drop: float, parallel: int
) -> None:
    target = Target("smallest_within", drop)
    found, rounds = _search_arms(target, arms, parallel)
    assert found == exhaustive_arms(target, arms)
    assert rounds <= _round_bound(arms, parallel)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(sweeps(strict=True), min_size=1, max_size=4),
    st.integers(0, 400_000),
    st.integers(1, 8),
)
def test_a_search_over_several_methods_finds_the_most_accurate_of_all_that_fit(
    arms: list[list[Outcome]], budget: int, parallel: int
) -> None:
    target = Target("most_accurate_under", budget)
    found, rounds = _search_arms(target, arms, parallel)
    assert found == exhaustive_arms(target, arms)
    assert rounds <= _round_bound(arms, parallel)


@settings(max_examples=200, deadline=None)
@given(sweeps(strict=False), st.floats(0, 60), st.integers(1, 8), st.data())
def test_one_arm_plans_exactly_the_single_method_rounds(
    outcomes: list[Outcome], drop: float, parallel: int, data: st.DataObject
) -> None:
    target = Target("smallest_within", drop)
    run = data.draw(st.sets(st.integers(0, len(outcomes) - 1)))
    known = {i: outcomes[i] for i in run}
    planned = next_round(target, [len(outcomes)], [known], parallel)
    assert planned == [(0, i) for i in next_values(target, len(outcomes), known, parallel)]


def test_the_slots_of_a_round_are_shared_among_the_methods_with_work() -> None:
    target = Target("smallest_within", 1.0)
    assert [a for a, _ in next_round(target, [8, 8], [{}, {}], 4)] == [0, 0, 1, 1]
    # An odd slot goes to the method with more values left open; a method never gets more
    # slots than it has open values, and the rest go to the others.
    assert [a for a, _ in next_round(target, [2, 8], [{}, {}], 3)] == [0, 1, 1]
    assert [a for a, _ in next_round(target, [1, 8], [{}, {}], 4)] == [0, 1, 1, 1]
    # With fewer slots than methods the methods take turns, round after round.
    ok, off = Outcome(90.0, 90.0, 10), Outcome(10.0, 90.0, 10)
    assert next_round(target, [4, 4], [{}, {}], 1) == [(0, 2)]
    assert next_round(target, [4, 4], [{2: ok}, {}], 1) == [(1, 2)]
    # A method whose answer is known gets nothing: all the slots go to the one still searching.
    done = {0: ok}
    assert next_round(target, [4, 8], [done, {}], 3) == [(1, 2), (1, 4), (1, 6)]
    assert next_round(target, [4, 1], [done, {0: off}], 3) == []


def test_the_winner_is_the_best_of_each_methods_answer() -> None:
    float_top1 = 90.0
    uniform = [Outcome(t, float_top1, 1000 * (b + 1)) for b, t in enumerate([10, 60, 89.5, 90])]
    lq_nets = [Outcome(t, float_top1, 900 * (b + 1)) for b, t in enumerate([70, 89.2, 90])]
    within = Target("smallest_within", 1.0)
    found, _ = _search_arms(within, [uniform, lq_nets], 2)
    assert found == (1, 1)  # lq_nets at 1800 bytes beats uniform at 3000
    under = Target("most_accurate_under", 3000)
    assert _search_arms(under, [uniform, lq_nets], 2)[0] == (1, 2)  # 90.0 at 2700 bytes
    tie = [Outcome(89.5, float_top1, 1800)]  # as small as lq_nets' answer, more accurate
    assert _search_arms(within, [uniform, lq_nets, tie], 2)[0] == (2, 0)
    assert exhaustive_arms(Target("smallest_within", 0.01), [uniform[:2], lq_nets[:1]]) is None
