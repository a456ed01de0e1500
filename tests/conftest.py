"""Shared test setup: deterministic, one thread.

The tests use small tensors, where two OpenMP threads on a loaded 2-core machine are up to 100x
slower than one. Tests that time things (the gate) set their own thread count.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Seed torch and use one thread for every test; restores threads and default dtype."""
    torch.manual_seed(0)
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)
