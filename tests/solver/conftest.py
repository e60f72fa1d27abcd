import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # The solver's problems are small; on a shared CPU extra intra-op threads only add
    # contention (100x slower here), so run them single-threaded and restore afterwards.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
