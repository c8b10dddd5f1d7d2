"""Checks only a CUDA GPU can make; skipped elsewhere with the reason (see conftest.py).

- bf16: the Triton interpreter multiplies bf16 bit patterns in ``tl.dot`` (triton issues
  11584/11585), so bf16 correctness is only observable on a GPU.
- Offsets past 2**31 elements: tensors of several GiB.
- Determinism of the backward under real concurrency (many programs in flight at once).
"""

from __future__ import annotations

import pytest
import torch

import attnlens
from helpers import assert_rule, check_forward, check_grads, kernel_grads, make_qkv, reference, reference_grads

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("seqlen_q,seqlen_k", [(1, 1), (17, 17), (113, 203), (203, 113), (1023, 1025)])
@pytest.mark.parametrize("head_dim", [16, 59, 64, 128, 160, 256])
def test_bf16_forward(seqlen_q, seqlen_k, head_dim):
    q, k, v = make_qkv(2, 3, seqlen_q, seqlen_k, head_dim, torch.bfloat16)
    pad = torch.zeros(2, seqlen_k, dtype=torch.bool, device=q.device)
    pad[1, seqlen_k // 2 :] = True
    check_forward(q, k, v)
    check_forward(q, k, v, is_causal=True, causal_alignment="bottom_right", key_padding_mask=pad)


def test_bf16_gqa_and_masks():
    q, k, v = make_qkv(2, 8, 300, 301, 64, torch.bfloat16, heads_kv=2)
    mask = torch.rand(2, 1, 300, 301, device=q.device) > 0.2
    check_forward(q, k, v, enable_gqa=True, attn_mask=mask, is_causal=True)


def test_weights_past_two_to_the_31_elements():
    """B*H*Nq*Nk > 2**31: the last rows of the weights land past int32 offsets."""
    n = 46400  # 46400**2 = 2.15e9 > 2**31
    q, k, v = make_qkv(1, 1, n, n, 16, torch.float16)
    out, weights = attnlens.scaled_dot_product_attention(q, k, v, return_weights=True)
    rows = slice(n - 70, n)
    exact = reference(q[:, :, rows], k, v, torch.float64)
    lowp = reference(q[:, :, rows], k, v, torch.float16)
    assert_rule("out (last rows)", out[:, :, rows], exact[0], lowp[0])
    assert_rule("weights (last rows)", weights[:, :, rows], exact[1], lowp[1])


def test_inputs_past_two_to_the_31_elements():
    """B*H*N*D > 2**31 for q/k/v and the output: the last batch element is far past int32."""
    b, h, n, d = 1040, 16, 1024, 128  # 2.18e9 elements per tensor, 4.4 GB in fp16
    q, k, v = make_qkv(b, h, n, n, d, torch.float16)
    out = attnlens.scaled_dot_product_attention(q, k, v, is_causal=True)
    last = slice(b - 1, b)
    exact = reference(q[last], k[last], v[last], torch.float64, is_causal=True)
    lowp = reference(q[last], k[last], v[last], torch.float16, is_causal=True)
    assert_rule("out (last batch)", out[last], exact[0], lowp[0])


# ---------------------------------------------------------------------------------------------
# backward
# ---------------------------------------------------------------------------------------------


def _padding(batch, seqlen_k, device):
    pad = torch.zeros(batch, seqlen_k, dtype=torch.bool, device=device)
    pad[-1, seqlen_k // 2 :] = True
    return pad


@pytest.mark.parametrize("seqlen_q,seqlen_k", [(1, 1), (17, 17), (113, 203), (203, 113), (1, 147), (1023, 1025)])
@pytest.mark.parametrize("head_dim", [16, 40, 59, 64, 111, 128, 256])
def test_bf16_gradients(seqlen_q, seqlen_k, head_dim):
    """bf16 dQ, dK, dV against a float64 reference, 3x the bf16 reference's error + floor."""
    q, k, v = make_qkv(2, 3, seqlen_q, seqlen_k, head_dim, torch.bfloat16)
    check_grads(q, k, v)
    check_grads(
        q,
        k,
        v,
        grad_weights=True,
        return_weights=True,
        is_causal=True,
        causal_alignment="bottom_right",
        key_padding_mask=_padding(2, seqlen_k, q.device),
    )


def test_bf16_gradients_gqa_masks_mean_weights():
    q, k, v = make_qkv(2, 8, 300, 301, 64, torch.bfloat16, heads_kv=1)
    mask = torch.rand(2, 1, 300, 301, device=q.device) > 0.2
    check_grads(q, k, v, grad_weights=True, return_weights="mean", enable_gqa=True, attn_mask=mask, is_causal=True)
    bias = torch.randn(300, 301, device=q.device, dtype=torch.bfloat16)
    check_grads(q, k, v, grad_weights=True, return_weights=True, enable_gqa=True, attn_mask=bias)


def test_bf16_dropout_gradients():
    """Dropout in bf16 against the float64 reference given the same mask (``attnlens.dropout_mask``)."""
    q, k, v = make_qkv(2, 4, 257, 200, 64, torch.bfloat16, heads_kv=2)
    kwargs = dict(dropout_p=0.2, enable_gqa=True, is_causal=True, return_weights=True)
    grad_out = torch.randn_like(q)
    grad_weights = torch.randn(2, 4, 257, 200, device=q.device, dtype=torch.bfloat16)
    torch.manual_seed(5)
    grads = kernel_grads(q, k, v, grad_out, grad_weights, **kwargs)
    torch.manual_seed(5)
    keep = attnlens.dropout_mask(q, k, 0.2)
    exact = reference_grads(q, k, v, grad_out, grad_weights, torch.float64, dropout_mask=keep, **kwargs)
    lowp = reference_grads(q, k, v, grad_out, grad_weights, torch.bfloat16, dropout_mask=keep, **kwargs)
    for name, got, ex, lo in zip(("dq", "dk", "dv"), grads, exact, lowp):
        assert_rule(name, got, ex, lo, factor=3.0)


def _repeated_grads(dtype, shape, repeats, dropout_p=0.0):
    """Gradients of ``repeats`` identical runs (same seed when there is dropout)."""
    batch, heads_q, heads_kv, seqlen_q, seqlen_k, head_dim = shape
    q, k, v = make_qkv(batch, heads_q, seqlen_q, seqlen_k, head_dim, dtype, heads_kv=heads_kv)
    grad_out = torch.randn_like(q)
    grad_weights = torch.randn(batch, seqlen_q, seqlen_k, device=q.device, dtype=dtype)
    kwargs = dict(
        enable_gqa=True,
        is_causal=True,
        key_padding_mask=_padding(batch, seqlen_k, q.device),
        return_weights="mean",
        dropout_p=dropout_p,
    )
    runs = []
    for _ in range(repeats):
        torch.manual_seed(1)
        runs.append(kernel_grads(q, k, v, grad_out, grad_weights, **kwargs))
    return runs


@pytest.mark.parametrize(
    "dtype,dropout_p", [(torch.float16, 0.0), (torch.bfloat16, 0.0), (torch.float16, 0.1), (torch.float32, 0.0)]
)
def test_backward_deterministic_under_concurrency(dtype, dropout_p):
    """Many heads and blocks in flight at once (GQA 8:1, so each dK/dV program sums 8 heads):
    ten runs give bitwise-identical gradients."""
    runs = _repeated_grads(dtype, (4, 16, 2, 1024, 1030, 64), 10, dropout_p)
    for run in runs[1:]:
        for name, a, b in zip(("dq", "dk", "dv"), run, runs[0]):
            assert torch.equal(a, b), f"{name} differs between runs"


# ---------------------------------------------------------------------------------------------
# tensor-descriptor (TMA) forward, compiled for the card
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("seqlen_q,seqlen_k", [(1, 1), (113, 203), (203, 113), (1023, 1025)])
@pytest.mark.parametrize("head_dim", [16, 40, 64, 128, 256])
def test_descriptor_forward(dtype, seqlen_q, seqlen_k, head_dim):
    """``tma=True`` compiled for the card, against the float64 reference (flash-attn's rule), with
    GQA, bottom-right causal and padding. Below compute capability 9 the call takes the pointer
    path, and this checks only the fallback."""
    from attnlens.kernels import override_config
    from attnlens.kernels.launch import tma_eligible

    q, k, v = make_qkv(2, 4, seqlen_q, seqlen_k, head_dim, dtype, heads_kv=2)
    pad = torch.zeros(2, seqlen_k, dtype=torch.bool, device=q.device)
    pad[1, seqlen_k // 2 :] = True
    kwargs = dict(enable_gqa=True, is_causal=True, causal_alignment="bottom_right", key_padding_mask=pad)
    assert tma_eligible(q, k, v) == (torch.cuda.get_device_capability()[0] >= 9)
    with override_config("forward", tma=True):
        check_forward(q, k, v, **kwargs)
