"""anl.inputs: every malformed name list or loss value is one clear error, raised before any
state changes; valid values of every kind are ordered and classified."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anl.inputs import collect_losses, constant_vector, describe, parse_names

NAMES = ("adv", "nat")


@pytest.mark.parametrize(
    ("losses", "error", "match"),
    [
        (0, ValueError, "positive number"),
        (-2, ValueError, "positive number"),
        (True, TypeError, "positive int or a sequence"),
        (2.0, TypeError, "positive int or a sequence"),
        ("ab", TypeError, "not a single string"),
        ([], ValueError, "non-empty"),
        (["a", ""], ValueError, "non-empty strings"),
        (["a", 1], ValueError, "non-empty strings"),
        (["a", "a"], ValueError, r"duplicates \['a'\]"),
    ],
)
def test_bad_names(losses, error, match):
    with pytest.raises(error, match=match):
        parse_names(losses)


def test_names_from_a_count_or_a_sequence():
    assert parse_names(3) == ("0", "1", "2")
    assert parse_names(("b", "a")) == ("b", "a")


@pytest.mark.parametrize(
    ("losses", "error", "match"),
    [
        ([1.0], ValueError, "should hold 2 values"),
        ([1.0, 2.0, 3.0], ValueError, "should hold 2 values"),
        ({"adv": 1.0, "typo": 2.0}, ValueError, r"unknown names \['typo'\]"),
        ("ab", TypeError, "sequence or a mapping"),
        (3.0, TypeError, "sequence or a mapping"),
        (torch.ones(2, 2), ValueError, "1-D"),
        ([torch.ones(2), 1.0], ValueError, r"`adv` should be a scalar \(0-dim\)"),
        ([np.ones(2), 1.0], ValueError, "`adv` should be a scalar"),
        ([True, 1.0], TypeError, "`adv` should be a float"),
        ([np.bool_(True), 1.0], TypeError, "`adv` should be a float"),
        ([1.0, "1"], TypeError, "`nat` should be a float"),
        ([1.0, 1 + 2j], TypeError, "`nat` should be a float"),
        ([torch.tensor(True), 1.0], TypeError, "`adv` should be real-valued"),
        ([torch.tensor(1 + 1j), 1.0], TypeError, "`adv` should be real-valued"),
        ([10**400, 1.0], ValueError, "`adv` should fit in a float"),
        ([None, None], ValueError, "at least one"),
        ({}, ValueError, "at least one"),
        (
            [torch.tensor(1.0), torch.tensor(1.0, device="meta")],
            ValueError,
            "one device. Found `adv` on cpu and `nat` on meta",
        ),
    ],
)
def test_bad_losses(losses, error, match):
    with pytest.raises(error, match=match):
        collect_losses(losses, NAMES)


def test_mappings_are_read_in_declared_order_whatever_their_order():
    batch = collect_losses({"nat": 2.0, "adv": 1.0}, NAMES)
    assert batch.values == (1.0, 2.0)


def test_kinds_of_values_and_absence():
    t = torch.tensor([3.0], requires_grad=True)
    batch = collect_losses([np.float32(0.5), t], NAMES)
    assert batch.values[0] == 0.5 and type(batch.values[0]) is float
    assert batch.values[1].shape == () and batch.values[1].requires_grad
    assert batch.device == torch.device("cpu") and batch.mixed and batch.all_present
    assert collect_losses([1, np.array(2.0)], NAMES).values == (1.0, 2.0)
    assert collect_losses([1.0, 2.0], NAMES).device is None
    absent = collect_losses({"nat": 2.0}, NAMES)
    assert absent.values == (None, 2.0) and absent.present == (False, True)
    assert not absent.all_present
    assert collect_losses([None, torch.tensor(1.0)], NAMES).present == (False, True)
    assert collect_losses(torch.tensor([1.0, 2.0]), NAMES).values[1].item() == 2.0
    integer = collect_losses([torch.tensor(3), 1.0], NAMES).values[0]
    assert integer.dtype == torch.int64 and integer.shape == ()


def test_describe_names_a_value_in_one_line_of_at_most_80_characters():
    """What error messages print after "Found": a scalar tensor by value and dtype, any other
    tensor by shape and dtype (a meta tensor has no value to read), other values by their
    repr on one line, cut to 80 characters."""
    assert describe(torch.tensor(2.5)) == "tensor(2.5, dtype=torch.float32)"
    assert describe(torch.zeros(2, 3, dtype=torch.float64)) == (
        "a tensor of shape (2, 3) and dtype torch.float64"
    )
    meta = torch.empty((), device="meta")
    assert describe(meta) == "a tensor of shape () and dtype torch.float32"
    assert describe(np.zeros((2, 2))) == "array([[0., 0.], [0., 0.]])"  # newlines collapsed
    exactly = "x" * 78  # repr adds the two quotes: 80 characters, kept whole
    assert describe(exactly) == repr(exactly)
    longer = "x" * 79
    assert describe(longer) == repr(longer)[:77] + "..." and len(describe(longer)) == 80
    assert describe([1, 2], limit=5) == "[1..."


@pytest.mark.compile
def test_constant_vector_is_built_in_the_traced_graph_under_compile():
    """Under torch.compile the vector is built inside the graph (no cache for Dynamo to
    bypass); eagerly, one cached tensor per (values, device, dtype)."""

    def scale(x):
        return constant_vector((0.1, 2.0), x.device, x.dtype) * x

    compiled = torch.compile(scale, backend="eager", fullgraph=True)
    assert compiled(torch.ones(2, dtype=torch.float64)).tolist() == [0.1, 2.0]  # float64's 0.1
    first = constant_vector((0.5, 2.0), torch.device("cpu"), torch.float64)
    assert first is constant_vector((0.5, 2.0), torch.device("cpu"), torch.float64)
    assert first.tolist() == [0.5, 2.0] and first.dtype == torch.float64
