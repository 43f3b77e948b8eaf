"""The ``anl-mtard`` command: ``train``, ``evaluate``, ``reproduce``, ``plot``, ``diagnose``,
``compare`` and ``sensitivity``.

Every subcommand is defined in this package, so that no library module imports
:mod:`argparse`: one module per subcommand (``train``, ``evaluate``, ``reproduce``,
``sensitivity``; ``results`` holds ``plot``, ``diagnose`` and ``compare``, which read a finished
results directory), each with an ``add_<name>_command`` function, listed in
:data:`~.app.SUBCOMMANDS`, that adds its flags and the function that turns them into a call of
the library
(:func:`~.training.trainer.train`, :func:`~.evaluation.robustness.evaluate`,
:func:`~.pipeline.reproduce.reproduce`, :func:`~.plots.plot_run`,
:func:`~.pipeline.report.refresh_diagnostics`, :func:`~.pipeline.compare.write_comparison`,
:func:`~.pipeline.sensitivity.sensitivity`). Under ``torchrun`` every rank runs the command
and rank 0 prints. ``python -m anl.integrations.mtard`` is the same command.

Errors. The library raises exceptions that name the argument or file at fault; :func:`main`
answers each with one line on stderr, ``anl-mtard <command>: error: <what is wrong>``, and an
exit status (``--debug``, before or after the subcommand, prints the traceback as well):

- **2, a usage error**: what the command line says is wrong, found before any work starts: a
  flag's value (a count below 1, an epsilon outside (0, 1], an unknown method, architecture,
  dataset, attack or profile), a combination of flags, a profile or ``--config`` file that is
  missing, not JSON or holds a wrong value, a path of the wrong kind (``--out`` naming a file,
  a directory where a checkpoint is expected), an output directory that holds a run without
  ``--resume``. Every :class:`~.checks.ArgumentError` is one.
- **1, a runtime failure**: what the command found, or the work itself, went wrong: a
  checkpoint, dataset or run file that is missing, unreadable or corrupt, a device that is not
  there, a training run that fails (non-finite loss), a full disk.
- **130**: interrupted (Ctrl-C).

A module named by an import path (``--student my_nets:tiny_cnn``) is looked for on
``sys.path``, to which the command appends the current directory.
"""

from .app import SUBCOMMANDS, CommandParser, build_parser, main, run_command
from .errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, error_message

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "SUBCOMMANDS",
    "CommandParser",
    "build_parser",
    "error_message",
    "main",
    "run_command",
]
