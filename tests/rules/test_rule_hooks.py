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
