"""The surviving mutants no test can kill, each with the reason (read by run.py).

A mutant is *equivalent* when no input a caller can give (and no state the code can reach)
tells it from the original. :data:`GENERIC` holds the kinds of mutation that are equivalent
wherever they occur; :data:`EQUIVALENT` the single mutants, by function and by the mutated
line(s) (joined by " / "), so that an entry follows its mutant when the numbering shifts and
goes stale, rather than silently covering another mutant, when the code changes.
"""

from __future__ import annotations

import re
from collections.abc import Callable

Rule = Callable[[list[str], list[str]], bool]


def _one_change(before: list[str], after: list[str], variants: Callable[[str], set[str]]) -> bool:
    """Whether ``after`` is ``before`` with exactly one line replaced by one of its variants."""
    if len(before) != len(after) or before == after:
        return False
    changed = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
    return len(changed) == 1 and changed[0][1] in variants(changed[0][0])


def _each_occurrence(line: str, old: str, new: str) -> set[str]:
    return {line[: m.start()] + new + line[m.end() :] for m in re.finditer(re.escape(old), line)}


def _zip_strict(before: list[str], after: list[str]) -> bool:
    return _one_change(
        before,
        after,
        lambda line: set().union(
            *(
                _each_occurrence(line, "strict=True", new)
                for new in ("strict=False", "strict=None", "")
            )
        ),
    )


GENERIC: list[tuple[Rule, str]] = [
    (
        _zip_strict,
        "`zip(..., strict=True)` weakened: the zipped sequences have equal lengths by "
        "construction, so the check never fires.",
    ),
]

_CPU_DEVICE = (
    "CPU only: the device a ring is allocated on is the rows' device; on the CPU, the default "
    "device is that device. On CUDA, a ring on the host makes `index_copy_` fail "
    "(tests/test_compile.py::test_history_on_cuda_reads_back_what_the_cpu_records, skipped "
    "without CUDA)."
)
_CPU_HOST_COPY = (
    "CPU only: the rows are copied to the host before `.numpy()`; a CPU tensor is already "
    "there. On CUDA `.numpy()` raises (tests/test_compile.py::"
    "test_history_on_cuda_reads_back_what_the_cpu_records, skipped without CUDA)."
)
_STATE_DTYPE_ROWS = (
    "The ring holds the state's dtype (float32 or float64); the float32 rows reach the "
    "float64 matrix by the concatenation with the (float64) older rows, exactly as by the "
    "cast, and `_from_ring` reads them as Python floats either way."
)
_HOST_ROWS_ARE_FLOATS = (
    "Host rows are tuples of Python floats (a host step's values, `_from_ring`'s `tolist()`, "
    "`replace`'s `float()`): NumPy makes them float64 unasked."
)
_FLOAT_OF_EACH = "Each element goes through `float()`: the array's dtype does not matter."

EQUIVALENT: dict[str, dict[str, str]] = {
    "anl.rules.relobralo.ReLoBRaLo._update": {
        "rescale = 1.0": (
            "On the float64 host path the rescale only corrects rounding: each of the three "
            "terms holds the shared mass M by construction (the previous weights of the "
            "losses in, and two softmaxes scaled to M), so `held` is M to the last bits and "
            "the drift it removes stays below any test's tolerance over a run; on a float32 "
            "state it matters (`test_a_float32_state_keeps_its_total_over_long_runs` kills "
            "the device path's twin)."
        ),
    },
    "anl.weighting.LossWeighting._step_on_host": {
        "smallest > 0.0 if self.requires_positive_losses else smallest > 0.0": (
            "The one-pass check only decides whether the exact check (`_host_invalid`) runs; "
            "a stricter one sends zero losses to the exact check, which accepts them: the "
            "same result, one pass slower."
        ),
    },
    "anl.inputs.constant_vector": {
        "return torch.tensor(values, dtype=dtype, device=None)": (
            "CPU only: under torch.compile the vector is built on the default device, which on "
            "the CPU is the losses' device; on CUDA the product with a CUDA tensor fails "
            "(tests/test_compile.py's CUDA tests, skipped without CUDA)."
        ),
    },
    "anl.distributed.device_mean_across_ranks": {
        "means = sums / torch.where(counts >= 0, counts, torch.ones_like(counts))": (
            "Where a count is 0 the mean is replaced by NaN on the next line whatever it was."
        ),
        "means = sums / torch.where(counts > 1, counts, torch.ones_like(counts))": (
            "Dividing by 1 instead of a count of 1 is the same."
        ),
        "here = torch.ones_like(values) if mask is None else mask.to(None)": (
            "A bool mask compares (`here > 0`) and concatenates (type promotion) like its "
            "floating copy."
        ),
    },
    "anl.distributed.sum_across_ranks": {
        'if dist.get_backend(group) == "nccl" and reduced.device.type != "CUDA":': (
            "A CUDA tensor then also takes the NCCL branch, whose `.to` calls are no-ops on "
            "its own device: the same reduction."
        ),
        'if dist.get_backend(group) == "nccl" and reduced.device.type != "XXcudaXX":': (
            "As above: a CUDA tensor takes the NCCL branch, whose moves are no-ops for it."
        ),
        'on_device = reduced.to(torch.device("cuda", None))': (
            "A CUDA device without an index is the current device."
        ),
        'on_device = reduced.to(torch.device("cuda", ))': (
            "A CUDA device without an index is the current device."
        ),
        "dist.all_reduce(on_device, group=group)": "`op` defaults to `ReduceOp.SUM`.",
        "dist.all_reduce(reduced, group=group)": "`op` defaults to `ReduceOp.SUM`.",
    },
    "anl.balancer.AdaptiveLossBalancer._check_hyperparameter": {
        "return super()._check_hyperparameter(name, None)": (
            "The base class raises for every name it is given, whatever the value."
        ),
    },
    "anl.history.StepHistory._ring_rows": {
        "ring = self._ring.to(None, torch.float64).numpy()": _CPU_HOST_COPY,
        "ring = self._ring.to(torch.float64).numpy()": _CPU_HOST_COPY,
        'ring = self._ring.to("cpu", None).numpy()': _STATE_DTYPE_ROWS,
        'ring = self._ring.to("cpu", ).numpy()': _STATE_DTYPE_ROWS,
        "if written < self.max_rows:": (
            "When exactly `max_rows` rows were written, the rotation starts at 0: "
            "`ring[0:] + ring[:0]` is the whole ring, as `ring[:written]` is."
        ),
    },
    "anl.history.StepHistory.append": {"self._to_ring(None)": _CPU_DEVICE},
    "anl.history.StepHistory._to_ring": {
        "self._ring = torch.zeros((self.max_rows, self.width), dtype=self.dtype, device=None)": (
            _CPU_DEVICE
        ),
        "self._ring = torch.zeros((self.max_rows, self.width), dtype=self.dtype, )": _CPU_DEVICE,
        "self._written = torch.zeros((), dtype=torch.int64, device=None)": _CPU_DEVICE,
        "self._written = torch.zeros((), dtype=torch.int64, )": _CPU_DEVICE,
    },
    "anl.history.StepHistory.matrix": {
        "device_rows = iter(torch.stack(tensors).to(None, torch.float64).numpy())": (
            _CPU_HOST_COPY
        ),
        "device_rows = iter(torch.stack(tensors).to(torch.float64).numpy())": _CPU_HOST_COPY,
        "older = np.asarray(self._rows, dtype=None)": _HOST_ROWS_ARE_FLOATS,
        "older = np.asarray(self._rows, )": _HOST_ROWS_ARE_FLOATS,
    },
    "anl.history.StepHistory.replace": {
        "rows = [tuple(float(x) for x in row) for row in np.asarray(matrix, dtype=None)]": (
            _FLOAT_OF_EACH
        ),
        "rows = [tuple(float(x) for x in row) for row in np.asarray(matrix, )]": _FLOAT_OF_EACH,
    },
}
