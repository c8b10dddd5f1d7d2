"""Host code shared by the launchers: how a call becomes kernel arguments, and how kernels launch.

- ``AttentionProblem``: everything about one attention call the kernels need besides q, k and v.
- ``KernelArgs`` (``kernel_args``): the arguments every attention kernel takes in the same order
  after its own tensors, and its constexpr flags (``KernelArgs.options``): the one place a new
  kernel feature is turned into launch arguments.
- Layout and capability helpers: ``empty_like_query``, ``tma_eligible``, ``descriptor_scratch``,
  ``check_grid``.
- Launching: compiled, through ``torch.library.wrap_triton`` (``launchable``), or interpreted.
  Triton decides at decoration time whether ``@triton.jit`` builds a compiled or an interpreted
  function, from ``TRITON_INTERPRET`` as set when triton is first imported. ``INTERPRETED``
  records that decision from a kernel of our own, so it cannot disagree with how the kernels run.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Dict, Iterator, Optional, Tuple

import torch
import triton
import triton.language as tl

from attnlens.kernels import tiles
from attnlens.kernels.config import KernelConfig, head_dim_bucket
from attnlens.kernels.tiles import LOG2E, MASK_ADDITIVE, MASK_BOOL, MASK_NONE

try:
    from triton.runtime.errors import OutOfResources
except ImportError:  # pragma: no cover - every supported Triton has it
    OutOfResources = triton.OutOfResources

__all__ = [
    "INTERPRETED",
    "USES_WRAP_TRITON",
    "AttentionProblem",
    "KernelArgs",
    "kernel_args",
    "check_grid",
    "descriptor_scratch",
    "empty_like_query",
    "explain_resources",
    "fast_helper_calls",
    "launchable",
    "tma_eligible",
]


@triton.jit
def _probe_kernel(x_ptr):
    tl.store(x_ptr, 0)


def _is_interpreted(fn: Any) -> bool:
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover - every supported Triton has it
        return False
    return isinstance(fn, InterpretedFunction)


INTERPRETED: bool = _is_interpreted(_probe_kernel)

try:  # torch >= 2.6
    from torch.library import wrap_triton as _wrap_triton
except ImportError:  # pragma: no cover - torch 2.4/2.5
    _wrap_triton = None

#: whether launches go through ``torch.library.wrap_triton`` so torch.compile can see the kernels.
#: Not under the interpreter: torch.compile would trace into the interpreted kernel with fake
#: tensors (seen with torch 2.13 and Triton 3.9), so that path registers an opaque custom op instead.
USES_WRAP_TRITON: bool = _wrap_triton is not None and not INTERPRETED

# CUDA limits grid dimensions y and z to 65535; heads and batch go there, as in FlashAttention-2
# (axis x holds the query blocks, so that programs launched together share a head's keys in L2).
_MAX_GRID_YZ = 65535


def launchable(kernel: Any) -> Any:
    """The object to index with a grid and call: ``launchable(k)[grid](*args)``."""
    return _wrap_triton(kernel) if USES_WRAP_TRITON else kernel


def fast_helper_calls(namespace: Dict[str, Any]) -> None:
    """Under the interpreter, let the kernels call the ``@triton.jit`` helpers of ``namespace``
    (a module's globals) without re-patching ``triton.language`` on every call.

    Triton's interpreter (3.6 to 3.9) patches the language module once per launch, and then again
    on every call of a jit helper from inside the kernel: an ``inspect.getmembers`` walk over
    ``triton.language`` each time, which took about 40% of a launch for these kernels, whose inner
    loops call a dozen helpers per tile. The launch's own patch is in place for the whole launch,
    so a helper can run its rewritten body directly. Compiled kernels are untouched: this changes
    only interpreted helper objects, and only where the interpreter has the expected shape.
    """
    if not INTERPRETED:
        return
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover
        return
    if not callable(getattr(InterpretedFunction, "rewrite", None)):  # pragma: no cover - another Triton
        return
    for value in list(namespace.values()):
        if type(value) is InterpretedFunction:
            value.__class__ = _DirectHelper


def _direct_call(self: Any, *args: Any, **kwargs: Any) -> Any:
    return self.rewrite()(*args, **kwargs)


def _make_direct_helper() -> Optional[type]:
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover
        return None
    return type("_DirectHelper", (InterpretedFunction,), {"__call__": _direct_call})


_DirectHelper = _make_direct_helper() if INTERPRETED else None
fast_helper_calls(vars(tiles))  # the building blocks call each other too


@contextlib.contextmanager
def explain_resources(kernel: str, config: Any, dtype: Any, head_dim: int) -> Iterator[None]:
    """Turn Triton's ``OutOfResources`` (a launch configuration needing more shared memory or
    registers than the GPU has) into a ``RuntimeError`` that names the attnlens kernel, its
    configuration and the ways to choose another."""
    try:
        yield
    except OutOfResources as err:
        raise RuntimeError(
            f"attnlens: the {kernel} kernel with {config} needs more {err.name} than this GPU has "
            f"({err.required} > {err.limit}) for {dtype} inputs at head dim {head_dim}. Choose "
            f"smaller tiles with attnlens.kernels.override_config({kernel!r}, block_m=..., "
            f"block_n=..., num_stages=...) or ATTNLENS_CONFIG_{kernel.upper()}="
            f"'block_m,block_n,num_warps,num_stages'; 16x16 tiles with one stage are the smallest."
            + _known_limit(kernel, dtype, head_dim)
        ) from err


def _known_limit(kernel: str, dtype: Any, head_dim: int) -> str:
    if kernel.startswith("backward") and "float64" in str(dtype) and head_dim > 128:
        return (
            " The fp64 backward above head dim 128 needs more than the 99 KiB of shared memory "
            "per block of compute capability 8.6, 8.9 and 12.x at any tile size; run that "
            "call under attnlens.use_backend('torch') (plain PyTorch, blocked) instead."
        )
    return ""


# ---------------------------------------------------------------------------------------------
# the problem and the kernels' shared arguments
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class AttentionProblem:
    """Everything about one attention call that the kernels need besides q, k and v.

    ``causal_offset``: key j is visible to query i iff ``j <= i + causal_offset`` (0 is torch's
    top-left alignment, ``Nk - Nq`` the bottom-right one). ``seed`` is an int64 tensor of one
    element on the inputs' device, required when ``dropout_p > 0``.

    Score modifications: ``softcap`` (scores become ``softcap * tanh(scores / softcap)``),
    ``window`` = ``(left, right)`` (key j visible to query i iff ``i + causal_offset - left <= j
    <= i + causal_offset + right``; -1 is unbounded), ``alibi_slopes`` ``[B, Hq]`` (any strides;
    the bias ``-slope * |i + causal_offset - j|``), ``sinks`` ``[B, Hq, Nq]`` (any strides: 0 where
    one logit serves a whole head; a logit that joins the row's softmax denominator).
    """

    scale: float
    is_causal: bool = False
    causal_offset: int = 0
    attn_mask: Optional[torch.Tensor] = None
    key_padding_mask: Optional[torch.Tensor] = None
    dropout_p: float = 0.0
    seed: Optional[torch.Tensor] = None
    allow_tf32: bool = False
    softcap: Optional[float] = None
    window: Optional[Tuple[int, int]] = None
    alibi_slopes: Optional[torch.Tensor] = None
    sinks: Optional[torch.Tensor] = None
    kv_range: Optional[torch.Tensor] = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.key_padding_mask is not None and self.kv_range is None:
            self.kv_range = key_ranges(self.key_padding_mask)


def key_ranges(key_padding_mask: torch.Tensor) -> torch.Tensor:
    """int32 ``[B, 2]``: the first and one-past-the-last unpadded key of each batch element
    ((0, 0) when every key is padding). Kernels skip the key blocks outside this range."""
    keep = ~key_padding_mask
    seqlen_k = keep.shape[1]
    if seqlen_k == 0:
        return torch.zeros(keep.shape[0], 2, dtype=torch.int32, device=keep.device)
    as_int = keep.to(torch.int32)
    any_kept = keep.any(dim=1)
    first = as_int.argmax(dim=1)
    end = seqlen_k - as_int.flip(1).argmax(dim=1)
    ranges = torch.stack([first, end], dim=1)
    return torch.where(any_kept[:, None], ranges, torch.zeros_like(ranges)).to(torch.int32).contiguous()


def split_float(value: float) -> Tuple[float, float]:
    """``value`` as a float32 head and the remainder: kernel float arguments are float32, and the
    fp64 kernels add the two back (about 48 bits)."""
    head = float(torch.tensor(value, dtype=torch.float32))
    return head, value - head


def scale_parts(scale: float, use_fp64: bool) -> Tuple[float, float]:
    """The softmax scale in the kernel's exponent domain, split into a float32 head and remainder."""
    return split_float(scale if use_fp64 else scale * LOG2E)


def window_bounds(problem: "AttentionProblem", seqlen_q: int, seqlen_k: int) -> Tuple[int, int]:
    """``(left, right)`` for the kernels: -1 (unbounded) becomes a bound no (query, key) pair
    reaches, and with causal masking the right side is at most 0, so that the block ranges, which
    take the tighter of the two edges, never skip a causal test the window does not make."""
    reach = seqlen_q + seqlen_k + abs(problem.causal_offset) + 1
    if problem.window is None:
        return reach, reach
    left, right = (reach if side < 0 else min(side, reach) for side in problem.window)
    if problem.is_causal:
        right = min(right, 0)
    return left, right


@dataclasses.dataclass
class KernelArgs:
    """The arguments every attention kernel takes after its own tensors, for one call.

    ``runtime`` is the positional tail in the kernels' shared parameter order::

        mask_ptr, pad_ptr, kv_range_ptr, seed_ptr, alibi_ptr, sinks_ptr,
        stride_mask_batch, stride_mask_head, stride_mask_q, stride_mask_k,
        stride_pad_batch, stride_pad_k, stride_alibi_batch, stride_alibi_head,
        stride_sinks_batch, stride_sinks_head, stride_sinks_q,
        num_heads_q, kv_group_size, seqlen_q, seqlen_k, head_dim, head_dim_v,
        causal_offset, window_left, window_right,
        qk_scale, qk_scale_lo, softcap_scale, softcap_scale_lo, dropout_p, keep_scale

    (a tensor that a call does not have is replaced by the query, whose pointer the kernels never
    read then; ``window_bounds`` gives the window's two sides). ``flags`` are the constexpr flags
    the call compiles with.
    """

    runtime: Tuple[Any, ...]
    flags: Dict[str, Any]
    seqlen_q: int
    seqlen_k: int
    mask_kind: int
    has_dropout: bool

    def options(self, config: KernelConfig, **extra: Any) -> Dict[str, Any]:
        """The launch keywords for a kernel run with ``config``: the flags, the EVEN_* flags of
        the block sizes, the block sizes, warps and stages, plus the kernel's own ``extra``."""
        return dict(
            self.flags,
            EVEN_M=self.seqlen_q % config.block_m == 0,
            EVEN_N=self.seqlen_k % config.block_n == 0,
            BLOCK_M=config.block_m,
            BLOCK_N=config.block_n,
            num_warps=config.num_warps,
            num_stages=config.num_stages,
            **extra,
        )


def kernel_args(problem: AttentionProblem, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> KernelArgs:
    """The shared kernel arguments of ``problem`` for q ``[B, Hq, Nq, Dqk]``, k ``[B, Hkv, Nk, Dqk]``
    and v ``[B, Hkv, Nk, Dv]`` (the weights kernel passes k for v: it reads no values)."""
    batch, heads_q, seqlen_q, head_dim = q.shape
    heads_kv, seqlen_k, head_dim_v = k.shape[1], k.shape[2], v.shape[3]
    use_fp64 = q.dtype == torch.float64

    mask = problem.attn_mask
    if mask is None:
        mask, mask_strides, mask_kind = q, (0, 0, 0, 0), MASK_NONE
    elif mask.dtype == torch.bool:
        mask, mask_strides, mask_kind = mask.view(torch.uint8), mask.stride(), MASK_BOOL
    else:
        mask_strides, mask_kind = mask.stride(), MASK_ADDITIVE

    pad = problem.key_padding_mask
    if pad is None:
        pad, kv_range, pad_strides = q, q, (0, 0)
    else:
        pad, kv_range, pad_strides = pad.view(torch.uint8), problem.kv_range, pad.stride()

    has_dropout = problem.dropout_p > 0.0
    if has_dropout:
        if problem.seed is None:
            raise ValueError("AttentionProblem.seed is required when dropout_p > 0")
        seed, dropout_p = problem.seed, float(problem.dropout_p)
        keep_scale = 0.0 if problem.dropout_p >= 1.0 else 1.0 / (1.0 - problem.dropout_p)
    else:
        seed, dropout_p, keep_scale = q, 0.0, 1.0

    if problem.softcap is not None:
        # tanh's argument is in natural units; the exponent domain's factor goes on the cap
        qk_scale, qk_scale_lo = split_float(problem.scale / problem.softcap)
        softcap_scale, softcap_scale_lo = scale_parts(problem.softcap, use_fp64)
    else:
        qk_scale, qk_scale_lo = scale_parts(problem.scale, use_fp64)
        softcap_scale, softcap_scale_lo = 0.0, 0.0
    alibi = problem.alibi_slopes
    alibi, alibi_strides = (q, (0, 0)) if alibi is None else (alibi, alibi.stride())
    sinks, sinks_strides = (q, (0, 0, 0)) if problem.sinks is None else (problem.sinks, problem.sinks.stride())
    window_left, window_right = window_bounds(problem, seqlen_q, seqlen_k)
    block_dqk, block_dv = head_dim_bucket(head_dim), head_dim_bucket(head_dim_v)
    runtime = (
        mask,
        pad,
        kv_range,
        seed,
        alibi,
        sinks,
        *mask_strides,
        *pad_strides,
        *alibi_strides,
        *sinks_strides,
        heads_q,
        heads_q // max(heads_kv, 1),
        seqlen_q,
        seqlen_k,
        head_dim,
        head_dim_v,
        problem.causal_offset,
        window_left,
        window_right,
        qk_scale,
        qk_scale_lo,
        softcap_scale,
        softcap_scale_lo,
        dropout_p,
        keep_scale,
    )
    flags = dict(
        IS_CAUSAL=problem.is_causal,
        MASK_KIND=mask_kind,
        HAS_PADDING=problem.key_padding_mask is not None,
        HAS_SOFTCAP=problem.softcap is not None,
        HAS_ALIBI=problem.alibi_slopes is not None,
        HAS_WINDOW=problem.window is not None,
        HAS_SINKS=problem.sinks is not None,
        HAS_DROPOUT=has_dropout,
        EVEN_DQK=head_dim == block_dqk,
        EVEN_DV=head_dim_v == block_dv,
        USE_FP64=use_fp64,
        DOT_PRECISION="tf32" if (q.dtype == torch.float32 and problem.allow_tf32) else "ieee",
        BLOCK_DQK=block_dqk,
        BLOCK_DV=block_dv,
    )
    return KernelArgs(runtime, flags, seqlen_q, seqlen_k, mask_kind, has_dropout)


# ---------------------------------------------------------------------------------------------
# layouts, grids and tensor descriptors
# ---------------------------------------------------------------------------------------------


def empty_like_query(q: torch.Tensor, shape: Tuple[int, int, int, int]) -> torch.Tensor:
    """An empty [B, H, N, D] tensor laid out like q: [B, N, H, D] in memory when q is such a
    transposed view (so ``out.transpose(1, 2).reshape(B, N, H * D)`` costs nothing), else contiguous."""
    b, h, n, d = shape
    if q.dim() == 4 and q.stride(1) < q.stride(2) and h > 1 and n > 1:
        return torch.empty((b, n, h, d), dtype=q.dtype, device=q.device).transpose(1, 2)
    return torch.empty(shape, dtype=q.dtype, device=q.device)


def check_grid(batch: int, heads: int) -> None:
    """Refuse a batch or head count beyond the grid axes the attention kernels put them on."""
    if batch > _MAX_GRID_YZ or heads > _MAX_GRID_YZ:
        raise ValueError(
            f"on the kernel path, batch ({batch}) and query heads ({heads}) must each be at most "
            f"{_MAX_GRID_YZ} (CUDA's grid limit on the axes they run on); split the batch into "
            f"chunks of at most {_MAX_GRID_YZ} and concatenate the results"
        )


def tma_eligible(*tensors: torch.Tensor) -> bool:
    """Whether the kernels may read these ``[B, H, N, D]`` tensors through tensor descriptors
    (TMA): 16-bit CUDA tensors on compute capability 9.x or newer, or any 16-bit tensor under the
    interpreter (so the tests run the path), with unit stride along D and every other stride and
    the base address a multiple of 16 bytes. Other calls take the pointer path, which computes
    the same result."""
    for t in tensors:
        if t.dtype not in (torch.float16, torch.bfloat16) or t.stride(-1) != 1:
            return False
        size = t.element_size()
        if t.data_ptr() % 16 or any((st * size) % 16 for st in t.stride()[:-1]):
            return False
        if t.shape[-2] > 1 and t.stride(-2) <= 0:  # a descriptor's row stride must be positive
            return False
    if INTERPRETED:
        return True
    device = tensors[0].device
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 9:
        return False
    try:  # a torch.compile graph cannot yet pass the descriptors' scratch allocator through
        return not torch.compiler.is_compiling()
    except AttributeError:  # pragma: no cover - torch < 2.3
        return True


@contextlib.contextmanager
def descriptor_scratch(device: torch.device, needed: bool) -> Iterator[None]:
    """Tensor descriptors made inside a kernel live in a small global scratch buffer that Triton
    asks its allocator for at launch. Supply one from torch's caching allocator for this launch
    when the caller has not set their own (``triton.set_allocator``)."""
    if not needed or INTERPRETED:
        yield
        return
    from triton.runtime import _allocation

    current = _allocation._allocator.get()
    if not isinstance(current, _allocation.NullAllocator):
        yield
        return

    def allocate(size: int, alignment: int, stream) -> torch.Tensor:
        return torch.empty(size, dtype=torch.int8, device=device)

    token = _allocation._allocator.set(allocate)
    try:
        yield
    finally:
        _allocation._allocator.reset(token)
