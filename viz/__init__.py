"""attnlens.viz: matplotlib pictures of attention weights, masks and positional encodings, and the
interactive explorer (``explorer``: one self-contained HTML page of every layer and head).

Every function takes torch tensors or numpy arrays (plus token labels) and never calls a kernel,
so weights from any source can be drawn. Drawing functions return a ``matplotlib.figure.Figure``,
never call ``plt.show()`` and never pick a backend; single-panel ones accept ``ax=``, multi-panel
ones ``fig=``. Masks follow torch's ``attn_mask`` convention: bool, True = attend.
"""

from attnlens.viz.explorer import Explorer, explorer
from attnlens.viz.heatmaps import attention_heads, attention_heatmap, attention_layers
from attnlens.viz.masks import mask_picture
from attnlens.viz.positional import (
    positional_encoding_curves,
    positional_encoding_heatmap,
    positional_encoding_similarity,
    positional_similarity_matrix,
)
from attnlens.viz.rollout import attention_rollout, attention_rollout_heatmap
from attnlens.viz.statistics import attention_received_bar, attention_statistics, attention_statistics_table
from attnlens.viz.training import training_curves

__all__ = [
    "Explorer",
    "explorer",
    "attention_heatmap",
    "attention_heads",
    "attention_layers",
    "attention_received_bar",
    "attention_rollout",
    "attention_rollout_heatmap",
    "attention_statistics",
    "attention_statistics_table",
    "mask_picture",
    "positional_encoding_curves",
    "positional_encoding_heatmap",
    "positional_encoding_similarity",
    "positional_similarity_matrix",
    "training_curves",
]
