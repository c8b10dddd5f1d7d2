"""attnlens.tiny: the teaching kit built on the attention library.

Synthetic sequence tasks whose right attention is known, the masks of their encoder-decoder
batches, a tiny transformer on ``attnlens.MultiHeadAttention``, its training loop and the visual
tour::

    import attnlens
    from attnlens import tiny

    model, history, data = tiny.train_on_task("reverse", seed=0)
    with attnlens.capture_attention(model) as captured:
        model(data.held_out.src[:1], data.held_out.tgt[:1, :-1])

The tour (``attnlens.tiny.tour.run_tour``, what ``python -m attnlens demo`` runs) draws with
``attnlens.viz`` and so needs matplotlib; it is a submodule that ``import attnlens.tiny`` does not
load. ``import attnlens`` loads none of this package: the kit's names at the top level
(``attnlens.train_model``, ``attnlens.PAD_ID``, ...) import it on first use.
"""

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
from attnlens.tiny.masks import EncoderDecoderMasks, create_masks
from attnlens.tiny.model import (
    MODEL_KINDS,
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
    default_step,
    evaluate_model,
    generation_accuracy,
    make_dataloaders,
    train_model,
    train_on_task,
    warmup_schedule,
)

__all__ = [
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
    "EncoderDecoderMasks",
    "create_masks",
    # the tiny transformer
    "MODEL_KINDS",
    "DecoderWeights",
    "TransformerDecoderLayer",
    "TransformerEncoderLayer",
    "TransformerModel",
    "build_transformer_model",
    # training
    "DEFAULT_TASK_CONFIG",
    "TaskData",
    "TrainingHistory",
    "default_step",
    "evaluate_model",
    "generation_accuracy",
    "make_dataloaders",
    "train_model",
    "train_on_task",
    "warmup_schedule",
]
