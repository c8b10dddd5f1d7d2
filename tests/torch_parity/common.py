"""Shared pieces of the torch parity suite: the two paths, torch's tolerances, torch's samples."""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, Optional, Tuple

import torch

import attnlens

# "kernels": the Triton kernels (through the interpreter on a CPU); "reference": plain PyTorch.
PATHS = ("kernels", "reference")


def sdpa(path: str, *args, **kwargs):
    """``attnlens.scaled_dot_product_attention`` on ``path``."""
    with attnlens.use_backend(path):
        return attnlens.scaled_dot_product_attention(*args, **kwargs)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str = "", **tolerances) -> None:
    """``torch.testing.assert_close`` (torch's tests' assertion) with ``what`` before its report."""

    def message(report: str) -> str:
        return f"{what}: {report}" if what else report

    torch.testing.assert_close(actual, expected, msg=message, **tolerances)


# torch.testing.assert_close's default atol per dtype: the floor of torch's fused-kernel tolerances
DEFAULT_ATOL = {torch.float16: 1e-3, torch.bfloat16: 1e-3, torch.float32: 1e-5, torch.float64: 1e-7}
DEFAULT_RTOL = {torch.float16: 1e-3, torch.bfloat16: 1.6e-2, torch.float32: 1.3e-6, torch.float64: 1e-7}


def fused_tolerances(exact: torch.Tensor, lowp: torch.Tensor, fudge: float = 1.0) -> Dict[str, float]:
    """torch's tolerance for fused attention kernels (test_transformers' ``get_tolerances``):
    ``atol`` is ``fudge`` times the larger of torch's own error in the low precision (``lowp``
    against the high-precision ``exact``) and assert_close's default for the dtype. Its ``rtol``
    (the largest relative deviation, which near-zero elements make huge) is left at the default."""
    dtype = lowp.dtype
    deviation = float((exact.double() - lowp.double()).abs().max()) if lowp.numel() else 0.0
    return dict(atol=fudge * max(deviation, DEFAULT_ATOL[dtype]), rtol=DEFAULT_RTOL[dtype])


def raised(fn) -> Optional[BaseException]:
    """The exception ``fn()`` raises, or None."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the tests compare what was raised
        return exc
    return None


@contextlib.contextmanager
def torch_backend(backend):
    """Run torch's SDPA on one backend (``torch.nn.attention.SDPBackend``)."""
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel(backends=[backend]):
        yield


def clones(*tensors: torch.Tensor, dtype: Optional[torch.dtype] = None):
    """Detached copies (in ``dtype``) that require grad as the originals do."""
    return tuple(t.detach().clone().to(dtype or t.dtype).requires_grad_(t.requires_grad) for t in tensors)


# ---------------------------------------------------------------------------------------------
# torch.testing._internal's samples, re-created (those modules import expecttest)
# ---------------------------------------------------------------------------------------------


def uniform(generator: torch.Generator, shape: Tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Values uniform in [-9, 9), ``torch.testing.make_tensor``'s range for floating types."""
    return torch.empty(shape, dtype=torch.float64).uniform_(-9, 9, generator=generator).to(dtype)


@dataclass
class Sample:
    """One call: positional tensors and keyword arguments."""

    args: Tuple[torch.Tensor, ...]
    kwargs: Dict[str, Any] = field(default_factory=dict)
    name: str = ""


def sdpa_opinfo_samples(dtype: torch.dtype, requires_grad: bool = False, seed: int = 0) -> Iterator[Sample]:
    """The OpInfo samples of ``nn.functional.scaled_dot_product_attention``: batch 4, 4 heads,
    3 queries, 6 keys, head dim 8; 3-D, 4-D, and a 3-D query against 4-D key/value; causal or
    not; dropout 0 or 0.5 (each twice, as torch's loop over an unused enable_gqa option); and a 4-D
    call with a float ``[3, 6]`` mask. Values uniform in [-9, 9) as ``make_tensor`` draws them,
    from a generator seeded with ``seed``."""
    batch, seq_q, seq_kv, heads, head_dim = 4, 3, 6, 4, 8
    generator = torch.Generator().manual_seed(seed)

    def make(*shape):
        return uniform(generator, shape, dtype).requires_grad_(requires_grad)

    shapes = {
        "3d": ((batch, seq_q, head_dim), (batch, seq_kv, head_dim)),
        "4d": ((batch, heads, seq_q, head_dim), (batch, heads, seq_kv, head_dim)),
        "3d query, 4d key": ((heads, seq_q, head_dim), (batch, heads, seq_kv, head_dim)),
    }
    for (name, (q_shape, kv_shape)), is_causal, dropout_p, repeat in itertools.product(
        shapes.items(), (True, False), (0.0, 0.5), (0, 1)
    ):
        yield Sample(
            (make(*q_shape), make(*kv_shape), make(*kv_shape)),
            dict(is_causal=is_causal, dropout_p=dropout_p),
            f"{name}-causal{is_causal}-dropout{dropout_p}-{repeat}",
        )
    yield Sample(
        (
            make(batch, heads, seq_q, head_dim),
            make(batch, heads, seq_kv, head_dim),
            make(batch, heads, seq_kv, head_dim),
        ),
        dict(attn_mask=make(seq_q, seq_kv), is_causal=False, dropout_p=0.0),
        "4d-float-mask",
    )


def mha_forward_samples(dtype: torch.dtype, seed: int = 0) -> Iterator[Sample]:
    """The OpInfo samples of ``nn.functional.multi_head_attention_forward`` (no-grad variant):
    batch 2 or unbatched, packed or separate projection weights, no / 2-D / 3-D float mask,
    embed dims 2 and 4, 3 queries against 3 or 5 keys, 1 or 2 heads, dropout 0 or 0.5; bias_k and
    bias_v always set. ``args`` are (query, key, value); ``kwargs`` the rest of the call. Values
    uniform in [-9, 9) (``make_tensor``'s range) from a generator seeded with ``seed``."""
    batch, src_len = 2, 3
    generator = torch.Generator().manual_seed(seed)

    def make(*shape):
        return uniform(generator, shape, dtype)

    for batched, separate, mask_kind, embed, tgt_len, heads, dropout_p in itertools.product(
        (False, True), (False, True), (None, "2d", "3d"), (2, 4), (3, 5), (1, 2), (0.0, 0.5)
    ):
        attn_mask = None
        if mask_kind == "2d":
            attn_mask = make(src_len, tgt_len)
        elif mask_kind == "3d":
            attn_mask = make((batch if batched else 1) * heads, src_len, tgt_len)
        lead = (batch,) if batched else ()
        q = make(src_len, *lead, embed)
        k = make(tgt_len, *lead, embed)
        v = make(tgt_len, *lead, embed)
        weights = dict(
            in_proj_weight=None if separate else make(3 * embed, embed),
            q_proj_weight=make(embed, embed) if separate else None,
            k_proj_weight=make(embed, embed) if separate else None,
            v_proj_weight=make(embed, embed) if separate else None,
            bias_k=make(embed),
            bias_v=make(embed),
            in_proj_bias=make(3 * embed),
            out_proj_weight=make(embed, embed),
            out_proj_bias=make(embed),
        )
        yield Sample(
            (q, k, v),
            dict(
                embed=embed,
                heads=heads,
                attn_mask=attn_mask,
                dropout_p=dropout_p,
                use_separate_proj_weight=separate,
                **weights,
            ),
            f"batched{batched}-separate{separate}-mask{mask_kind}-E{embed}-S{tgt_len}-H{heads}-p{dropout_p}",
        )


def mha_module_samples(dtype: torch.dtype, seed: int = 0) -> Iterator[Sample]:
    """The ModuleInfo samples of ``nn.MultiheadAttention`` (all about unbatched inputs): embed 3,
    3 heads, 3 queries and keys; bias, add_bias_kv, add_zero_attn each on or off; no key padding or
    ``[False, False, True]``; no attn_mask or that row broadcast to ``[3, 3, 3]`` (bool, True =
    blocked); batch_first either way. ``kwargs['module']`` holds the constructor arguments.
    Values uniform in [-9, 9) from a generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    padding = torch.tensor([False, False, True])
    mask = torch.tensor([False, False, True]).expand(3, 3, 3)
    for bias, add_bias_kv, add_zero_attn, key_padding_mask, attn_mask, batch_first in itertools.product(
        (True, False), (True, False), (True, False), (None, padding), (None, mask), (True, False)
    ):
        module = dict(
            embed_dim=3,
            num_heads=3,
            batch_first=batch_first,
            bias=bias,
            add_bias_kv=add_bias_kv,
            add_zero_attn=add_zero_attn,
        )
        inputs = tuple(
            torch.empty(3, 3, dtype=torch.float64).uniform_(-9, 9, generator=generator).to(dtype) for _ in range(3)
        )
        yield Sample(
            inputs,
            dict(module=module, key_padding_mask=key_padding_mask, attn_mask=attn_mask),
            f"bias{bias}-biaskv{add_bias_kv}-zeroattn{add_zero_attn}-kpm{key_padding_mask is not None}-"
            f"mask{attn_mask is not None}-bf{batch_first}",
        )
