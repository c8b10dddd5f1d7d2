"""The CPU path (backend ``"torch"``) against torch on the CPU, side by side in one run.

    pytest bench/test_cpu_bench.py --benchmark-only --benchmark-json=bench/results/cpu-<machine>-<date>.json

Attention ``[B, H, N, D]`` = ``[1, 8, N, 64]``, fp32, N = 128 to 4096, against:

- weights (per head, head mean; causal and not): torch eager, ``softmax(q k^T * scale) v``
  returning the softmax (causal: ``masked_fill`` with a causal mask built once, outside the timing;
  mean: ``.mean(1)`` of the softmax); forward, and forward+backward (loss on the output, the weights
  returned);
- no weights: ``torch.nn.functional.scaled_dot_product_attention`` (torch's fused CPU kernel),
  causal and not, forward and forward+backward.

``attnlens.MultiHeadAttention`` against ``torch.nn.MultiheadAttention`` (same parameters),
self-attention on ``[1, N, 512]`` with 8 heads, N = 32 to 4096: eval (under ``torch.no_grad``,
where torch takes its C++ fast path) and training (forward+backward), with and without weights
(``need_weights``, head-averaged as torch's default), without a mask and causal (``attn_mask`` the
causal mask and ``is_causal=True``).

One torch thread unless ``--cpu-threads`` says otherwise. Each benchmark times attnlens and torch
in turns on the same fresh inputs (``cpu_harness.paired``); ``extra_info["ratio"]`` is attnlens's
median over torch's.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Tuple

import pytest
import torch
import torch.nn.functional as F
from cpu_harness import paired

import attnlens

SEQLENS = (128, 256, 512, 1024, 2048, 4096)
MODULE_SEQLENS = (32, 128, 512, 1024, 2048, 4096)
HEADS, HEAD_DIM, EMBED = 8, 64, 512


@pytest.fixture(autouse=True)
def cpu_threads(request):
    threads = request.config.getoption("--cpu-threads")
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    with attnlens.use_backend("torch"):
        yield threads
    torch.set_num_threads(saved)


def _causal(n: int) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool).triu(1)  # True = masked


def _eager(mean: bool, causal: bool, n: int) -> Callable:
    """torch eager attention returning ``(out, weights)``."""
    mask = _causal(n) if causal else None
    scale = 1.0 / math.sqrt(HEAD_DIM)

    def run(q, k, v):
        scores = q @ k.transpose(-2, -1) * scale
        if mask is not None:
            scores = scores.masked_fill(mask, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        out = weights @ v
        return out, (weights.mean(1) if mean else weights)

    return run


def _ours(weights, causal: bool) -> Callable:
    def run(q, k, v):
        return attnlens.scaled_dot_product_attention(q, k, v, is_causal=causal, return_weights=weights)

    return run


def _sdpa(causal: bool) -> Callable:
    return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal)


# name -> (attnlens call, torch call, baseline name); each takes (q, k, v, n)
ATTENTION: Dict[str, Tuple] = {
    "weights": (lambda n: _ours(True, False), lambda n: _eager(False, False, n), "eager softmax(QK^T*s)V"),
    "weights-mean": (lambda n: _ours("mean", False), lambda n: _eager(True, False, n), "eager, weights.mean(1)"),
    "weights-causal": (lambda n: _ours(True, True), lambda n: _eager(False, True, n), "eager causal (masked_fill)"),
    "weights-mean-causal": (lambda n: _ours("mean", True), lambda n: _eager(True, True, n), "eager causal, mean(1)"),
    "noweights": (lambda n: _ours(False, False), lambda n: _sdpa(False), "F.scaled_dot_product_attention"),
    "noweights-causal": (lambda n: _ours(False, True), lambda n: _sdpa(True), "F.sdpa is_causal=True"),
}


def _output(result):
    return result[0] if isinstance(result, tuple) else result


@pytest.mark.parametrize("op", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("name", list(ATTENTION))
@pytest.mark.parametrize("seqlen", SEQLENS)
def test_cpu_attention(benchmark, seqlen, name, op):
    make_ours, make_theirs, baseline = ATTENTION[name]
    ours, theirs = make_ours(seqlen), make_theirs(seqlen)
    generator = torch.Generator().manual_seed(seqlen)
    shape = (1, HEADS, seqlen, HEAD_DIM)
    benchmark.group = f"cpu {op} {name}"
    if op == "fwd":

        def make_args():
            return [torch.randn(shape, generator=generator) for _ in range(3)]

        def wrap(fn):
            def call(q, k, v):
                with torch.no_grad():
                    fn(q, k, v)

            return call
    else:

        def make_args():
            q, k, v = (torch.randn(shape, generator=generator, requires_grad=True) for _ in range(3))
            return [q, k, v, torch.randn(shape, generator=generator)]

        def wrap(fn):
            def call(q, k, v, grad):
                _output(fn(q, k, v)).backward(grad)

            return call

    info = dict(
        impl=f"attnlens-{name}",
        baseline=baseline,
        op=op,
        batch=1,
        heads=HEADS,
        seqlen=seqlen,
        head_dim=HEAD_DIM,
        dtype="fp32",
        road="fused" if name.startswith("noweights") else "blocked",
    )
    paired(benchmark, wrap(ours), wrap(theirs), make_args, info)


@pytest.mark.parametrize("causal", [False, True], ids=["nomask", "causal"])
@pytest.mark.parametrize("need_weights", [False, True], ids=["noweights", "weights"])
@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("seqlen", MODULE_SEQLENS)
def test_cpu_module(benchmark, seqlen, mode, need_weights, causal):
    torch.manual_seed(seqlen)
    theirs_module = torch.nn.MultiheadAttention(EMBED, HEADS, batch_first=True)
    ours_module = attnlens.MultiHeadAttention(EMBED, HEADS, batch_first=True)
    ours_module.load_state_dict(theirs_module.state_dict())
    for module in (theirs_module, ours_module):
        module.train(mode == "train")
    mask = _causal(seqlen) if causal else None
    generator = torch.Generator().manual_seed(seqlen)
    kwargs = dict(need_weights=need_weights, attn_mask=mask, is_causal=causal)
    benchmark.group = f"cpu module {mode} {'weights' if need_weights else 'noweights'} {'causal' if causal else ''}"

    def make_args():
        return [torch.randn(1, seqlen, EMBED, generator=generator, requires_grad=mode == "train")]

    def wrap(module):
        if mode == "eval":

            def call(x):
                with torch.no_grad():
                    module(x, x, x, **kwargs)
        else:

            def call(x):
                module.zero_grad(set_to_none=True)
                out, _ = module(x, x, x, **kwargs)
                out.sum().backward()

        return call

    info = dict(
        impl="attnlens.MultiHeadAttention",
        baseline="torch.nn.MultiheadAttention",
        op="fwd" if mode == "eval" else "fwdbwd",
        mode=mode,
        need_weights=need_weights,
        causal=causal,
        batch=1,
        heads=HEADS,
        embed_dim=EMBED,
        seqlen=seqlen,
        dtype="fp32",
    )
    paired(benchmark, wrap(ours_module), wrap(theirs_module), make_args, info)
