"""attnlens: fused Triton attention that returns the exact attention weights.

    import attnlens
    out, weights = attnlens.scaled_dot_product_attention(q, k, v, is_causal=True, return_weights=True)

See the README for the mask conventions, the modules and the visualisation tour.
"""

from attnlens import reference
from attnlens.data import (
    BOS_ID,
    EOS_ID,
    NUM_SPECIAL_TOKENS,
    PAD_ID,
    TASKS,
    DatasetSummary,
    SyntheticData,
    generate_synthetic_data,
    validate_dataset,
)
from attnlens.functional import (
    kernels_available,
    scaled_dot_product_attention,
    selected_backend,
    use_backend,
)
from attnlens.masks import Masks, causal_mask, create_masks, mask_future_tokens, padding_mask
from attnlens.positional import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    apply_rotary,
    sinusoidal_positional_encoding,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    # attention
    "kernels_available",
    "reference",
    "scaled_dot_product_attention",
    "selected_backend",
    "use_backend",
    # masks
    "Masks",
    "causal_mask",
    "create_masks",
    "mask_future_tokens",
    "padding_mask",
    # positional encodings
    "LearnedPositionalEmbedding",
    "RotaryEmbedding",
    "SinusoidalPositionalEncoding",
    "apply_rotary",
    "sinusoidal_positional_encoding",
    # synthetic data
    "BOS_ID",
    "EOS_ID",
    "NUM_SPECIAL_TOKENS",
    "PAD_ID",
    "TASKS",
    "DatasetSummary",
    "SyntheticData",
    "generate_synthetic_data",
    "validate_dataset",
]
