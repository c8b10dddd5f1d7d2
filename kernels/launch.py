"""How attnlens launches its kernels: compiled, through ``torch.library.wrap_triton``, or interpreted.

Triton decides at decoration time whether ``@triton.jit`` builds a compiled or an interpreted
function, from ``TRITON_INTERPRET`` as set when triton is first imported. ``INTERPRETED`` records
that decision from a kernel of our own, so it cannot disagree with how the kernels really run.
"""

from __future__ import annotations

from typing import Any

import triton
import triton.language as tl

__all__ = ["INTERPRETED", "USES_WRAP_TRITON", "launchable"]


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
