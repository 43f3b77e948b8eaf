"""Every ``anl-mtard`` command in README.md and docs/*.md parses with today's flags, and a
checkpoint it evaluates is one that the run directory of the block holds (issue #18:
README's ``evaluate runs/mtard/best.pt`` named no file)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from anl.integrations.mtard import cli
from anl.integrations.mtard.cli import train as train_cli
from anl.integrations.mtard.runtime.plugins import is_import_path
from anl.integrations.mtard.training.checkpoints import run_paths

ROOT = Path(__file__).parents[3]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
SEPARATORS = {"&&", "||", ";", "|"}
LAUNCHED_AFTER = SEPARATORS | {"--no-python"}  # `torchrun ... --no-python anl-mtard ...`


def commands(text: str) -> list[list[list[str]]]:
    """The ``anl-mtard`` commands of each fenced block: ``[block][command] -> argv``."""
    blocks = []
    for block in FENCE.findall(text):
        found = []
        for line in block.replace("\\\n", " ").splitlines():
            if "anl-mtard" not in line:  # also skips the Python blocks
                continue
            words = shlex.split(line, comments=True)
            starts = [
                i + 1
                for i, word in enumerate(words)
                if word == "anl-mtard" and (i == 0 or words[i - 1] in LAUNCHED_AFTER)
            ]  # the command itself, not a mention of it (as in a diagram)
            for start in starts:
                rest = words[start:]
                end = next((i for i, w in enumerate(rest) if w in SEPARATORS), len(rest))
                found.append(rest[:end])
        if found:
            blocks.append(found)
    return blocks


ELIDED_REQUIRED = {"train": ["--out", "RUN_DIR"]}
"""What a command whose ``...`` leaves out its required flags gets in their place."""


def complete(argv: list[str]) -> list[str]:
    """``argv`` without the ``...`` that stands for flags a document leaves out (and with
    placeholders for the required ones it may hide)."""
    words = [word for word in argv if word != "..."]
    if "..." in argv:
        required = ELIDED_REQUIRED.get(words[0], [])
        if required and required[0] not in words:
            words += required
    return words


CASES = [
    pytest.param(argv, id=f"{doc.name}: anl-mtard {' '.join(argv)}"[:90])
    for doc in DOCUMENTS
    for block in commands(doc.read_text())
    for argv in block
]


def test_the_documents_have_commands():
    assert len(CASES) >= 10
    assert {argv[0] for argv in (c.values[0] for c in CASES)} >= {"train", "evaluate", "reproduce"}


@pytest.mark.parametrize("argv", CASES)
def test_a_documented_command_parses(argv, capsys):
    """Its flags exist and take these values; a complete ``train`` command gives a valid
    configuration (what ``anl-mtard train`` checks before it starts)."""
    parser = cli.build_parser()
    try:
        args = parser.parse_args(complete(argv))
    except SystemExit:
        pytest.fail(f"anl-mtard {shlex.join(argv)}: {capsys.readouterr().err}")
    assert callable(args.func)
    user_modules = any(is_import_path(word) for word in argv)  # examples: not importable here
    if args.command == "train" and "..." not in argv and not args.resume and not user_modules:
        train_cli.train_config(args, Path(args.out))
    with pytest.raises(SystemExit) as exit:
        parser.parse_args([argv[0], "--help"])
    assert exit.value.code == 0 and "usage: anl-mtard" in capsys.readouterr().out


def checkpoints(args) -> list[Path]:
    """The checkpoints a parsed command reads."""
    if args.command == "evaluate":
        return [p for p in (args.checkpoint, args.surrogate) if p is not None]
    if args.command == "train":
        names = ("cfg_clean_teacher", "cfg_adv_teacher")
        return [Path(getattr(args, n)) for n in names if getattr(args, n, None)]
    return []


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda d: d.name)
def test_a_checkpoint_read_is_a_file_of_the_run_that_writes_it(doc):
    """A teacher or evaluated checkpoint under a run directory that the same block trains is
    one of the files that run writes."""
    parser = cli.build_parser()
    for block in commands(doc.read_text()):
        parsed = [parser.parse_args(complete(argv)) for argv in block]
        runs = [Path(args.out) for args in parsed if args.command == "train"]
        for checkpoint in (c for args in parsed for c in checkpoints(args)):
            for run in (r for r in runs if checkpoint.is_relative_to(r)):
                files = {path for path in run_paths(run).values() if path.suffix == ".pt"}
                assert checkpoint in files, f"{doc.name}: {checkpoint} is not one of {files}"
