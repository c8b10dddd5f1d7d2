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
from attnlens._inputs import Prepared, ReturnWeights, prepare
from attnlens.reference import attention as _reference_attention
from attnlens.reference import format_result

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
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
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
        raise ValueError(
            "attn_mask requires grad, but attnlens treats masks as constants and computes "
            "no gradient for them; pass attn_mask.detach() (or compute a learned bias "
            "outside attention)"
        )


def _draw_seed(device: torch.device) -> torch.Tensor:
    """A Philox seed from torch's generator for ``device``, so torch.manual_seed reproduces dropout."""
    return torch.randint(0, 2**62, (1,), dtype=torch.int64, device=device)


def dropout_mask(query: torch.Tensor, key: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """The dropout pattern a ``scaled_dot_product_attention(query, key, value, dropout_p=dropout_p)``
    call makes when it starts from torch's random generator in its current state.

    Returns bool ``[B, Hq, Nq, Nk]`` (``[Hq, Nq, Nk]`` for 3-D inputs), True = kept. It draws from
    the generator exactly what the attention call draws (nothing when ``dropout_p == 0``), on the
    path the call would take (``selected_backend``), so restoring the state reproduces the mask::

        torch.manual_seed(0)
        out, weights = attnlens.scaled_dot_product_attention(q, k, v, dropout_p=0.1, return_weights=True)
        torch.manual_seed(0)
        keep = attnlens.dropout_mask(q, k, 0.1)   # weights == 0 wherever keep is False

    ``attnlens.reference.scaled_dot_product_attention(..., dropout_mask=keep)`` then recomputes
    that call in plain PyTorch.
    """
    p = prepare(query, key, key, dropout_p=dropout_p, enable_gqa=True)
    batch, heads_q, seqlen_q, seqlen_k = p.shape
    device = p.query.device
    backend = selected_backend(device) if p.dropout_p > 0.0 else None
    if p.dropout_p == 0.0:
        keep = torch.ones((batch, heads_q, seqlen_q, seqlen_k), dtype=torch.bool, device=device)
    elif backend == "kernels":
        from attnlens.kernels.forward import dropout_keep_mask

        keep = dropout_keep_mask(_draw_seed(device), batch, heads_q, seqlen_q, seqlen_k, p.dropout_p)
    elif backend == "torch":  # a seed, then one draw per query block (attnlens.blocked)
        keep = _blocked.dropout_keep_mask(p.query, p.key, p.dropout_p)
    else:  # the reference's draw (attnlens.reference.attention)
        draw = torch.rand((batch, heads_q, seqlen_q, seqlen_k), device=device, dtype=torch.float32)
        keep = draw >= p.dropout_p
    return keep.squeeze(0) if p.unbatched else keep


def _kernel_attention(p: Prepared) -> Tuple[torch.Tensor, torch.Tensor]:
    seed = _draw_seed(p.query.device) if p.dropout_p > 0.0 else None
    allow_tf32 = bool(torch.backends.cuda.matmul.allow_tf32)
    out, _, weights = _ops_module().attention_op(
        p.query,
        p.key,
        p.value,
        p.attn_mask,
        p.key_padding_mask,
        seed,
        p.scale,
        p.dropout_p,
        p.is_causal,
        p.causal_offset,
        p.weights_mode,
        allow_tf32,
    )
    return out, weights


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
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Scaled dot-product attention that can also return the exact attention weights.

    Arguments follow ``torch.nn.functional.scaled_dot_product_attention``:

    - ``query`` ``[B, Hq, Nq, D]``, ``key`` ``[B, Hkv, Nk, D]``, ``value`` ``[B, Hkv, Nk, Dv]``
      (3-D inputs are one unbatched element), any strides; float16, bfloat16, float32 or float64
      (all three the same); head dims 1 to 256. ``enable_gqa=True`` lets Hq be a multiple of Hkv.
    - ``attn_mask``: bool (True = attend) or floating point (added to the scaled scores),
      broadcastable to ``[B, Hq, Nq, Nk]``; broadcast through stride 0, never copied.
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

    A query row with nothing to attend to (every key masked, or Nk = 0) gives output 0 and weights
    0, never NaN. Nq = 0 gives empty outputs. Masks are constants: a float ``attn_mask`` that
    requires grad raises ``ValueError``. Bad arguments raise ``TypeError``/``ValueError`` naming
    the argument, what it got and what it expects.
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
    )
    _check_mask_grad(p)
    backend = selected_backend(p.query.device)
    if backend == "torch":
        out, weights = _blocked.attention(p)
    elif backend == "kernels":
        out, weights = _kernel_attention(p)
    else:
        out, weights, _ = _reference_attention(p)
    return format_result(p, out, weights if p.weights_mode else None)
