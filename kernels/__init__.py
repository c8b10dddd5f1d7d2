"""attnlens.kernels: the Triton attention kernels and their launchers.

Nothing here knows about autograd or modules: launchers take validated tensors and return
tensors. ``attnlens.scaled_dot_product_attention`` is the public entry point; use these directly
only to build something new on the kernels.
"""

from attnlens.kernels.config import KernelConfig, get_config, override_config
from attnlens.kernels.forward import (
    AttentionProblem,
    attention_forward,
    attention_weights,
    dropout_keep_mask,
    lse_to_natural,
)
from attnlens.kernels.launch import INTERPRETED, USES_WRAP_TRITON

__all__ = [
    "INTERPRETED",
    "USES_WRAP_TRITON",
    "AttentionProblem",
    "KernelConfig",
    "attention_forward",
    "attention_weights",
    "dropout_keep_mask",
    "get_config",
    "lse_to_natural",
    "override_config",
]
