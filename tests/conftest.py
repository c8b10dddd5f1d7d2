"""Test set-up: without a GPU the kernels run on the CPU through Triton's interpreter.

``TRITON_INTERPRET`` must be set before triton is first imported (importing torch does not import
triton). On a CUDA machine it is left alone, so the compiled kernels are what gets tested.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silences Triton 3.9's notice; same default
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402

# The tensors here are tiny and `make test` runs two pytest workers on two cores: torch's default
# of one OpenMP thread per core then has the workers' threads spinning against each other, which
# made a 768x64 @ 64x64 matmul take 20 ms instead of 0.4 ms on the 2-core CI machine.
torch.set_num_threads(1)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (bf16 dot products, large offsets, real concurrency)")
    config.addinivalue_line("markers", "slow: longer interpreter runs")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(
        reason="needs a CUDA GPU: the Triton interpreter computes bf16 tl.dot "
        "wrongly (triton issues 11584/11585) and has no real concurrency "
        "or multi-GiB device memory"
    )
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
