"""attnlens.kernels: the Triton attention kernels and their launchers.

Nothing here knows about autograd or modules: launchers take validated tensors and return
tensors. ``attnlens.scaled_dot_product_attention`` is the public entry point; use these directly
only to build something new on the kernels.

- ``launch_forward`` / ``launch_weights`` (forward.py), ``launch_backward`` (backward.py),
  ``launch_dropout_mask`` (dropout.py): one launcher per kernel family;
- ``AttentionProblem`` and the arguments every kernel shares (launch.py, host code);
- ``tiles.py``: the device building blocks; ``config.py``: launch configurations per GPU;
  ``report.py``: the ahead-of-time compile report.
"""

from attnlens.kernels.backward import launch_backward
from attnlens.kernels.config import KernelConfig, get_config, override_config
from attnlens.kernels.dropout import launch_dropout_mask
from attnlens.kernels.forward import launch_forward, launch_weights, row_stats_to_lse
from attnlens.kernels.launch import INTERPRETED, USES_WRAP_TRITON, AttentionProblem, empty_like_query

__all__ = [
    "INTERPRETED",
    "USES_WRAP_TRITON",
    "AttentionProblem",
    "KernelConfig",
    "empty_like_query",
    "get_config",
    "launch_backward",
    "launch_dropout_mask",
    "launch_forward",
    "launch_weights",
    "override_config",
    "row_stats_to_lse",
]
