"""Transformer layers on attnlens attention, and a small sequence model built from them.

``TransformerEncoderLayer`` and ``TransformerDecoderLayer`` have the constructor, the parameter
names and the forward of ``torch.nn.TransformerEncoderLayer`` / ``TransformerDecoderLayer`` (a
torch layer's ``state_dict`` loads into them), but their attention is
``attnlens.MultiHeadAttention``, and they can report their attention weights, which torch's layers
cannot::

    layer = attnlens.tiny.TransformerEncoderLayer(64, 4, 128, batch_first=True)
    out = layer(x, src_key_padding_mask=pad)                        # like torch
    out, weights = layer(x, src_key_padding_mask=pad, need_weights=True)   # weights [B, H, N, N]

Masks follow the torch layers' conventions (they go straight to ``nn.MultiheadAttention``):
a bool ``src_mask``/``tgt_mask``/``memory_mask`` is **True = NOT allowed** (a float one is added
to the scores), and ``*_key_padding_mask`` is bool ``[B, N]`` with **True = padding**. That is the
opposite of ``attnlens.causal_mask`` (True = attend): pass ``~attnlens.causal_mask(n)``, or
``is_causal=True`` / ``tgt_is_causal=True`` without a mask and the layer builds the causal mask.

``build_transformer_model`` assembles an encoder-decoder (or encoder-only, or decoder-only)
sequence model: token embeddings, sinusoidal positional encodings, these layers, a linear output
over the vocabulary. It builds its padding and causal masks from the token ids itself.
"""

from __future__ import annotations

import numbers
from typing import Callable, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from attnlens._checks import check_int
from attnlens.masks import causal_mask, padding_mask
from attnlens.modules import MultiHeadAttention
from attnlens.positional import SinusoidalPositionalEncoding
from attnlens.tiny.data import BOS_ID, EOS_ID, PAD_ID

__all__ = [
    "MODEL_KINDS",
    "DecoderWeights",
    "TransformerDecoderLayer",
    "TransformerEncoderLayer",
    "TransformerModel",
    "build_transformer_model",
]

MODEL_KINDS = ("encoder_decoder", "encoder", "decoder")
Activation = Union[str, Callable[[torch.Tensor], torch.Tensor]]


class DecoderWeights(NamedTuple):
    """The attention weights of one decoder layer's forward, each ``[B, H, Nq, Nk]`` per head.

    ``self_attn``: the target over itself ``[B, H, Nt, Nt]``; ``cross_attn``: the target over
    the encoder's output (memory) ``[B, H, Nt, Ns]``.
    """

    self_attn: torch.Tensor
    cross_attn: torch.Tensor


def _activation(activation: Activation) -> Callable[[torch.Tensor], torch.Tensor]:
    if isinstance(activation, str):
        if activation == "relu":
            return F.relu
        if activation == "gelu":
            return F.gelu
        raise ValueError(f"activation must be 'relu', 'gelu' or a callable, got {activation!r}")
    if not callable(activation):
        raise TypeError(f"activation must be 'relu', 'gelu' or a callable, got {type(activation).__name__}")
    return activation


def _causal_attn_mask(x: torch.Tensor, batch_first: bool) -> torch.Tensor:
    """torch's causal mask for ``x``'s sequence: bool ``[N, N]``, **True = not allowed** (j > i):
    ``attnlens.causal_mask`` (True = attend) inverted."""
    n = x.shape[1] if (x.dim() == 3 and batch_first) else x.shape[0]
    return ~causal_mask(n, device=x.device)


def _per_head(weights: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``[B, H, Nq, Nk]`` (an unbatched input's ``[H, Nq, Nk]`` gets a batch of one)."""
    if weights is not None and weights.dim() == 3:
        return weights.unsqueeze(0)
    return weights


class TransformerEncoderLayer(nn.Module):
    """Self-attention and a feed-forward block, each with a residual connection and LayerNorm.

    The constructor, the parameter names and ``forward`` are ``torch.nn.TransformerEncoderLayer``'s
    (note ``batch_first=False`` is torch's default too; ``build_transformer_model`` uses True)::

        post-norm (norm_first=False):  x = norm1(x + SA(x));  x = norm2(x + FF(x))
        pre-norm  (norm_first=True):   x = x + SA(norm1(x));  x = x + FF(norm2(x))

    with ``FF(x) = dropout(linear2(dropout(activation(linear1(x)))))`` and ``SA`` the
    ``attnlens.MultiHeadAttention`` in ``self.self_attn`` followed by dropout.

    ``forward(src, src_mask=None, src_key_padding_mask=None, is_causal=False, *, need_weights=False)``:
    ``src`` ``[B, N, d_model]`` (``[N, B, d_model]`` unless ``batch_first``); ``src_mask`` bool
    (**True = not allowed**) or float (added), ``[N, N]`` or ``[B*H, N, N]``;
    ``src_key_padding_mask`` bool ``[B, N]``, True = padding. ``is_causal=True`` without a
    ``src_mask`` makes the layer causal (torch would raise); with a mask it is a hint that the mask
    is causal, as in torch. Returns the output, or ``(output, weights)`` with ``need_weights=True``,
    weights ``[B, H, N, N]`` per head (after attention dropout in training mode).
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: Activation = F.relu,
        layer_norm_eps: float = 1e-5,
        batch_first: bool = False,
        norm_first: bool = False,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.self_attn = MultiHeadAttention(
            d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first, **factory
        )
        self.linear1 = nn.Linear(d_model, dim_feedforward, bias=bias, **factory)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model, bias=bias, **factory)
        self.norm_first = norm_first
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = _activation(activation)
        self.batch_first = batch_first

    def forward(
        self,
        src: torch.Tensor,
        src_mask: Optional[torch.Tensor] = None,
        src_key_padding_mask: Optional[torch.Tensor] = None,
        is_causal: bool = False,
        *,
        need_weights: bool = False,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        if is_causal and src_mask is None:
            src_mask = _causal_attn_mask(src, self.batch_first)
        x = src
        if self.norm_first:
            attended, weights = self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal, need_weights)
            x = x + attended
            x = x + self._ff_block(self.norm2(x))
        else:
            attended, weights = self._sa_block(x, src_mask, src_key_padding_mask, is_causal, need_weights)
            x = self.norm1(x + attended)
            x = self.norm2(x + self._ff_block(x))
        return (x, weights) if need_weights else x

    def _sa_block(
        self,
        x: torch.Tensor,
        attn_mask: Optional[torch.Tensor],
        key_padding_mask: Optional[torch.Tensor],
        is_causal: bool,
        need_weights: bool,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        out, weights = self.self_attn(
            x,
            x,
            x,
            attn_mask=attn_mask,
            key_padding_mask=key_padding_mask,
            need_weights=need_weights,
            average_attn_weights=False,
            is_causal=is_causal,
        )
        return self.dropout1(out), _per_head(weights)

    def _ff_block(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))


class TransformerDecoderLayer(nn.Module):
    """Causal self-attention, cross-attention to the encoder's output, and a feed-forward block.

    The constructor, the parameter names and ``forward`` are ``torch.nn.TransformerDecoderLayer``'s::

        post-norm:  x = norm1(x + SA(x));  x = norm2(x + CA(x, memory));  x = norm3(x + FF(x))
        pre-norm:   x = x + SA(norm1(x));  x = x + CA(norm2(x), memory);  x = x + FF(norm3(x))

    ``self.self_attn`` and ``self.multihead_attn`` (the cross-attention) are
    ``attnlens.MultiHeadAttention``.

    ``forward(tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
    memory_key_padding_mask=None, tgt_is_causal=False, memory_is_causal=False, *, need_weights=False)``:
    masks as torch's (bool **True = not allowed**, float added; key padding True = padding).
    ``tgt_is_causal=True`` without a ``tgt_mask`` makes the self-attention causal. Returns the
    output ``[B, Nt, d_model]``, or ``(output, DecoderWeights(self_attn [B, H, Nt, Nt],
    cross_attn [B, H, Nt, Ns]))`` with ``need_weights=True``.
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: Activation = F.relu,
        layer_norm_eps: float = 1e-5,
        batch_first: bool = False,
        norm_first: bool = False,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.self_attn = MultiHeadAttention(
            d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first, **factory
        )
        self.multihead_attn = MultiHeadAttention(
            d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first, **factory
        )
        self.linear1 = nn.Linear(d_model, dim_feedforward, bias=bias, **factory)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model, bias=bias, **factory)
        self.norm_first = norm_first
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory)
        self.norm3 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.activation = _activation(activation)
        self.batch_first = batch_first

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        tgt_mask: Optional[torch.Tensor] = None,
        memory_mask: Optional[torch.Tensor] = None,
        tgt_key_padding_mask: Optional[torch.Tensor] = None,
        memory_key_padding_mask: Optional[torch.Tensor] = None,
        tgt_is_causal: bool = False,
        memory_is_causal: bool = False,
        *,
        need_weights: bool = False,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, DecoderWeights]]:
        if tgt_is_causal and tgt_mask is None:
            tgt_mask = _causal_attn_mask(tgt, self.batch_first)
        x = tgt
        if self.norm_first:
            attended, self_weights = self._sa_block(
                self.norm1(x), tgt_mask, tgt_key_padding_mask, tgt_is_causal, need_weights
            )
            x = x + attended
            attended, cross_weights = self._mha_block(
                self.norm2(x), memory, memory_mask, memory_key_padding_mask, memory_is_causal, need_weights
            )
            x = x + attended
            x = x + self._ff_block(self.norm3(x))
        else:
            attended, self_weights = self._sa_block(x, tgt_mask, tgt_key_padding_mask, tgt_is_causal, need_weights)
            x = self.norm1(x + attended)
            attended, cross_weights = self._mha_block(
                x, memory, memory_mask, memory_key_padding_mask, memory_is_causal, need_weights
            )
            x = self.norm2(x + attended)
            x = self.norm3(x + self._ff_block(x))
        return (x, DecoderWeights(self_weights, cross_weights)) if need_weights else x

    def _sa_block(
        self,
        x: torch.Tensor,
        attn_mask: Optional[torch.Tensor],
        key_padding_mask: Optional[torch.Tensor],
        is_causal: bool,
        need_weights: bool,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        out, weights = self.self_attn(
            x,
            x,
            x,
            attn_mask=attn_mask,
            key_padding_mask=key_padding_mask,
            need_weights=need_weights,
            average_attn_weights=False,
            is_causal=is_causal,
        )
        return self.dropout1(out), _per_head(weights)

    def _mha_block(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        attn_mask: Optional[torch.Tensor],
        key_padding_mask: Optional[torch.Tensor],
        is_causal: bool,
        need_weights: bool,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if is_causal and attn_mask is None:
            # torch's memory_is_causal is a hint about memory_mask; without one, build it (top-left).
            nq = x.shape[1] if (x.dim() == 3 and self.batch_first) else x.shape[0]
            nk = memory.shape[1] if (memory.dim() == 3 and self.batch_first) else memory.shape[0]
            attn_mask = torch.ones(nq, nk, dtype=torch.bool, device=x.device).triu(1)
        out, weights = self.multihead_attn(
            x,
            memory,
            memory,
            attn_mask=attn_mask,
            key_padding_mask=key_padding_mask,
            need_weights=need_weights,
            average_attn_weights=False,
            is_causal=is_causal,
        )
        return self.dropout2(out), _per_head(weights)

    def _ff_block(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout3(self.linear2(self.dropout(self.activation(self.linear1(x)))))


# ----------------------------------------------------------------------------------------------
# the sequence model


def _check_tokens(name: str, tokens: object, vocab_size: int) -> torch.Tensor:
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids [B, N], got {type(tokens).__name__}")
    if tokens.dtype == torch.bool or tokens.is_floating_point() or tokens.is_complex():
        raise TypeError(f"{name} must hold integer token ids (e.g. torch.long), got dtype {tokens.dtype}")
    if tokens.dim() != 2:
        raise ValueError(f"{name} must be [B, N] token ids, got shape {tuple(tokens.shape)}")
    return tokens


class TransformerModel(nn.Module):
    """A small batch-first transformer over token ids (make one with ``build_transformer_model``).

    Modules: ``embedding`` (``nn.Embedding``, shared by source and target), ``positional``
    (``attnlens.SinusoidalPositionalEncoding``, with dropout), ``encoder_layers`` and
    ``decoder_layers`` (``nn.ModuleList`` of the attnlens layers; one of them empty for
    encoder-only / decoder-only), ``encoder_norm``/``decoder_norm`` (final LayerNorms of a
    pre-norm stack, identity for post-norm) and ``output`` (``nn.Linear`` to the vocabulary).

    Forward:

    - ``kind="encoder_decoder"``: ``model(src [B, Ns], tgt_in [B, Nt])`` -> logits ``[B, Nt, V]``.
      The encoder ignores padding in ``src``; the decoder is causal, ignores padding in ``tgt_in``
      and, in cross-attention, padding in ``src``. With ``attnlens.tiny.data``, ``tgt_in = tgt[:, :-1]``
      and the labels are ``tgt[:, 1:]``.
    - ``kind="encoder"``: ``model(tokens [B, N])`` -> logits ``[B, N, V]``, bidirectional.
    - ``kind="decoder"``: ``model(tokens [B, N])`` -> logits ``[B, N, V]``, causal (a language model).

    Positions count from 0 at the first token, padding included (padding sits after the tokens).
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 64,
        nhead: int = 4,
        num_layers: int = 2,
        dim_feedforward: int = 128,
        dropout: float = 0.1,
        max_len: int = 512,
        kind: str = "encoder_decoder",
        norm_first: bool = True,
        pad_id: int = PAD_ID,
        *,
        num_decoder_layers: Optional[int] = None,
        activation: Activation = "relu",
        bos_id: int = BOS_ID,
        eos_id: int = EOS_ID,
    ) -> None:
        super().__init__()
        self.vocab_size = check_int("vocab_size", vocab_size, 1)
        self.d_model = check_int("d_model", d_model, 1)
        self.nhead = check_int("nhead", nhead, 1)
        if self.d_model % self.nhead:
            raise ValueError(f"d_model ({d_model}) must be divisible by nhead ({nhead})")
        num_layers = check_int("num_layers", num_layers, 1)
        num_decoder_layers = (
            num_layers if num_decoder_layers is None else check_int("num_decoder_layers", num_decoder_layers, 1)
        )
        dim_feedforward = check_int("dim_feedforward", dim_feedforward, 1)
        self.max_len = check_int("max_len", max_len, 1)
        if kind not in MODEL_KINDS:
            raise ValueError(f"kind must be one of {', '.join(MODEL_KINDS)}; got {kind!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be a float in [0, 1], got {dropout!r}")
        for name, value in (("pad_id", pad_id), ("bos_id", bos_id), ("eos_id", eos_id)):
            if not 0 <= check_int(name, value, 0) < self.vocab_size:
                raise ValueError(f"{name} must be a token id in [0, vocab_size={vocab_size}), got {value}")
        self.kind = kind
        self.norm_first = bool(norm_first)
        self.pad_id, self.bos_id, self.eos_id = int(pad_id), int(bos_id), int(eos_id)

        self.embedding = nn.Embedding(self.vocab_size, self.d_model, padding_idx=self.pad_id)
        self.positional = SinusoidalPositionalEncoding(
            self.d_model, self.max_len, dropout=float(dropout), batch_first=True
        )
        layer_args = dict(
            d_model=self.d_model,
            nhead=self.nhead,
            dim_feedforward=dim_feedforward,
            dropout=float(dropout),
            activation=activation,
            batch_first=True,
            norm_first=self.norm_first,
        )
        num_encoder = num_layers if kind in ("encoder_decoder", "encoder") else 0
        num_decoder = num_decoder_layers if kind == "encoder_decoder" else (num_layers if kind == "decoder" else 0)
        # A decoder-only model has no memory to cross-attend to: its layers are encoder layers run
        # causally (self-attention and feed-forward), as in GPT.
        decoder_layer = TransformerDecoderLayer if kind == "encoder_decoder" else TransformerEncoderLayer
        self.encoder_layers = nn.ModuleList([TransformerEncoderLayer(**layer_args) for _ in range(num_encoder)])
        self.decoder_layers = nn.ModuleList([decoder_layer(**layer_args) for _ in range(num_decoder)])
        make_norm = (lambda: nn.LayerNorm(self.d_model)) if self.norm_first else nn.Identity
        self.encoder_norm = make_norm() if num_encoder else nn.Identity()
        self.decoder_norm = make_norm() if num_decoder else nn.Identity()
        self.output = nn.Linear(self.d_model, self.vocab_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Token embeddings N(0, 1) (the scale of the sinusoidal encoding) with a zero PAD row;
        Xavier-uniform weights for every matrix of the layers and the output, as ``nn.Transformer``."""
        nn.init.normal_(self.embedding.weight)
        with torch.no_grad():
            self.embedding.weight[self.pad_id].zero_()
        for name, parameter in self.named_parameters():
            if parameter.dim() > 1 and not name.startswith("embedding"):
                nn.init.xavier_uniform_(parameter)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, vocab_size={self.vocab_size}, max_len={self.max_len}, pad_id={self.pad_id}"

    # -- pieces ---------------------------------------------------------------------------------

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings plus positional encodings (then dropout): ``[B, N]`` -> ``[B, N, d_model]``."""
        tokens = _check_tokens("tokens", tokens, self.vocab_size)
        if tokens.shape[1] > self.max_len:
            raise ValueError(
                f"sequence of length {tokens.shape[1]} is longer than max_len={self.max_len}; "
                f"build the model with a larger max_len"
            )
        return self.positional(self.embedding(tokens))

    def encode(self, src: torch.Tensor) -> torch.Tensor:
        """The encoder's output (memory) ``[B, Ns, d_model]`` for source ids ``src`` ``[B, Ns]``."""
        if not len(self.encoder_layers):
            raise RuntimeError(f"a {self.kind!r} model has no encoder")
        x = self.embed(src)
        src_padding = padding_mask(src, self.pad_id)
        for layer in self.encoder_layers:
            x = layer(x, src_key_padding_mask=src_padding)
        return self.encoder_norm(x)

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        """Decoder logits ``[B, Nt, V]`` for ``tgt_in`` ``[B, Nt]`` given ``memory = encode(src)``
        (``src`` supplies the padding to ignore in cross-attention)."""
        if self.kind != "encoder_decoder":
            raise RuntimeError(f"decode() needs an encoder-decoder model, this one is {self.kind!r}")
        _check_tokens("src", src, self.vocab_size)
        x = self.embed(tgt_in)
        tgt_padding = padding_mask(tgt_in, self.pad_id)
        src_padding = padding_mask(src, self.pad_id)
        for layer in self.decoder_layers:
            x = layer(
                x, memory, tgt_key_padding_mask=tgt_padding, memory_key_padding_mask=src_padding, tgt_is_causal=True
            )
        return self.output(self.decoder_norm(x))

    def forward(self, tokens: torch.Tensor, tgt_in: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits ``[B, N, V]``: ``model(src, tgt_in)`` for an encoder-decoder, ``model(tokens)`` otherwise."""
        if self.kind == "encoder_decoder":
            if tgt_in is None:
                raise TypeError("an encoder-decoder model takes (src [B, Ns], tgt_in [B, Nt]); tgt_in is missing")
            return self.decode(tgt_in, self.encode(tokens), tokens)
        if tgt_in is not None:
            raise TypeError(f"a {self.kind!r} model takes one token tensor [B, N], got a second one (tgt_in)")
        if self.kind == "encoder":
            return self.output(self.encode(tokens))
        x = self.embed(tokens)
        pad = padding_mask(tokens, self.pad_id)
        for layer in self.decoder_layers:
            x = layer(x, src_key_padding_mask=pad, is_causal=True)
        return self.output(self.decoder_norm(x))

    # -- training and decoding ------------------------------------------------------------------

    def logits_and_labels(self, src: torch.Tensor, tgt: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Logits and the labels they predict for a batch of ``attnlens.tiny.data`` (``src [B, M]``,
        ``tgt [B, M + 2]`` = BOS, target, EOS, PAD): what ``attnlens.tiny.train_model`` calls.

        - encoder-decoder: ``model(src, tgt[:, :-1])`` against ``tgt[:, 1:]`` (teacher forcing);
        - encoder: ``model(src)``, position ``i`` labelled with target token ``i`` (PAD after the
          sentence, so only the sentence counts; no EOS);
        - decoder: ``model(cat(src, tgt[:, :-1]))`` against PAD for the source positions (not
          scored) then ``tgt[:, 1:]``: the source is a prompt, the target its continuation.

        Labels equal to ``pad_id`` are to be ignored by the loss and the accuracy.
        """
        src = _check_tokens("src", src, self.vocab_size)
        tgt = _check_tokens("tgt", tgt, self.vocab_size)
        if self.kind == "encoder_decoder":
            return self(src, tgt[:, :-1]), tgt[:, 1:]
        if self.kind == "encoder":
            width = src.shape[1]
            content = tgt[:, 1 : width + 1]
            labels = torch.where(src == self.pad_id, torch.full_like(content, self.pad_id), content)
            return self(src), labels
        tokens = torch.cat([src, tgt[:, :-1]], dim=1)
        labels = torch.cat([torch.full_like(src, self.pad_id), tgt[:, 1:]], dim=1)
        return self(tokens), labels

    @torch.no_grad()
    def generate(self, src: torch.Tensor, max_new_tokens: Optional[int] = None) -> torch.Tensor:
        """Greedy decoding: for each source sequence, the most likely target, one token at a time.

        ``src`` ``[B, Ns]`` token ids (padded with ``pad_id``). Starts from ``bos_id`` and appends
        the arg-max token until every sequence has produced ``eos_id`` or ``max_new_tokens``
        (default ``Ns + 1``: a target as long as the source, plus EOS) were generated. Returns
        ``[B, T]`` generated ids without BOS: the tokens, EOS, then ``pad_id`` after a sequence's EOS.

        Encoder-decoder models encode ``src`` once; decoder-only models continue
        ``cat(src, BOS)`` as the prompt (the layout ``logits_and_labels`` trains). Runs under
        ``torch.no_grad()`` in the model's current mode: call ``model.eval()`` first to switch
        dropout off.
        """
        src = _check_tokens("src", src, self.vocab_size)
        if self.kind == "encoder":
            raise RuntimeError(
                "generate() needs a model with a decoder; this one is encoder-only "
                "(its logits already give every position's token: model(src).argmax(-1))"
            )
        steps = src.shape[1] + 1 if max_new_tokens is None else check_int("max_new_tokens", max_new_tokens, 0)
        batch = src.shape[0]
        generated = torch.full((batch, 1), self.bos_id, dtype=torch.long, device=src.device)
        finished = torch.zeros(batch, dtype=torch.bool, device=src.device)
        memory = self.encode(src) if self.kind == "encoder_decoder" else None
        for _ in range(steps):
            if memory is not None:
                logits = self.decode(generated, memory, src)
            else:
                logits = self(torch.cat([src, generated], dim=1))
            next_token = logits[:, -1].argmax(dim=-1)
            next_token = torch.where(finished, torch.full_like(next_token, self.pad_id), next_token)
            generated = torch.cat([generated, next_token[:, None]], dim=1)
            finished |= next_token == self.eos_id
            if bool(finished.all()):
                break
        return generated[:, 1:]


def build_transformer_model(
    vocab_size: int,
    d_model: int = 64,
    nhead: int = 4,
    num_layers: int = 2,
    dim_feedforward: int = 128,
    dropout: float = 0.1,
    max_len: int = 512,
    kind: str = "encoder_decoder",
    norm_first: bool = True,
    pad_id: int = PAD_ID,
    *,
    num_decoder_layers: Optional[int] = None,
    activation: Activation = "relu",
    bos_id: int = BOS_ID,
    eos_id: int = EOS_ID,
) -> TransformerModel:
    """A small batch-first transformer sequence model over ``vocab_size`` token ids.

    Args:
        vocab_size: number of token ids, special tokens included (``attnlens.tiny.data`` uses
            ``PAD_ID = 0``, ``BOS_ID = 1``, ``EOS_ID = 2``; content tokens from 3).
        d_model, nhead, dim_feedforward: width, heads (``d_model % nhead == 0``), feed-forward width.
        num_layers: encoder layers, and decoder layers unless ``num_decoder_layers`` is given.
        dropout: dropout on the embeddings, the attention weights, and after attention and the
            feed-forward blocks.
        max_len: the longest sequence the positional encoding covers (a decoder-only model on
            ``attnlens.tiny.data`` reads ``2 * max_length + 1`` tokens).
        kind: ``"encoder_decoder"`` (``model(src, tgt_in)``), ``"encoder"`` or ``"decoder"``
            (``model(tokens)``); see ``TransformerModel``.
        norm_first: pre-norm layers (plus a final LayerNorm per stack), which train more easily;
            False gives the post-norm layers of the original paper.
        pad_id, bos_id, eos_id: the special token ids; padding masks come from ``pad_id``.
        activation: of the feed-forward blocks, ``"relu"``, ``"gelu"`` or a callable.

    Returns:
        A ``TransformerModel`` (in training mode, as every new module).
    """
    return TransformerModel(
        vocab_size,
        d_model,
        nhead,
        num_layers,
        dim_feedforward,
        dropout,
        max_len,
        kind,
        norm_first,
        pad_id,
        num_decoder_layers=num_decoder_layers,
        activation=activation,
        bos_id=bos_id,
        eos_id=eos_id,
    )


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
