"""The two functions ``register()`` adds to transformers' registries: the attention function every
attention layer calls (``AttentionInterface``) and the mask function that builds the mask a model
hands its layers (``AttentionMaskInterface``).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
from typing import Any, Optional, Tuple

import torch

# The package's __init__ has checked that transformers is new enough (>= 4.53) for these.
from transformers.masking_utils import causal_mask_function, sdpa_mask

from attnlens.functional import scaled_dot_product_attention
from attnlens.integrations.huggingface._guard import (
    NAME,
    attentions_requested,
    compiling,
    note_attention_ran,
    note_mask_built,
)

try:  # transformers >= 5 (encoders build their masks through the registry too)
    from transformers.masking_utils import bidirectional_mask_function
except ImportError:
    bidirectional_mask_function = None

try:  # transformers >= 5: the hooks that fill outputs.attentions read this context variable
    from transformers.utils.output_capturing import _active_collector
except ImportError:
    _active_collector = None

__all__ = ["attention_function", "attention_mask"]

# The attribute under which ``attention_mask`` notes the mask's pattern on the mask tensor itself.
# It lives and dies with that tensor: any new tensor derived from it (a slice, a copy, a mask the
# model edits) carries no note and is used densely, which is always correct.
_LAYOUT_ATTRIBUTE = "_attnlens_layout"


@dataclasses.dataclass(frozen=True)
class _MaskLayout:
    """A boolean ``[B, 1, Nq, Nk]`` mask that equals ``causal(alignment) & window & ~key_padding_mask``.

    ``key_padding_mask`` is bool ``[B, Nk]``, True = padding, or None when the model passed no
    padding mask; ``is_causal`` False means the mask is the key padding alone (every query row the
    same); ``window`` is ``(left, right)`` as ``attnlens.scaled_dot_product_attention`` takes it
    (a sliding-window layer's ``(sliding_window - 1, 0)``), or None.
    """

    key_padding_mask: Optional[torch.Tensor]
    is_causal: bool
    causal_alignment: str
    seqlen_q: int
    seqlen_k: int
    window: Optional[Tuple[int, int]] = None


def _layout_of_new_mask(mask: torch.Tensor, mask_kwargs: dict) -> Optional[_MaskLayout]:
    """The pattern of a mask that ``sdpa_mask`` just built from ``mask_kwargs``, or None when it is
    not one the kernels can take without the dense mask."""
    if mask.dim() != 4 or mask.dtype != torch.bool or mask.shape[1] != 1:
        return None
    seqlen_q, seqlen_k = mask.shape[2], mask.shape[3]
    if seqlen_q == 0:
        return None
    mask_function = mask_kwargs.get("mask_function")
    if mask_function is None:
        return None
    # The model's 2-D padding mask (True = token). All-True is no padding: "sdpa" reads it the same
    # way (one device sync per mask, not per layer), and the kernels then skip the padding reads.
    tokens = mask_kwargs.get("attention_mask")
    padded = isinstance(tokens, torch.Tensor) and not bool(tokens.all())
    if bidirectional_mask_function is not None and mask_function is bidirectional_mask_function:
        # Padding only: every query row is the same row of kept keys.
        return _MaskLayout(~mask[:, 0, 0, :] if padded else None, False, "top_left", seqlen_q, seqlen_k)
    local_size = mask_kwargs.get("local_size")
    if mask_function is not causal_mask_function and not isinstance(local_size, int):
        return None  # chunks, packed sequences, custom overlays: dense
    # transformers >= 5 names the positions of the first query and key; older versions pass a
    # cache_position tensor instead, which would need a device sync to read.
    q_offset, kv_offset = mask_kwargs.get("q_offset"), mask_kwargs.get("kv_offset", 0)
    if not isinstance(q_offset, int) or not isinstance(kv_offset, int):
        return None
    offset = q_offset - kv_offset  # key j is visible to query i iff j <= i + offset
    if offset == 0:
        alignment = "top_left"
    elif offset == seqlen_k - seqlen_q:
        alignment = "bottom_right"
    else:  # e.g. a static cache longer than what has been seen: keep the dense mask
        return None
    if mask_function is causal_mask_function:
        # The last query sees every key that any query sees (causality only grows with i), so
        # its row is exactly the keys padding leaves; causal & that row rebuilds the whole mask.
        return _MaskLayout(~mask[:, 0, -1, :] if padded else None, True, alignment, seqlen_q, seqlen_k)
    # A sliding-window causal mask (create_sliding_window_causal_mask tells sdpa_mask its window as
    # local_size: key j visible iff i - local_size < j <= i). Its mask function may carry other
    # overlays too, so the pattern is checked against the mask itself before it replaces it.
    window = (local_size - 1, 0)
    keep = mask[:, 0].any(dim=1)  # [B, Nk]: the keys some query sees
    rows = torch.arange(seqlen_q, device=mask.device)[:, None] + offset
    cols = torch.arange(seqlen_k, device=mask.device)[None, :]
    pattern = (cols <= rows) & (cols >= rows - window[0])
    if not torch.equal(mask[:, 0], pattern[None] & keep[:, None, :]):
        return None
    return _MaskLayout(None if bool(keep.all()) else ~keep, True, alignment, seqlen_q, seqlen_k, window)


def attention_mask(*args: Any, **kwargs: Any) -> Optional[torch.Tensor]:
    """The mask function registered in ``AttentionMaskInterface``.

    Takes whatever transformers passes to a mask function and returns the mask ``sdpa_mask``
    builds for it: bool ``[B, 1, Nq, Nk]``, True = attend (broadcast over the batch, or over the
    queries, where padding does not vary them, so it costs at most ``Nq * Nk`` bools then). Sliding
    windows, chunked attention and packed sequences are therefore in the mask, as for ``"sdpa"``.

    Unlike ``"sdpa"`` it never returns None for "the layer's ``is_causal`` flag suffices": some
    models build a causal mask for layers whose flag says otherwise (NLLB-MoE's decoder), and
    ``"sdpa"`` then silently drops causality. The mask states the pattern; for padding-only,
    causal-plus-padding and sliding-window masks (the last checked against the mask itself) the
    pattern is also noted on the returned tensor, so that ``attention_function`` hands the kernels
    ``key_padding_mask``/``is_causal``/``window`` (which let them skip masked key blocks) instead
    of the dense mask.
    """
    note_mask_built()
    if not args:
        kwargs = {**kwargs, "allow_is_causal_skip": False, "allow_is_bidirectional_skip": False}
    mask = sdpa_mask(*args, **kwargs)
    # Dynamo cannot be relied on to keep Python attributes set on tensors made inside a graph;
    # compiled models use the dense mask, which is equally correct.
    if mask is None or args or compiling():
        return mask
    layout = _layout_of_new_mask(mask, kwargs)
    if layout is not None:
        setattr(mask, _LAYOUT_ATTRIBUTE, layout)
    return mask


def _unsupported(module: torch.nn.Module, kwargs: dict) -> None:
    """Raise for the features of eager attention that attnlens does not compute, rather than
    quietly returning something else."""
    if kwargs.get("head_mask") is not None and _eager_reads_head_mask(type(module).__module__):
        raise NotImplementedError(
            f"attn_implementation={NAME!r} does not support head_mask; use attn_implementation='eager' to mask heads"
        )
    if kwargs.get("cache") is not None:
        raise NotImplementedError(
            f"attn_implementation={NAME!r} does not support continuous batching (a paged cache); "
            f"use model.generate without it, or attn_implementation='sdpa' for serving"
        )


@functools.lru_cache(maxsize=None)
def _eager_reads_head_mask(module_name: str) -> bool:
    """Whether the modeling code of an attention layer applies ``head_mask``.

    transformers 4.x eager attention multiplied the weights by it; transformers 5 removed it from
    every model, whose layers pass it on to the attention function unread, so eager ignores it and
    attnlens does the same. Code that cannot be read counts as applying it (attnlens then raises
    rather than guess).
    """
    try:
        source = inspect.getsource(sys.modules[module_name])
    except (KeyError, OSError, TypeError):
        return True
    return "head_mask" in source


@functools.lru_cache(maxsize=None)
def _weights_exclude_sink(module_name: str) -> bool:
    """Whether a model's eager attention applies its sinks after the softmax, as a sigmoid scale on
    the output (Granite-SWA), so that the weights it returns are normalised over the real keys
    alone; most sink models (gpt-oss) return the weights of the softmax that includes the sink."""
    eager = getattr(sys.modules.get(module_name), "eager_attention_forward", None)
    try:
        source = inspect.getsource(eager) if eager is not None else ""
    except (OSError, TypeError):
        return False
    return "sinks" in source and ".sigmoid(" in source


def _weights_requested(kwargs: dict) -> bool:
    """Whether this forward call wants attention weights.

    transformers >= 5 records ``outputs.attentions`` with forward hooks on the attention modules
    and does not always forward ``output_attentions`` to the attention function (GPT-2 drops it),
    so the active recorder is asked as well; older versions pass ``output_attentions`` down. Models
    that gather the weights their layers return without saying so to the attention function
    (Falcon) are caught by the guard, which saw the model's own ``output_attentions``.
    """
    if kwargs.get("output_attentions") or attentions_requested():
        return True
    if _active_collector is None:
        return False
    recording = _active_collector.get()
    return bool(recording) and any(str(key).endswith("attentions") for key in recording)


def _resolve_mask(
    mask: Optional[torch.Tensor], causal: bool, batch: int, seqlen_q: int, seqlen_k: int
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], bool, str, Optional[Tuple[int, int]]]:
    """``(attn_mask, key_padding_mask, is_causal, causal_alignment, window)`` for the kernels,
    from the mask a model passes its attention layers and the layer's causality."""
    if mask is None:
        # As "sdpa": with no mask, a causal layer is top-left causal (a prefill, or a static cache
        # whose unwritten tail only the top-left alignment hides), and one query (decoding) sees
        # every key it was given.
        return None, None, causal and seqlen_q > 1, "top_left", None
    layout = None if compiling() else getattr(mask, _LAYOUT_ATTRIBUTE, None)
    if layout is not None and (layout.seqlen_q, layout.seqlen_k) == (seqlen_q, seqlen_k):
        return None, layout.key_padding_mask, layout.is_causal, layout.causal_alignment, layout.window
    if (
        mask.dtype == torch.bool
        and mask.dim() == 4
        and mask.shape[-1] == seqlen_k
        and (mask.shape[1] == 1 or mask.stride(1) == 0)
        and (mask.shape[2] == 1 or mask.stride(2) == 0)
    ):
        # The same row for every query and head (single-query decoding, or a broadcast padding
        # mask): that row is a key padding mask, which lets the kernels skip padded key blocks.
        keep = mask[:, 0, 0, :]
        return None, ~keep.expand(batch, seqlen_k), False, "top_left", None
    return mask, None, False, "top_left", None


def attention_function(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    dropout: float = 0.0,
    scaling: Optional[float] = None,
    is_causal: Optional[bool] = None,
    **kwargs: Any,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The attention function registered in ``AttentionInterface``.

    Arguments as transformers passes them to every attention function: ``query``
    ``[B, Hq, Nq, D]``, ``key``/``value`` ``[B, Hkv, Nk, D]`` (Hq a multiple of Hkv: grouped-query
    attention runs without repeating keys), ``attention_mask`` None, bool (True = attend) or float
    (added to the scores) broadcastable to ``[B, Hq, Nq, Nk]``, ``dropout`` (applied only while
    ``module.training``), ``scaling`` (None: ``1/sqrt(D)``), ``is_causal`` (None: ``module.is_causal``,
    default True; used, as by "sdpa", only when there is no mask, since a mask already carries
    causality). ``position_bias`` (T5-style relative bias) is added to the scores. ``softcap``
    (Gemma 2) soft-caps the scores and ``s_aux`` / ``sinks`` (gpt-oss) are attention sinks, both
    computed by the kernels. ``sliding_window`` is applied through the mask transformers builds,
    which ``attention_mask`` recognises and hands on as a window: key blocks outside it are
    skipped.

    Returns ``(attn_output [B, Nq, Hq, Dv], attn_weights [B, Hq, Nq, Nk] or None)``: weights only when
    the call asked for them (``output_attentions=True``). A query row with nothing to attend to gives
    output 0 and weights 0 (eager gives a uniform row there).

    ``head_mask`` is ignored where the model's own eager code ignores it (every model in
    transformers 5) and refused where that code applies it (transformers 4.x).

    Raises ``NotImplementedError`` for head masks a model applies and paged caches.
    """
    note_attention_ran()
    _unsupported(module, kwargs)
    batch, heads_q, seqlen_q, _ = query.shape
    seqlen_k = key.shape[2]
    causal = is_causal if is_causal is not None else bool(getattr(module, "is_causal", True))
    resolved = _resolve_mask(attention_mask, causal, batch, seqlen_q, seqlen_k)
    attn_mask, key_padding_mask, causal, alignment, window = resolved

    sliding_window = kwargs.get("sliding_window")
    if sliding_window is not None and attention_mask is None and causal and seqlen_k > sliding_window:
        # Only a mask carries the window; without one the result would silently be full attention.
        raise NotImplementedError(
            f"sliding_window={sliding_window} reached attn_implementation={NAME!r} without an attention "
            f"mask for {seqlen_k} keys; attnlens applies sliding windows through the mask transformers "
            f"builds (call attnlens.integrations.huggingface.register() before the model runs)"
        )

    position_bias = kwargs.get("position_bias")
    if position_bias is not None:
        if attn_mask is None:
            attn_mask = position_bias
        elif attn_mask.dtype == torch.bool:
            attn_mask = torch.where(attn_mask, position_bias, float("-inf"))
        else:
            attn_mask = position_bias + attn_mask
        if attn_mask.requires_grad and torch.is_grad_enabled():
            raise NotImplementedError(
                f"attn_implementation={NAME!r} computes no gradient for position_bias (a learned "
                f"relative bias); train this model with attn_implementation='eager', or run it "
                f"under torch.no_grad()"
            )

    training = getattr(module, "training", True)
    return_weights = _weights_requested(kwargs)
    sinks = kwargs.get("s_aux", kwargs.get("sinks"))
    if isinstance(sinks, torch.Tensor) and sinks.dim() == 4 and sinks.shape[-1] == 1:
        sinks = sinks[..., 0]  # per-token sinks as a logit column [B, H, Nq, 1] (Inkling 2)
    # Models that scale the output by the sink's complement return weights normalised without it.
    renormalise = sinks is not None and bool(return_weights) and _weights_exclude_sink(type(module).__module__)
    result = scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attn_mask,
        dropout_p=float(dropout) if training else 0.0,
        is_causal=causal,
        scale=scaling,
        enable_gqa=heads_q != key.shape[1],
        key_padding_mask=key_padding_mask,
        causal_alignment=alignment,
        return_weights=return_weights,
        softcap=kwargs.get("softcap"),
        sinks=sinks,
        window=window,
        return_sink_share=renormalise,
    )
    if renormalise:
        out, weights, share = result
        rest = 1.0 - share  # the real keys' share; 0 only for a row with nothing to attend to
        weights = weights / torch.where(rest > 0, rest, torch.ones_like(rest))[..., None]
    else:
        out, weights = result if return_weights else (result, None)
    # transformers expects [B, Nq, H, Dv]; the kernels write the output in the query's layout, which
    # for a model's transposed projections makes this transpose contiguous already (no copy).
    return out.transpose(1, 2).contiguous(), weights
