"""Sliding windows and soft-capping against full attention, side by side in one run.

    pytest bench/test_score_mods_bench.py --benchmark-only --benchmark-json=bench/results/<device>-mods-<date>.json

A window visits only the key blocks it reaches, so a window of ``w`` keys at ``N`` tokens should
cost about ``w / N`` of full attention, ``2 w / N`` of full causal attention (which sees ``N / 2``
keys per query on average), plus one block per query block on each edge, in
the forward, with weights and in the backward; soft-capping adds a tanh per score (and its
derivative in the backward). Each benchmark times the modified call (pytest-benchmark's target)
and the same call without the modification in turns on the same fresh inputs
(``cpu_harness.paired``); ``extra_info["ratio"]`` is the first's median over the second's.

- On a CUDA GPU (the kernels): ``[1, 16, 16384, 128]`` fp16, causal, window ``(1023, 0)`` (1k
  keys) against full causal, forward and forward+backward; soft-capping 50 against none at
  ``N = 4096``, forward, with weights, forward+backward.
- On a CPU (the CPU path, backend ``"torch"``, one thread): ``[1, 8, 4096, 64]`` fp32, window
  ``(255, 0)`` (256 keys, 1/16) against full causal, with weights and forward+backward; soft-capping
  against none at ``N = 1024``. The CPU's full causal call without weights would take torch's own
  fused kernel, a different road: zero ALiBi slopes keep the full call on the blocked road there
  (one multiply-add per score more), and likewise for soft-capping's baseline.
"""

from __future__ import annotations

from typing import Callable, Dict

import pytest
import torch
from cpu_harness import paired

import attnlens

CUDA = torch.cuda.is_available()
# bench/conftest.py turns Triton's interpreter on without CUDA (for the kernels' smoke runs), which
# "auto" would then pick: the CPU numbers are the CPU path's, so name it.
BACKEND = "kernels" if CUDA else "torch"
DEVICE = torch.device("cuda" if CUDA else "cpu")
if CUDA:
    HEADS, HEAD_DIM, LONG, SHORT, WINDOW, DTYPE = 16, 128, 16384, 4096, 1023, torch.float16
else:
    HEADS, HEAD_DIM, LONG, SHORT, WINDOW, DTYPE = 8, 64, 4096, 1024, 255, torch.float32


@pytest.fixture(autouse=True)
def one_thread():
    saved = torch.get_num_threads()
    if not CUDA:
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _synchronised(fn: Callable) -> Callable:
    def run(*args):
        result = fn(*args)
        if CUDA:
            torch.cuda.synchronize()
        return result

    return run


def _call(backward: bool, **kwargs) -> Callable:
    def run(q, k, v):
        result = attnlens.scaled_dot_product_attention(q, k, v, is_causal=True, **kwargs)
        if backward:
            out = result[0] if isinstance(result, tuple) else result
            out.sum().backward()
        return result

    return _synchronised(run)


def _inputs(seqlen: int, backward: bool) -> Callable:
    def make():
        return [
            torch.randn(1, HEADS, seqlen, HEAD_DIM, device=DEVICE, dtype=DTYPE, requires_grad=backward)
            for _ in range(3)
        ]

    return make


def _info(case: str, seqlen: int, **extra) -> Dict[str, object]:
    return dict(case=case, seqlen=seqlen, heads=HEADS, head_dim=HEAD_DIM, dtype=str(DTYPE), **extra)


@pytest.mark.parametrize("op", ["fwd", "weights", "fwdbwd"])
def test_window_against_full_causal(benchmark, op):
    backward = op == "fwdbwd"
    weights = {"weights": True}.get(op, False)
    window = dict(window=(WINDOW, 0), return_weights=weights)
    full = dict(return_weights=weights)
    if not CUDA and op == "fwd":
        # torch's fused kernel takes the full call on a CPU: compare the blocked road with itself
        full = dict(full, alibi_slopes=torch.zeros(HEADS))
    with attnlens.use_backend(BACKEND):
        paired(
            benchmark,
            _call(backward, **window),
            _call(backward, **full),
            _inputs(LONG, backward),
            _info(f"window {WINDOW + 1} vs full causal, {op}", LONG, expected_ratio=2 * (WINDOW + 1) / LONG),
            seconds=20.0 if CUDA else 30.0,
            min_rounds=3,
            max_rounds=30,
        )


@pytest.mark.parametrize("op", ["fwd", "weights", "fwdbwd"])
def test_softcap_against_none(benchmark, op):
    backward = op == "fwdbwd"
    weights = op == "weights"
    with attnlens.use_backend(BACKEND):
        paired(
            benchmark,
            _call(backward, softcap=50.0, return_weights=weights),
            _call(backward, return_weights=weights, alibi_slopes=None if CUDA else torch.zeros(HEADS)),
            _inputs(SHORT, backward),
            _info(f"softcap 50 vs none, {op}", SHORT),
            seconds=10.0,
            min_rounds=3,
        )
