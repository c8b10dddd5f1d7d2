"""attnlens: fused Triton attention that returns the exact attention weights.

    import attnlens
    out, weights = attnlens.scaled_dot_product_attention(q, k, v, is_causal=True, return_weights=True)

See the README for the mask conventions, the modules and the visualisation tour.
"""

from attnlens import reference
from attnlens.functional import (
    kernels_available,
    scaled_dot_product_attention,
    selected_backend,
    use_backend,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "kernels_available",
    "reference",
    "scaled_dot_product_attention",
    "selected_backend",
    "use_backend",
]
