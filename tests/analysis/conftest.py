import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # these are many tiny float64 problems: OpenMP threads only add synchronisation cost
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
