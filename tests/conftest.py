"""Shared fixtures for the tests: real photographs and thread-count restoration."""
import pytest
import torch

from fastseg.testing import photo


@pytest.fixture(scope="session")
def astronaut():
    return photo("astronaut")  # 512 x 512


@pytest.fixture(scope="session")
def coffee():
    return photo("coffee")  # 400 x 600


@pytest.fixture(scope="session")
def chelsea():
    return photo("chelsea")  # 300 x 451


@pytest.fixture
def restore_threads():
    """Restores torch's intra-op thread count after a test changes it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
