"""The packaged profiles: their values, and one training step of every method they imply.

The paper profiles are checked against the paper's settings (Sec. 4.1), then built for real:
students by name with the dataset's number of classes, teachers with their real architectures
saved with random weights and loaded back through the pipeline's own loading path (the
checkpoints cannot be had here). Test-only reductions, to stay fast on a CPU: WRN-34-10 and
WRN-70-16 are replaced by depth-10 width-1 models of the same classes (the pipeline passes
the profile's teacher ``kwargs`` to the constructor), the attack runs 1 step, and the batch
holds 2 random 32x32 images.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from anl.integrations.mtard.data.registry import DATASETS
from anl.integrations.mtard.methods.context import MethodContext
from anl.integrations.mtard.methods.registry import METHODS, build_weighting
from anl.integrations.mtard.models import build_model
from anl.integrations.mtard.models.checkpoint import robustbench_path
from anl.integrations.mtard.pipeline.plan import build_plan
from anl.integrations.mtard.pipeline.profile import CONFIG_DIR, Profile, profile_names
from anl.integrations.mtard.pipeline.stages import Stages
from anl.integrations.mtard.runtime.process import Ranks
from anl.integrations.mtard.training.config import milestone_epochs

PAPER = ("paper-cifar10", "paper-cifar100")
ALL_METHODS = ["natural", "sat", "trades", "ard", "rslad", "baseline", "baseline_mt", "mtard"]
SMALL_TEACHERS = {
    "wrn34_10": {"depth": 10, "widen_factor": 1},
    "wrn70_16": {"depth": 10, "width": 1},
}


def test_packaged_profiles_load_and_validate():
    names = profile_names()
    assert {"default", "default-kl10", "full", "premise", "smoke", "paper-cifar10"} <= set(names)
    for name in names:
        profile = Profile.load(name).to_dict()
        assert profile["name"] == name
        assert profile["notes"], f"profile {name} should document its reductions in 'notes'"
        assert sorted(profile["methods"]) == sorted(ALL_METHODS)


def test_default_profile_is_the_cpu_fashion_mnist_experiment():
    p = Profile.load("default").to_dict()
    assert p["dataset"] == "fashion_mnist" and p["device"] == "cpu"
    assert p["students"] == ["small_cnn"] and p["seeds"] == [0, 1]
    assert p["train"]["eps"] == 0.1 and p["evaluation"]["eps"] == 0.1
    assert p["teachers"]["clean"]["arch"] == p["teachers"]["adv"]["arch"] == "large_cnn"
    assert p["teachers"]["clean"]["train"]["method"] == "natural"
    assert p["teachers"]["adv"]["train"]["method"] == "trades"
    assert p["train"]["val_size"] > 0
    attacks = set(p["evaluation"]["attacks"])
    assert {"fgsm", "pgd_sat", "pgd_trades", "cw_inf", "square", "transfer_pgd"} <= attacks
    assert "transfer_cw" in attacks
    assert p["evaluation"]["square_queries"] < 5000  # a documented reduction
    assert any("Square" in note for note in p["notes"])


def test_full_profile_runs_at_full_length():
    p = Profile.load("full").to_dict()
    assert p["train"]["train_subset"] is None and p["evaluation"]["n_examples"] is None
    assert p["train"]["attack_steps"] == 10 and p["evaluation"]["square_queries"] == 5000
    assert p["train"]["epochs"] == 20 and len(p["seeds"]) == 3
    # Square (5000 queries per point) alone runs on the first 1000 test points.
    assert p["evaluation"]["attack_n_examples"] == {"square": 1000}
    assert any("wall time" in note.lower() for note in p["notes"])


@pytest.mark.parametrize("name", PAPER)
def test_paper_profile_has_the_papers_settings(name):
    profile = Profile.load(name)
    p = profile.to_dict()
    c10 = name == "paper-cifar10"
    assert p["dataset"] == ("cifar10" if c10 else "cifar100") and p["device"] == "cuda"
    assert p["students"] == ["resnet18", "mobilenetv2"]
    paths = {"clean": "clean.pt", "adv": "adv.pt"}
    for method in ALL_METHODS:
        cfg = profile.student_config("resnet18", method, 0, teacher_paths=paths)
        assert (cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay) == (128, 0.1, 0.9, 2e-4)
        assert math.isclose(cfg.eps, 8 / 255) and cfg.attack_steps == 10
        # Each method's original schedule (paper Sec. 4.1: SAT and TRADES as originally,
        # ARD its own); MTARD, its ablations and RSLAD the paper's 300 epochs.
        schedule = {
            "natural": (100, [75, 90]),
            "sat": (205, [102, 154]),  # Madry et al.: 80 000 iterations, decay at 40k, 60k
            "trades": (76, [75]),
            "ard": (200, [100, 150]),
        }.get(method, (300, [215, 260, 285]))
        assert (cfg.epochs, milestone_epochs(cfg)) == schedule, method
        if method != "trades":  # TRADES keeps its official 0.007
            assert math.isclose(cfg.step_size, 2 / 255)
        assert cfg.weight_lr == 0.025 and cfg.beta == 1.0
    ard = profile.student_config("resnet18", "ard", 0, teacher_paths=paths)
    assert ard.hyper == (
        {"temperature": 30.0, "alpha": 1.0} if c10 else {"temperature": 5.0, "alpha": 0.95}
    )
    mtard = profile.student_config("resnet18", "mtard", 0, teacher_paths=paths)
    assert METHODS["mtard"].resolve_hyper(mtard.hyper)["kl_factor"] == (1.0 if c10 else 10.0)
    # Foreign teachers are named by architecture, so the loop builds them and fills the weights.
    assert mtard.clean_teacher_arch == ("resnet56" if c10 else "wrn22_6")
    assert mtard.adv_teacher_arch == ("wrn34_10" if c10 else "wrn70_16")
    assert p["evaluation"]["n_examples"] is None and p["evaluation"]["square_queries"] == 5000
    assert {"resnet18", "mobilenetv2"} == set(p["paper_results"])


def _save_random_teacher(path, arch, num_classes, kwargs):
    """A teacher with random weights saved as a bare state dict (RobustBench's layout)."""
    torch.manual_seed(0)
    model = build_model(arch, num_classes=num_classes, **kwargs)
    model.eval()
    with torch.no_grad():  # non-trivial BN statistics, so BatchNorm folding is exercised
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)


@pytest.mark.parametrize("name", PAPER)
def test_paper_profile_one_training_step_of_every_method(name, tmp_path):
    document = Profile.load(name).to_dict()
    document["model_dir"] = str(tmp_path / "models")
    for spec in document["teachers"].values():  # test-only: small WRNs of the same classes
        spec["kwargs"] = {**spec.get("kwargs", {}), **SMALL_TEACHERS.get(spec["arch"], {})}
    profile = Profile(document)
    info = DATASETS[profile.dataset]

    for role, spec in document["teachers"].items():
        path = profile.teacher_path(role)
        assert path.is_relative_to(tmp_path / "models")
        _save_random_teacher(path, spec["arch"], info.num_classes, spec["kwargs"])
    stages = Stages(tmp_path / "out" / "stages.json")
    plan = build_plan(
        profile, tmp_path / "out", stages, resume=False, progress=False, ranks=Ranks()
    )
    found = plan.teachers
    assert [row["status"] for row in stages.rows] == ["loaded", "loaded"]
    assert not [t.name for t in plan.tasks if t.name.startswith("teacher/")]
    teachers = {}
    for role, teacher in found.items():
        assert teacher.source == "loaded" and teacher.foreign
        teachers[role] = teacher.load(info, torch.device("cpu"))
        assert not teachers[role].training
        assert all(not p.requires_grad for p in teachers[role].parameters())
    teacher_paths = {role: str(teacher.checkpoint) for role, teacher in found.items()}

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g)
    y = torch.randint(0, info.num_classes, (2,), generator=g)
    for role, teacher in teachers.items():
        assert teacher(x).shape == (2, info.num_classes), role
    for student in profile.students:
        for method in profile.methods:
            cfg = profile.student_config(student, method, 0, teacher_paths=teacher_paths)
            spec = METHODS[method]
            torch.manual_seed(1)
            model = build_model(student, num_classes=info.num_classes, in_channels=3)
            eps, step_size, _ = cfg.resolved_attack()
            ctx = MethodContext(
                student=model,
                clean_teacher=teachers["clean"] if "clean" in spec.teachers else None,
                adv_teacher=teachers["adv"] if "adv" in spec.teachers else None,
                eps=eps,
                step_size=step_size,
                attack_steps=1,  # test-only: the profiles' 10 steps cost 10x
                num_classes=info.num_classes,
                hyper=spec.resolve_hyper(cfg.hyper),
            )
            weighting = build_weighting(
                spec, hyper=cfg.hyper, weight_lr=cfg.weight_lr, beta=cfg.beta
            )
            optimizer = torch.optim.SGD(
                model.parameters(),
                lr=cfg.lr,
                momentum=cfg.momentum,
                weight_decay=cfg.weight_decay,
            )
            before = [p.detach().clone() for p in model.parameters()]
            losses = spec.loss_fn(ctx, x, y)
            assert set(losses) == set(spec.loss_names), (student, method)
            total = weighting.step(losses)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            assert torch.isfinite(total), (student, method)
            changed = any(
                not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)
            )
            assert changed, (student, method)


def test_profile_errors_name_the_entry():
    base = Profile.load("smoke").to_dict()
    cases = [
        ({"unknown_key": 1}, "profile"),
        ({"methods": ["sat", "nope"]}, "profile['methods']"),
        ({"seeds": [0, 0]}, "profile['seeds']"),
        ({"train": {**base["train"], "method": "sat"}}, "profile['train']"),
        ({"evaluation": {**base["evaluation"], "attacks": ["pgd_sat", "bogus"]}}, "attacks"),
        ({"evaluation": {**base["evaluation"], "checkpoint": "last"}}, "checkpoint"),
        (
            {"evaluation": {**base["evaluation"], "attack_n_examples": {"transfer_pgd": 9}}},
            "transfer attacks run on every point",
        ),
        (
            {"evaluation": {**base["evaluation"], "attack_n_examples": {"square": 0}}},
            "profile['evaluation']['attack_n_examples']['square']",
        ),
    ]
    for change, fragment in cases:
        profile = {**copy.deepcopy(base), **change}
        with pytest.raises(ValueError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
            Profile(profile)
    both = copy.deepcopy(base)
    both["teachers"]["adv"]["path"] = "x.pt"
    with pytest.raises(ValueError, match="exactly one of 'path'"):
        Profile(both)
    missing = copy.deepcopy(base)
    del missing["teachers"]["clean"]
    with pytest.raises(ValueError, match="'clean' teacher"):
        Profile(missing)
    bad_field = copy.deepcopy(base)
    bad_field["train"]["lr"] = -1.0
    with pytest.raises(ValueError, match="`lr`"):
        Profile(bad_field)


def test_loaded_teacher_needs_model_dir(tmp_path):
    profile = Profile.load("paper-cifar10")
    with pytest.raises(ValueError, match="model_dir"):
        profile.teacher_path("adv")
    profile = profile.with_overrides(model_dir=str(tmp_path))
    assert profile.teacher_path("adv") == (
        robustbench_path(tmp_path, "cifar10", "Zhang2019Theoretically")
    )
    stages = Stages(tmp_path / "stages.json")
    with pytest.raises(FileNotFoundError, match=r"cifar10_resnet56-187c023a\.pt"):
        build_plan(profile, tmp_path, stages, resume=False, progress=False, ranks=Ranks())


def test_apply_overrides():
    profile = Profile.load("default")
    p = profile.to_dict()
    q = profile.with_overrides(
        seed_list=[3, 5], methods=["mtard", "sat"], epochs=1, train_subset=500, device="cpu"
    ).to_dict()
    assert q["seeds"] == [3, 5] and q["methods"] == ["mtard", "sat"]
    assert q["train"]["epochs"] == 1 and q["train"]["train_subset"] == 500
    for spec in q["teachers"].values():  # every training stage, teachers included
        assert spec["train"]["epochs"] == 1 and spec["train"]["train_subset"] == 500
    assert p["train"]["epochs"] != 1  # the original is untouched
    assert profile.with_overrides(seeds=4).seeds == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="seeds"):
        profile.with_overrides(seeds=2, seed_list=[1])
    json.dumps(q)  # still a JSON document


def test_profile_answers_its_own_questions():
    profile = Profile.load("default")
    assert profile.runs()[:3] == [
        ("small_cnn", "natural", 0),
        ("small_cnn", "natural", 1),
        ("small_cnn", "sat", 0),
    ]
    assert len(profile.runs()) == 16 and profile.needed_teachers() == ["clean", "adv"]
    settings = profile.evaluation
    assert settings.transfer == ("transfer_pgd", "transfer_cw")
    assert settings.teachers_attacks == ("fgsm", "pgd_sat", "pgd_trades", "cw_inf")
    # What the evaluations record and a resume compares: the settings of the committed run.
    committed = Path(__file__).parents[3] / "docs" / "results" / "full" / "results.json"
    full = Profile.load("full").evaluation.to_json()
    assert full == json.loads(committed.read_text())["eval_settings"]
    assert list(full) == list(json.loads(committed.read_text())["eval_settings"])
    assert Profile(profile.to_dict()) == profile
    assert profile.to_dict() == json.loads((CONFIG_DIR / "default.json").read_text())


def test_paper_cifar100_teachers_normalise_as_their_checkpoints_were_trained(tmp_path):
    """The authors' WRN-22-6 clean teacher was trained by the official code, which normalises
    CIFAR-100 WideResNets with the CIFAR-10 statistics; RobustBench's WRN-70-16 uses CIFAR-100's.
    Building the profile's clean teacher from a checkpoint must therefore give CIFAR-10's."""
    from anl.integrations.mtard.models.normalization import CIFAR10_MEAN, CIFAR100_MEAN

    profile = Profile.load("paper-cifar100").with_overrides(model_dir=str(tmp_path))
    spec = profile.get("teachers")["clean"]
    assert spec["kwargs"] == {"dataset": "cifar10"}
    source = build_model(spec["arch"], num_classes=100, in_channels=3, **spec["kwargs"])
    path = profile.teacher_path("clean")
    path.parent.mkdir(parents=True)
    torch.save({k: v for k, v in source.state_dict().items() if k not in ("mean", "std")}, path)
    clean = profile.teacher("clean", tmp_path / "out")
    info = DATASETS["cifar100"]
    model = clean.load(info, torch.device("cpu"))
    mean = next(b for name, b in model.named_buffers() if name.endswith("mean"))
    assert mean.flatten().tolist() == pytest.approx(CIFAR10_MEAN)
    adv = profile.get("teachers")["adv"]
    built = build_model(
        adv["arch"], num_classes=100, in_channels=3, depth=10, width=1, **adv["kwargs"]
    )
    assert built.mean.flatten().tolist() == pytest.approx(CIFAR100_MEAN)


def test_a_profile_can_extend_another(tmp_path):
    variant = Profile.load("default-kl10")
    default = Profile.load("default")
    assert variant.name == "default-kl10"
    assert variant.to_dict()["train"] == default.to_dict()["train"]
    paths = {"clean": "clean.pt", "adv": "adv.pt"}
    for method in ("rslad", "baseline", "baseline_mt", "mtard"):
        assert variant.student_config("small_cnn", method, 0, teacher_paths=paths).hyper == {
            "kl_factor": 10.0
        }
    assert variant.student_config("small_cnn", "ard", 0, teacher_paths=paths).hyper == {}
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"extends": str(b)}))
    b.write_text(json.dumps({"extends": str(a)}))
    with pytest.raises(ValueError, match="without a cycle"):
        Profile.load(a)
