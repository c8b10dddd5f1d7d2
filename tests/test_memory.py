"""What each path allocates: no N x N tensor unless weights are asked for; with weights, only
the weights; with head-averaged weights, only the average, never the per-head weights.

Measured on the CPU with torch's profiler, which records every allocation of torch's CPU allocator
(the launchers' outputs, their statistics, anything a wrapper might copy or expand); the Triton
interpreter's own numpy scratch is not torch memory and does not appear, as it has no counterpart
on a GPU. The same claims on a GPU are measured in bench/ (``torch.cuda.max_memory_allocated``).
The reference path materialises the scores and is used to show that the check sees N x N
allocations when there are some.

Every check runs on the kernels (through the interpreter) and on the CPU path (backend
``"torch"``). The CPU path works in query blocks of ``attnlens.blocked.BLOCK_ELEMENTS`` elements
(all heads together); here that is set far below one head's ``Nq x Nk``, so that anything it
allocates per block stays under the threshold while anything ``N x N`` shows: its extra memory is
O(block x N), whatever N.
"""

from __future__ import annotations

from typing import Callable, List

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import attnlens
import attnlens.blocked
from helpers import DEVICE

pytestmark = pytest.mark.skipif(
    DEVICE.type != "cpu", reason="CPU allocator profiling; bench/ measures the GPU's peak memory"
)

B, H, NQ, NK, D = 1, 3, 131, 137, 8
DTYPE = torch.float32
ELEMENT = torch.finfo(DTYPE).bits // 8
SCORES = NQ * NK * ELEMENT  # one head's N x N, in bytes
PER_HEAD = B * H * SCORES  # per-head weights
MEAN = B * SCORES  # head-averaged weights


@pytest.fixture(params=["kernels", "torch"], autouse=True)
def backend(request, monkeypatch):
    """Each test on the kernels and on the CPU path (blocks of 16 query rows here)."""
    if request.param == "torch":
        monkeypatch.setattr(attnlens.blocked, "BLOCK_ELEMENTS", 16 * H * NK)
    with attnlens.use_backend(request.param):
        yield request.param


def allocations(fn: Callable[[], object]) -> List[int]:
    """Bytes of each allocation torch's CPU allocator made while ``fn`` ran, largest first."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return sorted((e.self_cpu_memory_usage for e in prof.events() if e.self_cpu_memory_usage > 0), reverse=True)


def _inputs(requires_grad=False):
    return tuple(torch.randn(B, H, n, D, dtype=DTYPE, device=DEVICE, requires_grad=requires_grad) for n in (NQ, NK, NK))


def _padding():
    pad = torch.zeros(B, NK, dtype=torch.bool, device=DEVICE)
    pad[:, NK - 20 :] = True
    return pad


def _at_least_scores(sizes: List[int], one_head: int = SCORES) -> List[int]:
    """The allocations as large as one head's N x N (``one_head`` bytes) or larger."""
    return [s for s in sizes if s >= one_head]


CALLS = {
    "plain": dict(),
    "causal + padding": dict(is_causal=True, key_padding_mask=_padding()),
    "bool mask broadcast over batch and heads": dict(attn_mask=torch.rand(NQ, NK, device=DEVICE) > 0.3),
    "float mask": dict(attn_mask=torch.randn(B, 1, NQ, NK, device=DEVICE)),
    "dropout": dict(dropout_p=0.3),
}


@pytest.mark.parametrize("call", list(CALLS))
def test_the_forward_allocates_no_n_by_n_tensor_without_weights(call):
    q, k, v = _inputs()
    sizes = allocations(lambda: attnlens.scaled_dot_product_attention(q, k, v, **CALLS[call]))
    assert sizes, "the profiler recorded nothing: the check would be vacuous"
    assert not _at_least_scores(sizes), f"N x N allocations ({SCORES} B per head): {sizes[:5]}"


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("mode,expected", [(True, PER_HEAD), ("mean", MEAN)])
def test_with_weights_only_the_weights_are_allocated(call, mode, expected):
    """``return_weights="mean"`` allocates the average alone: per-head weights never exist."""
    q, k, v = _inputs()
    sizes = allocations(lambda: attnlens.scaled_dot_product_attention(q, k, v, return_weights=mode, **CALLS[call]))
    assert _at_least_scores(sizes) == [expected], f"expected one {expected} B allocation, got {sizes[:5]}"


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("mode", [False, True, "mean"])
def test_the_backward_allocates_no_n_by_n_tensor(call, mode):
    """dq, dk, dv from the saved row statistics, with or without the weights in the loss (their
    gradient dW is the caller's tensor): nothing N x N is allocated, for "mean" not even dW / Hq
    per head."""
    q, k, v = _inputs(requires_grad=True)
    kwargs = CALLS[call]
    if mode is False:
        out = attnlens.scaled_dot_product_attention(q, k, v, **kwargs)
        outputs, grads = (out,), (torch.randn_like(out),)
    else:
        out, weights = attnlens.scaled_dot_product_attention(q, k, v, return_weights=mode, **kwargs)
        outputs, grads = (out, weights), (torch.randn_like(out), torch.randn_like(weights))
    result = []
    sizes = allocations(lambda: result.append(torch.autograd.grad(outputs, (q, k, v), grads)))
    assert all(torch.isfinite(g).all() for g in result[0])
    assert not _at_least_scores(sizes), f"N x N allocations ({SCORES} B per head): {sizes[:5]}"


@pytest.mark.parametrize("average", [True, False])
def test_the_drop_in_module_allocates_only_the_weights_it_returns(average):
    """``attnlens.MultiHeadAttention`` with torch's defaults (``need_weights=True``, averaged) holds
    the head average only; with ``average_attn_weights=False`` the per-head weights; with
    ``need_weights=False`` nothing N x N. Causal masking with key padding, as a decoder uses it."""
    mha = attnlens.MultiHeadAttention(H * D, H, batch_first=True)
    x = torch.randn(B, NQ, H * D, device=DEVICE)
    pad = torch.zeros(B, NQ, dtype=torch.bool, device=DEVICE)
    pad[:, NQ - 9 :] = True
    causal = torch.ones(NQ, NQ, dtype=torch.bool, device=DEVICE).triu(1)  # True = not allowed, as torch's
    one_head = NQ * NQ * ELEMENT
    with torch.no_grad():
        sizes = allocations(
            lambda: mha(x, x, x, key_padding_mask=pad, attn_mask=causal, is_causal=True, average_attn_weights=average)
        )
        without = allocations(lambda: mha(x, x, x, key_padding_mask=pad, need_weights=False))
    expected = B * one_head * (1 if average else H)
    assert _at_least_scores(sizes, one_head) == [expected], sizes[:5]
    assert not _at_least_scores(without, one_head), without[:5]


def test_the_check_sees_n_by_n_allocations(backend):
    """The reference path materialises the scores and the softmax: the same check must see them."""
    if backend != "kernels":
        pytest.skip("one run is enough")
    q, k, v = _inputs()
    with attnlens.use_backend("reference"):
        sizes = allocations(lambda: attnlens.scaled_dot_product_attention(q, k, v))
    assert len(_at_least_scores(sizes)) >= 2, sizes[:5]
