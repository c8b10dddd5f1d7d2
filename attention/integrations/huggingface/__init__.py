"""Hugging Face transformers bridge: ``attn_implementation="attnlens"``.

::

    from attnlens.integrations import huggingface
    name = huggingface.register()                    # "attnlens"
    model = AutoModel.from_pretrained(model_id, attn_implementation=name)
    out = model(**batch, output_attentions=True)     # out.attentions: exact weights, fused kernels

``register()`` adds two functions to transformers' registries under the same name:

- ``attention_function`` in ``AttentionInterface``: what every attention layer calls. It runs
  ``attnlens.scaled_dot_product_attention`` and returns the weights only when the forward call
  asked for them (``output_attentions=True``), so ordinary calls stay on the weight-free path.
- ``attention_mask`` in ``AttentionMaskInterface``: builds the mask a model hands to its layers.
  Without an entry there transformers builds no mask at all for a custom implementation, and
  padding and causality would be silently lost. It builds exactly the boolean mask transformers
  builds for ``"sdpa"`` (True = attend, or None when ``is_causal`` suffices), and for the two
  common patterns (padding only; causal plus padding) also notes that pattern on the mask, so the
  layers pass ``key_padding_mask`` and ``is_causal`` to the kernels, which then skip key blocks
  that are wholly masked instead of reading a dense mask for every block.

and makes transformers check each model that asks for ``"attnlens"``: ``from_pretrained``,
``from_config`` and ``set_attn_implementation`` refuse, with a ``ValueError`` naming the reason
and the alternative, a model attnlens cannot run (``unsupported_reason``: layers that compute
attention themselves, attention sinks, soft-capped scores). Every accepted model carries a
run-time guard: a forward that built its mask through attnlens but never called the attnlens
attention function raises ``RuntimeError`` instead of returning silently wrong results.

Needs transformers >= 4.53, the first version that builds every model's masks through
``AttentionMaskInterface``. transformers >= 5 is where it is complete: there encoders (BERT) use
``AttentionInterface`` too, every model's ``output_attentions`` reaches the kernels (4.x GPT-2 never
tells the attention function), and the padded-causal pattern is recognised (4.x passes a cache
position tensor instead of offsets, so those masks are read densely: correct, without block skipping).
See docs/huggingface.md for the architectures tested and how.
"""

from __future__ import annotations

try:
    from transformers import AttentionInterface

    # transformers >= 4.53 builds every model's masks through this registry; before it, each model
    # built its own, with model-specific conventions (GPT-2's eager code added causality itself,
    # so a custom implementation silently lost it).
    from transformers.masking_utils import AttentionMaskInterface
except ImportError as _exc:  # transformers missing, or older than 4.53
    raise ImportError(
        "attnlens.integrations.huggingface needs transformers >= 4.53 (AttentionInterface and "
        "AttentionMaskInterface); install it with: pip install 'attnlens[hf]'"
    ) from _exc

from attnlens.integrations.huggingface._functions import attention_function, attention_mask
from attnlens.integrations.huggingface._guard import NAME
from attnlens.integrations.huggingface._support import (
    attention_outside_interface,
    install_load_checks,
    unsupported_reason,
)

__all__ = [
    "NAME",
    "register",
    "attention_function",
    "attention_mask",
    "unsupported_reason",
    "attention_outside_interface",
]


def register() -> str:
    """Make ``attn_implementation="attnlens"`` available to every transformers model that uses
    ``AttentionInterface``; returns that name. Calling it again changes nothing.

    Registers ``attention_function`` and ``attention_mask`` (so padding and causal masks reach the
    kernels) in transformers' global registries, which every model consults at call time: models
    loaded before ``register()`` can switch with ``model.set_attn_implementation("attnlens")``.
    It also wraps ``PreTrainedModel.get_correct_attn_implementation`` and
    ``PreTrainedModel.set_attn_implementation`` (the checks transformers runs when a model is
    built or switched) so that asking for ``"attnlens"`` refuses the models in
    ``unsupported_reason`` and guards the others; other implementations pass through unchanged.
    """
    AttentionInterface.register(NAME, attention_function)
    AttentionMaskInterface.register(NAME, attention_mask)
    install_load_checks()
    return NAME
