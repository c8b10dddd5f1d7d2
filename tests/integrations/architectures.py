"""Every architecture transformers' auto mappings name, as a tiny random model with synthetic inputs.

The list comes from ``MODEL_MAPPING_NAMES`` (one base model class per model type); the other
mappings say what kind of model it is and which class to build (a causal LM for a decoder, so that
it can generate). Each config is the model type's default config with every size field a
transformers config uses shrunk (``shrink``): hidden 32, 2 layers, 4 heads (2 key/value heads
where the model groups them), head dim 8, vocabulary 128, 4 experts, 32x32 images, a window of 4.
``FAMILY_FIELDS`` holds the few fields that a family needs set by hand. An architecture that still
cannot be built or run this way is skipped with the reason, never dropped.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from typing import Any, Dict, List, Optional, Tuple

import torch
import transformers
from transformers.models.auto import modeling_auto
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

BATCH = 3
TEXT_LENGTH = 9  # the encoder's (or only) sequence
DECODER_LENGTH = 6  # a seq2seq decoder's sequence: differs, so the two are told apart by shape
PADDING = (0, 2, 4)  # tokens of padding per row (right padding)
VOCAB = 128
AUDIO_SAMPLES = 3200  # raw audio: 10 frames after a wav2vec2-style feature extractor
AUDIO_FRAMES = 16  # spectrogram frames
# Models whose small config still holds more parameters than this are skipped: their init alone
# would take seconds (convolutional codecs, nets whose widths are not in the shrunk fields).
MAX_PARAMETERS = 5_000_000

HIDDEN = (
    "hidden_size",
    "d_model",
    "n_embd",
    "embed_dim",
    "embedding_size",
    "projection_dim",
    "out_hidden_size",
    "text_hidden_size",
    "word_embed_proj_dim",
    "output_hidden_size",
    "pooler_output_size",
)
LAYERS = (
    "num_hidden_layers",
    "num_layers",
    "n_layer",
    "n_layers",
    "encoder_layers",
    "decoder_layers",
    "num_decoder_layers",
    "num_encoder_layers",
    "depth",
)
HEADS = (
    "num_attention_heads",
    "n_head",
    "n_heads",
    "num_heads",
    "encoder_attention_heads",
    "decoder_attention_heads",
)
FEED_FORWARD = (
    "intermediate_size",
    "ffn_dim",
    "encoder_ffn_dim",
    "decoder_ffn_dim",
    "d_ff",
    "n_inner",
    "moe_intermediate_size",
    "shared_expert_intermediate_size",
    "mlp_dim",
    "decoder_intermediate_size",
)
# Upper bounds: a field already smaller keeps its value.
AT_MOST = {
    "head_dim": 8,
    "global_head_dim": 8,
    "d_kv": 8,
    "q_lora_rank": 16,
    "kv_lora_rank": 16,
    "qk_nope_head_dim": 8,
    "qk_rope_head_dim": 8,
    "v_head_dim": 8,
    "qk_head_dim": 16,
    "num_experts": 4,
    "n_routed_experts": 4,
    "num_local_experts": 4,
    "num_experts_per_tok": 2,
    "patch_size": 8,
    "sliding_window": 4,
}
EXACTLY = {"image_size": 32}

# Fields a family needs beyond the generic shrinking (the only hand-written part of the sweep).
FAMILY_FIELDS: Dict[str, Dict[str, Any]] = {
    # The encoder takes exactly 2 * max_source_positions spectrogram frames.
    "whisper": {"max_source_positions": AUDIO_FRAMES // 2},
    # Its full-attention layers' head size is a constructor argument, not a field.
    "embedding_gemma2_text": {"global_head_dim": 8},
    "gemma4_unified_text": {"global_head_dim": 8},
    # Its first and last layers are convolutional: two layers would leave no attention.
    "sam3_lite_text_text_model": {"num_hidden_layers": 3},
}


class Unbuildable(Exception):
    """The sweep cannot build or feed this architecture; the message is the reason."""


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One model type of transformers' auto mappings and the class the sweep builds for it."""

    model_type: str
    kind: str  # decoder | encoder | seq2seq | vision | speech | multimodal | other
    class_name: str

    @property
    def generates(self) -> bool:
        return self.kind in ("decoder", "seq2seq")


def _in(model_type: str, *mappings: str) -> bool:
    return any(model_type in getattr(modeling_auto, name, {}) for name in mappings)


def kind_of(model_type: str) -> str:
    """What a model type is, by the task mappings that list it."""
    if _in(model_type, "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES", "MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES"):
        return "multimodal"
    if _in(model_type, "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES"):
        return "seq2seq"
    if _in(
        model_type,
        "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES",
        "MODEL_FOR_CTC_MAPPING_NAMES",
        "MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES",
    ):
        return "speech"
    if _in(model_type, "MODEL_FOR_MASKED_LM_MAPPING_NAMES"):
        return "encoder"  # BERT and its kin, though they have a causal-LM head too
    if _in(model_type, "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"):
        return "decoder"
    if _in(model_type, "MODEL_FOR_IMAGE_MAPPING_NAMES", "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES"):
        return "vision"
    if _in(model_type, "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES", "MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES"):
        return "encoder"
    return "other"


def architectures() -> List[Architecture]:
    """Every model type with a base model in ``MODEL_MAPPING_NAMES``, in the mapping's order."""
    found = []
    for model_type, class_name in modeling_auto.MODEL_MAPPING_NAMES.items():
        if isinstance(class_name, (tuple, list)):
            class_name = class_name[0]
        kind = kind_of(model_type)
        if kind == "decoder":
            class_name = modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]
        elif kind == "seq2seq":
            class_name = modeling_auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES[model_type]
        found.append(Architecture(model_type, kind, class_name))
    return found


def model_class(architecture: Architecture) -> type:
    try:
        return getattr(transformers, architecture.class_name)
    except (AttributeError, ImportError) as exc:  # a backend it needs is missing (torchaudio, timm...)
        raise Unbuildable(f"{architecture.class_name} cannot be imported: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:200]


def shrink(fields: Dict[str, Any]) -> Dict[str, Any]:
    """The overrides that make a config (given as ``to_dict()``) tiny; sub-configs recursively."""
    out: Dict[str, Any] = {}
    for key, value in fields.items():
        if isinstance(value, dict) and "model_type" in value:
            out[key] = {**value, **shrink(value)}
            continue
        if key in EXACTLY and isinstance(value, (list, tuple)):  # (height, width): 512x864 -> 32x32
            out[key] = [EXACTLY[key]] * len(value)
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            continue
        if key in HIDDEN:
            out[key] = 32
        elif key in LAYERS:
            out[key] = 2
        elif key in HEADS:
            out[key] = 4
        elif key == "num_key_value_heads":
            heads = next((fields[h] for h in HEADS if isinstance(fields.get(h), int)), value)
            # keep the model's kind of attention: multi-head, multi-query or grouped
            out[key] = 4 if value == heads else (1 if value == 1 else 2)
        elif key in FEED_FORWARD:
            out[key] = 64
        elif key in AT_MOST:
            out[key] = min(value, AT_MOST[key])
        elif key in EXACTLY:
            out[key] = EXACTLY[key]
        elif key == "vocab_size":
            out[key] = min(value, VOCAB)
    if "head_dim" in fields and fields["head_dim"] is None and "hidden_size" in out:
        out["head_dim"] = AT_MOST["head_dim"]  # some models read the field without deriving it
    rope = fields.get("rope_parameters")
    if isinstance(rope, dict) and isinstance(rope.get("mrope_section"), list):
        # Multimodal rotary sections (time, height, width) must split the rotated half of a head.
        parts, half = len(rope["mrope_section"]), AT_MOST["head_dim"] // 2
        out["rope_parameters"] = {**rope, "mrope_section": [half - parts + 1] + [1] * (parts - 1)}
    vocab = out.get("vocab_size", fields.get("vocab_size"))
    if isinstance(vocab, int):
        # Special token ids past the shrunk vocabulary move to its top, keeping distinct ids distinct.
        moved: Dict[int, int] = {}
        for key, value in fields.items():
            if key.endswith(("token_id", "token_index")) and isinstance(value, int) and value >= vocab:
                out[key] = moved.setdefault(value, vocab - 1 - len(moved))
    layers = out.get("num_hidden_layers")
    if isinstance(fields.get("layer_types"), list) and layers:
        # One layer of each type the model mixes (sliding and full attention, ...), at least `layers`.
        types = list(dict.fromkeys(fields["layer_types"]))
        out["layer_types"] = (types * layers)[: max(layers, len(types))]
        out["num_hidden_layers"] = len(out["layer_types"])
    return out


def tiny_config(architecture: Architecture) -> Any:
    config_class = CONFIG_MAPPING[architecture.model_type]
    try:
        default = config_class()
        overrides = shrink(default.to_dict())
        overrides.update(FAMILY_FIELDS.get(architecture.model_type, {}))
        return config_class(**overrides)
    except Exception as exc:  # noqa: BLE001 - any failure is the reason it is skipped
        raise Unbuildable(f"no small config: {_first_line(exc)}") from exc


def default_config(architecture: Architecture) -> Optional[Any]:
    try:
        return CONFIG_MAPPING[architecture.model_type]()
    except Exception:  # noqa: BLE001
        return None


def build(architecture: Architecture, config: Any, implementation: str) -> torch.nn.Module:
    """The model, in eval mode, with ``implementation``; raises what ``from_config`` raises."""
    cls = model_class(architecture)
    config = copy.deepcopy(config)
    return cls._from_config(config, attn_implementation=implementation).eval()


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_size(architecture: Architecture, config: Any) -> None:
    """Raise ``Unbuildable`` when the small config still makes a big model, counted on the meta
    device (no memory, no initialisation) before anything is built for real."""
    try:
        with torch.device("meta"):
            count = parameters(build(architecture, config, "eager"))
    except Exception:  # noqa: BLE001 - some models cannot be built on meta; they are counted later
        return
    if count > MAX_PARAMETERS:
        raise Unbuildable(f"its small config still has {count / 1e6:.1f}M parameters")


# ---- inputs ----------------------------------------------------------------------------------


def _special_ids(config: Any) -> set:
    ids = set()
    for sub in all_configs(config):
        for key, value in sub.to_dict().items():
            if key.endswith(("token_id", "token_index", "token_ids")):
                for item in value if isinstance(value, (list, tuple)) else [value]:
                    if isinstance(item, int):
                        ids.add(item)
    return ids


def all_configs(config: Any) -> List[Any]:
    """``config`` and its sub-configs, recursively."""
    out, pending = [], [config]
    while pending:
        current = pending.pop()
        if current is None or any(current is seen for seen in out):
            continue
        out.append(current)
        pending.extend(getattr(current, key, None) for key in getattr(current, "sub_configs", {}) or {})
    return out


def _find(config: Any, *names: str) -> Optional[Any]:
    for sub in all_configs(config):
        for name in names:
            value = getattr(sub, name, None)
            if value is not None:
                return value
    return None


@dataclasses.dataclass
class Inputs:
    """Keyword arguments for a forward call, and which query positions are real tokens."""

    kwargs: Dict[str, Any]
    real: Optional[torch.Tensor]  # bool [B, N]: False at padding; None when nothing is padded
    parts: Tuple[str, ...]  # the modalities fed: "text", "image", "audio"


def _token_ids(config: Any, generator: torch.Generator, length: int) -> torch.Tensor:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    vocab = getattr(text, "vocab_size", None)
    if not isinstance(vocab, int) or vocab < 8:
        raise Unbuildable(f"no usable vocabulary size ({vocab!r})")
    allowed = torch.tensor([i for i in range(min(vocab, VOCAB)) if i not in _special_ids(config)])
    picks = torch.randint(0, len(allowed), (BATCH, length), generator=generator)
    return allowed[picks]


def text_inputs(config: Any, generator: torch.Generator, length: int = TEXT_LENGTH, padding: str = "right"):
    """Token ids and a transformers attention mask (1 = token) with PADDING tokens per row."""
    input_ids = _token_ids(config, generator, length)
    attention_mask = torch.ones(BATCH, length, dtype=torch.long)
    for row, pads in enumerate(PADDING):
        if pads and padding == "right":
            attention_mask[row, length - pads :] = 0
        elif pads:
            attention_mask[row, :pads] = 0
    pad_id = _find(config, "pad_token_id")
    if isinstance(pad_id, int) and 0 <= pad_id < VOCAB:
        input_ids = input_ids.masked_fill(attention_mask == 0, pad_id)
    return input_ids, attention_mask


def _image_size(config: Any) -> Tuple[int, int]:
    size = _find(config, "image_size")
    if isinstance(size, (list, tuple)):
        return int(size[0]), int(size[-1])
    if isinstance(size, dict):
        return int(size.get("height", 32)), int(size.get("width", 32))
    return (int(size), int(size)) if isinstance(size, int) else (32, 32)


def synthetic_inputs(
    model: torch.nn.Module,
    config: Any,
    architecture: Architecture,
    with_media: bool = True,
    frames_first: bool = False,
):
    """Inputs for the forward call by what its signature takes: text (right padded), images,
    audio; ``with_media=False`` gives a multimodal model its text alone. Spectrograms are
    ``[B, bins, frames]`` (Whisper's layout), or ``[B, frames, bins]`` with ``frames_first``."""
    generator = torch.Generator().manual_seed(0)
    accepted = inspect.signature(model.forward).parameters
    kwargs: Dict[str, Any] = {}
    parts = []
    real = None
    if "input_ids" in accepted:
        input_ids, attention_mask = text_inputs(config, generator)
        kwargs["input_ids"] = input_ids
        if "attention_mask" in accepted:
            kwargs["attention_mask"] = attention_mask
            real = attention_mask.bool()
        parts.append("text")
    if "decoder_input_ids" in accepted:
        kwargs["decoder_input_ids"] = _token_ids(config, generator, DECODER_LENGTH)
    if with_media and "pixel_values" in accepted:
        channels = _find(config, "num_channels") or 3
        height, width = _image_size(config)
        kwargs["pixel_values"] = torch.randn(BATCH, int(channels), height, width, generator=generator)
        parts.append("image")
    if with_media and "input_values" in accepted:
        kwargs["input_values"] = torch.randn(BATCH, AUDIO_SAMPLES, generator=generator)
        parts.append("audio")
    elif with_media and "input_features" in accepted:
        bins = _find(config, "num_mel_bins", "feature_size", "input_feat_per_channel") or 80
        shape = (BATCH, AUDIO_FRAMES, int(bins)) if frames_first else (BATCH, int(bins), AUDIO_FRAMES)
        kwargs["input_features"] = torch.randn(*shape, generator=generator)
        parts.append("audio")
    if not parts:
        raise Unbuildable("its forward takes none of input_ids, pixel_values, input_values, input_features")
    return Inputs(kwargs, real, tuple(parts))
