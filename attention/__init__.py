"""attnlens: fused Triton attention that returns the exact attention weights.

    import attnlens
    out, weights = attnlens.scaled_dot_product_attention(q, k, v, is_causal=True, return_weights=True)

``import attnlens`` loads the attention library only: the functional SDPA, the reference, the
modules, masks, positional encodings and ``capture_attention``. The pictures are
``attnlens.viz``; the teaching kit (synthetic data, the tiny transformer, training, the tour) is
``attnlens.tiny``. The kit's names are also reachable from here (``attnlens.train_model``,
``attnlens.PAD_ID``, ...): they import ``attnlens.tiny`` on first use and are left out of
``__all__``, so ``from attnlens import *`` never loads the kit.

See the README for the mask conventions, the modules and the visualisation tour.
"""

import importlib
from typing import Any, List

from attnlens import reference
from attnlens._version import __version__
from attnlens.capture import AttentionCapture, AttentionRecord, capture_attention
from attnlens.errors import AttentionError, AttentionTypeError, AttentionValueError
from attnlens.functional import (
    dropout_mask,
    kernels_available,
    scaled_dot_product_attention,
    selected_backend,
    use_backend,
)
from attnlens.masks import causal_mask, mask_future_tokens, padding_mask
from attnlens.modules import MultiHeadAttention, MultiHeadSelfAttention, SelfAttention
from attnlens.positional import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    apply_rotary,
    sinusoidal_positional_encoding,
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
    # errors
    "AttentionError",
    "AttentionTypeError",
    "AttentionValueError",
    # masks
    "causal_mask",
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
    # capture
    "AttentionCapture",
    "AttentionRecord",
    "capture_attention",
]

# The teaching kit's names that attnlens answers to, each with its name in attnlens.tiny.
_KIT_NAMES = {
    name: name
    for name in (
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
        # masks of an encoder-decoder batch
        "create_masks",
        # the tiny transformer
        "DecoderWeights",
        "TransformerDecoderLayer",
        "TransformerEncoderLayer",
        "TransformerModel",
        "build_transformer_model",
        # training
        "DEFAULT_TASK_CONFIG",
        "TaskData",
        "TrainingHistory",
        "evaluate_model",
        "generation_accuracy",
        "make_dataloaders",
        "train_model",
        "train_on_task",
        "warmup_schedule",
    )
}
_KIT_NAMES["Masks"] = "EncoderDecoderMasks"
# Submodules reachable as attributes without an import of their own (attnlens.viz.attention_heatmap,
# attnlens.data.PAD_ID): name -> the module it is.
_LAZY_MODULES = {
    "tiny": "attnlens.tiny",
    "viz": "attnlens.viz",
    "data": "attnlens.tiny.data",
    "model": "attnlens.tiny.model",
    "training": "attnlens.tiny.training",
    "tour": "attnlens.tiny.tour",
}


def __getattr__(name: str) -> Any:
    """The kit's names and the lazy submodules, imported on first use (PEP 562)."""
    if name in _KIT_NAMES:
        value = getattr(importlib.import_module("attnlens.tiny"), _KIT_NAMES[name])
    elif name in _LAZY_MODULES:
        value = importlib.import_module(_LAZY_MODULES[name])
    else:
        raise AttributeError(f"module 'attnlens' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_KIT_NAMES) | set(_LAZY_MODULES))
