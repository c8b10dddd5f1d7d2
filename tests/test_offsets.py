"""Offsets past 2**31 elements, checked on the CPU.

The kernels index memory with int32 program ids and aranges times int strides; wherever such a
product can pass 2**31 it must be formed in int64, or it wraps and the kernel reads or writes
somewhere else (an illegal address on a GPU, a crash or garbage here).

Two facts make this testable without a GPU or tens of GiB:

- Triton's interpreter does int32 arithmetic in int32 (numpy), so a missing int64 cast wraps
  exactly as it would on a GPU;
- ``torch.empty`` on the CPU only reserves address space: pages are committed when touched. A
  small view whose strides reach 2**31+ elements into a huge, mostly untouched buffer costs a
  few MB of memory.

Each case puts one dimension's offsets past 2**31 with a stride that itself fits in int32 (a
stride that does not is passed to the kernel as int64 by Triton, which would hide a missing
cast). Results are compared with the float64 reference by flash-attn's rule. Tensors with
more than 2**31 elements of real data, such as the weights of a 46k x 46k problem, are in
tests/test_gpu.py.
"""

from __future__ import annotations

from typing import Sequence

import pytest
import torch

from helpers import DEVICE, check_forward, check_grads

TWO_31 = 2**31
pytestmark = pytest.mark.skipif(
    DEVICE.type != "cpu",
    reason="CPU-only: sparse address-space views (the GPU has tests/test_gpu.py with real multi-GiB tensors)",
)


def far_view(
    shape: Sequence[int], strides: Sequence[int], dtype: torch.dtype = torch.float16, fill=None
) -> torch.Tensor:
    """A tensor of ``shape`` with ``strides`` in a buffer just large enough for its last element,
    random (or ``fill``) where the view lies and never touched elsewhere."""
    last = sum((size - 1) * stride for size, stride in zip(shape, strides))
    try:
        buffer = torch.empty(last + 1, dtype=dtype, device=DEVICE)
    except RuntimeError as exc:  # a machine that commits memory up front (vm.overcommit_memory=2)
        pytest.skip(f"cannot reserve {(last + 1) * dtype.itemsize / 2**30:.1f} GiB of address space: {exc}")
    view = buffer.as_strided(tuple(shape), tuple(strides))
    view.copy_(torch.randn(tuple(shape), device=DEVICE) if fill is None else fill)
    return view


SEQ, HEAD_DIM = 37, 24
BIG = 2**30 + 4096  # fits int32; twice it does not

# [B, H, N, D] layouts whose offsets along one dimension pass 2**31 with a stride that fits int32:
# name -> (shape, strides, that dimension)
LAYOUTS = {
    "batch": ((3, 2, SEQ, HEAD_DIM), (BIG, SEQ * HEAD_DIM, HEAD_DIM, 1), 0),
    "head": ((1, 3, SEQ, HEAD_DIM), (3 * BIG, BIG, HEAD_DIM, 1), 1),
    "seq": ((1, 2, SEQ, HEAD_DIM), (2 * SEQ * 2**26, SEQ * 2**26, 2**26, 1), 2),
    # the head dim varies slowest in memory, [D, B, H, N]: column 23 is 23 * 2**27 elements in
    "head_dim": ((1, 2, SEQ, HEAD_DIM), (2 * SEQ, SEQ, 1, 2**27), 3),
}


def _far(name: str) -> torch.Tensor:
    shape, strides, dim = LAYOUTS[name]
    assert strides[dim] < TWO_31 <= (shape[dim] - 1) * strides[dim]
    return far_view(shape, strides)


def _qkv(name: str):
    return _far(name), _far(name), _far(name)


@pytest.mark.parametrize("dim", list(LAYOUTS))
def test_inputs_whose_offsets_pass_int32(dim):
    q, k, v = _qkv(dim)
    check_forward(q, k, v)
    check_forward(q, k, v, is_causal=True)


@pytest.mark.parametrize("dim", list(LAYOUTS))
def test_gradients_with_inputs_and_incoming_gradients_past_int32(dim):
    q, k, v = _qkv(dim)
    grad_out = _far(dim)
    grad_weights = torch.randn(q.shape[:3] + (SEQ,), dtype=q.dtype, device=DEVICE)
    check_grads(q, k, v, grad_out=grad_out, is_causal=True)
    check_grads(q, k, v, grad_out=grad_out, grad_weights=grad_weights, return_weights=True)


def test_masks_whose_offsets_pass_int32():
    """A bool mask whose query rows, a float mask whose batch elements, and a key padding mask
    whose keys lie 2**31+ elements apart."""
    q, k, v = (torch.randn(3, 2, SEQ, HEAD_DIM, dtype=torch.float16, device=DEVICE) for _ in range(3))
    keep = torch.rand(SEQ, SEQ, device=DEVICE) > 0.3
    keep[:, 0] = True
    bool_mask = far_view((SEQ, SEQ), (2**26, 1), torch.bool, fill=keep)
    bias = torch.randn(3, 1, SEQ, SEQ, device=DEVICE)
    float_mask = far_view((3, 1, SEQ, SEQ), (BIG, 0, SEQ, 1), torch.float16, fill=bias)
    pad = torch.zeros(3, SEQ, dtype=torch.bool, device=DEVICE)
    pad[1, SEQ // 2 :] = True
    pad[2, :3] = True
    padding = far_view((3, SEQ), (1, 2**26), torch.bool, fill=pad)
    check_forward(q, k, v, attn_mask=bool_mask)
    check_forward(q, k, v, attn_mask=float_mask)
    check_forward(q, k, v, key_padding_mask=padding, is_causal=True)
    check_grads(q, k, v, attn_mask=bool_mask, key_padding_mask=padding)
    check_grads(q, k, v, attn_mask=float_mask, grad_weights=True, return_weights="mean")
