"""The run-time guard: a forward that built an attnlens mask must also have run attnlens attention.

A model whose layers compute attention themselves (instead of calling ``AttentionInterface``) still
asks ``AttentionMaskInterface`` for its mask, and then reads that mask with its own conventions:
the boolean "True = attend" mask becomes an additive bias, and padding and causality are lost
without an error. The load-time checks (``_support``) refuse the models known to do this; this guard
catches any other at the end of the forward in which it happens.

Every model accepted at load carries a forward pre-hook and a forward hook. The pre-hook opens a
record on a per-thread stack, the mask and attention functions count into the innermost record,
and the forward hook closes it (adding its counts to the enclosing model's record, so a model that
wraps another one sees what the inner one did) and raises when masks were built but no attention
ran.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from typing import Any, Dict, List

import torch

NAME = "attnlens"

# Set on a model when the hooks are attached, so attaching twice (set_attn_implementation after
# from_pretrained, or a deep copy) adds nothing.
_HOOKED = "_attnlens_guarded"


@dataclasses.dataclass
class _Record:
    masks_built: int = 0
    attention_calls: int = 0
    wants_attentions: bool = False  # the forward was asked for outputs.attentions


_state = threading.local()


def _stack() -> List[_Record]:
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    return stack


def compiling() -> bool:
    """Whether torch.compile is tracing: Python-side bookkeeping is skipped then (the compiled
    graph would not replay it)."""
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())


def note_mask_built() -> None:
    """Called by the mask function every time a model asks it for a mask (even when the mask is
    None because ``is_causal`` suffices: a layer that ignores attnlens then loses causality)."""
    stack = _stack()
    if stack:
        stack[-1].masks_built += 1


def note_attention_ran() -> None:
    """Called by the attention function on every call."""
    stack = _stack()
    if stack:
        stack[-1].attention_calls += 1


def attentions_requested() -> bool:
    """Whether the innermost guarded forward running now (or one enclosing it) was asked for
    ``outputs.attentions``: ``output_attentions=True``, or left None with the config's
    ``output_attentions`` set. Some models (Falcon) collect the weights their layers return
    without telling the attention function that they are wanted."""
    stack = _stack()
    return bool(stack) and stack[-1].wants_attentions


def _asks_for_attentions(module: torch.nn.Module, kwargs: Dict[str, Any]) -> bool:
    requested = kwargs.get("output_attentions")
    if requested is None:
        requested = getattr(getattr(module, "config", None), "output_attentions", False)
    return bool(requested)


def _open(module: torch.nn.Module, args: Any, kwargs: Dict[str, Any]) -> None:
    if compiling():
        return
    stack = _stack()
    enclosing = stack[-1].wants_attentions if stack else False
    stack.append(_Record(wants_attentions=enclosing or _asks_for_attentions(module, kwargs)))


def _close(module: torch.nn.Module, args: Any, output: Any) -> None:
    if compiling():
        return
    stack = _stack()
    if not stack:
        return
    record = stack.pop()
    if stack:  # the enclosing model's forward contains this one
        stack[-1].masks_built += record.masks_built
        stack[-1].attention_calls += record.attention_calls
    if output is None or sys.exc_info()[0] is not None:
        return  # the forward raised: let its own error through
    if record.masks_built and not record.attention_calls:
        raise RuntimeError(
            f"{type(module).__name__} ran with attn_implementation={NAME!r} and built its attention "
            f"mask through attnlens ({record.masks_built} time(s)), but none of its layers called the "
            f"attnlens attention function: its attention layers compute attention themselves and "
            f"read that mask with their own conventions, so padding and causality would be silently "
            f"wrong. Use attn_implementation='eager' (it returns attention weights too) for this model"
        )


def attach(model: torch.nn.Module) -> None:
    """Attach the guard's hooks to ``model`` (once)."""
    if getattr(model, _HOOKED, False):
        return
    model.register_forward_pre_hook(_open, with_kwargs=True)
    # always_call: the record is closed even when the forward raises.
    model.register_forward_hook(_close, always_call=True)
    setattr(model, _HOOKED, True)
