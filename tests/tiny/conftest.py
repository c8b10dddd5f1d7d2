"""Fixtures of the kit's tests: the reference backend for everything that trains, one torch thread."""

import pytest
import torch

import attnlens


@pytest.fixture
def reference_backend():
    with attnlens.use_backend("reference"):
        yield


@pytest.fixture
def one_thread():
    """Train on one thread: these tiny models are as fast on one, and a second thread makes them many
    times slower as soon as another process (or a pytest-xdist worker) shares the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
