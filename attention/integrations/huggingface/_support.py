"""Which models attnlens can run, checked when a model is given ``attn_implementation="attnlens"``.

transformers accepts any registered attention implementation for any model: it never asks the
implementation. A model whose layers compute attention themselves then runs without attnlens (and
misreads the mask attnlens builds), and a model whose attention needs a feature attnlens lacks
would fail on its first forward. ``install_load_checks`` makes the three ways of choosing an
implementation (``from_pretrained``, ``from_config``, ``set_attn_implementation``) ask
``unsupported_reason`` first and refuse with a ``ValueError`` naming the reason and the
alternative, and attaches the run-time guard (``_guard``) to every model it accepts.
"""

from __future__ import annotations

import ast
import functools
import inspect
import re
import sys
from typing import Any, Dict, List, Optional, Tuple, Type

import torch
from transformers import PreTrainedModel

from attnlens.integrations.huggingface._guard import NAME, attach

__all__ = ["unsupported_reason", "attention_outside_interface", "install_load_checks"]

# transformers' own test for "this model's attention goes through AttentionInterface" (used by
# set_attn_implementation) reads the modeling file the same way: every modeling file is
# self-contained, and one that defines an attention module but never looks up
# ALL_ATTENTION_FUNCTIONS computes attention in its own code.
_ATTENTION_CLASS = re.compile(r"^class (\w*Attention\w*)\(nn\.Module\):", re.MULTILINE)
_INTERFACE = "ALL_ATTENTION_FUNCTIONS"
# What an attention module that computes attention itself calls.
_OWN_ATTENTION = re.compile(r"\bsoftmax\(|\bscaled_dot_product_attention\(")
_IDENTIFIER = re.compile(r"\b[A-Za-z_]\w*\b")
# An attention module that casts values of its own to the mask's dtype to extend the mask it was
# given (DeepSeek-V4 concatenates a float bias): a boolean "True = attend" mask cannot carry them.
_EXTENDS_MASK = re.compile(r"\.to\(\s*attention_mask\.dtype\s*\)")
_ALTERNATIVE = "use attn_implementation='eager' for this model (with output_attentions=True it returns the weights too)"
_PATCHED = "_attnlens_load_check"


@functools.lru_cache(maxsize=None)
def _module_source(module_name: str) -> Optional[str]:
    module = sys.modules.get(module_name)
    if module is None:
        return None
    try:
        return inspect.getsource(module)
    except (OSError, TypeError):  # defined in a notebook or a REPL
        return None


@functools.lru_cache(maxsize=None)
def _class_sources(module_name: str) -> Dict[str, str]:
    """The source of every top-level class of a module, by name, from one parse of the file
    (``inspect.getsource`` on a class parses the whole module again for each class)."""
    source = _module_source(module_name)
    if source is None:
        return {}
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    lines = source.splitlines(keepends=True)
    return {
        node.name: "".join(lines[node.lineno - 1 : node.end_lineno])
        for node in tree.body
        if isinstance(node, ast.ClassDef)
    }


def _class_source(cls: type) -> str:
    return _class_sources(cls.__module__).get(cls.__name__, "")


@functools.lru_cache(maxsize=None)
def _reachable_modules(model_class: type) -> Tuple[type, ...]:
    """The ``nn.Module`` classes a model class can build: those its code names, and those their
    code names, transitively (including the values of module-level tables such as
    ``GIT_SELF_ATTENTION_CLASSES``). Models built from a sub-config (``AutoModel.from_config``: a
    vision tower, a text model) are not named, and are checked when they are built."""

    def modeling_code(cls: type) -> bool:  # not torch, not transformers' shared base classes
        return cls.__module__ == model_class.__module__ or cls.__module__.startswith("transformers.models.")

    found: Dict[type, None] = {}
    # Never the family's shared *PreTrainedModel base: its weight initialisation names every module
    # of every model in the file (a vision model's base names the audio tower's layers).
    pending = [
        cls
        for cls in model_class.__mro__
        if issubclass(cls, torch.nn.Module) and (cls is model_class or not cls.__name__.endswith("PreTrainedModel"))
    ]
    while pending:
        cls = pending.pop()
        if cls in found or not modeling_code(cls):
            continue
        found[cls] = None
        namespace = vars(sys.modules[cls.__module__]) if cls.__module__ in sys.modules else {}
        for name in set(_IDENTIFIER.findall(_class_source(cls))):
            value = namespace.get(name)
            candidates = value.values() if isinstance(value, dict) else [value]
            for candidate in candidates:
                if (
                    inspect.isclass(candidate)
                    and issubclass(candidate, torch.nn.Module)
                    and not candidate.__name__.endswith("PreTrainedModel")
                ):
                    pending.append(candidate)
    return tuple(found)


def attention_outside_interface(model_class: type) -> List[str]:
    """The names of the attention modules of ``model_class`` that compute attention in their own
    code instead of through ``AttentionInterface``: every attention module of a modeling file
    that never looks the interface up, else those the class builds that call a softmax or torch's
    SDPA themselves."""
    source = _module_source(model_class.__module__)
    if source is None:
        return []
    names = _ATTENTION_CLASS.findall(source)
    if names and _INTERFACE not in source:
        return names
    return [
        cls.__name__
        for cls in _reachable_modules(model_class)
        if "Attention" in cls.__name__
        and _OWN_ATTENTION.search(_class_source(cls))
        and _INTERFACE not in _class_source(cls)
    ]


def unsupported_reason(model_class: Type[torch.nn.Module], config: Any = None) -> Optional[str]:
    """Why attnlens cannot run ``model_class`` (with ``config``, when given), or None if it can.

    Refused:

    - a model whose modeling code defines attention modules but never calls transformers'
      ``AttentionInterface`` (Bloom, MPT, XGLM, MPNet, DeBERTa, GPT-Neo, Falcon, ...), or that
      builds an attention module computing attention in its own code (BigBird-Pegasus's encoder,
      Pegasus-X's global-local attention, SAM's vision encoder): attnlens would not run there, and
      such layers misread the mask attnlens builds;
    - a model whose attention layers extend the mask they are given with entries of their own in
      the mask's dtype (DeepSeek-V4), which a boolean mask cannot carry.

    (Soft-capped scores, attention sinks, sliding windows and head dims above what the kernels
    compile all run: the attention function passes them on.) ``config`` is accepted for callers
    that have one; the decision rests on the modeling code. A model whose source cannot be read
    (defined in a notebook) is not refused here; the run-time guard still catches layers that
    bypass attnlens.
    """
    source = _module_source(model_class.__module__)
    if source is not None:
        own = attention_outside_interface(model_class)
        if own:
            shown = ", ".join(sorted(own)[:3]) + (", ..." if len(own) > 3 else "")
            return (
                f"its attention layers ({shown}) compute attention in their own code instead of calling "
                f"transformers' AttentionInterface, so attnlens would not run there and those layers would "
                f"misread the mask attnlens builds"
            )
        extending = sorted(
            cls.__name__ for cls in _reachable_modules(model_class) if _EXTENDS_MASK.search(_class_source(cls))
        )
        if extending:
            return (
                f"its attention layers ({', '.join(extending[:3])}) extend the attention mask with entries of "
                f"their own, cast to the mask's dtype, which the boolean mask attnlens builds (True = attend) "
                f"cannot carry"
            )
    return None


def refuse_if_unsupported(model_class: Type[torch.nn.Module], config: Any = None) -> None:
    """Raise ``ValueError`` when ``unsupported_reason`` names a reason."""
    reason = unsupported_reason(model_class, config)
    if reason is not None:
        raise ValueError(f"{model_class.__name__} cannot use attn_implementation={NAME!r}: {reason}; {_ALTERNATIVE}.")


def _requested(attn_implementation: Any) -> bool:
    """Whether a ``set_attn_implementation`` argument (a name, or a dict by sub-config with "" for
    the model itself) asks for attnlens for the model it is called on."""
    if isinstance(attn_implementation, dict):
        return attn_implementation.get("") == NAME
    return attn_implementation == NAME


def _pretrained_models(model: torch.nn.Module) -> List[torch.nn.Module]:
    return [module for module in model.modules() if isinstance(module, PreTrainedModel)]


def install_load_checks() -> None:
    """Wrap ``PreTrainedModel.get_correct_attn_implementation`` (which ``from_pretrained``,
    ``from_config`` and ``set_attn_implementation`` all consult) and ``set_attn_implementation``
    so that asking for attnlens refuses unsupported models and guards the others. Other
    implementations are untouched. Calling it again changes nothing."""
    original_check = getattr(PreTrainedModel, "get_correct_attn_implementation", None)
    if original_check is not None and not getattr(original_check, _PATCHED, False):

        @functools.wraps(original_check)
        def get_correct_attn_implementation(self, requested_attention, *args: Any, **kwargs: Any):
            if requested_attention == NAME:
                refuse_if_unsupported(type(self), self.config)
                attach(self)
            return original_check(self, requested_attention, *args, **kwargs)

        setattr(get_correct_attn_implementation, _PATCHED, True)
        PreTrainedModel.get_correct_attn_implementation = get_correct_attn_implementation

    original_set = getattr(PreTrainedModel, "set_attn_implementation", None)
    if original_set is not None and not getattr(original_set, _PATCHED, False):

        @functools.wraps(original_set)
        def set_attn_implementation(self, attn_implementation, *args: Any, **kwargs: Any):
            # transformers only warns (and keeps the old implementation) for a model whose
            # attention it cannot switch; check the whole model first, so that nothing is changed
            # when any part of it is refused.
            if _requested(attn_implementation):
                models = _pretrained_models(self) if isinstance(attn_implementation, str) else [self]
                for model in models:
                    refuse_if_unsupported(type(model), model.config)
            return original_set(self, attn_implementation, *args, **kwargs)

        setattr(set_attn_implementation, _PATCHED, True)
        PreTrainedModel.set_attn_implementation = set_attn_implementation
