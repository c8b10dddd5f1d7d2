"""How attnlens launches its kernels: compiled, through ``torch.library.wrap_triton``, or interpreted.

Triton decides at decoration time whether ``@triton.jit`` builds a compiled or an interpreted
function, from ``TRITON_INTERPRET`` as set when triton is first imported. ``INTERPRETED`` records
that decision from a kernel of our own, so it cannot disagree with how the kernels really run.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import triton
import triton.language as tl

try:
    from triton.runtime.errors import OutOfResources
except ImportError:  # pragma: no cover - every supported Triton has it
    OutOfResources = triton.OutOfResources

__all__ = ["INTERPRETED", "USES_WRAP_TRITON", "launchable", "explain_resources"]


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


def launchable(kernel: Any) -> Any:
    """The object to index with a grid and call: ``launchable(k)[grid](*args)``."""
    return _wrap_triton(kernel) if USES_WRAP_TRITON else kernel


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
            "call under attnlens.use_backend('reference') (plain PyTorch) instead."
        )
    return ""
