"""Suite-wide settings: one intra-op thread, so the many tiny-model tests do not oversubscribe
the CI machine's two cores (tiny ops run 10-30x slower with contended threads)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
