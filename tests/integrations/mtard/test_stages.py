"""``pipeline.stages.Stages``: the wall time of each stage and of each invocation of a reproduction."""

from __future__ import annotations

import json
import time

from anl.integrations.mtard.pipeline.stages import Stages


def _invocations(tmp_path) -> list[dict]:
    return json.loads((tmp_path / "invocations.json").read_text())


def test_invocations_are_recorded_while_they_run_and_add_up(tmp_path):
    stages = Stages(tmp_path / "stages.json", heartbeat_s=0.05)
    with stages.invocation("2026-01-01T00:00:00", "anl-mtard reproduce", jobs=2):
        time.sleep(0.4)
        # No stage has ended: the heartbeat alone wrote the time so far (a killed invocation
        # keeps it).
        running = _invocations(tmp_path)
        assert len(running) == 1 and running[0]["jobs"] == 2
        assert running[0]["wall_s"] >= 0.2
        with stages.stage("teacher/clean"):
            pass
    done = _invocations(tmp_path)[0]["wall_s"]
    assert done >= 0.4
    time.sleep(0.2)  # the heartbeat stopped with the invocation
    assert _invocations(tmp_path)[0]["wall_s"] == done

    again = Stages(tmp_path / "stages.json", heartbeat_s=0.05)
    assert again.history["teacher/clean"]["status"] == "ran"
    with again.invocation("2026-01-02T00:00:00", "anl-mtard reproduce --resume", jobs=1):
        again.record("train/x", "skipped (complete)", 0.0)
    rows = _invocations(tmp_path)
    assert [r["started"] for r in rows] == ["2026-01-01T00:00:00", "2026-01-02T00:00:00"]
    assert rows[0]["wall_s"] == done


def test_ranks_other_than_the_main_one_write_nothing(tmp_path):
    stages = Stages(tmp_path / "stages.json", main=False, heartbeat_s=0.01)
    with stages.invocation("2026-01-01T00:00:00", "x", jobs=1), stages.stage("data"):
        time.sleep(0.05)
    assert list(tmp_path.iterdir()) == []
