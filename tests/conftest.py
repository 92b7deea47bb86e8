"""Test-wide settings, applied before any test module imports torch or timm."""

import os

import pytest

# Never reach for the network: models are built with pretrained=False or from local files.
os.environ["HF_HUB_OFFLINE"] = "1"
# pytest-xdist runs one worker per core; more threads per worker oversubscribe the 2 cores and can slow
# a test a hundredfold. Subprocesses (torchrun, the CLI) inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One intra-op thread even where OMP_NUM_THREADS was set outside: OpenMP threads that wait for each
    other slow down badly when another test process takes a core away."""
    import torch

    torch.set_num_threads(1)
