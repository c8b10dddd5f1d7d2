"""``attnlens.scaled_dot_product_attention``: torch's SDPA signature, plus exact attention weights.

Dispatch: CUDA tensors run the compiled Triton kernels; CPU tensors run the same kernels through
Triton's interpreter when ``TRITON_INTERPRET=1`` was set before triton was imported; other CPU
tensors (and any device Triton cannot drive) run the CPU path, ``attnlens.blocked`` (backend
``"torch"``: PyTorch operations, blocked, fp32 accumulation, torch's fused CPU kernel where it is
exact). CUDA devices older than Triton supports (compute capability below 8.0: V100, T4, RTX 20xx)
also take that path unless the kernels are forced. ``use_backend`` forces a path, including
``"reference"``, the float64 oracle of the tests (``attnlens.reference``).

Triton, and the torch compiler stack ``torch.library.triton_op`` brings in, are imported only when
a kernel will run: for CUDA tensors, or for CPU tensors when the interpreter is on.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import Iterator, Optional, Tuple, Union

import torch

from attnlens import blocked as _blocked
from attnlens._inputs import Prepared, ReturnWeights, kernel_limits, prepare
from attnlens.errors import AttentionValueError
from attnlens.reference import attention as _reference_attention
from attnlens.reference import check_sink_share, format_result, sink_share

__all__ = ["scaled_dot_product_attention", "dropout_mask", "use_backend", "kernels_available", "selected_backend"]

BACKENDS = ("auto", "kernels", "torch", "reference")
_state = threading.local()
_kernel_import_error: Optional[BaseException] = None
_NOT_IMPORTED = object()
_ops_cache: object = _NOT_IMPORTED


def _ops_module():
    """The custom ops, imported on first use so that ``import attnlens`` does not import triton
    (and a program can still set TRITON_INTERPRET before it does). None without triton.

    Cached in a module global rather than with ``functools.lru_cache``: torch.compile warns about
    every lru_cache-wrapped call it traces, and a global is a plain read."""
    global _kernel_import_error, _ops_cache
    if _ops_cache is _NOT_IMPORTED:
        try:
            from attnlens import _ops
        except ImportError as exc:  # triton missing (macOS, Windows): the reference path still works
            _kernel_import_error = exc
            _ops = None
        _ops_cache = _ops
    return _ops_cache


# The values of TRITON_INTERPRET that Triton (3.6 to 3.9) reads as true, case-insensitively.
_TRUE_VALUES = ("1", "true", "on", "yes", "y")


def _interpreter_on() -> bool:
    """Whether the kernels run (or would run) through Triton's interpreter, without importing triton.

    Once the kernels are imported, their own record (``attnlens.kernels.INTERPRETED``: how their
    ``@triton.jit`` was decorated) is the answer; before, ``TRITON_INTERPRET`` as Triton will read
    it when the kernels are first imported."""
    kernels = sys.modules.get("attnlens.kernels")
    if kernels is not None and hasattr(kernels, "INTERPRETED"):
        return bool(kernels.INTERPRETED)
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUE_VALUES


def kernels_available(device: torch.device) -> bool:
    """Whether attnlens's Triton kernels can run on ``device`` in this process.

    A CPU without the interpreter, or a device other than CPU and CUDA, is answered without
    importing triton."""
    if not isinstance(device, torch.device):
        device = torch.device(device)
    if device.type == "cpu" and not _interpreter_on():
        return False
    if device.type not in ("cpu", "cuda"):
        return False
    ops = _ops_module()
    if ops is None:
        return False
    from attnlens.kernels import INTERPRETED

    if INTERPRETED:
        return True
    return device.type == "cuda"


@contextlib.contextmanager
def use_backend(backend: str) -> Iterator[None]:
    """Force a path for the calls in this block (this thread only)::

        with attnlens.use_backend("reference"):
            out = attnlens.scaled_dot_product_attention(q, k, v)

    ``"auto"`` (default) follows the dispatch rule; ``"kernels"`` raises if the kernels cannot run
    on the inputs' device; ``"torch"`` runs the CPU path (PyTorch operations, on any device);
    ``"reference"`` runs the float64 oracle's code, the simplest plain PyTorch (it materialises
    ``N x N`` scores and computes in the inputs' dtype).
    """
    if backend not in BACKENDS:
        raise AttentionValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    previous = getattr(_state, "backend", "auto")
    _state.backend = backend
    try:
        yield
    finally:
        _state.backend = previous


# Triton supports NVIDIA GPUs of compute capability 8.0 and newer. Since Triton 3.3 its matrix
# products compile to plain FMA below that (no tensor cores), and the launch configurations were
# never compiled for those cards' 64-96 KiB of shared memory, so "auto" sends them to the "torch"
# path, whose matrix products are cuBLAS's; ``use_backend("kernels")`` still runs the kernels.
MIN_KERNEL_CAPABILITY = (8, 0)


def _capability(device: torch.device) -> Tuple[int, int]:
    # get_device_properties (the current device for an index-less device), not
    # get_device_capability: torch.compile folds it to a constant, so fullgraph tracing holds.
    properties = torch.cuda.get_device_properties(device)
    return properties.major, properties.minor


def _auto_picks_kernels(device: torch.device) -> bool:
    """Whether ``"auto"`` runs the kernels on a device they can run on: not on a CUDA device older
    than Triton supports (``MIN_KERNEL_CAPABILITY``)."""
    from attnlens.kernels import INTERPRETED

    return INTERPRETED or device.type != "cuda" or _capability(device) >= MIN_KERNEL_CAPABILITY


def selected_backend(device: torch.device) -> str:
    """``"kernels"``, ``"torch"`` or ``"reference"``: the path a call on ``device`` takes right now."""
    backend = getattr(_state, "backend", "auto")
    if backend in ("reference", "torch"):
        return backend
    if kernels_available(device):
        return "kernels" if backend == "kernels" or _auto_picks_kernels(device) else "torch"
    if backend == "kernels":
        reason = f" ({_kernel_import_error})" if _kernel_import_error else ""
        raise RuntimeError(
            f"attnlens kernels cannot run on device {device}{reason}: they need a CUDA "
            f"device, or TRITON_INTERPRET=1 set before triton is imported for CPU tensors"
        )
    return "torch"


def _check_mask_grad(p: Prepared) -> None:
    mask = p.attn_mask
    if mask is not None and mask.requires_grad and torch.is_grad_enabled():
        raise AttentionValueError(
            "attn_mask requires grad, but attnlens treats masks as constants and computes "
            "no gradient for them; pass attn_mask.detach() (or compute a learned bias "
            "outside attention)"
        )


def _path(p: Prepared) -> str:
    """The path this call takes: ``selected_backend``, except that what the kernels cannot compute
    (``kernel_limits``: head dims 0 or above 256, an infinite scale) runs on the CPU path, CUDA
    tensors included, unless ``use_backend("kernels")`` forces them; and what the CPU path does not
    take (``blocked.limits``: head dim 0, an infinite scale) runs on the reference."""
    path = selected_backend(p.query.device)
    if path == "kernels":
        reason = kernel_limits(p)
        if reason is None:
            return path
        if getattr(_state, "backend", "auto") == "kernels":
            raise AttentionValueError(
                f"use_backend('kernels') forces the Triton kernels, but {reason}; "
                f"use_backend('auto') runs such calls on the plain-PyTorch path"
            )
        path = "torch"
    if path == "torch" and _blocked.limits(p) is not None:
        return "reference"
    return path


def _draw_seed(device: torch.device) -> torch.Tensor:
    """A Philox seed from torch's generator for ``device``, so torch.manual_seed reproduces dropout."""
    return torch.randint(0, 2**62, (1,), dtype=torch.int64, device=device)


def dropout_mask(
    query: torch.Tensor,
    key: torch.Tensor,
    dropout_p: float,
    *,
    value: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """The dropout pattern a ``scaled_dot_product_attention(query, key, value, dropout_p=dropout_p)``
    call makes when it starts from torch's random generator in its current state.

    Returns bool ``[..., Nq, Nk]`` with the leading dims of the call's output (``[B, Hq, Nq, Nk]``
    for 4-D inputs, ``[Hq, Nq, Nk]`` for 3-D ones), True = kept. It draws from the generator
    exactly what the attention call draws (nothing when ``dropout_p == 0``), on the path the call
    would take, so restoring the state reproduces the mask::

        torch.manual_seed(0)
        out, weights = attnlens.scaled_dot_product_attention(q, k, v, dropout_p=0.1, return_weights=True)
        torch.manual_seed(0)
        keep = attnlens.dropout_mask(q, k, 0.1)   # weights == 0 wherever keep is False

    Pass the call's ``value`` and ``scale`` when its value head dim or its scale is one the kernels
    do not take (head dim 0 or above 256, an infinite scale): such calls run on the plain-PyTorch
    path, which draws differently. ``attnlens.reference.scaled_dot_product_attention(...,
    dropout_mask=keep)`` then recomputes that call in plain PyTorch.
    """
    heads_q = query.shape[-3] if query.dim() >= 3 else 1
    heads_k = key.shape[-3] if key.dim() >= 3 else 1
    grouped = heads_k not in (0, 1, heads_q) and heads_q % heads_k == 0
    p = prepare(query, key, key if value is None else value, dropout_p=dropout_p, scale=scale, enable_gqa=grouped)
    batch, heads_q, seqlen_q, seqlen_k = p.shape
    device = p.query.device
    backend = _path(p) if p.dropout_p > 0.0 else None
    if p.dropout_p == 0.0:
        keep = torch.ones((batch, heads_q, seqlen_q, seqlen_k), dtype=torch.bool, device=device)
    elif backend == "kernels":
        from attnlens.kernels import launch_dropout_mask

        keep = launch_dropout_mask(_draw_seed(device), batch, heads_q, seqlen_q, seqlen_k, p.dropout_p)
    elif backend == "torch":  # a seed, then one draw per query block (attnlens.blocked)
        keep = _blocked.dropout_keep_mask(p.query, p.key, p.dropout_p)
    else:  # the reference's draw (attnlens.reference.attention)
        draw = torch.rand((batch, heads_q, seqlen_q, seqlen_k), device=device, dtype=torch.float32)
        keep = draw >= p.dropout_p
    return keep.reshape(*p.batch_shape, seqlen_q, seqlen_k)


def _check_grid(p: Prepared) -> None:
    """The kernels' launch limit on batch and heads, raised as attnlens's error."""
    from attnlens.kernels.launch import check_grid as check

    batch, heads_q, _, _ = p.shape
    try:
        check(batch, heads_q)
    except ValueError as exc:
        raise AttentionValueError(str(exc)) from None


def _kernel_attention(p: Prepared, want_sink_share: bool = False) -> Tuple[torch.Tensor, ...]:
    """``(out, weights, sink_share)`` from the kernels (``weights`` empty unless asked for,
    ``sink_share`` None unless asked for)."""
    _check_grid(p)
    seed = _draw_seed(p.query.device) if p.dropout_p > 0.0 else None
    allow_tf32 = bool(torch.backends.cuda.matmul.allow_tf32)
    out, row_stats, weights = _ops_module().sdpa_forward_op(
        p.query,
        p.key,
        p.value,
        p.attn_mask,
        p.key_padding_mask,
        seed,
        p.alibi_slopes,
        p.sinks,
        p.scale,
        p.dropout_p,
        p.softcap,
        None if p.window is None else list(p.window),
        p.is_causal,
        p.causal_offset,
        p.weights_mode,
        allow_tf32,
    )
    share = None
    if want_sink_share:
        from attnlens.kernels import row_stats_to_lse

        share = sink_share(p, row_stats_to_lse(row_stats))
    return out, weights, share


def scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
    *,
    key_padding_mask: Optional[torch.Tensor] = None,
    causal_alignment: str = "top_left",
    return_weights: ReturnWeights = False,
    softcap: Optional[float] = None,
    sinks: Optional[torch.Tensor] = None,
    window: Optional[Tuple[int, int]] = None,
    alibi_slopes: Optional[torch.Tensor] = None,
    return_sink_share: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, ...]]:
    """Scaled dot-product attention that can also return the exact attention weights.

    Arguments follow ``torch.nn.functional.scaled_dot_product_attention``:

    - ``query`` ``[..., Hq, Nq, D]``, ``key`` ``[..., Hkv, Nk, D]``, ``value`` ``[..., Hkv, Nk, Dv]``:
      at least 2-D, any strides; float16, bfloat16, float32 or float64 (all three the same). As in
      torch, the leading dims broadcast like ``torch.matmul``'s (a batch of 1, or one key/value
      head for every query head), with stride-0 views rather than copies; ``enable_gqa=True`` lets
      the key and value heads be divisors of Hq instead. The output is ``[..., Hq, Nq, Dv]`` with
      the broadcast leading dims. Head dims the kernels do not compile (0, above 256) and an
      infinite ``scale`` run on the plain-PyTorch path, CUDA tensors included.
    - ``attn_mask``: bool (True = attend) or float32 / the query's dtype (added to the scaled
      scores; any other dtype raises, as in torch), broadcastable to the scores ``[..., Hq, Nq,
      Nk]``; broadcast through stride 0, never copied or cast. torch's ``CausalBias``
      (``torch.nn.attention.bias.causal_upper_left`` / ``causal_lower_right``) means
      ``is_causal=True`` with its alignment.
    - ``is_causal``: query i sees keys j <= i (top-left, as torch). With
      ``causal_alignment="bottom_right"`` the last query is aligned with the last key
      (j <= i + Nk - Nq), as when decoding with a KV cache. Unlike torch, ``is_causal`` may be
      combined with ``attn_mask`` and ``key_padding_mask``: a key must pass every mask.
    - ``key_padding_mask``: bool ``[B, Nk]``, True = padding, ignored (``nn.MultiheadAttention``'s
      convention).
    - ``dropout_p``: probability of dropping an attention probability (apply it in training only,
      as with torch); the returned weights are the ones after dropout. Seeded from torch's
      generator, so ``torch.manual_seed`` reproduces it; ``attnlens.dropout_mask`` gives the pattern.
    - ``scale``: defaults to ``1 / sqrt(D)``.
    - ``return_weights``: ``False`` returns ``out``; ``True`` returns ``(out, weights)`` with
      weights ``[B, Hq, Nq, Nk]`` in the input dtype; ``"mean"`` returns ``(out, weights)`` averaged
      over the query heads, ``[B, Nq, Nk]``, without ever holding per-head weights.

    Score modifications of today's models (keyword-only, off by default; every one combines with
    the masks, both causal alignments, GQA, dropout, both kinds of weights and the gradients):

    - ``softcap``: the scores become ``softcap * tanh(scores / softcap)`` before any mask or bias
      (Gemma 2's rule); the backward goes through the tanh.
    - ``window``: ``(left, right)``: query i sees keys ``i + offset - left <= j <= i + offset +
      right``, offset the causal alignment's (0 top-left, ``Nk - Nq`` bottom-right); -1 is
      unbounded (flash-attn's ``window_size``). With ``is_causal`` the right side is at most 0.
      Key blocks outside the window are never visited: the cost is O(N x window), not O(N^2).
    - ``alibi_slopes``: ``[Hq]`` or ``[B, Hq]``; adds ``-slope * |i + offset - j|`` to the scores
      (flash-attn's convention), never materialised as a bias matrix; constants (no gradient).
    - ``sinks``: ``[Hq]`` learned logits (gpt-oss), or per-row logits broadcastable to
      ``[..., Hq, Nq]``: one more logit in every row's softmax denominator, with no value. The
      returned weights are those over the real keys and sum to less than 1;
      ``return_sink_share=True`` appends each row's share of the sink,
      ``[..., Hq, Nq]`` (head-averaged ``[..., Nq]`` with ``return_weights="mean"``), as the last
      element of the result. Gradients reach ``sinks`` (and flow through the share).

    A query row with nothing to attend to (every key masked, or Nk = 0) gives output 0 and weights
    0, never NaN (with a sink, the sink takes the whole row). Nq = 0 gives empty outputs. Masks
    are constants: a float ``attn_mask`` that requires grad raises ``ValueError``. Bad arguments
    raise ``attnlens.AttentionTypeError`` / ``AttentionValueError`` naming the argument, what it
    got and what it expects: ``TypeError`` / ``ValueError``, and ``RuntimeError`` too, as torch's
    errors are. docs/torch-compat.md lists
    what matches torch and every deliberate difference.
    """
    p = prepare(
        query,
        key,
        value,
        attn_mask,
        dropout_p,
        is_causal,
        scale,
        enable_gqa,
        key_padding_mask,
        causal_alignment,
        return_weights,
        softcap,
        sinks,
        window,
        alibi_slopes,
    )
    check_sink_share(p, return_sink_share)
    _check_mask_grad(p)
    path = _path(p)
    if path == "kernels":
        out, weights, share = _kernel_attention(p, return_sink_share)
    elif path == "torch":
        out, weights, lse = _blocked.attention(p)
        share = sink_share(p, lse) if return_sink_share else None
    else:
        out, weights, lse = _reference_attention(p)
        share = sink_share(p, lse) if return_sink_share else None
    return format_result(p, out, weights if p.weights_mode else None, share)
