"""Tests of the benchmarks' timing helper (benchmarks/timing.py): what it times and in which
order, not how fast anything is."""

from __future__ import annotations

import pytest

from benchmarks.timing import ratio, time_interleaved


def test_each_repeat_rotates_the_order_so_no_candidate_always_runs_first():
    calls: list[str] = []
    candidates = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    timings = time_interleaved(candidates, repeats=4, warmup=0, inner=2)
    assert calls == [
        *"aabbcc",  # repeat 0
        *"bbccaa",  # repeat 1
        *"ccaabb",  # repeat 2
        *"aabbcc",  # repeat 3
    ]
    assert {name: len(t.samples) for name, t in timings.items()} == {"a": 4, "b": 4, "c": 4}


def test_warmup_calls_are_not_timed():
    calls: list[str] = []
    time_interleaved({"a": lambda: calls.append("a")}, repeats=1, warmup=3, inner=1)
    assert calls == ["a"] * 4


def test_ratio_pairs_the_samples_of_the_same_repeat():
    timings = time_interleaved({"x": lambda: None, "y": lambda: None}, repeats=3, inner=1)
    timings["x"].samples[:] = [2.0, 4.0, 9.0]
    timings["y"].samples[:] = [1.0, 1.0, 3.0]
    result = ratio(timings["x"], timings["y"])
    assert result["ratio_of_medians"] == pytest.approx(4.0)
    assert result["median_of_ratios"] == pytest.approx(3.0)


@pytest.mark.parametrize("bad", [{"repeats": 0}, {"inner": 0}, {"warmup": -1}])
def test_counts_are_checked(bad):
    with pytest.raises(ValueError, match="repeats"):
        time_interleaved({"a": lambda: None}, **{"repeats": 1, **bad})
