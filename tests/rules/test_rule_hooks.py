"""The two opt-in attributes of anl.LossWeighting the rules use: ``update_takes_losses`` (the
step's loss values reach ``_update``) and ``requires_positive_losses`` (0 is invalid)."""

from __future__ import annotations

import math

import pytest
import torch

from anl import LossWeighting


class Recorder(LossWeighting):
    update_takes_losses = True

    def __init__(self, n, **kwargs):
        super().__init__(n, {}, initial_weights=[1.0] * n, **kwargs)
        self.seen = []

    def _update(self, state, relative, present, losses):
        self.seen.append((relative, present, losses))
        return {"weights": state["weights"]}


@pytest.mark.parametrize("path", ["host", "device"])
def test_update_gets_the_losses_in_the_form_of_the_relative_losses(path):
    rule = Recorder(3)
    rule.supports_host = path == "host"
    rule.step([torch.tensor(2.0), torch.tensor(4.0), torch.tensor(8.0)])
    rule.step([torch.tensor(1.0), None, torch.tensor(2.0)])
    (relative0, present0, losses0), (relative1, present1, losses1) = rule.seen
    assert type(losses0) is type(relative0) and present0 is None
    assert list(losses0) == [2.0, 4.0, 8.0]
    assert list(relative1) == [0.5, 1.0, 0.25]  # the absent loss keeps its L~
    assert losses1[0] == 1.0 and math.isnan(losses1[1]) and losses1[2] == 2.0
    assert list(present1) == [True, False, True]


class Positive(Recorder):
    requires_positive_losses = True


@pytest.mark.parametrize("path", ["host", "device"])
def test_a_rule_can_refuse_zero_losses(path):
    rule = Positive(2)
    rule.supports_host = path == "host"
    rule.step([torch.tensor(1.0), torch.tensor(1.0)])
    rule.step([torch.tensor(0.0), torch.tensor(1.0)])  # masked
    assert int(rule.num_steps) == 1 and int(rule.num_skipped) == 1
    strict = Positive(2, strict=True)
    strict.supports_host = path == "host"
    strict.step([1.0, 1.0])
    with pytest.raises(ValueError, match="`1` should be positive"):
        strict.step([torch.tensor(1.0), torch.tensor(0.0)])
    plain = Recorder(2)
    plain.step([1.0, 1.0])
    plain.step([0.0, 1.0])  # a zero loss is valid by default
    assert int(plain.num_steps) == 2


class EveryKind(LossWeighting):
    """A rule with a state field of each kind (anl.state): float, int, bool and tensor."""

    def __init__(self, n, **kwargs):
        self.forms = []
        super().__init__(n, {}, initial_weights=[1.0 / n] * n, **kwargs)

    def _extra_state(self):
        n = self.num_losses
        return {
            "total": [0.0] * n,
            "count": 0,
            "seen": [False] * n,
            "generator": torch.arange(4, dtype=torch.int32),  # e.g. a generator's state
        }

    def _update(self, state, relative, present):
        self.forms.append({key: type(value) for key, value in state.items()})
        if isinstance(relative, torch.Tensor):
            here = torch.ones_like(state["seen"]) if present is None else present
            total, seen = state["total"] + relative, state["seen"] | here
        else:
            here = [True] * len(relative) if present is None else present
            total = [t + r for t, r in zip(state["total"], relative, strict=True)]
            seen = [s or h for s, h in zip(state["seen"], here, strict=True)]
        return {
            "weights": state["weights"],
            "total": total,
            "count": state["count"] + 1,
            "seen": seen,
            "generator": state["generator"] + 1,
        }


def test_update_sees_the_host_form_on_the_host_path_after_device_steps():
    """Every field comes back to its host form when the steps return to the host (after
    device steps: here the tensor path forced on the CPU), a tensor field as a CPU tensor."""
    rule = EveryKind(2)
    rule.supports_host = False
    rule.step([torch.tensor(2.0), torch.tensor(4.0)])
    rule.step([torch.tensor(1.0), torch.tensor(2.0)])
    rule.supports_host = True
    total = rule.step([0.5, 1.0])  # numbers only: a float, computed on host-form weights
    assert type(total) is float and total == pytest.approx(0.75)
    device, host = rule.forms[1], rule.forms[2]
    assert set(device.values()) == {torch.Tensor}
    assert host["weights"] is list and host["total"] is list and host["seen"] is list
    assert host["count"] is int and host["num_steps"] is int
    assert host["generator"] is torch.Tensor
    state = rule.state_dict()["state"]
    assert state["generator"].dtype == torch.int32
    assert state["generator"].tolist() == [3, 4, 5, 6]  # + 1 per applied step, through both forms
    assert state["total"].tolist() == pytest.approx([1.0 + 0.5 + 0.25, 1.0 + 0.5 + 0.25])
    assert int(state["count"]) == 3 and state["seen"].tolist() == [True, True]
