"""The ``reproduce_jobs`` benchmark's bookkeeping: configurations, rotation, ratios, equality.

The real end-to-end ``reproduce`` with ``jobs=2`` is tested against the sequential one in
``tests/integrations/mtard/test_reproduce.py``; here ``run_once`` is replaced by a fake whose
wall times and tables are known, so the test takes no training time.
"""

from __future__ import annotations

import argparse

import pytest

from benchmarks import reproduce_jobs


def test_parse_config_reads_jobs_and_threads():
    assert reproduce_jobs.parse_config("2x1") == (2, 1)
    assert reproduce_jobs.parse_config("1x12") == (1, 12)


@pytest.mark.parametrize("text", ["2", "0x1", "2x0", "2*1", "x1", "2x1x1", "-1x2"])
def test_parse_config_rejects_malformed_text(text):
    with pytest.raises(argparse.ArgumentTypeError, match="JOBSxTHREADS"):
        reproduce_jobs.parse_config(text)


def test_measure_rotates_the_order_and_reports_against_the_first_configuration(
    monkeypatch, tmp_path
):
    calls = []
    wall = {(1, 1): 100.0, (2, 1): 60.0, (1, 2): 80.0}

    def fake_run_once(profile, jobs, threads, out):
        calls.append((jobs, threads))
        # 1x2 rounds differently in its second run: its tables stop matching the reference.
        tables = {"white_box.md": "same"}
        if (jobs, threads) == (1, 2) and calls.count((1, 2)) == 2:
            tables = {"white_box.md": "rounded differently"}
        stage_s = 90.0
        return {
            "wall_s": wall[(jobs, threads)],
            "stage_s": stage_s,
            "busy": stage_s / (wall[(jobs, threads)] * jobs),
            "tables": tables,
        }

    monkeypatch.setattr(reproduce_jobs, "run_once", fake_run_once)
    monkeypatch.setitem(reproduce_jobs.WAIT_IDLE, "threshold", 0.0)
    configs = [(1, 1), (2, 1), (1, 2)]
    rows = reproduce_jobs.measure({}, configs, repeats=2, scratch=tmp_path)

    # Round 0 in the given order, round 1 rotated by one.
    assert calls == [(1, 1), (2, 1), (1, 2), (2, 1), (1, 2), (1, 1)]
    by_config = {row["config"]: row for row in rows}
    assert list(by_config) == ["1x1", "2x1", "1x2"]
    assert by_config["1x1"]["x ref"] == 1.0
    assert by_config["2x1"]["x ref"] == pytest.approx(0.6)
    assert by_config["2x1"]["busy"] == pytest.approx(90.0 / 120.0)
    assert by_config["2x1"]["tables equal"] is True
    assert by_config["1x2"]["tables equal"] is False
    assert all(len(row["_samples"]) == 2 for row in rows)
    assert all("tables" not in sample for row in rows for sample in row["_samples"])


@pytest.mark.parametrize("flag", ["--warmup=1", "--threads=2"])
def test_main_offers_no_per_call_flag_it_would_ignore(flag, capsys):
    # Each configuration sets its own threads, and a whole pipeline has no warm-up call.
    with pytest.raises(SystemExit):
        reproduce_jobs.main([flag])
    assert "unrecognized arguments" in capsys.readouterr().err
