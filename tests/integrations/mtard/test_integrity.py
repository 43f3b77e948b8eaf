"""Files that were damaged or modified never load silently (issue #17, items 5 and 6).

- checkpoints (model files, a training run's ``last.pt``), evaluation results and the transfer
  examples carry a content hash, verified on load; a byte flipped anywhere is refused;
- transfer examples are reused only when they lie in the eps-ball of the points they claim;
- a refused pickle names the global it asked for;
- temporary files left by killed writes are removed by the next write;
- files written before hashes still load, with one warning.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

import anl
from anl.integrations.mtard.data.registry import DATASETS, ImageData
from anl.integrations.mtard.evaluation.robustness import evaluate
from anl.integrations.mtard.models import build_model
from anl.integrations.mtard.models.checkpoint import load_model, save_model_checkpoint
from anl.integrations.mtard.pipeline import tasks
from anl.integrations.mtard.pipeline.profile import EvalSettings, Teacher
from anl.integrations.mtard.runtime import integrity
from anl.integrations.mtard.runtime.files import (
    atomic_file,
    atomic_save,
    atomic_write_json,
    atomic_write_text,
    read_json,
    remove_stale_temps,
    safe_load,
    safe_load_verified,
)
from anl.integrations.mtard.runtime.integrity import (
    DIGEST_KEY,
    CorruptFileError,
    UnhashedFileWarning,
    content_digest,
)
from anl.integrations.mtard.training.config import TrainConfig
from anl.integrations.mtard.training.trainer import train

INFO = DATASETS["fashion_mnist"]
CORRUPT = "corrupt or was modified"
PACKAGE = Path(__file__).parents[3] / "anl" / "integrations" / "mtard"


def tiny_data(n: int = 64, seed: int = 0) -> ImageData:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    return ImageData(images, torch.randint(0, INFO.num_classes, (n,), generator=g), INFO)


def flip_byte_of(path: Path, tensor: torch.Tensor, bit: int = 0x10) -> None:
    """Flip one bit in the middle of ``tensor``'s bytes as stored in the file ``path`` (its
    storage, in its memory layout: channels-last on the CPU)."""
    data = bytearray(path.read_bytes())
    raw = torch.empty(0, dtype=tensor.dtype).set_(tensor.untyped_storage()).numpy().tobytes()
    at = data.find(raw)
    assert at >= 0 and data.find(raw, at + 1) < 0, "the tensor's bytes are not in the file once"
    data[at + len(raw) // 2] ^= bit
    path.write_bytes(bytes(data))


@pytest.fixture
def fresh_warning(monkeypatch):
    """Let the once-per-process UnhashedFileWarning be shown again."""
    monkeypatch.setattr(integrity, "_warned_unhashed", False)


# --------------------------------------------------------------------------------------------
# Checkpoints: a byte flipped anywhere never loads other weights
# --------------------------------------------------------------------------------------------


def test_a_byte_flipped_in_a_model_checkpoint_is_refused_with_the_file_named(tmp_path):
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 1)
    path = tmp_path / "best.pt"
    save_model_checkpoint(path, model, arch="small_cnn", num_classes=10)
    flip_byte_of(path, model.state_dict()["features.4.weight"])
    with pytest.raises(ValueError, match=rf"best\.pt' is {CORRUPT}.*SHA-256") as info:
        load_model(path)
    assert isinstance(info.value, CorruptFileError)


def test_no_single_byte_flip_loads_different_weights(tmp_path):
    """Flip a bit at ~120 offsets spread over the file and inside the weights: each load is
    refused (ValueError) or gives back exactly the saved weights (a flip in zip metadata that
    torch does not read, or in the hash entry's name)."""
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 1)
    expected = model.state_dict()
    path = tmp_path / "m.pt"
    save_model_checkpoint(path, model, arch="small_cnn", num_classes=10)
    original = path.read_bytes()
    raw = expected["features.4.weight"].numpy().tobytes()
    start = original.find(raw)
    offsets = set(range(0, len(original), len(original) // 100))
    offsets |= set(range(start, start + len(raw), len(raw) // 20))
    refused = 0
    for offset in sorted(offsets):
        data = bytearray(original)
        data[offset] ^= 0x10
        path.write_bytes(bytes(data))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UnhashedFileWarning)
                loaded = load_model(path).state_dict()
        except ValueError:
            refused += 1
            continue
        assert loaded.keys() == expected.keys(), offset
        for key, value in expected.items():
            assert torch.equal(loaded[key], value), (offset, key)
    assert refused >= 20 + len(offsets) // 4  # every flip in the weights, and more


def test_a_byte_flipped_in_last_pt_stops_the_resume(tmp_path, fresh_warning):
    config = TrainConfig(
        method="natural", dataset="fashion_mnist", student="small_cnn", epochs=2,
        batch_size=32, val_size=16, val_attack_steps=1, attack_steps=1, device="cpu",
        tensorboard=False, seed=0, log_every=4,
    )  # fmt: skip
    run_dir = tmp_path / "run"
    train(config, run_dir, progress=False, stop_after_epochs=1, train_data=tiny_data())
    last = run_dir / "checkpoints" / "last.pt"
    state = safe_load(last)
    assert state["epoch"] == 1 and DIGEST_KEY not in state
    flip_byte_of(last, state["model"]["features.4.weight"])
    with pytest.raises(CorruptFileError, match=rf"last\.pt' is {CORRUPT}"):
        train(config, run_dir, resume=True, progress=False, train_data=tiny_data())
    assert safe_load_verified(run_dir / "checkpoints" / "best.pt")[1]  # the student's hash
    # The same state as an earlier version wrote it (no hash) resumes, with the one warning.
    torch.save(state, last)
    with pytest.warns(UnhashedFileWarning, match=r"last\.pt' carries no content hash"):
        result = train(config, run_dir, resume=True, progress=False, train_data=tiny_data())
    assert result["finished"] and safe_load_verified(last)[1]


def test_content_digest_covers_what_is_loaded():
    base = {"w": torch.arange(6.0).reshape(2, 3), "epoch": 3, "names": ["a"], "on": True}
    digest = content_digest(base)
    same_on_another_layout = {**base, "w": base["w"].t().contiguous().t()}
    assert content_digest(same_on_another_layout) == digest
    changed = [
        {**base, "w": base["w"].reshape(3, 2)},  # shape
        {**base, "w": base["w"].double()},  # dtype
        {**base, "w": torch.nn.Parameter(base["w"])},  # class
        {**base, "epoch": 3.0},  # int vs float
        {**base, "on": 1},  # bool vs int
        {**base, "names": ("a",)},  # list vs tuple
        {"epoch": 3, "w": base["w"], "names": ["a"], "on": True},  # order
        {**base, "w": base["w"].clone().index_put_((torch.tensor([0]),), torch.tensor(-0.0))},
    ]
    assert len({content_digest(obj) for obj in changed} | {digest}) == len(changed) + 1
    assert content_digest({"s": {"b", "a", "c"}}) == content_digest({"s": {"c", "b", "a"}})
    with pytest.raises(TypeError, match="cannot hash"):
        content_digest({"x": object()})


def test_hashes_are_added_only_to_dicts_without_one(tmp_path):
    with pytest.raises(ValueError, match="should be a dict without"):
        atomic_save([torch.ones(2)], tmp_path / "a.pt", digest=True)
    with pytest.raises(ValueError, match="should be a dict without"):
        atomic_save({DIGEST_KEY: "x"}, tmp_path / "a.pt", digest=True)
    with pytest.raises(ValueError, match="reserved"):
        save_model_checkpoint(
            tmp_path / "m.pt", build_model("small_cnn"), arch="small_cnn", num_classes=10,
            extra={DIGEST_KEY: "0" * 64},
        )  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_files_without_a_hash_load_with_one_warning(tmp_path, fresh_warning):
    """Files of earlier versions (no hash) are read, reported and resumed: one warning per
    process, whatever the number of files; third-party teachers (never hashed) warn not."""
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 1)
    save_model_checkpoint(tmp_path / "m.pt", model, arch="small_cnn", num_classes=10)
    legacy = safe_load(tmp_path / "m.pt")  # as an earlier version wrote it: no hash
    for name in ("old1.pt", "old2.pt"):
        torch.save(legacy, tmp_path / name)
    torch.save(model.state_dict(), tmp_path / "robustbench.pt")
    from anl.integrations.mtard.models.checkpoint import load_teacher

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_teacher(tmp_path / "robustbench.pt", arch="small_cnn", num_classes=10)
        assert caught == []
        for name in ("old1.pt", "old2.pt"):
            torch.testing.assert_close(load_model(tmp_path / name).state_dict(), model.state_dict())
    assert [type(w.message) for w in caught] == [UnhashedFileWarning]
    assert "old1.pt' carries no content hash" in str(caught[0].message)


# --------------------------------------------------------------------------------------------
# Evaluation results and transfer examples
# --------------------------------------------------------------------------------------------

SETTINGS = EvalSettings(
    attacks=("fgsm", "transfer_pgd"), checkpoint="final", n_examples=8, batch_size=8,
    square_queries=5, attack_overrides={"transfer_pgd": {"steps": 1}}, seed=0, eps=0.1,
    attack_n_examples={},
)  # fmt: skip


@pytest.fixture
def results_dir(tmp_path, monkeypatch):
    """A results directory with a teacher checkpoint; the test split is ``tiny_data(16)``."""
    data = tiny_data(16)
    monkeypatch.setattr(tasks.DataSource, "load", lambda self, **kwargs: data)
    torch.manual_seed(0)
    checkpoint = tmp_path / "teacher.pt"
    save_model_checkpoint(checkpoint, build_model("small_cnn", 10, 1), arch="small_cnn",
                          num_classes=10)  # fmt: skip
    teacher = Teacher("adv", "small_cnn", "adv", "trained here", checkpoint, False, {})
    return tmp_path / "out", teacher, data


def craft(results_dir) -> str:
    out, teacher, _ = results_dir
    path = out / "eval" / "transfer_examples.pt"
    source = tasks.DataSource("fashion_mnist", "test")
    return tasks.craft_task(teacher, source, SETTINGS, torch.device("cpu"), path, False)[1]


def test_a_modified_evaluation_result_is_not_reused(results_dir, fresh_warning):
    out, teacher, _ = results_dir
    job = tasks.EvalJob("teacher_adv", teacher.checkpoint, ("fgsm",), {"defense": "adv"})
    source = tasks.DataSource("fashion_mnist", "test")
    result, _ = tasks.eval_task(job, out, source, SETTINGS, torch.device("cpu"), None, False)
    path = job.path(out)
    assert tasks.eval_complete(job, SETTINGS, out)
    assert tasks.read_eval_task(path)[0] == json.loads(json.dumps(result))
    saved = json.loads(path.read_text())
    saved["attacks"]["fgsm"]["robust"] = 0.99  # a better number, by hand
    path.write_text(json.dumps(saved, indent=2) + "\n")
    with pytest.raises(ValueError, match=rf"teacher_adv\.json' is {CORRUPT}"):
        tasks.eval_complete(job, SETTINGS, out)
    with pytest.raises(CorruptFileError, match=CORRUPT):
        tasks.read_eval_task(path)
    path.write_text(path.read_text()[:-40])  # cut short
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        tasks.eval_complete(job, SETTINGS, out)
    # As an earlier version wrote it (no hash): reused, with the one warning.
    saved.pop(DIGEST_KEY)
    saved["attacks"]["fgsm"]["robust"] = result["attacks"]["fgsm"]["robust"]
    path.write_text(json.dumps(saved, indent=2) + "\n")
    os.utime(path)  # newer than the checkpoint
    with pytest.warns(UnhashedFileWarning, match="teacher_adv.json"):
        assert tasks.eval_complete(job, SETTINGS, out)


def test_json_hashes_survive_non_finite_numbers(tmp_path):
    value = {"accuracy": float("nan"), "n": 0, "tuple": (1, 2), "nested": {"b": 1, "a": 2}}
    atomic_write_json(tmp_path / "r.json", value, digest=True)
    read = read_json(tmp_path / "r.json")
    assert read["n"] == 0 and read["tuple"] == [1, 2] and read["accuracy"] != read["accuracy"]


def test_transfer_examples_outside_the_eps_ball_are_crafted_again(results_dir, fresh_warning):
    out, _, data = results_dir
    path = out / "eval" / "transfer_examples.pt"
    assert craft(results_dir) == "ran"
    saved = safe_load(path)
    good = saved["crafted"]["transfer_pgd"]["x_adv"].clone()
    clean = data.images[:8].float() / 255
    assert (good - clean).abs().max() <= SETTINGS.eps + 1e-6
    assert craft(results_dir) == "skipped (complete)"

    # Replaced by examples far outside the ball, as an earlier version would have written
    # them (no hash), then with a hash recomputed: crafted again both times, with a warning.
    saved["crafted"]["transfer_pgd"]["x_adv"] = torch.ones_like(good)
    for write in (torch.save, lambda obj, p: atomic_save(obj, p, digest=True)):
        write(saved, path)
        with pytest.warns(UserWarning) as caught:
            assert craft(results_dir) == "ran"
        messages = [str(w.message) for w in caught]
        assert any("outside the eps-ball" in m and "crafting them again" in m for m in messages)
        assert any("carries no content hash" in m for m in messages) == (write is torch.save)
        assert torch.equal(safe_load(path)["crafted"]["transfer_pgd"]["x_adv"], good)

    # Examples for fewer points than the evaluation's: crafted again.
    short = {**saved["crafted"]["transfer_pgd"], "x_adv": good[:3], "indices": torch.arange(3)}
    atomic_save({**saved, "crafted": {"transfer_pgd": short}}, path, digest=True)
    with pytest.warns(UserWarning, match=r"examples for 3 points.*evaluation is on 8"):
        assert craft(results_dir) == "ran"

    # A byte flipped in the hashed file: an error naming it, not a silent re-craft.
    flip_byte_of(path, good)
    with pytest.raises(CorruptFileError, match=rf"transfer_examples\.pt' is {CORRUPT}"):
        craft(results_dir)


def test_evaluate_refuses_transfer_examples_outside_the_eps_ball():
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 1)
    data = tiny_data(8)
    clean = data.images.float() / 255
    delta = torch.full_like(clean, 0.1).where(clean < 0.5, torch.full_like(clean, -0.1))
    inside = {"x_adv": clean + delta, "indices": torch.arange(8), "settings": {}}
    evaluate(model, data, ["transfer_pgd"], eps=0.1, transfer_examples={"transfer_pgd": inside},
             progress=False)  # fmt: skip
    for bad, message in (
        ({**inside, "x_adv": clean + 2 * delta}, "8 of its 8 examples lie outside the eps-ball"),
        ({**inside, "x_adv": clean + 1.5}, "not in"),
        ({**inside, "x_adv": (clean + delta)[:, :, :14]}, "shape"),
    ):
        with pytest.raises(ValueError, match=message):
            evaluate(model, data, ["transfer_pgd"], eps=0.1, progress=False,
                     transfer_examples={"transfer_pgd": bad})  # fmt: skip


# --------------------------------------------------------------------------------------------
# Refused pickles name what they asked for
# --------------------------------------------------------------------------------------------


class ShellCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_a_malicious_pickle_is_refused_naming_the_global(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": ShellCommand(f"touch {marker}")}, path)
    system = f"{os.system.__module__}.system"  # posix.system (nt.system on Windows)
    with pytest.raises(ValueError, match=rf"evil\.pt' needs unsafe unpickling.*`{system}`"):
        safe_load(path)
    with pytest.raises(ValueError, match=rf"`{system}`"):
        load_model(path)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# Temporary files of killed writes
# --------------------------------------------------------------------------------------------

WRITER = """
import sys, time
from anl.integrations.mtard.runtime.files import atomic_file
with atomic_file(sys.argv[1]) as handle:
    handle.write(b"x" * 100_000)
    handle.flush()
    print("writing", flush=True)
    time.sleep(300)
"""


def temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def minutes_ago(path: Path, minutes: float) -> None:
    when = time.time() - 60 * minutes
    os.utime(path, (when, when))


def test_a_killed_write_leaves_a_temp_file_that_the_next_write_removes(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(anl.__file__).parents[1])}
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path / "last.pt")],
        stdout=subprocess.PIPE, env=env, text=True,
    )  # fmt: skip
    try:
        assert writer.stdout.readline() == "writing\n"
        [live] = temps(tmp_path)
        atomic_write_text(tmp_path / "metrics.json", "{}\n")  # a live write is left alone
        assert temps(tmp_path) == [live]
    finally:
        writer.kill()  # SIGKILL: no cleanup runs
        writer.wait(timeout=60)
    assert temps(tmp_path) == [live] and not (tmp_path / "last.pt").exists()
    # Under a minute old, a temporary file may be a writer's that has not locked it yet.
    atomic_write_text(tmp_path / "metrics.json", "{}\n")
    assert temps(tmp_path) == [live]
    minutes_ago(tmp_path / live, 2)
    atomic_write_text(tmp_path / "metrics.json", "{}\n")  # any write in the folder
    assert temps(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_temp_files_of_earlier_versions_are_removed_once_old(tmp_path):
    """Earlier versions named temporary files ``.<name>.XXXXXXXX.tmp`` and held no lock: the
    next write of ``<name>`` removes those over ten minutes old. Other files stay."""
    names = {
        ".last.pt.k3j9x_2a.tmp": 60,  # ours, of last.pt, abandoned: removed
        ".last.pt.abcdefgh.tmp": 5,  # ours, of last.pt, maybe being written: kept
        ".best.pt.abcdefgh.tmp": 60,  # of another file: kept (its write removes it)
        ".last.pt.tmp": 60,  # not our naming
        ".last.pt.abc.tmp": 60,
        "last.pt.k3j9x_2a.tmp": 60,
        "notes.tmp": 60,
    }
    for name, minutes in names.items():
        (tmp_path / name).write_bytes(b"x")
        minutes_ago(tmp_path / name, minutes)
    atomic_save({"epoch": 1}, tmp_path / "last.pt", digest=True)
    left = set(p.name for p in tmp_path.iterdir())
    assert left == {"last.pt", *names} - {".last.pt.k3j9x_2a.tmp"}
    assert remove_stale_temps(tmp_path / "best.pt") == [tmp_path / ".best.pt.abcdefgh.tmp"]


def test_an_abandoned_temp_file_of_this_version_goes_at_once(tmp_path):
    """A file of this version's naming that nobody holds a lock on (its writer died) is
    removed by any write in its folder once over a minute old; a live write's never is."""
    with atomic_file(tmp_path / "a.bin") as handle:
        handle.write(b"data")
        live = Path(handle.name)
        stray = tmp_path / live.name.replace("a.bin", "b.bin")
        stray.write_bytes(b"left by a kill")
        minutes_ago(live, 30)
        minutes_ago(stray, 2)
        atomic_write_text(tmp_path / "c.txt", "c")
        assert temps(tmp_path) == [live.name]
    assert temps(tmp_path) == [] and (tmp_path / "a.bin").read_bytes() == b"data"


# --------------------------------------------------------------------------------------------
# Every write goes through runtime.files
# --------------------------------------------------------------------------------------------

#: The one write outside runtime.files: the append-only CSV logs (a line at a time).
APPEND_ONLY = {("training/logs.py", "open")}


def test_the_package_writes_files_only_through_runtime_files():
    """No JSON, configuration, checkpoint or table is written but atomically: the package
    calls no ``write_text``/``write_bytes``/``torch.save``/``json.dump`` nor opens a file for
    writing outside ``runtime/files.py``."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        where = path.relative_to(PACKAGE).as_posix()
        if where == "runtime/files.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("write_text", "write_bytes", "dump") or (
                name == "save" and isinstance(func, ast.Attribute)
                and getattr(func.value, "id", "") == "torch"
            ):  # fmt: skip
                found.append(f"{where}:{node.lineno} {name}")
            elif name == "open":
                modes = [a.value for a in node.args if isinstance(a, ast.Constant)]
                modes += [k.value.value for k in node.keywords if k.arg == "mode"
                          and isinstance(k.value, ast.Constant)]  # fmt: skip
                writes = any(isinstance(m, str) and set(m) & set("wax+") for m in modes)
                if writes and (where, "open") not in APPEND_ONLY:
                    found.append(f"{where}:{node.lineno} open{tuple(modes)}")
    assert found == []
