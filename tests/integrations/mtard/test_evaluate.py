"""Tests of the evaluation (``evaluation.robustness``), its tables and files (``tables``) and
``anl-mtard evaluate`` (``cli``): accuracies, sharding, transfer examples, tables, files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from anl.integrations.mtard.attacks.registry import DEFAULT_ATTACKS
from anl.integrations.mtard.cli import evaluate as evaluate_cli
from anl.integrations.mtard.data.registry import DATASETS, ImageData
from anl.integrations.mtard.evaluation.counting import w_robust
from anl.integrations.mtard.evaluation.robustness import evaluate
from anl.integrations.mtard.runtime.files import read_json
from anl.integrations.mtard.runtime.integrity import DIGEST_KEY
from anl.integrations.mtard.tables import result_rows, results_table, write_results


def small_cnn(channels: int = 1, size: int = 8, num_classes: int = 10, seed: int = 0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * size * size, num_classes),
    )


def tensor_data(n: int = 40, channels: int = 1, size: int = 8, seed: int = 0, model=None):
    """Random images; labels mostly the model's predictions (so clean accuracy is high)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, channels, size, size, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    if model is not None:
        model.eval()
        with torch.no_grad():
            pred = model(x).argmax(1)
        y = torch.where(torch.arange(n) % 4 == 0, y, pred)
    return x, y


FAST = {"square_queries": 30, "progress": False}
ATTACKS = ["fgsm", "pgd_sat", "pgd_trades", "cw_inf", "square"]


def test_accuracies_counts_and_w_robust() -> None:
    model = small_cnn()
    x, y = tensor_data(model=model)
    results = evaluate(model, (x, y), ATTACKS, eps=0.05, batch_size=16, **FAST)
    with torch.no_grad():
        clean_correct = int((model(x).argmax(1) == y).sum())
    assert results["n_examples"] == 40 and results["eps"] == 0.05
    assert results["clean"] == {"correct": clean_correct, "accuracy": clean_correct / 40}
    assert 0.5 < results["clean"]["accuracy"] < 1.0
    for name in ATTACKS:
        entry = results["attacks"][name]
        assert entry["correct"] <= clean_correct, name
        assert entry["correct"] <= entry["adv_correct"], name
        assert entry["robust"] == entry["correct"] / 40
        assert entry["robust"] <= results["clean"]["accuracy"]
        assert entry["w_robust"] == pytest.approx(
            0.5 * results["clean"]["accuracy"] + 0.5 * entry["robust"]
        )
        assert entry["settings"]["eps"] == 0.05
    # A non-robust model loses accuracy under every attack.
    assert all(results["attacks"][n]["robust"] < results["clean"]["accuracy"] for n in ATTACKS)
    assert results["attacks"]["square"]["settings"]["n_queries"] == 30
    json.dumps(results)  # serialisable as is


def test_robust_count_matches_direct_attack() -> None:
    model = small_cnn(seed=2)
    x, y = tensor_data(n=24, model=model)
    # The model's own (contiguous) layout, so that the direct attack below is the same
    # computation bit for bit.
    results = evaluate(
        model, (x, y), ["fgsm"], eps=0.05, batch_size=7, memory_format="contiguous", **FAST
    )
    from anl.integrations.mtard.attacks.gradient import fgsm

    with torch.no_grad():
        clean_ok = model(x).argmax(1) == y
        adv_ok = model(fgsm(model, x, y, eps=0.05)).argmax(1) == y
    assert results["attacks"]["fgsm"]["correct"] == int((clean_ok & adv_ok).sum())
    assert results["attacks"]["fgsm"]["adv_correct"] == int(adv_ok.sum())


def _counts(results):
    return [results["n_examples"], results["clean"]["correct"]] + [
        (v["correct"], v["adv_correct"]) for v in results["attacks"].values()
    ]


def test_memory_format_changes_rounding_only_and_leaves_the_model_alone() -> None:
    """``"auto"`` is channels-last on CPU: the attacks run on a converted copy, the caller's
    model keeps its layout, and the counts agree with the contiguous evaluation up to the
    few points where a gradient sign is within rounding of zero."""
    from anl.integrations.mtard.models import build_model

    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=10, in_channels=1)
    x, y = tensor_data(n=64, size=28, model=model)
    weight = [p for p in model.parameters() if p.dim() == 4][-1]  # 16 input channels
    kwargs = dict(eps=0.1, batch_size=32, **FAST)
    attacks = ["fgsm", "pgd_sat", "square"]
    conv = [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]
    layouts = []  # the layout of the weight each evaluation's forwards ran with
    conv.register_forward_pre_hook(
        lambda m, _: layouts.append(m.weight.is_contiguous(memory_format=torch.channels_last))
    )
    contiguous = evaluate(model, (x, y), attacks, memory_format="contiguous", **kwargs)
    assert layouts and not any(layouts)
    layouts.clear()
    auto = evaluate(model, (x, y), attacks, **kwargs)
    assert layouts and all(layouts)
    assert weight.is_contiguous() and not weight.is_contiguous(memory_format=torch.channels_last)
    assert auto["clean"] == contiguous["clean"]
    for name in attacks:
        a, c = auto["attacks"][name], contiguous["attacks"][name]
        assert abs(a["correct"] - c["correct"]) <= 2, name
    # A model already channels-last is evaluated as it is (no copy), with the same counts.
    as_is = model.to(memory_format=torch.channels_last)
    assert evaluate(as_is, (x, y), attacks, memory_format="channels_last", **kwargs) == auto


def test_sharding_and_batch_size_give_exactly_the_single_process_counts() -> None:
    model = small_cnn(seed=1)
    x, y = tensor_data(n=37, model=model, seed=1)
    kw = {"eps": 0.04, **FAST}
    single = evaluate(model, (x, y), ATTACKS, batch_size=16, **kw)
    shards = [
        evaluate(model, (x, y), ATTACKS, batch_size=5, rank=r, world_size=3, **kw) for r in range(3)
    ]
    assert [s["n_examples"] for s in shards] == [13, 12, 12]
    assert all(not s["shard"]["reduced"] for s in shards)
    summed = [sum(values) for values in zip(*[_counts(s)[:2] for s in shards], strict=True)]
    assert summed == _counts(single)[:2]
    for k in range(len(ATTACKS)):
        pairs = [_counts(s)[2 + k] for s in shards]
        assert tuple(map(sum, zip(*pairs, strict=True))) == _counts(single)[2 + k], ATTACKS[k]
    # Not trivially equal: the attacks did something.
    assert single["attacks"]["pgd_sat"]["correct"] < single["clean"]["correct"]


def test_attack_n_examples_equals_evaluating_the_first_points() -> None:
    model = small_cnn(seed=2)
    x, y = tensor_data(n=37, model=model, seed=2)
    kw = {"eps": 0.04, **FAST}
    limited = evaluate(
        model, (x, y), ATTACKS, batch_size=8, attack_n_examples={"square": 13, "fgsm": 40}, **kw
    )
    everything = evaluate(model, (x, y), ATTACKS, batch_size=8, **kw)
    first = evaluate(model, (x, y), ["square"], batch_size=5, n_examples=13, **kw)
    # The unlimited attacks and the clean counts are those of the plain evaluation.
    assert limited["n_examples"] == 37 and limited["clean"] == everything["clean"]
    for name in ("pgd_sat", "pgd_trades", "cw_inf"):
        assert limited["attacks"][name] == everything["attacks"][name], name
    # Square counts the first 13 points only, with their own clean accuracy: exactly an
    # evaluation of those points (whatever the batches); a limit above the data is no limit.
    square = limited["attacks"]["square"]
    assert square["n_examples"] == 13 and square["clean"] == first["clean"]
    for key in ("correct", "adv_correct", "robust", "w_robust"):
        assert square[key] == first["attacks"]["square"][key], key
    assert square["w_robust"] == w_robust(first["clean"]["accuracy"], square["robust"])
    fgsm = limited["attacks"]["fgsm"]
    assert fgsm["n_examples"] == 37 and fgsm["correct"] == everything["attacks"]["fgsm"]["correct"]
    # Sharded, the counts still add up to the single-process ones.
    shards = [
        evaluate(
            model, (x, y), ["square"], batch_size=4, rank=r, world_size=3,
            attack_n_examples={"square": 13}, **kw,
        )["attacks"]["square"]
        for r in range(3)
    ]  # fmt: skip
    assert sum(s["n_examples"] for s in shards) == 13
    assert sum(s["correct"] for s in shards) == square["correct"]
    rows = result_rows(limited, "model")
    assert [r["clean"] for r in rows if r["attack"] == "square"] == [first["clean"]["accuracy"]]


def test_image_data_default_eps_and_n_examples() -> None:
    info = DATASETS["fashion_mnist"]
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (30, 1, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (30,), generator=g)
    data = ImageData(images, labels, info)
    model = small_cnn(size=28)
    results = evaluate(model, data, ["fgsm", "pgd_sat"], n_examples=20, batch_size=8, **FAST)
    assert results["dataset"] == "fashion_mnist"
    assert results["eps"] == pytest.approx(0.1)
    assert results["attacks"]["pgd_sat"]["settings"]["step_size"] == pytest.approx(0.025)
    assert results["n_examples"] == 20
    # Same numbers as evaluating the same images as float tensors.
    x = images[:20].float() / 255
    as_tensors = evaluate(
        model, (x, labels[:20]), ["fgsm", "pgd_sat"], eps=0.1, batch_size=8, **FAST
    )
    assert _counts(as_tensors) == _counts(results)


def test_model_mode_restored_and_no_parameter_grads() -> None:
    model = small_cnn().train()
    x, y = tensor_data(n=8)
    evaluate(model, (x, y), ["pgd_sat"], eps=0.05, **FAST)
    assert all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_transfer_attacks_need_a_surrogate() -> None:
    model, surrogate = small_cnn(seed=0), small_cnn(seed=1)
    x, y = tensor_data(n=12, model=model)
    with pytest.raises(ValueError, match="`surrogate`"):
        evaluate(model, (x, y), ["transfer_pgd"], eps=0.05, **FAST)
    results = evaluate(
        model, (x, y), ["transfer_pgd", "transfer_cw"], eps=0.05, surrogate=surrogate, **FAST
    )
    for entry in results["attacks"].values():
        assert entry["correct"] <= results["clean"]["correct"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attacks": ["pgd"]}, "`attacks`"),
        ({"attacks": ["fgsm", "fgsm"]}, "`attacks`"),
        ({"batch_size": 0}, "`batch_size`"),
        ({"rank": 2, "world_size": 2}, "`rank`"),
        ({"n_examples": 0}, "`n_examples`"),
        ({"memory_format": "nchw"}, "`memory_format`"),
        ({"attack_n_examples": {"pgd_sat": 2}}, "`attack_n_examples`"),
        ({"attack_n_examples": {"fgsm": 0}}, "attack_n_examples\\['fgsm'\\]"),
    ],
)
def test_evaluate_validation(kwargs, message) -> None:
    model = small_cnn()
    x, y = tensor_data(n=4)
    kwargs = {"attacks": ["fgsm"], **kwargs}
    with pytest.raises(ValueError, match=message):
        evaluate(model, (x, y), progress=False, **kwargs)
    with pytest.raises(ValueError, match="`data`"):
        evaluate(model, (x,), ["fgsm"], progress=False)


# --------------------------------------------------------------------------------------------
# Tables and files
# --------------------------------------------------------------------------------------------


def test_results_table_layout() -> None:
    rows = [
        {"dataset": "cifar10", "defense": "SAT", "attack": "fgsm", "clean": 0.842,
         "robust": 0.5559, "w_robust": 0.699},
        {"dataset": "cifar10", "defense": "MTARD", "attack": "fgsm", "clean": 0.8736,
         "robust": 0.612, "w_robust": 0.7428, "robust_std": 0.0031},
        {"dataset": "cifar100", "defense": "MTARD", "attack": "fgsm", "clean": 0.643,
         "robust": 0.3149, "w_robust": 0.479},
        {"dataset": "cifar10", "defense": "SAT", "attack": "pgd_trades", "clean": 0.842,
         "robust": 0.4812, "w_robust": 0.6616},
    ]  # fmt: skip
    expected = "\n".join(
        [
            "| Attack | Defense | CIFAR-10 Clean (%) | CIFAR-10 Robust (%) | CIFAR-10 W-Robust (%)"
            " | CIFAR-100 Clean (%) | CIFAR-100 Robust (%) | CIFAR-100 W-Robust (%) |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
            "| FGSM | SAT | 84.20 | 55.59 | 69.90 | – | – | – |",
            "|  | MTARD | 87.36 | 61.20 ± 0.31 | 74.28 | 64.30 | 31.49 | 47.90 |",
            "| PGD_TRADES | SAT | 84.20 | 48.12 | 66.16 | – | – | – |",
        ]
    )
    assert results_table(rows) == expected


def test_results_table_rejects_bad_rows() -> None:
    row = {"dataset": "d", "defense": "x", "attack": "fgsm", "clean": 0.9, "robust": 0.5,
           "w_robust": 0.7}  # fmt: skip
    with pytest.raises(ValueError, match="fractions"):
        results_table([{**row, "clean": 90.0}])
    with pytest.raises(ValueError, match="duplicate"):
        results_table([row, row])
    with pytest.raises(ValueError, match="without"):
        results_table([{k: v for k, v in row.items() if k != "w_robust"}])


def test_write_results_round_trip(tmp_path: Path) -> None:
    model = small_cnn()
    x, y = tensor_data(n=10, model=model)
    results = evaluate(model, (x, y), ["fgsm", "pgd_trades"], eps=0.05, **FAST)
    json_path, md_path = write_results(results, tmp_path / "out", "run1", defense="MTARD")
    assert read_json(json_path) == results  # its content hash verified and removed
    assert DIGEST_KEY in json.loads(json_path.read_text())
    text = md_path.read_text()
    assert results_table(result_rows(results, "MTARD")) in text
    assert "| FGSM | MTARD |" in text and "| PGD_TRADES | MTARD |" in text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["run1.json", "run1.md"]
    assert w_robust(0.8, 0.4) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="`name`"):
        write_results(results, tmp_path, "../escape")


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anl-mtard")
    evaluate_cli.add_evaluate_command(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_arguments_and_defaults() -> None:
    args = _parser().parse_args(["evaluate", "ckpt.pt"])
    assert args.checkpoint == Path("ckpt.pt") and args.attacks is None
    assert args.batch_size == 256 and args.square_queries == 5000 and args.device == "cpu"
    assert args.memory_format == "auto"
    contiguous = ["evaluate", "c.pt", "--memory-format", "contiguous"]
    assert _parser().parse_args(contiguous).memory_format == "contiguous"
    with pytest.raises(SystemExit):
        _parser().parse_args(["evaluate", "c.pt", "--memory-format", "nhwc"])
    args = _parser().parse_args(
        ["evaluate", "c.pt", "--attacks", "fgsm", "square", "--dataset", "fashion_mnist",
         "--eps", "0.1", "--n-examples", "50", "--surrogate", "t.pt", "--out", "o"]
    )  # fmt: skip
    assert args.attacks == ["fgsm", "square"] and args.eps == 0.1 and args.n_examples == 50
    assert args.surrogate == Path("t.pt") and args.out == Path("o") and callable(args.func)
    with pytest.raises(SystemExit):
        _parser().parse_args(["evaluate", "c.pt", "--attacks", "pgd_madry"])
    limited = ["evaluate", "c.pt", "--attack-n-examples", "square=1000", "fgsm=5"]
    assert _parser().parse_args(limited).attack_n_examples == [("square", 1000), ("fgsm", 5)]
    assert _parser().parse_args(["evaluate", "c.pt"]).attack_n_examples == []
    for bad in ("square", "square=0", "sq=5", "square=x"):
        with pytest.raises(SystemExit):
            _parser().parse_args(["evaluate", "c.pt", "--attack-n-examples", bad])


def test_cli_runs_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # The model and dataset loaders are replaced by in-memory fakes with the contract's API.
    info = DATASETS["fashion_mnist"]
    g = torch.Generator().manual_seed(0)
    data = ImageData(
        torch.randint(0, 256, (12, 1, 28, 28), dtype=torch.uint8, generator=g),
        torch.randint(0, 10, (12,), generator=g),
        info,
    )
    loaded: list[str] = []

    def load_model(path, map_location="cpu"):
        loaded.append(str(path))
        return small_cnn(size=28, seed=len(loaded)).eval()

    monkeypatch.setattr(evaluate_cli, "load_model", load_model)
    monkeypatch.setattr(evaluate_cli, "load_teacher", None)
    monkeypatch.setattr(
        evaluate_cli, "safe_load", lambda path, map_location="cpu": {"dataset": "fashion_mnist"}
    )
    monkeypatch.setattr(evaluate_cli, "load_dataset", lambda *a, **k: data)
    ckpt = tmp_path / "student.pt"
    args = _parser().parse_args(
        ["evaluate", str(ckpt), "--surrogate", str(tmp_path / "teacher.pt"), "--n-examples",
         "8", "--square-queries", "20", "--out", str(tmp_path / "res"), "--no-progress",
         "--attack-n-examples", "square=3"]
    )  # fmt: skip
    assert args.func(args) == 0
    assert loaded == [str(ckpt), str(tmp_path / "teacher.pt")]
    printed = capsys.readouterr().out
    assert "| Attack | Defense | Fashion-MNIST Clean (%)" in printed
    result = json.loads((tmp_path / "res" / "eval_student_fashion_mnist.json").read_text())
    assert list(result["attacks"]) == [*DEFAULT_ATTACKS, "transfer_pgd", "transfer_cw"]
    assert result["n_examples"] == 8 and result["eps"] == pytest.approx(0.1)
    assert result["attacks"]["square"]["n_examples"] == 3
    assert "n_examples" not in result["attacks"]["fgsm"]
    assert result["defense"] == "student" and result["dataset"] == "fashion_mnist"
    assert (tmp_path / "res" / "eval_student_fashion_mnist.md").exists()


def test_counts_go_through_all_reduce_when_distributed(tmp_path: Path) -> None:
    # A one-process gloo group: all_reduce is the identity, but the reduction path runs.
    import torch.distributed as dist

    model = small_cnn()
    x, y = tensor_data(n=9, model=model)
    local = evaluate(model, (x, y), ["fgsm"], eps=0.05, rank=1, world_size=2, **FAST)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        reduced = evaluate(model, (x, y), ["fgsm"], eps=0.05, rank=1, world_size=2, **FAST)
    finally:
        dist.destroy_process_group()
    assert reduced["shard"] == {"rank": 1, "world_size": 2, "reduced": True}
    assert not local["shard"]["reduced"]
    assert _counts(reduced) == _counts(local) and reduced["n_examples"] == 4


def test_cli_with_a_real_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # A checkpoint written by checkpoints.save_model_checkpoint, as the training loop does.
    from anl.integrations.mtard.models import build_model
    from anl.integrations.mtard.models.checkpoint import save_model_checkpoint

    info = DATASETS["fashion_mnist"]
    g = torch.Generator().manual_seed(1)
    data = ImageData(
        torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8, generator=g),
        torch.randint(0, 10, (10,), generator=g),
        info,
    )
    monkeypatch.setattr(evaluate_cli, "load_dataset", lambda *a, **k: data)
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=10, in_channels=1)
    ckpt = tmp_path / "sat.pt"
    save_model_checkpoint(
        ckpt, model, arch="small_cnn", num_classes=10, in_channels=1,
        extra={"dataset": "fashion_mnist"},
    )  # fmt: skip
    args = _parser().parse_args(
        ["evaluate", str(ckpt), "--attacks", "fgsm", "pgd_sat", "--n-examples", "6",
         "--no-progress", "--name", "SAT"]
    )  # fmt: skip
    assert args.func(args) == 0
    result = json.loads((tmp_path / "eval_SAT_fashion_mnist.json").read_text())
    expected = evaluate(model, data, ["fgsm", "pgd_sat"], n_examples=6, progress=False)
    assert result["attacks"] == json.loads(json.dumps(expected["attacks"]))
    assert result["clean"] == expected["clean"] and result["dataset"] == "fashion_mnist"
    assert "| FGSM | SAT |" in capsys.readouterr().out


def test_cli_labels_rows_with_the_method_the_checkpoint_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from anl.integrations.mtard.models import build_model
    from anl.integrations.mtard.models.checkpoint import save_model_checkpoint

    g = torch.Generator().manual_seed(2)
    data = ImageData(
        torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8, generator=g),
        torch.randint(0, 10, (6,), generator=g),
        DATASETS["fashion_mnist"],
    )
    monkeypatch.setattr(evaluate_cli, "load_dataset", lambda *a, **k: data)
    ckpt = tmp_path / "best.pt"
    save_model_checkpoint(
        ckpt, build_model("small_cnn", num_classes=10, in_channels=1), arch="small_cnn",
        num_classes=10, in_channels=1, extra={"dataset": "fashion_mnist", "method": "mtard"},
    )  # fmt: skip
    args = _parser().parse_args(["evaluate", str(ckpt), "--attacks", "fgsm", "--no-progress"])
    assert args.func(args) == 0
    result = json.loads((tmp_path / "eval_best_fashion_mnist.json").read_text())
    assert result["defense"] == "mtard"
    assert "| FGSM | mtard |" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# Transfer examples crafted once (evaluation.transfer)
# --------------------------------------------------------------------------------------------


def _fashion_test():
    from anl.integrations.mtard.data.registry import load_dataset

    return load_dataset("fashion_mnist", "test", download=False, progress=False)


def test_transfer_examples_crafted_once_match_evaluate() -> None:
    """Crafting on the surrogate once gives exactly evaluate()'s transfer results."""
    from anl.integrations.mtard.evaluation.transfer import craft_transfer
    from anl.integrations.mtard.models import build_model

    test = _fashion_test()
    torch.manual_seed(0)
    student, surrogate = build_model("small_cnn").eval(), build_model("small_cnn").eval()
    overrides = {"transfer_pgd": {"steps": 2}, "transfer_cw": {"steps": 2}}
    names = ["transfer_pgd", "transfer_cw"]
    expected = evaluate(
        student, test, names, eps=0.1, batch_size=7, surrogate=surrogate, n_examples=20,
        progress=False, seed=3, attack_overrides=overrides,
    )  # fmt: skip
    crafted = craft_transfer(
        surrogate, test, names, eps=0.1, n_examples=20, batch_size=8,
        device=torch.device("cpu"), seed=3, attack_overrides=overrides,
    )  # fmt: skip
    got = evaluate(
        student, test, ["fgsm", *names], eps=0.1, batch_size=6, n_examples=20,
        progress=False, transfer_examples=crafted,
    )  # fmt: skip
    for name in names:
        for key in ("correct", "adv_correct", "robust", "w_robust", "settings"):
            assert got["attacks"][name][key] == expected["attacks"][name][key], (name, key)
    assert got["clean"] == expected["clean"] and list(got["attacks"]) == ["fgsm", *names]


def test_transfer_examples_crafted_per_shard_are_the_rows_of_the_whole() -> None:
    """Each rank crafts the shard ``indices[rank::world_size]``: the same examples as one
    process, nothing missing, nothing twice (an odd number of points over two ranks), and
    the shards merge back into the whole."""
    from anl.integrations.mtard.evaluation.transfer import craft_transfer, merge_transfer
    from anl.integrations.mtard.models import build_model

    test = _fashion_test()
    torch.manual_seed(1)
    surrogate = build_model("small_cnn").eval()
    kwargs = dict(
        eps=0.1, n_examples=11, batch_size=4, device=torch.device("cpu"), seed=5,
        attack_overrides={"transfer_pgd": {"steps": 2}},
    )  # fmt: skip
    whole = craft_transfer(surrogate, test, ["transfer_pgd"], **kwargs)["transfer_pgd"]
    assert torch.equal(whole["indices"], torch.arange(11))
    shards = [
        craft_transfer(surrogate, test, ["transfer_pgd"], rank=r, world_size=2, **kwargs)
        for r in range(2)
    ]
    parts = [shard["transfer_pgd"] for shard in shards]
    assert [p["indices"].tolist() for p in parts] == [[0, 2, 4, 6, 8, 10], [1, 3, 5, 7, 9]]
    for part in parts:
        assert torch.equal(part["x_adv"], whole["x_adv"][part["indices"]])
    merged = merge_transfer(shards)["transfer_pgd"]
    assert torch.equal(merged["x_adv"], whole["x_adv"])
    assert torch.equal(merged["indices"], whole["indices"])
    assert merged["settings"] == whole["settings"]
    with pytest.raises(ValueError, match="rank"):
        craft_transfer(surrogate, test, ["transfer_pgd"], rank=2, world_size=2, **kwargs)


def test_transfer_examples_must_cover_the_evaluated_points() -> None:
    model = small_cnn(size=28)
    x, y = tensor_data(n=6, size=28, model=model)
    crafted = {"x_adv": x[:3].clone(), "indices": torch.arange(3), "settings": {"eps": 0.1}}
    with pytest.raises(ValueError, match="transfer_examples"):
        evaluate(
            model, (x, y), ["transfer_pgd"], transfer_examples={"transfer_pgd": crafted}, **FAST
        )
    with pytest.raises(ValueError, match="transfer_examples"):
        evaluate(model, (x, y), ["fgsm"], transfer_examples={"fgsm": crafted}, **FAST)
    result = evaluate(
        model, (x, y), ["transfer_pgd"], n_examples=3,
        transfer_examples={"transfer_pgd": crafted}, **FAST,
    )  # fmt: skip
    # The crafted examples are the clean points: what is correct stays correct.
    entry = result["attacks"]["transfer_pgd"]
    assert entry["correct"] == entry["adv_correct"] == result["clean"]["correct"]
    assert entry["settings"] == {"eps": 0.1}
