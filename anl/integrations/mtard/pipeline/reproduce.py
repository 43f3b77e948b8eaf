"""``anl-mtard reproduce``: the whole MTARD experiment, from a profile to a results directory.

The pipeline of the paper's Sec. 4 (Zhao et al., ECCV 2022), in the order it runs:

1. **Profile** (:class:`~.profile.Profile`): a JSON file of ``configs/`` or any path; command-
   line flags override single entries. The profile is written to ``<out>/config.json``.
2. **Data**: the training and test splits, loaded (and downloaded) once.
3. **The plan** (:func:`~.plan.build_plan`), run by the one executor
   (:func:`~.executor.run_tasks`):

   - **teachers**: a clean and an adversarial teacher, either trained here with the same loop
     as the students (natural training and TRADES) or loaded from checkpoints (RobustBench /
     chenyaofo / this project's format);
   - **students**: every method and ablation for every student architecture and seed, each a
     :func:`~..training.trainer.train` run directory;
   - **evaluation**: the profile's attacks on the test split, on the checkpoint chosen by
     validation W-Robust (Eq. 12); the teachers get the Table 1 attacks. Transfer attacks are
     crafted on the adversarial teacher, as in the paper, once for every student.
4. **Report** (:func:`~.report.write_report`): tables, ``results.json``, figures and
   ``summary.md``.

The layout of the results directory and the stage bookkeeping are :mod:`.stages`'.

``resume=True`` (``--resume``) skips every stage whose outputs exist and are complete (a
finished run with ``final.pt`` and the same configuration; an evaluation JSON with the same
attacks and settings), continues interrupted training runs from ``checkpoints/last.pt``, and
redoes the rest, so a killed ``reproduce`` picks up where it stopped.

With ``jobs=1`` the tasks run in this process, in turn; with ``jobs > 1`` the ones that do not
wait for each other run side by side in worker processes, with the same results. Under
``torchrun`` (``RANK`` and ``WORLD_SIZE`` in the environment) the whole pipeline runs in one
process group, created once for every stage: every rank runs the same tasks in the same order,
each training run is data-parallel, each evaluation and the transfer crafting attack the exact
shard ``indices[rank::world_size]`` with the counts summed over ranks (the numbers equal the
single-process ones), and only rank 0 writes files and draws progress bars. Every rank returns
the same results. ``out`` must be on a file system every rank shares.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..checks import check_int, fail
from ..runtime.execution import torch_threads
from ..runtime.files import atomic_write_text
from ..runtime.process import Ranks, agree, command_line, distributed_session, node_main_first
from .executor import default_worker_threads
from .plan import build_plan
from .profile import Profile
from .report import write_report
from .stages import Stages, run_recorded
from .tasks import DataSource

logger = logging.getLogger(__name__)


def reproduce(
    profile: Profile | Mapping[str, Any] | str,
    out: str | os.PathLike[str],
    *,
    resume: bool = False,
    plots: bool = True,
    progress: bool = True,
    command: str | None = None,
    threads: int | None = None,
    jobs: int = 1,
) -> dict[str, Any]:
    """Run the whole experiment of ``profile`` into the results directory ``out``.

    Args:
        profile: a :class:`~.profile.Profile`, its JSON document, or its name / path.
        out: the results directory. An existing one needs ``resume=True``. Under
            ``torch.distributed`` it must be on a file system every rank shares.
        resume: skip completed stages, continue interrupted runs (see the module doc).
        plots: write the figures.
        progress: progress bars (rank 0 only).
        command: the command line recorded in ``summary.md`` (default: ``sys.argv``).
        threads: ``torch.set_num_threads`` for the run (restored afterwards); default: the
            profile's ``threads``; ``None`` in both keeps torch's default. On a CPU shared with
            other jobs, 1 thread is often several times faster than oversubscribed cores.
            With ``jobs > 1`` it is per worker (default: the cores shared out).
        jobs: worker processes (:mod:`.executor`): the teachers, student runs and evaluations
            that do not wait for each other run side by side, each in a process with
            ``threads`` torch threads. The results equal those of ``jobs=1`` with the same
            threads. Not under ``torchrun``, where the processes already share each stage.

    Returns:
        The content of ``results.json`` (on every rank).
    """
    wall_start = time.perf_counter()
    started = datetime.datetime.now().astimezone()
    check_int("jobs", jobs, minimum=1)
    if not isinstance(profile, Profile):
        profile = Profile(profile) if isinstance(profile, Mapping) else Profile.load(profile)
    out = Path(out)
    command = command or command_line()
    # One process group for every stage (under torchrun; a lone process runs alone).
    with distributed_session(profile.device) as ranks:
        if ranks.enabled and jobs > 1:
            fail("jobs", jobs, "1 under torchrun (its processes already share every stage)")
        config_path = out / "config.json"
        # Every rank looks before rank 0 writes (a collective), and they must see the same.
        exists = config_path.exists()
        agree(exists, f"whether {str(config_path)!r} exists", ranks)
        if exists and not resume:
            raise ValueError(
                f"The results directory {str(out)!r} already holds a reproduction. Pass "
                "`resume=True` (--resume) to continue it, or choose another --out."
            )
        if ranks.main:
            atomic_write_text(config_path, json.dumps(profile.to_dict(), indent=2) + "\n")
        threads = threads if threads is not None else profile.threads
        if jobs > 1 and threads is None:
            threads = default_worker_threads(jobs)
        stages = Stages(out / "stages.json", main=ranks.main)
        invocation = stages.invocation(started.isoformat(timespec="seconds"), command, jobs)
        with torch_threads(threads), invocation:
            if ranks.main:
                logger.info(
                    "reproduce: profile %s -> %s%s",
                    profile.name,
                    out,
                    f" ({ranks.world_size} processes)" if ranks.enabled else "",
                )
            _load_data(profile, stages, ranks, progress=progress)
            plan = build_plan(
                profile, out, stages, resume=resume, progress=progress and jobs == 1, ranks=ranks
            )
            done = run_recorded(
                plan.tasks,
                stages,
                jobs=jobs,
                threads=threads,
                desc="tasks",
                progress=progress and ranks.main,
            )
            results = None
            if ranks.main:
                results = write_report(
                    profile,
                    out,
                    plan.outcome(done),
                    stages=stages,
                    plots=plots,
                    command=command,
                    started=started,
                    wall_start=wall_start,
                )
        # Every rank returns rank 0's results (one small all-gather).
        return ranks.gather_objects(results)[0]


def _load_data(profile: Profile, stages: Stages, ranks: Ranks, *, progress: bool) -> None:
    """The ``data`` stage: both splits loaded into this process's cache (the tasks read them
    there), downloaded first by one process per node when missing."""
    sources = [DataSource(profile.dataset, split, profile.data_dir) for split in ("train", "test")]

    def load() -> list[Any]:
        return [
            source.load(download=profile.download, progress=progress and ranks.main)
            for source in sources
        ]

    with stages.stage("data") as row:
        train, test = node_main_first(load, ranks)
        row["status"] = f"{len(train)} train / {len(test)} test images"
