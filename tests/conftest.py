"""Shared test setup: deterministic, few threads (CI has 2 cores)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Seed torch and cap threads for every test; restores the default dtype afterwards."""
    torch.manual_seed(0)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)
