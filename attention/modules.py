"""Attention modules on the fused kernels: a drop-in ``nn.MultiheadAttention`` and two teaching modules.

* :class:`MultiHeadAttention` subclasses ``torch.nn.MultiheadAttention``: same constructor, same
  parameter names (so ``load_state_dict`` works both ways), same ``forward`` signature, masks,
  return values and shapes. The difference is where it runs: ``need_weights=True`` (torch's default)
  stays on attnlens's fused kernels, which return the exact weights per head or averaged over the
  heads, where torch falls back to its unfused path. Optional ``num_kv_heads`` for grouped-query
  attention.
* :class:`SelfAttention` (one head) and :class:`MultiHeadSelfAttention` are short, readable
  versions of the same idea for learning; both take attnlens's mask convention (bool True = attend).

Mask conventions differ between torch's two APIs, and the modules follow the API they copy:

===========================  ==============================  ===================================
argument                     bool mask                        float mask
===========================  ==============================  ===================================
``MultiHeadAttention``       ``attn_mask`` True = blocked     added to the scores
                             ``key_padding_mask`` True = pad  added to the scores
teaching modules ``mask``    True = attend (as SDPA)          added to the scores
===========================  ==============================  ===================================
"""

from __future__ import annotations

import numbers
import warnings
from collections import OrderedDict
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from attnlens import reference
from attnlens._inputs import check_softcap, check_window
from attnlens.functional import scaled_dot_product_attention

__all__ = ["MultiHeadAttention", "SelfAttention", "MultiHeadSelfAttention"]


# ----------------------------------------------------------------------------------------------
# MultiHeadAttention: the drop-in


def _check_mask_type(mask: Optional[torch.Tensor], name: str) -> None:
    # torch raises AssertionError here; the same type keeps drop-in error handling working.
    if mask is not None and mask.dtype != torch.bool and not mask.is_floating_point():
        raise AssertionError(f"{name} must be bool or floating point, got dtype {mask.dtype}")


def _float_mask_dtype(mask: Optional[torch.Tensor], query_dtype: torch.dtype) -> Optional[torch.dtype]:
    """The dtype torch gives ``mask`` once it is additive: bool masks become the query's dtype."""
    if mask is None:
        return None
    return query_dtype if mask.dtype == torch.bool else mask.dtype


# Eval-mode problems with at most this many scores (B * heads * N * N) take torch's own fast path
# with masks or weights (``MultiHeadAttention._inference_fast_path``); larger ones are faster on
# attnlens's path (no N x N mask is built, causal blocks are skipped, weights written once).
_NATIVE_SMALL = 1 << 17

# The causal masks lately compared against, by (N, dtype, device): torch's convention, bool True
# above the diagonal (not allowed) or float -inf there and 0 elsewhere
# (``nn.Transformer.generate_square_subsequent_mask``). A few entries: each is N x N.
_CAUSAL_MASKS: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()
_CAUSAL_MASKS_KEPT = 2


def _causal_pattern(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    key = (n, dtype, device)
    pattern = _CAUSAL_MASKS.get(key)
    if pattern is None:
        above = torch.ones(n, n, dtype=torch.bool, device=device).triu_(1)
        pattern = (
            above
            if dtype == torch.bool
            else torch.zeros(n, n, dtype=dtype, device=device).masked_fill_(above, float("-inf"))
        )
        _CAUSAL_MASKS[key] = pattern
        while len(_CAUSAL_MASKS) > _CAUSAL_MASKS_KEPT:
            _CAUSAL_MASKS.popitem(last=False)
    else:
        _CAUSAL_MASKS.move_to_end(key)
    return pattern


def _as_words(t: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor's bytes as the widest integers that tile them, to compare them fast."""
    flat = t.reshape(-1)
    nbytes = flat.numel() * flat.element_size()
    for dtype, size in ((torch.int64, 8), (torch.int32, 4), (torch.int16, 2), (torch.uint8, 1)):
        if nbytes % size == 0 and size >= flat.element_size():
            return flat.view(dtype)
    return flat


def _is_causal_mask(mask: Optional[torch.Tensor], query_dtype: torch.dtype) -> bool:
    """Whether ``mask`` (the module's ``attn_mask`` as a 4-D view) is exactly the square causal
    mask, bool or of the query's float dtype: compared bit for bit, without allocating."""
    if mask is None or mask.shape[:2] != (1, 1) or mask.shape[2] != mask.shape[3] or mask.requires_grad:
        return False
    if mask.dtype != torch.bool and mask.dtype != query_dtype:
        return False
    mask = mask[0, 0]
    if not mask.is_contiguous():
        return False
    pattern = _causal_pattern(mask.shape[0], mask.dtype, mask.device)
    return torch.equal(_as_words(mask), _as_words(pattern))


def _pad_keys(mask: torch.Tensor, extra: int, value) -> torch.Tensor:
    """Append ``extra`` columns (keys) filled with ``value`` to the last dimension of ``mask``."""
    if extra == 0:
        return mask
    column = mask.new_full(mask.shape[:-1] + (extra,), value)
    return torch.cat([mask, column], dim=-1)


class MultiHeadAttention(nn.MultiheadAttention):
    r"""``torch.nn.MultiheadAttention`` on attnlens's fused kernels, weights included.

    Constructor, parameters, ``forward`` arguments, mask conventions and return values are
    torch's (see its documentation); in short::

        mha = attnlens.MultiHeadAttention(embed_dim=64, num_heads=4, batch_first=True)
        mha.load_state_dict(torch_mha.state_dict())          # and the other way round
        out, weights = mha(x, x, x, key_padding_mask=pad)    # weights [B, Nq, Nk], head mean
        out, weights = mha(x, x, x, average_attn_weights=False)  # [B, num_heads, Nq, Nk]

    * ``attn_mask``: ``[Nq, Nk]`` or ``[B * num_heads, Nq, Nk]`` (``[num_heads, Nq, Nk]`` for
      unbatched inputs); bool True = **not** allowed to attend (torch's module convention, the
      opposite of ``scaled_dot_product_attention``), float = added to the scores.
    * ``key_padding_mask``: ``[B, Nk]`` (``[Nk]`` unbatched); bool True = padding, ignored; float
      = added to the scores.
    * ``is_causal`` is a hint, as in torch: it needs ``attn_mask`` (the causal mask itself).
      Without padding and without weights the kernel applies causality itself and the mask is
      not read (torch's rule); otherwise the mask is compared with the square causal mask (bit
      for bit, without allocating) and, when it is that mask, causality is applied without it
      (no mask is rebuilt or read, masked key blocks are skipped); any other mask is used as is.
    * ``need_weights=True`` runs the fused kernels with ``return_weights="mean"`` (head average,
      never holding per-head weights) or ``True`` (``average_attn_weights=False``);
      ``need_weights=False`` returns ``(out, None)``.
    * Dropout (``dropout``) acts on the attention weights in training mode only; the returned
      weights are those after dropout, scaled by ``1 / (1 - dropout)`` as torch's are.
    * In inference (eval mode, nothing needing a gradient), unmasked self-attention without
      weights runs torch's own fast path (``torch._native_multi_head_attention``), which computes
      exactly what attnlens does there; self-attention projects q, k and v with one matrix product.

    Differences from torch:

    * A query that can attend to nothing (every key masked) gives output ``out_proj.bias`` and
      weights 0, never NaN. torch gives NaN on its ``need_weights=True`` path and its inference
      fast path (its ``need_weights=False`` path gives the same as attnlens).
    * ``is_causal=True`` without ``attn_mask`` always raises ``RuntimeError``; torch raises it too
      except on its inference fast path, where it silently ignores ``is_causal``.
    * NestedTensor inputs (torch's fast path only) are not supported: AssertionError, torch's error
      for them everywhere else.
    * A float mask that requires grad runs on the plain-PyTorch reference path (the kernels treat
      masks as constants), so gradients reach it as they do in torch.

    ``num_kv_heads`` (keyword only, default ``num_heads``) enables grouped-query attention: keys
    and values get ``num_kv_heads`` heads of ``embed_dim // num_heads`` features, each shared by
    ``num_heads // num_kv_heads`` query heads. The projections then have different sizes, so the
    packed ``in_proj_weight`` is not used (it is ``None``): ``q_proj_weight`` is
    ``[embed_dim, embed_dim]``, ``k_proj_weight`` ``[kv_dim, kdim]``, ``v_proj_weight``
    ``[kv_dim, vdim]`` with ``kv_dim = num_kv_heads * head_dim``, ``in_proj_bias`` is
    ``[embed_dim + 2 * kv_dim]`` (q, k, v in that order) and ``bias_k``/``bias_v`` are
    ``[1, 1, kv_dim]``. Such a state_dict has torch's names but not its shapes, so it loads only
    into modules with the same ``num_kv_heads``; with ``num_kv_heads == num_heads`` everything,
    including the random initialisation under a given seed, is torch's.

    Score modifications (keyword only, all off by default, so the module stays torch's unless
    asked): ``softcap`` (a positive float: scores become ``softcap * tanh(scores / softcap)``,
    Gemma 2's rule), ``window`` (``(left, right)`` keys around the diagonal, ``-1`` unbounded, as
    flash-attn's ``window_size``; key blocks outside it are skipped), ``alibi_slopes`` (a
    ``[num_heads]`` tensor, bias ``-slope * |i - j|``, kept as a non-persistent buffer so ``.to()``
    moves it and state_dicts stay torch's) and ``sinks=True`` (a learned logit per head,
    ``self.sinks`` ``[num_heads]`` initialised to 0, that joins every row's softmax: the returned
    weights are those over the real keys and sum to less than 1; it is a parameter, so it appears
    in the state_dict). They act in ``forward`` exactly as the same arguments of
    ``attnlens.scaled_dot_product_attention`` on the module's projections, with every mask,
    ``need_weights`` mode and dropout; torch's inference fast path is not taken when one is set.
    ``window`` and ``alibi_slopes`` measure distances between positions, so they refuse
    ``add_bias_kv``/``add_zero_attn`` (whose appended key has no position).
    """

    def __init__(
        self,
        embed_dim,
        num_heads,
        dropout=0.0,
        bias=True,
        add_bias_kv=False,
        add_zero_attn=False,
        kdim=None,
        vdim=None,
        batch_first=False,
        device=None,
        dtype=None,
        *,
        num_kv_heads: Optional[int] = None,
        softcap: Optional[float] = None,
        window: Optional[Tuple[int, int]] = None,
        alibi_slopes: Optional[torch.Tensor] = None,
        sinks: bool = False,
    ) -> None:
        super().__init__(
            embed_dim,
            num_heads,
            dropout,
            bias,
            add_bias_kv,
            add_zero_attn,
            kdim,
            vdim,
            batch_first,
            device=device,
            dtype=dtype,
        )
        if num_kv_heads is None:
            num_kv_heads = num_heads
        if isinstance(num_kv_heads, bool) or not isinstance(num_kv_heads, numbers.Integral):
            raise TypeError(f"num_kv_heads must be an int or None, got {type(num_kv_heads).__name__}")
        if num_kv_heads < 1 or num_heads % num_kv_heads != 0:
            raise ValueError(f"num_kv_heads must be a positive divisor of num_heads={num_heads}, got {num_kv_heads}")
        self.num_kv_heads = int(num_kv_heads)
        if self.num_kv_heads != num_heads:
            self._use_grouped_projections(bias, add_bias_kv, device, dtype)
        self._set_score_mods(softcap, window, alibi_slopes, sinks, device, dtype)

    def _set_score_mods(self, softcap, window, alibi_slopes, sinks, device, dtype) -> None:
        """Check and keep the score modifications (see the class docstring)."""
        self.softcap = check_softcap(softcap)
        self.window = check_window(window)
        positional = [
            name for name, value in (("window", self.window), ("alibi_slopes", alibi_slopes)) if value is not None
        ]
        if positional and (self.bias_k is not None or self.add_zero_attn):
            raise ValueError(
                f"{' and '.join(positional)} measure distances between positions, but add_bias_kv/add_zero_attn "
                f"append a key without one; use one or the other"
            )
        if alibi_slopes is not None:
            if not isinstance(alibi_slopes, torch.Tensor):
                raise TypeError(
                    f"alibi_slopes must be a tensor of shape [num_heads] or None, got {type(alibi_slopes).__name__}"
                )
            if not alibi_slopes.is_floating_point() or tuple(alibi_slopes.shape) != (self.num_heads,):
                raise ValueError(
                    f"alibi_slopes must be a floating point tensor of shape [num_heads] = [{self.num_heads}], got "
                    f"{alibi_slopes.dtype} {list(alibi_slopes.shape)}"
                )
            # float32 at least: the bias grows with the distance, so half-precision slopes would lose it
            precision = torch.promote_types(alibi_slopes.dtype, torch.float32)
            alibi_slopes = alibi_slopes.detach().to(
                device=device if device is not None else alibi_slopes.device, dtype=precision
            )
        self.register_buffer("alibi_slopes", alibi_slopes, persistent=False)
        if not isinstance(sinks, bool):
            raise TypeError(f"sinks must be a bool (True: a learned sink logit per head), got {type(sinks).__name__}")
        self.register_parameter(
            "sinks", nn.Parameter(torch.zeros(self.num_heads, device=device, dtype=dtype)) if sinks else None
        )

    @property
    def _modifies_scores(self) -> bool:
        return (
            self.softcap is not None
            or self.window is not None
            or self.alibi_slopes is not None
            or self.sinks is not None
        )

    def _use_grouped_projections(self, bias: bool, add_bias_kv: bool, device, dtype) -> None:
        """Replace the projections torch made with ones whose key/value side has ``num_kv_heads`` heads."""
        factory = {"device": device, "dtype": dtype}
        kv_dim = self.num_kv_heads * self.head_dim
        self._qkv_same_embed_dim = False  # makes torch's _reset_parameters initialise q/k/v separately
        self.in_proj_weight = None
        self.q_proj_weight = nn.Parameter(torch.empty((self.embed_dim, self.embed_dim), **factory))
        self.k_proj_weight = nn.Parameter(torch.empty((kv_dim, self.kdim), **factory))
        self.v_proj_weight = nn.Parameter(torch.empty((kv_dim, self.vdim), **factory))
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(self.embed_dim + 2 * kv_dim, **factory))
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty((1, 1, kv_dim), **factory))
            self.bias_v = nn.Parameter(torch.empty((1, 1, kv_dim), **factory))
        self._reset_parameters()

    def __setstate__(self, state):
        state.setdefault("num_kv_heads", state.get("num_heads"))
        for name in ("softcap", "window"):
            state.setdefault(name, None)
        state.setdefault("_parameters", OrderedDict()).setdefault("sinks", None)
        state.setdefault("_buffers", OrderedDict()).setdefault("alibi_slopes", None)
        super().__setstate__(state)

    def extra_repr(self) -> str:
        grouped = f", num_kv_heads={self.num_kv_heads}" if self.num_kv_heads != self.num_heads else ""
        mods = "".join(
            f", {name}={value}"
            for name, value in (("softcap", self.softcap), ("window", self.window))
            if value is not None
        )
        mods += ", alibi_slopes=[...]" if self.alibi_slopes is not None else ""
        mods += ", sinks=True" if self.sinks is not None else ""
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}{grouped}, batch_first={self.batch_first}{mods}"

    # -- forward ---------------------------------------------------------------------------------

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: Optional[torch.Tensor] = None,
        need_weights: bool = True,
        attn_mask: Optional[torch.Tensor] = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """torch's ``MultiheadAttention.forward``, computed by ``attnlens.scaled_dot_product_attention``.

        Returns ``(attn_output, attn_weights)``: output ``[B, Nq, E]`` (``[Nq, B, E]`` unless
        batch_first, ``[Nq, E]`` unbatched); weights ``[B, Nq, Nk]`` averaged over heads,
        ``[B, num_heads, Nq, Nk]`` with ``average_attn_weights=False`` (batch dim dropped for
        unbatched inputs), or ``None`` with ``need_weights=False``. ``Nk`` counts the extra key
        of ``add_bias_kv`` and of ``add_zero_attn``.
        """
        if query.is_nested or key.is_nested or value.is_nested:
            # torch raises AssertionError for NestedTensors anywhere but its inference fast path,
            # which attnlens does not have.
            raise AssertionError(
                "attnlens.MultiHeadAttention does not take NestedTensor inputs; pad the batch and pass key_padding_mask"
            )
        if not self.training and not self._modifies_scores:
            fast = self._inference_fast_path(
                query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal
            )
            if fast is not None:
                return fast
        _check_mask_type(key_padding_mask, "key_padding_mask")
        _check_mask_type(attn_mask, "attn_mask")
        if key_padding_mask is not None and attn_mask is not None and key_padding_mask.dtype != attn_mask.dtype:
            warnings.warn(
                f"key_padding_mask ({key_padding_mask.dtype}) and attn_mask ({attn_mask.dtype}) have "
                f"different dtypes; torch deprecates mixing them, pass both as bool or both as float",
                UserWarning,
                stacklevel=2,
            )

        batched = self._check_shapes(query, key, value, key_padding_mask, attn_mask)
        self._check_batch_and_devices(query, key, value, key_padding_mask, attn_mask, batched)
        same_inputs = (query is key, key is value)  # before the views below make new tensor objects
        if not batched:  # one sequence: give it a batch dim of 1 and take it off at the end
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:  # [N, B, E] -> [B, N, E] views; no copy
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)

        if is_causal and attn_mask is None:
            raise RuntimeError(
                "is_causal=True needs attn_mask: as in torch.nn.MultiheadAttention, is_causal is "
                "a hint that attn_mask is the causal mask (build one with "
                "torch.nn.Transformer.generate_square_subsequent_mask)"
            )
        # torch's rule: the hint replaces the mask only when neither padding nor weights need it.
        kernel_causal = bool(is_causal) and key_padding_mask is None and not need_weights
        if kernel_causal:
            attn_mask = None

        batch, seqlen_q, embed_dim = query.shape
        if embed_dim != self.embed_dim:
            raise AssertionError(f"query must have embed_dim={self.embed_dim} features, got {embed_dim}")
        if self.in_proj_weight is not None and same_inputs[1]:
            q, k, v = self._project_packed(query, key, same_inputs[0])
        else:
            q, k, v = self._project(query, key, value)

        seqlen_k = key.shape[1]
        if attn_mask is not None:
            attn_mask = self._check_attn_mask(attn_mask, batch, seqlen_q, seqlen_k)

        # add_bias_kv then add_zero_attn each append one key/value that every query may attend to.
        extra = 0
        if self.bias_k is not None or self.bias_v is not None:
            if self.bias_k is None or self.bias_v is None:
                raise AssertionError("bias_k and bias_v must be both set or both None")
            k = torch.cat([k, self.bias_k.expand(batch, 1, -1)], dim=1)
            v = torch.cat([v, self.bias_v.expand(batch, 1, -1)], dim=1)
            extra += 1
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(batch, 1, k.shape[-1])], dim=1)
            v = torch.cat([v, v.new_zeros(batch, 1, v.shape[-1])], dim=1)
            extra += 1
        if key_padding_mask is not None and tuple(key_padding_mask.shape) != (batch, seqlen_k):
            raise AssertionError(
                f"key_padding_mask must have shape {(batch, seqlen_k)} ([B, Nk]), got {tuple(key_padding_mask.shape)}"
            )

        if is_causal and not kernel_causal and extra == 0 and _is_causal_mask(attn_mask, query.dtype):
            # The hint is right (the mask is the causal mask itself): causality needs no mask, so
            # none is read or rebuilt, and masked key blocks are skipped; the result is the mask's.
            kernel_causal, attn_mask = True, None

        sdpa_mask, sdpa_padding = self._kernel_masks(attn_mask, key_padding_mask, extra, query.dtype, need_weights)

        # [B, N, heads * D] -> [B, heads, N, D], views read in place by the kernels
        q = q.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)
        k = k.unflatten(-1, (self.num_kv_heads, self.head_dim)).transpose(1, 2)
        v = v.unflatten(-1, (self.num_kv_heads, self.head_dim)).transpose(1, 2)
        return_weights = ("mean" if average_attn_weights else True) if need_weights else False
        attend = scaled_dot_product_attention
        if sdpa_mask is not None and sdpa_mask.requires_grad and torch.is_grad_enabled():
            attend = reference.scaled_dot_product_attention  # differentiable in the mask
        result = attend(
            q,
            k,
            v,
            attn_mask=sdpa_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=kernel_causal,
            enable_gqa=self.num_kv_heads != self.num_heads,
            key_padding_mask=sdpa_padding,
            return_weights=return_weights,
            softcap=self.softcap,
            window=self.window,
            alibi_slopes=self.alibi_slopes,
            sinks=self.sinks,
        )
        out, weights = result if need_weights else (result, None)

        out = out.transpose(1, 2).reshape(batch, seqlen_q, self.embed_dim)
        out = F.linear(out, self.out_proj.weight, self.out_proj.bias)
        if not batched:
            return out.squeeze(0), (weights.squeeze(0) if weights is not None else None)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    def _inference_fast_path(
        self, query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal
    ):
        """torch's own inference fast path (``torch._native_multi_head_attention``: projections,
        attention and output projection in one C++ call), where it computes exactly what attnlens
        does and is the faster road, so that the drop-in is never slower than torch in inference.

        That is self-attention in eval mode with nothing needing a gradient, on torch's fast-path
        conditions, where no query row can be left with nothing to attend to (torch's fast path
        gives NaN there, attnlens 0): no mask; or small problems (``_NATIVE_SMALL`` scores at
        most, where one C++ call beats attnlens's few operations) with the causal mask itself and
        bool key padding that leaves every row a key, and weights only in fp32/fp64 (torch computes
        them in the input dtype). Returns ``(out, weights)``, or None to take attnlens's path."""
        if (
            query is not key
            or key is not value
            or query.dim() != 3
            or not self.batch_first
            or self.in_proj_weight is None
            or self.in_proj_bias is None
            or self.bias_k is not None
            or self.bias_v is not None
            or self.add_zero_attn
            or self.num_heads % 2 != 0
            or query.is_nested
            or query.device.type not in ("cpu", "cuda")
            or query.shape[-1] != self.embed_dim
            or 0 in query.shape
            or not torch.backends.mha.get_fastpath_enabled()
            or torch.is_autocast_enabled()
        ):
            return None
        tensors = (query, self.in_proj_weight, self.in_proj_bias, self.out_proj.weight, self.out_proj.bias)
        if any(t is None or t.dtype != query.dtype or t.device != query.device for t in tensors):
            return None
        if torch.overrides.has_torch_function(tensors):
            return None
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            return None
        batch, seqlen, _ = query.shape
        if attn_mask is None and key_padding_mask is None and not need_weights and not is_causal:
            out, _ = torch._native_multi_head_attention(
                query,
                query,
                query,
                self.embed_dim,
                self.num_heads,
                self.in_proj_weight,
                self.in_proj_bias,
                self.out_proj.weight,
                self.out_proj.bias,
                None,
                False,
            )
            return out, None
        if batch * self.num_heads * seqlen * seqlen > _NATIVE_SMALL:
            return None
        if need_weights and query.dtype not in (torch.float32, torch.float64):
            return None
        if attn_mask is not None:
            if not is_causal or attn_mask.dtype != torch.bool or attn_mask.dim() != 2:
                return None
            if not _is_causal_mask(attn_mask[None, None], query.dtype):
                return None
        elif is_causal:
            return None  # attnlens's path raises torch's error
        if key_padding_mask is not None:
            if key_padding_mask.dtype != torch.bool or tuple(key_padding_mask.shape) != (batch, seqlen):
                return None
            if bool(key_padding_mask.all(dim=-1).any()):
                return None  # a sequence of padding only: its rows have nothing to attend to
            if attn_mask is not None and bool(key_padding_mask[:, 0].any()):
                return None  # causal: the first query sees the first key alone
        return super().forward(
            query,
            key,
            value,
            key_padding_mask=key_padding_mask,
            need_weights=need_weights,
            attn_mask=attn_mask,
            average_attn_weights=average_attn_weights,
            is_causal=is_causal,
        )

    def _check_shapes(self, query, key, value, key_padding_mask, attn_mask) -> bool:
        """torch's input-rank checks (AssertionError, as torch). Returns whether the input is batched."""
        if query.dim() not in (2, 3):
            raise AssertionError(f"query must be 3-D (batched) or 2-D (unbatched), got {query.dim()}-D")
        batched = query.dim() == 3
        rank = 3 if batched else 2
        if key.dim() != rank or value.dim() != rank:
            raise AssertionError(
                f"with a {rank}-D query, key and value must be {rank}-D, got {key.dim()}-D and {value.dim()}-D"
            )
        if key_padding_mask is not None and key_padding_mask.dim() != rank - 1:
            raise AssertionError(
                f"with a {rank}-D query, key_padding_mask must be {rank - 1}-D, got {key_padding_mask.dim()}-D"
            )
        if attn_mask is not None and attn_mask.dim() not in (2, 3):
            raise AssertionError(f"attn_mask must be 2-D or 3-D, got {attn_mask.dim()}-D")
        if not batched and attn_mask is not None and attn_mask.dim() == 3:
            expected = (self.num_heads, query.shape[0], key.shape[0])
            if tuple(attn_mask.shape) != expected:
                raise AssertionError(
                    f"for unbatched inputs a 3-D attn_mask must have shape {expected} "
                    f"([num_heads, Nq, Nk]), got {tuple(attn_mask.shape)}"
                )
        return batched

    def _check_batch_and_devices(self, query, key, value, key_padding_mask, attn_mask, batched: bool) -> None:
        """What torch's module fails on with ``RuntimeError`` (a batch or device mismatch), raised as
        torch's type before attnlens's functional API would raise its own: this module, like torch's,
        never broadcasts the batch. A mask on another device is refused the same way (torch runs
        with it and returns values that are not the masked attention)."""
        if batched:
            dim = 0 if self.batch_first else 1
            if not (query.shape[dim] == key.shape[dim] == value.shape[dim]):
                raise RuntimeError(
                    f"query, key and value must have the same batch size (dim {dim}), got query "
                    f"{tuple(query.shape)}, key {tuple(key.shape)} and value {tuple(value.shape)}"
                )
        for name, t in (
            ("key", key),
            ("value", value),
            ("key_padding_mask", key_padding_mask),
            ("attn_mask", attn_mask),
        ):
            if t is not None and t.device != query.device:
                raise RuntimeError(f"{name} must be on the query's device {query.device}, got {t.device}")

    def _project(self, query, key, value):
        """The input projections on ``[B, N, features]``: q ``[B, Nq, E]``, k and v ``[B, Nk, kv_dim]``."""
        kv_dim = self.num_kv_heads * self.head_dim
        if self.in_proj_weight is not None:  # torch's packed layout: rows q, then k, then v
            if key.shape != value.shape:
                raise AssertionError(f"key {tuple(key.shape)} and value {tuple(value.shape)} must have the same shape")
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        else:
            if key.shape[:2] != value.shape[:2]:
                raise AssertionError(
                    f"key {tuple(key.shape)} and value {tuple(value.shape)} must have the "
                    f"same batch and sequence length"
                )
            for name, t, dim in (("key", key, self.kdim), ("value", value, self.vdim)):
                if t.shape[-1] != dim:
                    raise AssertionError(f"{name} must have {dim} features, got {t.shape[-1]}")
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        b_q = b_k = b_v = None
        if self.in_proj_bias is not None:
            b_q, b_k, b_v = self.in_proj_bias.split([self.embed_dim, kv_dim, kv_dim])
        return F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)

    def _project_packed(self, query: torch.Tensor, key: torch.Tensor, self_attention: bool):
        """The input projections when key is value (and, for self-attention, query too), with
        torch's packed ``in_proj_weight``: one matrix product for q, k and v (two for cross
        attention), as torch's own module does. q ``[B, Nq, E]``, k and v ``[B, Nk, E]`` views."""
        if key.shape[-1] != self.embed_dim:
            return self._project(query, key, key)  # let the usual path report the shape
        weight, bias = self.in_proj_weight, self.in_proj_bias
        if self_attention:
            return F.linear(query, weight, bias).chunk(3, dim=-1)
        embed_dim = self.embed_dim
        q = F.linear(query, weight[:embed_dim], None if bias is None else bias[:embed_dim])
        k, v = F.linear(key, weight[embed_dim:], None if bias is None else bias[embed_dim:]).chunk(2, dim=-1)
        return q, k, v

    def _check_attn_mask(self, attn_mask: torch.Tensor, batch: int, seqlen_q: int, seqlen_k: int) -> torch.Tensor:
        """Shape check (RuntimeError, as torch) and a 4-D view: ``[1, 1, Nq, Nk]`` or ``[B, H, Nq, Nk]``."""
        if attn_mask.dim() == 2:
            if tuple(attn_mask.shape) != (seqlen_q, seqlen_k):
                raise RuntimeError(
                    f"a 2-D attn_mask must have shape {(seqlen_q, seqlen_k)} ([Nq, Nk]), got {tuple(attn_mask.shape)}"
                )
            return attn_mask[None, None]
        expected = (batch * self.num_heads, seqlen_q, seqlen_k)
        if tuple(attn_mask.shape) != expected:
            raise RuntimeError(
                f"a 3-D attn_mask must have shape {expected} ([B * num_heads, Nq, Nk]), got {tuple(attn_mask.shape)}"
            )
        return attn_mask.unflatten(0, (batch, self.num_heads))

    @staticmethod
    def _kernel_masks(attn_mask, key_padding_mask, extra: int, query_dtype: torch.dtype, need_weights: bool):
        """torch's masks -> attnlens's ``(attn_mask, key_padding_mask)``.

        Bool masks stay bool so the kernels can skip blocked key blocks: attn_mask is inverted
        (torch's module says True = blocked, attnlens True = attend); a bool key_padding_mask
        already has attnlens's meaning. A float key_padding_mask is additive and joins attn_mask,
        as torch adds the two. The ``extra`` keys of add_bias_kv / add_zero_attn are never masked.
        """
        # torch turns bool masks into additive ones in the query dtype, adds them and then needs
        # the result in the query dtype (its need_weights=False path also takes float32).
        merged = [
            d
            for d in (_float_mask_dtype(attn_mask, query_dtype), _float_mask_dtype(key_padding_mask, query_dtype))
            if d is not None
        ]
        if any(m is not None and m.is_floating_point() for m in (attn_mask, key_padding_mask)):
            dtype = merged[0] if len(merged) == 1 else torch.promote_types(*merged)
            if dtype != query_dtype and (need_weights or dtype != torch.float32):
                raise RuntimeError(
                    f"float masks must have the query's dtype {query_dtype}, got attn_mask "
                    f"{getattr(attn_mask, 'dtype', None)} and key_padding_mask "
                    f"{getattr(key_padding_mask, 'dtype', None)}"
                )

        padding = None
        additive_padding = None
        if key_padding_mask is not None:
            if key_padding_mask.dtype == torch.bool:
                padding = _pad_keys(key_padding_mask, extra, False)
            else:
                additive_padding = _pad_keys(key_padding_mask, extra, 0.0)[:, None, None, :]
        mask = None
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                mask = _pad_keys(~attn_mask, extra, True)
            else:
                mask = _pad_keys(attn_mask, extra, 0.0)
        if additive_padding is not None:
            if mask is None:
                mask = additive_padding
            else:
                if mask.dtype == torch.bool:
                    mask = torch.zeros(mask.shape, dtype=query_dtype, device=mask.device).masked_fill(
                        ~mask, float("-inf")
                    )
                mask = mask + additive_padding
        if mask is not None and mask.is_floating_point():
            mask = mask.to(query_dtype)
        return mask, padding


# ----------------------------------------------------------------------------------------------
# teaching modules: attnlens's mask convention, bool True = attend


def _head_axis_mask(mask: Optional[torch.Tensor], batched: bool) -> Optional[torch.Tensor]:
    """A ``[B, Nq, Nk]`` per-sequence mask gets a head axis, ``[B, 1, Nq, Nk]``, so it lines up
    with ``[B, heads, Nq, Nk]`` scores instead of being read as one mask per head."""
    if mask is not None and batched and mask.dim() == 3:
        return mask.unsqueeze(1)
    return mask


class SelfAttention(nn.Module):
    r"""One attention head: every token looks at every token and takes a weighted mean of values.

    For tokens ``x`` (``[B, N, embed_dim]`` or ``[N, embed_dim]``)::

        Q, K, V = x W_q + b_q,  x W_k + b_k,  x W_v + b_v        # each [..., N, head_dim]
        weights = softmax(Q K^T / sqrt(head_dim) + mask)        # [..., N, N], rows sum to 1
        output  = weights V                                    # [..., N, head_dim]

    Row ``i`` of ``weights`` says how much token ``i`` takes from each token. The computation runs
    in attnlens's fused kernel, which returns those exact weights.

    ``mask`` follows ``attnlens.scaled_dot_product_attention``: **bool, True = may attend**
    (False blocks the key), or float, **added** to the scaled scores (``-inf`` blocks). Shape
    ``[N, N]`` for all sequences, ``[B, N, N]`` per sequence, or anything that broadcasts to them
    (``[B, 1, N]`` to hide padded keys). A token that may attend to nothing gets output 0 and
    weights 0.
    """

    def __init__(self, embed_dim: int, head_dim: int) -> None:
        super().__init__()
        self.embed_dim, self.head_dim = embed_dim, head_dim
        self.query = nn.Linear(embed_dim, head_dim)
        self.key = nn.Linear(embed_dim, head_dim)
        self.value = nn.Linear(embed_dim, head_dim)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(output [..., N, head_dim], weights [..., N, N])``."""
        # The kernel takes [batch, heads, N, D]; one head is a head axis of size 1.
        q = self.query(x).unsqueeze(-3)
        k = self.key(x).unsqueeze(-3)
        v = self.value(x).unsqueeze(-3)
        mask = _head_axis_mask(mask, batched=x.dim() == 3)
        output, weights = scaled_dot_product_attention(q, k, v, attn_mask=mask, return_weights=True)
        return output.squeeze(-3), weights.squeeze(-3)


class MultiHeadSelfAttention(nn.Module):
    r"""Several heads side by side, then the output projection that mixes them.

    ``embed_dim`` is split into ``num_heads`` heads of ``head_dim = embed_dim // num_heads``
    features. Each head attends on its own (:class:`SelfAttention`'s maths, on its own slice of
    the projected queries, keys and values); the heads' outputs are concatenated back to
    ``embed_dim`` features and passed through ``out_proj``. Without that last projection every
    head would write only to its own slice of the output and the heads could never combine.

    ``forward(x, mask=None, key_padding_mask=None, is_causal=False)``:

    * ``x``: ``[B, N, embed_dim]`` or ``[N, embed_dim]``.
    * ``mask``: attnlens's convention, **bool True = may attend** or float added to the scores;
      ``[N, N]``, ``[B, N, N]`` per sequence or ``[B, num_heads, N, N]`` per head.
    * ``key_padding_mask``: bool ``[B, N]`` (``[N]`` unbatched), **True = padding**, never
      attended to (``nn.MultiheadAttention``'s convention).
    * ``is_causal``: token ``i`` sees tokens ``j <= i`` only.

    Returns ``(output [B, N, embed_dim], weights [B, num_heads, N, N])`` (no batch dim for
    unbatched ``x``). With ``dropout > 0`` in training mode, attention weights are dropped and
    the rest scaled by ``1 / (1 - dropout)``; the returned weights are those after dropout.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        # [..., N, embed_dim] -> [..., num_heads, N, head_dim]
        return t.unflatten(-1, (self.num_heads, self.head_dim)).transpose(-3, -2)

    def forward(
        self,
        x: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        key_padding_mask: Optional[torch.Tensor] = None,
        is_causal: bool = False,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        q = self._split_heads(self.q_proj(x))
        k = self._split_heads(self.k_proj(x))
        v = self._split_heads(self.v_proj(x))
        heads, weights = scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=_head_axis_mask(mask, batched=x.dim() == 3),
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
            key_padding_mask=key_padding_mask,
            return_weights=True,
        )
        # [..., num_heads, N, head_dim] -> [..., N, embed_dim]: concatenate the heads, then mix them
        concatenated = heads.transpose(-3, -2).flatten(-2)
        return self.out_proj(concatenated), weights
