"""Positional encodings: sinusoidal (Vaswani et al. 2017), learned, and rotary (RoPE, Su et al. 2021).

Attention is permutation-invariant: without position information a token's output does not depend
on where it stands. The first two encodings here are *added* to the token embeddings ``[B, N, d]``
before the first layer; rotary embeddings instead *rotate* the queries and keys of every layer,
``[B, H, N, D]`` as :func:`attnlens.scaled_dot_product_attention` takes them, so that the score of
query ``m`` against key ``n`` depends on the offset ``n - m`` only.

    pe = sinusoidal_positional_encoding(max_len=128, embed_dim=64)      # [128, 64], for plotting
    x = SinusoidalPositionalEncoding(64)(token_embeddings)              # [B, N, 64]
    q, k = RotaryEmbedding(head_dim=64)(q, k)                           # then attnlens SDPA

Conventions
-----------
* Sinusoidal: ``PE[pos, 2i] = sin(pos / base**(2i/d))`` and ``PE[pos, 2i+1] = cos(pos / base**(2i/d))``
  with ``d = embed_dim`` and ``i`` the *pair* index; odd ``d`` ends with a sin column.
* RoPE pairs feature ``j`` with feature ``j + D/2`` ("rotate-half", as GPT-NeoX and Llama do) or,
  with ``interleaved=True``, feature ``2j`` with ``2j + 1`` (the paper's and GPT-J's layout). Pair
  ``j`` at position ``p`` is turned by the angle ``p * base**(-2j/D)``.
"""

from __future__ import annotations

import math
import numbers
from typing import Dict, Optional, Tuple, Union

import torch
from torch import nn

from attnlens._checks import check_int

__all__ = [
    "LearnedPositionalEmbedding",
    "RotaryEmbedding",
    "SinusoidalPositionalEncoding",
    "apply_rotary",
    "sinusoidal_positional_encoding",
]

DeviceLike = Union[torch.device, str, int, None]


# ----------------------------------------------------------------------------------------------
# argument checks: each names the argument, what it got and what it expects


def _check_base(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"base must be a positive real number, got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"base must be a finite number > 0, got {value}")
    return float(value)


def _check_dropout(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"dropout must be a float in [0, 1], got {type(value).__name__} {value!r}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"dropout must be a float in [0, 1], got {value}")
    return float(value)


def _check_embeddings(x: object, embed_dim: int, batch_first: bool) -> torch.Tensor:
    """Token embeddings: floating point ``[B, N, d]`` (``[N, B, d]`` unless batch_first) or ``[N, d]``."""
    layout = "[B, N, embed_dim] or [N, embed_dim]" if batch_first else "[N, B, embed_dim] or [N, embed_dim]"
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor {layout}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be floating point {layout}, got dtype {x.dtype}")
    if x.dim() not in (2, 3) or x.shape[-1] != embed_dim:
        raise ValueError(f"x must have shape {layout} with embed_dim={embed_dim}, got shape {tuple(x.shape)}")
    return x


def _sequence_dim(x: torch.Tensor, batch_first: bool) -> int:
    return 1 if (x.dim() == 3 and batch_first) else 0


def _along_sequence(table: torch.Tensor, x: torch.Tensor, batch_first: bool) -> torch.Tensor:
    """View a per-position table ``[N, d]`` so that it broadcasts against ``x`` along its sequence dim."""
    if x.dim() == 3 and not batch_first:
        return table.unsqueeze(1)  # [N, 1, d] against [N, B, d]
    return table  # [N, d] against [B, N, d] or [N, d]


# ----------------------------------------------------------------------------------------------
# sinusoidal


def sinusoidal_positional_encoding(
    max_len: int,
    embed_dim: int,
    *,
    base: float = 10000.0,
    dtype: torch.dtype = torch.float32,
    device: DeviceLike = None,
) -> torch.Tensor:
    """The fixed encoding of Vaswani et al. (2017), ``[max_len, embed_dim]``.

    ``PE[pos, 2i] = sin(pos / base**(2i/d))`` and ``PE[pos, 2i+1] = cos(pos / base**(2i/d))``, with
    ``d = embed_dim`` and ``i = 0, 1, ...`` counting *pairs* of columns: both columns of a pair share
    one frequency, and frequencies fall geometrically from 1 (columns 0, 1) towards ``1/base``.
    An odd ``embed_dim`` ends with a lone sin column. Row 0 is ``[0, 1, 0, 1, ...]``.

    The angles are computed in float64 on the CPU and only the result is cast to ``dtype``: a
    float32 angle ``pos * freq`` is already off by ``pos * 6e-8`` radians, which at position 10^5
    is an error of 0.006 in the encoding instead of 6e-8.

    Args:
        max_len: number of positions (rows), ``>= 0``.
        embed_dim: model width ``d`` (columns), ``>= 1``.
        base: the wavelength scale (10000 in the paper), ``> 0``.
        dtype: floating point dtype of the result.
        device: device of the result.
    """
    max_len = check_int("max_len", max_len, 0)
    embed_dim = check_int("embed_dim", embed_dim, 1)
    base = _check_base(base)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating point torch.dtype, got {dtype!r}")

    positions = torch.arange(max_len, dtype=torch.float64).unsqueeze(1)  # [max_len, 1]
    pair_index = torch.arange((embed_dim + 1) // 2, dtype=torch.float64)  # i, one per sin column
    frequencies = torch.pow(base, -2.0 * pair_index / embed_dim)  # 1 / base**(2i/d)
    angles = positions * frequencies  # [max_len, ceil(d/2)]

    encoding = torch.empty(max_len, embed_dim, dtype=torch.float64)
    encoding[:, 0::2] = torch.sin(angles)
    encoding[:, 1::2] = torch.cos(angles[:, : embed_dim // 2])  # odd d: the last pair has no cos
    return encoding.to(device=device, dtype=dtype)


class SinusoidalPositionalEncoding(nn.Module):
    """Adds the fixed sinusoidal encoding to token embeddings, then applies dropout.

    ``forward(x)`` takes ``x`` of shape ``[B, N, embed_dim]`` (``[N, B, embed_dim]`` when
    ``batch_first=False``, as ``nn.Transformer``'s default), or unbatched ``[N, embed_dim]``, with
    ``N <= max_len``, and returns ``dropout(x + pe[:N])`` in ``x``'s dtype and shape.

    The table is the buffer ``pe`` ``[max_len, embed_dim]`` (float32, or the dtype the module is cast
    to, recomputed from float64 angles rather than cast; plot it directly). It is not
    persistent: it is recomputed from the constructor arguments, so it never appears in
    ``state_dict()`` and checkpoints stay small and compatible.
    """

    pe: torch.Tensor

    def __init__(
        self,
        embed_dim: int,
        max_len: int = 5000,
        dropout: float = 0.0,
        batch_first: bool = True,
        *,
        base: float = 10000.0,
    ) -> None:
        super().__init__()
        self.embed_dim = check_int("embed_dim", embed_dim, 1)
        self.max_len = check_int("max_len", max_len, 0)
        self.batch_first = bool(batch_first)
        self.base = _check_base(base)
        self.dropout = nn.Dropout(_check_dropout(dropout))
        self.register_buffer(
            "pe", sinusoidal_positional_encoding(self.max_len, self.embed_dim, base=self.base), persistent=False
        )

    def _apply(self, fn, *args, **kwargs):  # type: ignore[override]
        # .double() / .half() / .to(dtype) would otherwise cast the float32 table, so a float64 module
        # would carry float32-accurate values; rebuild it from float64 angles in the new dtype instead
        super()._apply(fn, *args, **kwargs)
        if self.pe.is_floating_point() and self.pe.dtype != torch.float32:
            self.pe = sinusoidal_positional_encoding(
                self.max_len, self.embed_dim, base=self.base, dtype=self.pe.dtype, device=self.pe.device
            )
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``dropout(x + pe[:N])`` for ``x`` ``[B, N, d]`` (``[N, B, d]`` if not batch_first) or ``[N, d]``."""
        x = _check_embeddings(x, self.embed_dim, self.batch_first)
        length = x.shape[_sequence_dim(x, self.batch_first)]
        if length > self.max_len:
            raise ValueError(
                f"x has {length} positions (shape {tuple(x.shape)}), more than "
                f"max_len={self.max_len}; construct the module with a larger max_len"
            )
        # cast the table, not x: adding a float32 table must not silently promote fp16 activations
        table = self.pe[:length].to(dtype=x.dtype)
        return self.dropout(x + _along_sequence(table, x, self.batch_first))

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, max_len={self.max_len}, base={self.base:g}, batch_first={self.batch_first}"


# ----------------------------------------------------------------------------------------------
# learned


class LearnedPositionalEmbedding(nn.Module):
    """A trained vector per position (BERT, GPT-2), added to token embeddings, then dropout.

    ``forward(x, offset=0)`` takes ``x`` ``[B, N, embed_dim]`` (``[N, B, embed_dim]`` when
    ``batch_first=False``) or ``[N, embed_dim]`` and returns ``dropout(x + E[offset : offset + N])``,
    where ``E`` is the ``nn.Embedding(max_len, embed_dim)`` in ``self.embedding`` (state_dict key
    ``embedding.weight``). ``offset`` is the position of ``x``'s first token, for incremental
    decoding where the earlier tokens are already in a cache; ``offset + N <= max_len``.

    The table is initialised from N(0, 0.02^2), as BERT and GPT-2 do, rather than ``nn.Embedding``'s
    N(0, 1), which would swamp token embeddings of the usual scale. ``pe`` is the table itself
    ``[max_len, embed_dim]``, under the same name as :class:`SinusoidalPositionalEncoding`'s, for plotting.
    """

    def __init__(
        self,
        max_len: int,
        embed_dim: int,
        dropout: float = 0.0,
        batch_first: bool = True,
        *,
        device: DeviceLike = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        self.max_len = check_int("max_len", max_len, 0)
        self.embed_dim = check_int("embed_dim", embed_dim, 1)
        self.batch_first = bool(batch_first)
        self.dropout = nn.Dropout(_check_dropout(dropout))
        self.embedding = nn.Embedding(self.max_len, self.embed_dim, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.embedding.weight, mean=0.0, std=0.02)

    @property
    def pe(self) -> torch.Tensor:
        """The learned table ``[max_len, embed_dim]`` (the embedding's weight parameter)."""
        return self.embedding.weight

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """``dropout(x + E[offset : offset + N])``; shapes as in the class docstring."""
        x = _check_embeddings(x, self.embed_dim, self.batch_first)
        offset = check_int("offset", offset, 0)
        length = x.shape[_sequence_dim(x, self.batch_first)]
        if offset + length > self.max_len:
            raise ValueError(
                f"positions offset={offset} to {offset + length - 1} (x of shape {tuple(x.shape)}) "
                f"exceed max_len={self.max_len}: a learned table has no rows past max_len - 1"
            )
        positions = torch.arange(offset, offset + length, device=self.embedding.weight.device)
        table = self.embedding(positions).to(dtype=x.dtype)
        return self.dropout(x + _along_sequence(table, x, self.batch_first))

    def extra_repr(self) -> str:
        return f"max_len={self.max_len}, embed_dim={self.embed_dim}, batch_first={self.batch_first}"


# ----------------------------------------------------------------------------------------------
# rotary


def _split_pairs(x: torch.Tensor, interleaved: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """The two members of every rotation pair, each ``[..., D/2]``."""
    if interleaved:
        return x[..., 0::2], x[..., 1::2]
    half = x.shape[-1] // 2
    return x[..., :half], x[..., half:]


def _join_pairs(first: torch.Tensor, second: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """Inverse of :func:`_split_pairs`."""
    if interleaved:
        return torch.stack((first, second), dim=-1).flatten(-2)
    return torch.cat((first, second), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """Rotate every feature pair of ``x`` by the angle whose cosine and sine are given.

    Args:
        x: ``[..., N, D]`` with ``D`` even, e.g. queries ``[B, H, N, D]``.
        cos, sin: ``[..., N, D/2]``, broadcastable against ``x[..., N, D/2]``; column ``j`` belongs
            to pair ``j`` (``(x[j], x[j + D/2])``, or ``(x[2j], x[2j+1])`` when ``interleaved``).
        interleaved: pair layout, see above.

    Returns:
        ``x`` rotated, same shape and dtype. Each pair ``(a, b)`` becomes
        ``(a cos - b sin, b cos + a sin)``. The arithmetic runs in the wider of ``x``'s and
        ``cos``'s dtypes, so fp16/bf16 inputs with float32 tables are rounded once, at the end.
    """
    for name, value in (("x", x), ("cos", cos), ("sin", sin)):
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.dim() < 1:
            got = (
                f"dtype {value.dtype}, shape {tuple(value.shape)}"
                if isinstance(value, torch.Tensor)
                else type(value).__name__
            )
            raise TypeError(f"{name} must be a floating point torch.Tensor of at least 1 dimension, got {got}")
    if x.shape[-1] % 2:
        raise ValueError(
            f"x's last dimension (head_dim) must be even to form rotation pairs, got shape {tuple(x.shape)}"
        )
    if cos.shape != sin.shape or cos.shape[-1] != x.shape[-1] // 2:
        raise ValueError(
            f"cos and sin must have the same shape [..., N, D/2={x.shape[-1] // 2}], got "
            f"{tuple(cos.shape)} and {tuple(sin.shape)} for x of shape {tuple(x.shape)}"
        )
    compute_dtype = torch.promote_types(x.dtype, cos.dtype)
    first, second = _split_pairs(x.to(compute_dtype), interleaved)
    rotated = _join_pairs(first * cos - second * sin, second * cos + first * sin, interleaved)
    return rotated.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE, Su et al. 2021) for queries and keys, applied before attention.

    Feature pair ``j`` of a query or key at position ``p`` is rotated by the angle
    ``p * theta_j`` with ``theta_j = base**(-2j/D)``. Rotations compose, so the score between query
    ``m`` and key ``n`` is ``<R(m) q, R(n) k> = <q, R(n - m) k>``: it depends on the relative
    offset only, and norms are unchanged.

        rope = RotaryEmbedding(head_dim=64)
        q, k = rope(q, k)                       # q [B, Hq, Nq, 64], k [B, Hkv, Nk, 64]
        out = attnlens.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    Pair layout: rotate-half by default (``(x[j], x[j + D/2])``, GPT-NeoX, Llama and Hugging Face),
    ``interleaved=True`` for ``(x[2j], x[2j+1])`` (the paper, GPT-J, Meta's original Llama code).
    Checkpoints trained with one layout need that layout.

    Precision: angles, cos and sin are computed in float32 (float64 for float64 inputs) and the
    rotation runs in that dtype before the result is cast back, so fp16/bf16 inputs are rounded
    once. Tables are cached per device and compute dtype on first use; they are plain attributes,
    not buffers, so the module has no state_dict entries and ``.half()`` cannot degrade them.

    Args:
        head_dim: ``D``, the per-head feature size; must be even.
        base: the wavelength scale (10000 in the paper and Llama 2; 500000 in Llama 3).
        max_len: if given, the number of positions accepted; the whole table is built on first
            use and positions ``>= max_len`` raise ``ValueError``. If ``None``, any position works
            and the table grows (to the next power of two) as longer inputs arrive.
        interleaved: the pair layout, see above.
    """

    def __init__(
        self, head_dim: int, base: float = 10000.0, max_len: Optional[int] = None, interleaved: bool = False
    ) -> None:
        super().__init__()
        self.head_dim = check_int("head_dim", head_dim, 2)
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even (features are rotated in pairs), got {head_dim}")
        self.base = _check_base(base)
        self.max_len = None if max_len is None else check_int("max_len", max_len, 0)
        self.interleaved = bool(interleaved)
        # (device, compute dtype) -> (cos, sin), each [cached length, D/2]
        self._tables: Dict[Tuple[torch.device, torch.dtype], Tuple[torch.Tensor, torch.Tensor]] = {}

    # --- tables ------------------------------------------------------------------------------

    def frequencies(self, dtype: torch.dtype = torch.float32, device: DeviceLike = None) -> torch.Tensor:
        """``theta_j = base**(-2j/D)`` for ``j = 0 .. D/2 - 1``, ``[D/2]``: radians per position."""
        # float64 first, so the float32 frequencies are correctly rounded
        pair_index = torch.arange(self.head_dim // 2, dtype=torch.float64)
        return torch.pow(self.base, -2.0 * pair_index / self.head_dim).to(device=device, dtype=dtype)

    def _angles(self, positions: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``positions[..., None] * theta``, ``[..., D/2]``, computed in ``dtype``."""
        return positions.to(dtype).unsqueeze(-1) * self.frequencies(dtype, positions.device)

    def _table(self, length: int, device: torch.device, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
        """Cached cos and sin for positions ``0 .. length - 1`` (at least), each ``[>= length, D/2]``."""
        key = (device, dtype)
        cached = self._tables.get(key)
        if cached is None or cached[0].shape[0] < length:
            if self.max_len is not None:
                size = self.max_len
            else:  # grow geometrically so decoding token by token rebuilds the table O(log N) times
                size = max(length, 1 << max(length - 1, 0).bit_length(), 16)
            angles = self._angles(torch.arange(size, device=device), dtype)
            cached = (torch.cos(angles), torch.sin(angles))
            self._tables[key] = cached
        return cached

    def cos_sin(
        self, length: int, *, offset: int = 0, dtype: torch.dtype = torch.float32, device: DeviceLike = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of the angles for positions ``offset .. offset + length - 1``, each ``[length, D/2]``.

        These are what :func:`apply_rotary` takes; handy for plotting or a custom kernel.
        ``dtype`` is float32 or float64.
        """
        length = check_int("length", length, 0)
        offset = check_int("offset", offset, 0)
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
        self._check_range(offset, length, "length")
        # resolve "cuda" to "cuda:0" etc., so this shares the cache key with tensors on that device
        device = torch.empty(0, device=device).device
        cos, sin = self._table(offset + length, device, dtype)
        return cos[offset : offset + length], sin[offset : offset + length]

    def _check_range(self, offset: int, length: int, what: str) -> None:
        if self.max_len is not None and offset + length > self.max_len:
            raise ValueError(
                f"positions offset={offset} to {offset + length - 1} ({what} {length}) exceed "
                f"max_len={self.max_len}; construct RotaryEmbedding with a larger max_len "
                f"or max_len=None"
            )

    # --- rotation ----------------------------------------------------------------------------

    def _check_input(self, name: str, x: object) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor [B, H, N, D], got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be floating point, got dtype {x.dtype}")
        if x.dim() < 2 or x.shape[-1] != self.head_dim:
            raise ValueError(
                f"{name} must have shape [..., N, head_dim={self.head_dim}] (e.g. [B, H, N, D]), "
                f"got shape {tuple(x.shape)}"
            )
        return x

    def _check_positions(self, positions: object, tensors: Dict[str, torch.Tensor]) -> None:
        """``positions`` must be integer, ``[N]`` or ``[B, N]`` for every named tensor, and inside max_len."""
        if (
            not isinstance(positions, torch.Tensor)
            or positions.is_floating_point()
            or positions.is_complex()
            or positions.dtype == torch.bool
        ):
            got = f"dtype {positions.dtype}" if isinstance(positions, torch.Tensor) else type(positions).__name__
            raise TypeError(f"positions must be an integer tensor [N] or [B, N], got {got}")
        for x_name, x in tensors.items():
            length = x.shape[-2]
            shared = positions.dim() == 1 and positions.shape[0] == length
            per_sequence = positions.dim() == 2 and x.dim() == 4 and tuple(positions.shape) == (x.shape[0], length)
            if not (shared or per_sequence):
                raise ValueError(
                    f"positions must have shape [N] or [B, N] matching {x_name} of shape "
                    f"{tuple(x.shape)} (N={length}), got shape {tuple(positions.shape)}; when "
                    f"queries and keys sit at different positions, rotate each with rotate()"
                )
        if self.max_len is not None and positions.numel():
            # a clear error instead of silently extrapolating past the range the model was built for;
            # costs one host sync, and only when max_len is set
            low, high = int(positions.min()), int(positions.max())
            if low < 0 or high >= self.max_len:
                raise ValueError(f"positions must lie in [0, max_len={self.max_len}), got values from {low} to {high}")

    def rotate(self, x: torch.Tensor, *, offset: int = 0, positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Rotate one tensor ``[..., N, D]`` (e.g. ``[B, H, N, D]``); same shape and dtype.

        Token ``t`` of ``x`` sits at position ``offset + t``, or at ``positions[t]`` (``[N]``) /
        ``positions[b, t]`` (``[B, N]``, for 4-D ``x``, e.g. left-padded batches) when given.
        """
        x = self._check_input("x", x)
        offset = self._check_offset(offset, positions)
        if positions is not None:
            self._check_positions(positions, {"x": x})
        return self._rotate_checked(x, offset, positions)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, *, offset: int = 0, positions: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Rotate queries ``[B, Hq, Nq, D]`` and keys ``[B, Hkv, Nk, D]``; returns ``(q_rot, k_rot)``.

        Both start at position ``offset``: query ``t`` and key ``t`` sit at ``offset + t``. For
        incremental decoding rotate the new tokens with ``offset`` = the number already cached, and
        cache the *rotated* keys. ``positions`` (``[N]`` or ``[B, N]``, integer) gives explicit
        positions instead and then needs ``Nq == Nk``; for other layouts call :meth:`rotate` on each.
        """
        q = self._check_input("q", q)
        k = self._check_input("k", k)
        offset = self._check_offset(offset, positions)
        if positions is not None:
            self._check_positions(positions, {"q": q, "k": k})
        return self._rotate_checked(q, offset, positions), self._rotate_checked(k, offset, positions)

    def _check_offset(self, offset: object, positions: Optional[torch.Tensor]) -> int:
        if positions is not None and not (isinstance(offset, numbers.Integral) and offset == 0):
            raise ValueError(f"pass either offset or positions, not both (got offset={offset!r})")
        return check_int("offset", offset, 0)

    def _rotate_checked(self, x: torch.Tensor, offset: int, positions: Optional[torch.Tensor]) -> torch.Tensor:
        compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        if positions is None:
            length = x.shape[-2]
            self._check_range(offset, length, "sequence length")
            table_cos, table_sin = self._table(offset + length, x.device, compute_dtype)
            cos, sin = table_cos[offset : offset + length], table_sin[offset : offset + length]
        else:
            angles = self._angles(positions.to(x.device), compute_dtype)  # [N, D/2] or [B, N, D/2]
            cos, sin = torch.cos(angles), torch.sin(angles)
            if positions.dim() == 2:
                cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # [B, 1, N, D/2], shared by heads
        return apply_rotary(x, cos, sin, self.interleaved)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base:g}, max_len={self.max_len}, interleaved={self.interleaved}"
