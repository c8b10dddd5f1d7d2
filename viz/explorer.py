"""The interactive attention explorer: one self-contained HTML page of every layer and head.

::

    page = attnlens.viz.explorer(outputs.attentions, tokens, title="MiniLM")
    page.save("attention.html")      # open it from disk: it needs no network and no server
    page                             # in Jupyter or VS Code it shows inline (_repr_html_)

The page holds its scripts, styles and data inline (nothing is fetched, not even a font), so it
works from ``file://``, offline, in a notebook and inside Streamlit. It shows one head as a
heatmap (hover a cell for its query, key and weight; wheel to zoom, drag to pan), all heads of a
layer, the layers x heads grid (click a panel to open it), the head mean, attention rollout
(Abnar and Zuidema, 2020) through each layer, and a text view where hovering a token lights up
what it attends to and what attends to it. Pickers choose the layer, head and view; the arrow
keys step through heads (left/right) and layers (up/down). "Save PNG" exports the current view.

Everything is drawn on canvases from one compact copy of the weights, so 1,000+ tokens stay
responsive. The weights are quantised for the page: 16 bits (linear, within ±7.6e-6 of the
model's weight) while the page holds at most ``AUTO_16_BIT_VALUES`` numbers, 8 bits (on a
square-root scale, within ±0.0039, finer for small weights) beyond; the page states which, and
the value a hover shows is exactly the stored value that is drawn.

Like the rest of ``attnlens.viz`` it takes tensors and arrays only and never calls a kernel;
``attnlens.capture_attention`` records are read by duck typing (anything with ``weights`` and
``name``), so this module imports nothing from the attention library.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import os
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
from matplotlib import colormaps

from attnlens.viz._common import MASKED_COLOR, ArrayLike, Tokens, as_labels, is_array, to_numpy

__all__ = ["AUTO_16_BIT_VALUES", "MAX_VALUES", "Explorer", "Precision", "explorer"]

# The page holds each head's weights plus one head mean and one rollout per layer. Up to this many
# numbers (e.g. 12 layers x 12 heads x 150 tokens) 16 bits keep the page under ~10 MB; beyond it
# 8 bits halve the size, and the picture a person reads is the same.
AUTO_16_BIT_VALUES = 1 << 22
# A browser holds the page's numbers in memory several times over while it decodes them; past
# this the page stops being a page. Slice the layers (or heads) to show fewer.
MAX_VALUES = 1 << 26
_ASSET_DIR = Path(__file__).resolve().parent
# Weights a little outside [0, 1] are rounding (a float16 softmax can sum to 1 + 1e-3); further out
# the tensor is not probabilities (scores or logits passed by mistake).
_PROBABILITY_SLACK = 2e-3
VIEWS = ("head", "heads", "grid", "mean", "rollout", "text")


@dataclasses.dataclass(frozen=True)
class Precision:
    """How the page stores each weight.

    ``bits`` 16: ``code = round(w * 65535)``, shown as ``code / 65535``, so a shown weight is within
    ``max_error = 0.5 / 65535`` (7.63e-6) of the model's. ``bits`` 8: ``code = round(sqrt(w) *
    255)``, shown as ``(code / 255) ** 2``: within ``(2 sqrt(w) + 0.5 / 255) * 0.5 / 255`` of
    ``w`` (``bound``), so at most ``max_error`` 0.0039 (near ``w = 1``) and at most 0.0004 for
    weights up to 0.01. The square root spends the codes where attention over long inputs lives,
    on small weights.
    """

    bits: int
    coding: str  # "linear" or "sqrt"
    max_error: float

    @property
    def text(self) -> str:
        """The sentence the page shows."""
        if self.bits == 16:
            return f"Weights stored in 16 bits: every value shown is within ±{self.max_error:.7f} of the model's."
        return (
            "Weights stored in 8 bits on a square-root scale: every value shown is within "
            f"±{self.max_error:.4f} of the model's (±0.0004 for weights up to 0.01)."
        )

    def encode(self, values: np.ndarray) -> np.ndarray:
        """Codes for weights in ``[0, 1]`` (clipped): uint16 for 16 bits, uint8 for 8."""
        clipped = np.clip(values, 0.0, 1.0)
        if self.bits == 16:
            return np.rint(clipped * 65535.0).astype(np.uint16)
        return np.rint(np.sqrt(clipped) * 255.0).astype(np.uint8)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """The weights the page shows for ``codes`` (float64)."""
        codes = codes.astype(np.float64)
        return codes / 65535.0 if self.bits == 16 else (codes / 255.0) ** 2

    def bound(self, weights: np.ndarray) -> np.ndarray:
        """The largest difference between each weight and the value shown for it."""
        if self.bits == 16:
            return np.full(np.shape(weights), 0.5 / 65535.0)
        half_step = 0.5 / 255.0
        return (2.0 * np.sqrt(np.clip(weights, 0.0, 1.0)) + half_step) * half_step


# The 8-bit worst case: a weight just above (254.5 / 255)^2 rounds up to 1.
PRECISIONS = {16: Precision(16, "linear", 0.5 / 65535.0), 8: Precision(8, "sqrt", (2.0 - 0.5 / 255.0) * 0.5 / 255.0)}


@dataclasses.dataclass
class _Section:
    """One attention stack on the page: ``weights [L, H, Nq, Nk]`` of one example."""

    name: str
    weights: np.ndarray
    tokens_q: List[str]
    tokens_k: List[str]
    layer_names: List[str]
    allowed: Optional[np.ndarray]  # bool [Nq, Nk], True = may attend; None = no mask given
    self_attention: bool  # queries and keys are the same tokens: rollout and the text view's two-way hover

    @property
    def num_matrices(self) -> int:
        layers, heads = self.weights.shape[:2]
        return layers * heads + layers + (layers if self.self_attention else 0)


# ----------------------------------------------------------------------------------------------
# reading what users hold


def _is_record(value: Any) -> bool:
    """An ``attnlens.capture_attention`` record (or anything shaped like one): ``.weights`` and ``.name``."""
    return not is_array(value) and hasattr(value, "weights") and hasattr(value, "name")


def _unwrap(attentions: Any) -> Any:
    """A model output's ``.attentions`` and a capture's records, as the sequence they hold."""
    if isinstance(attentions, Mapping) and not is_array(attentions):
        # Hugging Face's ModelOutput is an ordered mapping; so is any dict a user builds from one.
        if "attentions" not in attentions or attentions["attentions"] is None:
            raise ValueError(
                "attentions is a model output without attention weights; call the model with "
                "output_attentions=True (and pass outputs.attentions, or outputs.cross_attentions, ...)"
            )
        return attentions["attentions"]
    if hasattr(attentions, "records") and not is_array(attentions):  # attnlens.AttentionCapture
        return list(attentions.records)
    return attentions


def _select_example(array: np.ndarray, name: str, batch_index: int) -> np.ndarray:
    """``array[batch_index]`` with a clear error when the batch has no such example."""
    if not 0 <= batch_index < array.shape[0]:
        raise ValueError(
            f"batch_index must be in [0, {array.shape[0]}) for {name} of batch size {array.shape[0]}, got {batch_index}"
        )
    return array[batch_index]


def _per_layer(attentions: Any, batch_index: int) -> Tuple[np.ndarray, List[str]]:
    """The example's ``[L, H, Nq, Nk]`` float weights and a name per layer."""
    attentions = _unwrap(attentions)
    shapes_hint = (
        "a tuple of [B, H, Nq, Nk] (Hugging Face outputs.attentions), capture_attention records, "
        "a list of [H, Nq, Nk] or [Nq, Nk] per layer, or one [L, B, H, Nq, Nk], [L, H, Nq, Nk], "
        "[H, Nq, Nk] or [Nq, Nk] tensor/array"
    )
    if is_array(attentions):
        array = to_numpy(attentions, "attentions")
        if array.ndim == 5:
            array = np.stack([_select_example(layer, "attentions[l]", batch_index) for layer in array])
        elif batch_index != 0:
            raise ValueError(
                f"batch_index={batch_index} but attentions of shape {tuple(array.shape)} has no batch axis "
                "(a single array has one only when it is 5-D, [L, B, H, Nq, Nk])"
            )
        elif array.ndim in (2, 3):
            array = array.reshape((1,) * (4 - array.ndim) + array.shape)
        elif array.ndim != 4:
            raise ValueError(f"attentions must be {shapes_hint}; got a {array.ndim}-D array of shape {array.shape}")
        return array, [f"layer {i}" for i in range(array.shape[0])]

    if not isinstance(attentions, (list, tuple)) or not attentions:
        raise TypeError(f"attentions must be {shapes_hint}; got {type(attentions).__name__}")
    if all(_is_record(item) for item in attentions):
        return _from_records(attentions, batch_index)
    layers = []
    for i, item in enumerate(attentions):
        if not is_array(item):
            raise TypeError(
                f"attentions[{i}] must be a tensor or array (one layer's weights), got {type(item).__name__}; "
                f"attentions must be {shapes_hint}"
            )
        layer = to_numpy(item, f"attentions[{i}]")
        if layer.ndim == 4:
            layer = _select_example(layer, f"attentions[{i}]", batch_index)
        elif batch_index != 0:
            raise ValueError(
                f"batch_index={batch_index} but attentions[{i}] of shape {tuple(layer.shape)} has no batch "
                "axis (per-layer weights have one when they are 4-D, [B, H, Nq, Nk])"
            )
        elif layer.ndim == 2:
            layer = layer[None]
        elif layer.ndim != 3:
            raise ValueError(
                f"attentions[{i}] must be [B, H, Nq, Nk], [H, Nq, Nk] or [Nq, Nk]; got shape {tuple(layer.shape)}"
            )
        if layers and layer.shape != layers[0].shape:
            raise ValueError(
                f"attentions[{i}] has shape {tuple(layer.shape)} after selecting the example but "
                f"attentions[0] has {tuple(layers[0].shape)}; every layer must have the same [H, Nq, Nk]"
            )
        layers.append(layer)
    return np.stack(layers), [f"layer {i}" for i in range(len(layers))]


def _from_records(records: Sequence[Any], batch_index: int) -> Tuple[np.ndarray, List[str]]:
    """``capture_attention`` records: one layer each, all of one shape."""
    layers = []
    for i, record in enumerate(records):
        weights = to_numpy(record.weights, f"records[{i}].weights")
        if weights.ndim == 3:  # an unbatched [H, Nq, Nk]
            weights = weights[None]
        if weights.ndim != 4:
            raise ValueError(f"records[{i}].weights must be [B, H, Nq, Nk], got shape {tuple(weights.shape)}")
        layers.append(_select_example(weights, f"records[{i}].weights", batch_index))
    shapes = {layer.shape for layer in layers}
    if len(shapes) > 1:
        found = sorted({(getattr(r, "kind", "?"), tuple(layer.shape)) for r, layer in zip(records, layers)})
        raise ValueError(
            f"the records hold attention of different shapes {found}; one section of the explorer shows "
            "one kind of attention: pass captured.select('self', 'encoder') (or 'cross', ...) and add the "
            "others with Explorer.add(...)"
        )
    return np.stack(layers), [str(record.name) for record in records]


def _check_probabilities(weights: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(weights)):
        raise ValueError("attentions hold NaN or infinite values; the explorer shows probabilities in [0, 1]")
    low, high = float(weights.min()), float(weights.max())
    if low < -_PROBABILITY_SLACK or high > 1.0 + _PROBABILITY_SLACK:
        raise ValueError(
            f"attentions must be probabilities in [0, 1] (softmax outputs), got values in [{low:.4g}, {high:.4g}]; "
            "scores before the softmax are not attention weights"
        )
    return weights


def _allowed_cells(mask: Optional[ArrayLike], num_queries: int, num_keys: int) -> Optional[np.ndarray]:
    """A bool ``[Nq, Nk]`` (True = may attend) from ``[Nq, Nk]`` or a key mask ``[Nk]``."""
    if mask is None:
        return None
    original_dtype = getattr(mask, "dtype", None)
    array = to_numpy(mask, "mask")
    if array.dtype != np.bool_:
        raise TypeError(
            f"mask must be bool with True = may attend, got dtype {original_dtype or array.dtype}; a Hugging Face "
            "attention_mask (1 = token, 0 = padding) becomes one with attention_mask[batch_index].bool()"
        )
    if array.shape == (num_keys,):
        return np.broadcast_to(array[None, :], (num_queries, num_keys)).copy()
    if array.shape == (num_queries, num_keys):
        return array.copy()
    raise ValueError(
        f"mask must have shape [Nq, Nk] = ({num_queries}, {num_keys}) or [Nk] = ({num_keys},) (keys that may "
        f"be attended, True = real token), got {tuple(array.shape)}"
    )


def _section(
    attentions: Any,
    tokens: Tokens,
    tokens_k: Tokens,
    *,
    name: Optional[str],
    batch_index: int,
    mask: Optional[ArrayLike],
    layer_names: Optional[Sequence[str]] = None,
) -> _Section:
    if isinstance(batch_index, bool) or not isinstance(batch_index, int):
        raise TypeError(f"batch_index must be an int, got {type(batch_index).__name__}")
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a str or None, got {type(name).__name__}")
    weights, found_names = _per_layer(attentions, batch_index)
    if layer_names is not None:
        if isinstance(layer_names, str) or not isinstance(layer_names, Sequence):
            raise TypeError(f"layer_names must be a sequence of str, got {type(layer_names).__name__}")
        if len(layer_names) != weights.shape[0]:
            raise ValueError(f"layer_names has {len(layer_names)} names but attentions have {weights.shape[0]} layers")
        found_names = [str(n) for n in layer_names]
    if weights.dtype == np.bool_:
        raise TypeError("attentions must hold float weights, got bool (a mask?); pass masks as mask=")
    if weights.size == 0:
        raise ValueError(f"attentions must not be empty, got shape {tuple(weights.shape)} [L, H, Nq, Nk]")
    if weights.dtype not in (np.float32, np.float64):
        weights = weights.astype(np.float32)
    weights = _check_probabilities(weights)
    num_queries, num_keys = weights.shape[2:]
    labels_q = as_labels(tokens, "tokens", num_queries, "queries (rows)")
    if tokens_k is None:
        if num_keys != num_queries:
            raise ValueError(
                f"tokens_k is None, so the keys would reuse tokens ({num_queries} labels), but the weights "
                f"have {num_keys} keys (cross-attention?); pass tokens_k"
            )
        labels_k = list(labels_q)
    else:
        labels_k = as_labels(tokens_k, "tokens_k", num_keys, "keys (columns)")
    self_attention = num_queries == num_keys and labels_q == labels_k
    return _Section(
        name=name or "attention",
        weights=weights,
        tokens_q=labels_q,
        tokens_k=labels_k,
        layer_names=found_names,
        allowed=_allowed_cells(mask, num_queries, num_keys),
        self_attention=self_attention,
    )


# ----------------------------------------------------------------------------------------------
# what the page embeds


def rollout_per_layer(weights: np.ndarray, residual: float = 0.5) -> np.ndarray:
    """Attention rollout through layers ``0..l`` for every ``l``: float64 ``[L, N, N]``.

    ``weights`` is ``[L, H, N, N]``; each layer's head mean is blended with the identity
    (``(1 - residual) W + residual I``), rows renormalised, and the layers chained from the first:
    entry ``l`` equals ``attnlens.viz.attention_rollout(weights[: l + 1])``.
    """
    size = weights.shape[-1]
    identity = np.eye(size)
    rollout = identity
    out = np.empty((weights.shape[0], size, size))
    for layer in range(weights.shape[0]):
        blended = (1.0 - residual) * weights[layer].astype(np.float64).mean(axis=0) + residual * identity
        row_sums = blended.sum(axis=-1, keepdims=True)
        blended = np.divide(blended, row_sums, out=np.zeros_like(blended), where=row_sums > 0)
        rollout = blended @ rollout
        out[layer] = rollout
    return out


def _matrices(section: _Section) -> List[np.ndarray]:
    """Every matrix the page shows for a section, in the page's order, as ``[M_i, Nq, Nk]`` parts:
    heads (layer-major), head means per layer, then rollout through each layer (self-attention
    only). The parts keep the weights' own float type: casting float64 weights to float32 before
    quantising would add its rounding to the stated error."""
    layers, heads, num_queries, num_keys = section.weights.shape
    parts = [
        section.weights.reshape(layers * heads, num_queries, num_keys),
        section.weights.astype(np.float64).mean(axis=1),
    ]
    if section.self_attention:
        parts.append(rollout_per_layer(section.weights))
    return parts


def _payload(sections: Sequence[_Section], precision: Precision, title: str) -> Tuple[dict, bytes]:
    """The page's header (JSON-able) and its binary data (before compression).

    The data is one byte string; each section names ``[offset, count]`` spans in it: ``codes``
    (``count`` codes of its matrices, in ``_matrices`` order; 16-bit codes as two planes, all
    high bytes then all low bytes, which deflate compresses far better than interleaved) and
    ``mask`` (``Nq * Nk`` bytes, 1 = may attend) or None.
    """
    chunks: List[bytes] = []
    offset = 0
    described = []
    for section in sections:
        codes = np.concatenate([precision.encode(part).ravel() for part in _matrices(section)])
        if precision.bits == 16:
            raw = (codes >> 8).astype(np.uint8).tobytes() + (codes & 0xFF).astype(np.uint8).tobytes()
        else:
            raw = codes.tobytes()
        code_span = [offset, int(codes.size)]
        chunks.append(raw)
        offset += len(raw)
        mask_span = None
        if section.allowed is not None:
            raw_mask = section.allowed.astype(np.uint8).tobytes()
            mask_span = [offset, len(raw_mask)]
            chunks.append(raw_mask)
            offset += len(raw_mask)
        layers, heads, num_queries, num_keys = section.weights.shape
        described.append(
            {
                "name": section.name,
                "layers": layers,
                "heads": heads,
                "nq": num_queries,
                "nk": num_keys,
                "tokens_q": section.tokens_q,
                "tokens_k": section.tokens_k,
                "layer_names": section.layer_names,
                "self": section.self_attention,
                "codes": code_span,
                "mask": mask_span,
            }
        )
    cmap = colormaps["viridis"]
    lut = (np.asarray(cmap(np.linspace(0.0, 1.0, 256)))[:, :3] * 255.0).round().astype(np.uint8)
    header = {
        "format": 1,
        "title": title,
        "bits": precision.bits,
        "coding": precision.coding,
        "max_error": precision.max_error,
        "precision_text": precision.text,
        "colormap": lut.tobytes().hex(),
        "masked_color": MASKED_COLOR,
        "sections": described,
    }
    return header, b"".join(chunks)


def _script_json(value: Any) -> str:
    """JSON safe inside a <script> element: no '<', '>' or '&' can close it or open a comment."""
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _asset(name: str) -> str:
    return (_ASSET_DIR / name).read_text(encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# the page


class Explorer:
    """An attention explorer page: ``save(path)``, ``to_html()``, and inline display in notebooks.

    Made by :func:`explorer`; :meth:`add` puts another attention stack on the same page (an
    encoder-decoder's encoder, decoder and cross-attention), chosen with the page's "attention"
    picker. The page is built when asked for, so adding is cheap.
    """

    def __init__(self, section: _Section, *, title: Optional[str], precision: Union[str, int], view: str) -> None:
        if title is not None and not isinstance(title, str):
            raise TypeError(f"title must be a str or None, got {type(title).__name__}")
        if precision not in ("auto", 8, 16):
            raise ValueError(f"precision must be 'auto', 8 or 16 (bits per weight), got {precision!r}")
        if view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
        self.sections: List[_Section] = [section]
        self.title = title if title is not None else "attention explorer"
        self._precision = precision
        self.view = view
        self.start = {"section": 0, "layer": 0, "head": 0}

    def add(
        self,
        attentions: Any,
        tokens: Tokens,
        tokens_k: Tokens = None,
        *,
        name: Optional[str] = None,
        batch_index: int = 0,
        mask: Optional[ArrayLike] = None,
        layer_names: Optional[Sequence[str]] = None,
    ) -> "Explorer":
        """Add another attention stack (same arguments as :func:`explorer`); returns ``self``."""
        section = _section(
            attentions, tokens, tokens_k, name=name, batch_index=batch_index, mask=mask, layer_names=layer_names
        )
        if section.name in {s.name for s in self.sections}:
            section.name = f"{section.name} ({len(self.sections) + 1})"
        self.sections.append(section)
        self._check_size()
        return self

    def open_at(self, *, section: int = 0, layer: int = 0, head: int = 0, view: Optional[str] = None) -> "Explorer":
        """Make the page open on ``section`` (index in :attr:`sections`), ``layer`` and ``head``
        (and ``view``, one of ``VIEWS``); returns ``self``."""
        if not 0 <= section < len(self.sections):
            raise ValueError(f"section must be in [0, {len(self.sections)}), got {section}")
        layers, heads = self.sections[section].weights.shape[:2]
        if not 0 <= layer < layers:
            raise ValueError(f"layer must be in [0, {layers}) for section {section}, got {layer}")
        if not 0 <= head < heads:
            raise ValueError(f"head must be in [0, {heads}) for section {section}, got {head}")
        if view is not None:
            if view not in VIEWS:
                raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
            self.view = view
        self.start = {"section": int(section), "layer": int(layer), "head": int(head)}
        return self

    @property
    def num_values(self) -> int:
        """How many numbers the page stores: every head, plus a head mean and a rollout per layer."""
        return sum(s.num_matrices * s.weights.shape[2] * s.weights.shape[3] for s in self.sections)

    @property
    def precision(self) -> Precision:
        """The precision the page stores the weights at (``precision="auto"``: 16 bits up to
        ``AUTO_16_BIT_VALUES`` numbers, else 8)."""
        if self._precision == "auto":
            return PRECISIONS[16 if self.num_values <= AUTO_16_BIT_VALUES else 8]
        return PRECISIONS[int(self._precision)]

    def _check_size(self) -> None:
        if self.num_values > MAX_VALUES:
            shapes = [tuple(s.weights.shape) for s in self.sections]
            raise ValueError(
                f"the explorer would store {self.num_values:,} numbers (sections [L, H, Nq, Nk] {shapes}), more "
                f"than a browser page holds comfortably ({MAX_VALUES:,}); show fewer layers or heads, e.g. "
                "explorer(outputs.attentions[:4], ...) or a slice of the heads"
            )

    def to_html(self) -> str:
        """The whole page as one string: a complete HTML document with everything inline."""
        header, raw = _payload(self.sections, self.precision, self.title)
        header["view"] = self.view
        header["start"] = self.start
        blob = base64.b64encode(zlib.compress(raw, 6)).decode("ascii")
        # Long base64 lines slow some editors to a crawl; the decoder ignores the line breaks.
        blob = "\n".join(blob[i : i + 4096] for i in range(0, len(blob), 4096))
        title = html.escape(self.title)
        return (
            "<!DOCTYPE html>\n"
            '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{title}</title>\n<style>\n{_asset('explorer.css')}</style>\n</head>\n<body>\n"
            f'<div class="ax-root" id="ax-root" data-ready="0">\n'
            f"<noscript>This page needs JavaScript to draw the attention weights.</noscript>\n</div>\n"
            f'<script type="application/json" id="ax-header">{_script_json(header)}</script>\n'
            f'<script type="application/octet-stream" id="ax-data">\n{blob}\n</script>\n'
            f"<script>\n{_asset('explorer.js')}</script>\n</body>\n</html>\n"
        )

    def save(self, path: Union[str, "os.PathLike[str]"]) -> str:
        """Write the page to ``path`` (UTF-8); returns the path as a string."""
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        path = os.fspath(path)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(self.to_html())
        return path

    def _repr_html_(self) -> str:
        # An iframe keeps the page's styles, ids and key bindings out of the notebook's own page.
        return (
            f'<iframe srcdoc="{html.escape(self.to_html(), quote=True)}" '
            'style="width: 100%; height: 820px; border: 1px solid #ddd;" '
            f'title="{html.escape(self.title)}"></iframe>'
        )

    def __repr__(self) -> str:
        parts = ", ".join(f"{s.name!r} {list(s.weights.shape)}" for s in self.sections)
        return f"Explorer({parts}; {self.precision.bits}-bit)"


def explorer(
    attentions: Any,
    tokens: Tokens,
    tokens_k: Tokens = None,
    *,
    title: Optional[str] = None,
    batch_index: int = 0,
    mask: Optional[ArrayLike] = None,
    name: Optional[str] = None,
    layer_names: Optional[Sequence[str]] = None,
    precision: Union[str, int] = "auto",
    view: str = "head",
) -> Explorer:
    """An interactive page of every layer and head's attention for one example.

    Args:
        attentions: the weights, each ``[..., Nq, Nk]`` with rows summing to 1 (queries x keys):

            - Hugging Face ``outputs.attentions`` (a tuple with one ``[B, H, Nq, Nk]`` per layer;
              ``outputs`` itself works too), or ``outputs.cross_attentions`` with ``tokens_k``;
            - ``attnlens.capture_attention`` records (the capture, or a list such as
              ``captured.select("self", "encoder")``), each ``weights [B, H, Nq, Nk]``; all must
              have one shape (for an encoder-decoder, add the other kinds with :meth:`Explorer.add`);
            - a list of per-layer ``[B, H, Nq, Nk]``, ``[H, Nq, Nk]`` or ``[Nq, Nk]`` tensors/arrays;
            - one tensor/array ``[L, B, H, Nq, Nk]`` (``captured.stack(...)``), ``[L, H, Nq, Nk]``,
              ``[H, Nq, Nk]`` (one layer) or ``[Nq, Nk]`` (one head).
        tokens: ``Nq`` query labels (strings, or ids; None for positions 0..Nq-1).
        tokens_k: ``Nk`` key labels; None reuses ``tokens`` (self-attention).
        title: the page's title.
        batch_index: which example of a batch to show, when the weights have a batch axis
            (``B``); default the first.
        mask: optional bool, True = may attend: ``[Nq, Nk]``, or ``[Nk]`` for keys (True = real
            token, e.g. ``batch["attention_mask"][batch_index].bool()``). Blocked cells are drawn
            grey, apart from weights that are merely 0.
        name: the section's name in the page's "attention" picker (default ``"attention"``).
        layer_names: a name per layer for the layer picker (default: the records' module names,
            or ``"layer i"``).
        precision: bits per stored weight, ``16``, ``8`` or ``"auto"`` (see :class:`Precision`).
        view: the view the page opens on: ``"head"``, ``"heads"``, ``"grid"``, ``"mean"``,
            ``"rollout"`` (self-attention only) or ``"text"``.

    Returns:
        An :class:`Explorer`: ``.save(path)``, ``.to_html()``, shown inline by Jupyter/VS Code.

    Raises:
        TypeError / ValueError naming the argument for anything else: weights that are not
        probabilities, layers of different shapes, label counts that do not match, a batch
        index outside the batch, a non-bool mask.
    """
    section = _section(
        attentions, tokens, tokens_k, name=name, batch_index=batch_index, mask=mask, layer_names=layer_names
    )
    page = Explorer(section, title=title, precision=precision, view=view)
    page._check_size()
    return page
