"""attnlens: fused Triton attention that returns the exact attention weights.

    import attnlens
    out, weights = attnlens.scaled_dot_product_attention(q, k, v, is_causal=True, return_weights=True)

See the README for the mask conventions, the modules and the visualisation tour.
"""

from attnlens import reference
from attnlens._version import __version__
from attnlens.capture import AttentionCapture, AttentionRecord, capture_attention
from attnlens.functional import (
    dropout_mask,
    kernels_available,
    scaled_dot_product_attention,
    selected_backend,
    use_backend,
)
from attnlens.masks import Masks, causal_mask, create_masks, mask_future_tokens, padding_mask
from attnlens.modules import MultiHeadAttention, MultiHeadSelfAttention, SelfAttention
from attnlens.positional import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    apply_rotary,
    sinusoidal_positional_encoding,
)
from attnlens.tiny.data import (
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
from attnlens.tiny.model import (
    DecoderWeights,
    TransformerDecoderLayer,
    TransformerEncoderLayer,
    TransformerModel,
    build_transformer_model,
)
from attnlens.tiny.training import (
    DEFAULT_TASK_CONFIG,
    TaskData,
    TrainingHistory,
    evaluate_model,
    generation_accuracy,
    make_dataloaders,
    train_model,
    train_on_task,
    warmup_schedule,
)

__all__ = [
    "__version__",
    # attention
    "dropout_mask",
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
    # modules
    "MultiHeadAttention",
    "MultiHeadSelfAttention",
    "SelfAttention",
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
    # model, training, capture
    "DecoderWeights",
    "TransformerDecoderLayer",
    "TransformerEncoderLayer",
    "TransformerModel",
    "build_transformer_model",
    "DEFAULT_TASK_CONFIG",
    "TaskData",
    "TrainingHistory",
    "evaluate_model",
    "generation_accuracy",
    "make_dataloaders",
    "train_model",
    "train_on_task",
    "warmup_schedule",
    "AttentionCapture",
    "AttentionRecord",
    "capture_attention",
]
