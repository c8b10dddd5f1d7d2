"""The custom ops behind the kernel path (``attnlens._ops``): registered with torch.library so that
eager mode and torch.compile run the same kernels. ``torch.library.opcheck`` checks the schema,
the fake (meta) implementations against the real ones, and the autograd registration."""

from __future__ import annotations

import pytest
import torch

from attnlens import _ops
from attnlens._inputs import prepare
from helpers import DEVICE

_MODE = {"none": 0, "per_head": 1, "mean": 2}


def _args(weights_mode: int, dropout_p: float = 0.0, causal: bool = True):
    q = torch.randn(2, 4, 19, 16, device=DEVICE, requires_grad=True)
    k = torch.randn(2, 2, 23, 16, device=DEVICE, requires_grad=True)
    v = torch.randn(2, 2, 23, 24, device=DEVICE, requires_grad=True)
    pad = torch.zeros(2, 23, dtype=torch.bool, device=DEVICE)
    pad[1, 17:] = True
    p = prepare(q, k, v, is_causal=causal, enable_gqa=True, key_padding_mask=pad)
    seed = torch.tensor([123], dtype=torch.int64, device=DEVICE) if dropout_p else None
    return (
        p.query, p.key, p.value, None, p.key_padding_mask, seed, None, None, p.scale, dropout_p, None, None, causal, 0,
        weights_mode, False,
    )  # fmt: skip


@pytest.mark.parametrize("mode", sorted(_MODE))
def test_forward_op_passes_opcheck(mode):
    torch.library.opcheck(_ops.sdpa_forward_op, _args(_MODE[mode]), test_utils=("test_schema", "test_faketensor"))


def test_forward_op_autograd_registration():
    torch.library.opcheck(_ops.sdpa_forward_op, _args(1, dropout_p=0.25), test_utils=("test_autograd_registration",))


def test_fake_outputs_match_the_real_ones():
    """Shapes, dtypes and the output's memory layout (like the query's) agree between the fake
    implementation torch.compile traces with and the kernels."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    args = _args(2)
    real = _ops.sdpa_forward_op(*args)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake_args = tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args)
        fake = _ops.sdpa_forward_op(*fake_args)
    for r, f in zip(real, fake):
        assert r.shape == f.shape and r.dtype == f.dtype and r.stride() == f.stride()
