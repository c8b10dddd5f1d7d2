"""Record every attention layer's weights during a forward: ``attnlens.capture_attention``.

    with attnlens.capture_attention(model) as captured:
        logits = model(src, tgt_in)
    for record in captured:
        print(record.name, record.kind, tuple(record.weights.shape))    # [B, H, Nq, Nk]
    cross = captured.stack(kind="cross")                                 # [L, B, H, Nt, Ns]

It works on any model holding ``torch.nn.MultiheadAttention`` modules (``attnlens.MultiHeadAttention``
is one), called through their ``forward``: the attnlens layers and ``build_transformer_model``'s
models, or your own. While the block runs, each attention module is asked for per-head weights
(``need_weights=True, average_attn_weights=False``: with attnlens that stays on the fused kernel
path); what its caller sees is unchanged (no weights, or the head average, when that is what it
asked for). On leaving the block the hooks are removed, so the layers go back to not computing
weights at all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

__all__ = ["AttentionCapture", "AttentionRecord", "capture_attention"]

KINDS = ("self", "cross")
# Attribute names the attention modules of torch's and attnlens's layers carry.
_KIND_BY_ATTRIBUTE = {"self_attn": "self", "multihead_attn": "cross", "cross_attn": "cross"}
_STATE = "_attnlens_capture_state"


@dataclasses.dataclass
class AttentionRecord:
    """One attention module's weights from one forward.

    Fields:
        name: the attention module's name in the model, e.g. ``"decoder_layers.0.multihead_attn"``.
        layer: the name of the layer holding it, e.g. ``"decoder_layers.0"`` (``""`` at the top).
        kind: ``"self"`` (queries and keys from the same sequence) or ``"cross"``.
        weights: ``[B, H, Nq, Nk]`` per-head probabilities (an unbatched call gets ``B = 1``);
            detached unless the capture was made with ``detach=False``. After attention dropout
            when the model is in training mode, as torch returns them.
        call: the order of this forward among everything the capture recorded (0, 1, ...).
    """

    name: str
    layer: str
    kind: str
    weights: torch.Tensor
    call: int

    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(self.weights.shape)


class AttentionCapture:
    """The records of a ``capture_attention`` block, in the order the modules ran.

    A sequence of ``AttentionRecord`` (``len``, iteration, indexing), plus ``select``, ``stack``,
    ``names`` and ``clear``. It keeps filling while the block is open; afterwards it is plain data.
    """

    def __init__(self, names: List[str]) -> None:
        self.records: List[AttentionRecord] = []
        self._names = names

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[AttentionRecord]:
        return iter(self.records)

    def __getitem__(self, index: int) -> AttentionRecord:
        return self.records[index]

    def __repr__(self) -> str:
        return f"AttentionCapture({len(self.records)} records from {len(self._names)} attention modules)"

    @property
    def modules(self) -> List[str]:
        """Names of the attention modules being watched (whether they ran or not)."""
        return list(self._names)

    def names(self) -> List[str]:
        """Names of the modules recorded, in order, each once."""
        return list(dict.fromkeys(record.name for record in self.records))

    def select(self, kind: Optional[str] = None, name: Optional[str] = None) -> List[AttentionRecord]:
        """The records of one ``kind`` (``"self"``/``"cross"``) and/or whose name or layer contains
        ``name``, in order."""
        if kind is not None and kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}")
        return [r for r in self.records if (kind is None or r.kind == kind) and (name is None or name in r.name)]

    def stack(self, kind: Optional[str] = None, name: Optional[str] = None) -> torch.Tensor:
        """The selected records' weights stacked: ``[L, B, H, Nq, Nk]``, first module first.

        For one forward of a model, ``stack("self", "encoder")`` is every encoder layer's
        self-attention; ``stack("self", "encoder")[:, 0]`` is one example's ``[L, H, N, N]``, what
        ``attnlens.viz.attention_layers`` draws. Raises ``ValueError`` when nothing matches or the
        shapes differ.
        """
        records = self.select(kind, name)
        if not records:
            raise ValueError(
                f"no records with kind={kind!r} and name containing {name!r}; recorded: "
                f"{[(r.name, r.kind) for r in self.records]}"
            )
        shapes = {r.shape for r in records}
        if len(shapes) > 1:
            raise ValueError(
                f"the selected records have different shapes {sorted(shapes)}; select fewer "
                "(e.g. by name) or capture one forward"
            )
        return torch.stack([r.weights for r in records])

    def clear(self) -> None:
        """Forget the records so far (the capture keeps recording while its block is open)."""
        self.records.clear()


def _kind_from_name(name: str) -> Optional[str]:
    return _KIND_BY_ATTRIBUTE.get(name.rsplit(".", 1)[-1])


class _ModuleState:
    """The hooks on one attention module, shared by every capture open on it (they can nest)."""

    def __init__(self, module: nn.MultiheadAttention) -> None:
        self.sinks: List[Callable[[torch.Tensor, str], None]] = []
        self.requests: List[Tuple[bool, bool, str]] = []
        self.signature = inspect.signature(module.forward)
        self.handles = (
            module.register_forward_pre_hook(self.pre_hook, with_kwargs=True),
            module.register_forward_hook(self.hook),
        )

    def pre_hook(
        self, module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]
    ) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
        bound = self.signature.bind(*args, **kwargs)
        arguments = bound.arguments
        parameters = self.signature.parameters
        need = arguments.get("need_weights", parameters["need_weights"].default)
        average = arguments.get("average_attn_weights", parameters["average_attn_weights"].default)
        # self-attention is called with the same tensor as query and key (x, x, x)
        kind = "self" if arguments.get("key") is arguments.get("query") else "cross"
        self.requests.append((bool(need), bool(average), kind))
        arguments["need_weights"] = True
        arguments["average_attn_weights"] = False
        return bound.args, bound.kwargs

    def hook(self, module: nn.Module, args: Tuple[Any, ...], output: Any) -> Any:
        need, average, kind = self.requests.pop()
        out, weights = output
        if weights is not None:
            for sink in list(self.sinks):
                sink(weights, kind)
        if not need or weights is None:
            return out, None
        if average:
            return out, weights.mean(dim=-3)
        return out, weights

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _attention_modules(model: nn.Module) -> List[Tuple[str, nn.MultiheadAttention]]:
    return [(name, module) for name, module in model.named_modules() if isinstance(module, nn.MultiheadAttention)]


@contextlib.contextmanager
def capture_attention(model: nn.Module, *, detach: bool = True) -> Iterator[AttentionCapture]:
    """Record the per-head weights of every attention module of ``model`` run inside the block.

    Args:
        model: any ``nn.Module`` holding ``torch.nn.MultiheadAttention`` modules (e.g.
            ``attnlens.MultiHeadAttention`` in the attnlens layers and models); the model itself
            may be one.
        detach: store ``weights.detach()`` (default). ``detach=False`` keeps the graph, for a loss
            on the weights (attention supervision).

    Yields:
        An ``AttentionCapture``: one ``AttentionRecord(name, layer, kind, weights [B, H, Nq, Nk],
        call)`` per attention call, in the order they ran, across every forward in the block.

    A module's ``kind`` comes from its attribute name when it is one torch's and attnlens's layers
    use (``self_attn`` -> ``"self"``, ``multihead_attn`` -> ``"cross"``), otherwise from the call:
    ``"self"`` when the query and the key are the same tensor. While capturing, the modules compute
    per-head weights (on attnlens's fused path) and hand their callers what they asked for; when
    the block exits the hooks are removed. Raises ``ValueError`` if ``model`` has no attention module.

    Note: torch's own ``nn.TransformerEncoderLayer`` may bypass its attention module's ``forward``
    (its inference fast path), and then nothing is recorded for it; attnlens's layers never do.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(detach, bool):
        raise TypeError(f"detach must be a bool, got {type(detach).__name__}")
    modules = _attention_modules(model)
    if not modules:
        raise ValueError(
            f"{type(model).__name__} has no attention module (torch.nn.MultiheadAttention, "
            "attnlens.MultiHeadAttention) to capture"
        )
    capture = AttentionCapture([name for name, _ in modules])
    attached: List[Tuple[nn.Module, Callable[[torch.Tensor, str], None]]] = []

    def make_sink(name: str) -> Callable[[torch.Tensor, str], None]:
        layer = name.rsplit(".", 1)[0] if "." in name else ""
        named_kind = _kind_from_name(name)

        def sink(weights: torch.Tensor, call_kind: str) -> None:
            if weights.dim() == 3:  # an unbatched call: [H, Nq, Nk]
                weights = weights.unsqueeze(0)
            capture.records.append(
                AttentionRecord(
                    name=name,
                    layer=layer,
                    kind=named_kind or call_kind,
                    weights=weights.detach() if detach else weights,
                    call=len(capture.records),
                )
            )

        return sink

    try:
        for name, module in modules:
            state = getattr(module, _STATE, None)
            if state is None:
                state = _ModuleState(module)
                setattr(module, _STATE, state)
            sink = make_sink(name)
            state.sinks.append(sink)
            attached.append((module, sink))
        yield capture
    finally:
        for module, sink in attached:
            state = getattr(module, _STATE)
            state.sinks.remove(sink)
            if not state.sinks:
                state.remove()
                delattr(module, _STATE)
