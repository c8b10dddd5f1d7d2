"""The visual tour behind ``make demo``: ``python -m attnlens demo --out DIR``.

It trains the small transformer on a synthetic task whose right attention is known (``reverse``
by default: output token ``i`` must look at input token ``n - 1 - i``), runs one example through
the fused kernels with ``attnlens.capture_attention``, and writes every picture of
``attnlens.viz`` for it, the interactive explorer of every layer and head (``explorer.html``),
plus an ``index.html`` that walks through them in order. ``train_tour_model`` and
``look_inside`` are the two halves, also used by the explorer app (``python -m attnlens app``).

On a CPU the training runs on the CPU path, plain PyTorch operations (Triton's interpreter is far too
slow to train with) and the example's attention is captured through the real kernels in the
interpreter when ``TRITON_INTERPRET=1`` was set before triton was imported (``python -m attnlens``
does that when there is no GPU). On a GPU everything runs on the compiled kernels.
"""

from __future__ import annotations

import dataclasses
import html
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch

import attnlens
from attnlens import viz
from attnlens.tiny.data import BOS_ID, EOS_ID, NUM_SPECIAL_TOKENS, PAD_ID
from attnlens.tiny.training import TaskData, TrainingHistory, train_on_task

__all__ = [
    "DEFAULT_SENTENCE",
    "SentenceAttention",
    "TourResult",
    "TrainedModel",
    "look_inside",
    "run_tour",
    "train_tour_model",
]

DEFAULT_SENTENCE = "the cat sat on the warm mat"
EXPLORER_PAGE = "explorer.html"
_LONG_LENGTH = 512


@dataclasses.dataclass
class TourResult:
    """What ``run_tour`` wrote and measured."""

    index: str  #: path of index.html
    pictures: List[str]  #: paths of the PNG files, in tour order
    source: List[str]  #: the example's input tokens
    prediction: List[str]  #: what the trained model wrote for it
    val_accuracy: Optional[float]  #: held-out token accuracy after training
    train_seconds: float
    total_seconds: float
    train_backend: str
    capture_backend: str
    explorer: Optional[str] = None  #: path of explorer.html, the interactive page of every layer and head


@dataclasses.dataclass
class TrainedModel:
    """What ``train_tour_model`` trained: the model (eval mode) and how it went."""

    model: torch.nn.Module
    history: TrainingHistory
    data: TaskData
    task: str
    seconds: float
    backend: str  #: the attention path training ran on ("torch" on a CPU)
    device: torch.device


@dataclasses.dataclass
class SentenceAttention:
    """One sentence through a trained encoder-decoder: its tokens, what the model wrote, and every
    attention layer's weights for that run (``look_inside``).

    ``target`` is what the decoder read: ``<bos>`` and the model's own output (teacher-forced, so
    the weights are the ones that produced the output). Weights are float32 on the CPU, one example:
    ``encoder_self [L, H, Ns, Ns]``, ``decoder_self [L, H, Nt, Nt]``, ``cross [L, H, Nt, Ns]``;
    ``*_names`` are the attention modules' names, one per layer.
    """

    source: List[str]
    target: List[str]
    prediction: List[str]
    encoder_self: torch.Tensor
    decoder_self: torch.Tensor
    cross: torch.Tensor
    encoder_names: List[str]
    decoder_names: List[str]
    cross_names: List[str]
    backend: str  #: the attention path that computed the weights ("kernels" or "torch")

    def explorer(self, title: Optional[str] = None) -> viz.Explorer:
        """The interactive page: cross-attention first (where the task's structure shows), then
        the encoder's and the decoder's self-attention (with its causal mask drawn). It opens on
        the cross-attention head whose queries attend most decisively."""
        nt = len(self.target)
        page = viz.explorer(
            self.cross,
            self.target,
            self.source,
            title=title,
            name="decoder cross-attention (reads the input)",
            layer_names=self.cross_names,
        )
        page.add(self.encoder_self, self.source, name="encoder self-attention", layer_names=self.encoder_names)
        causal = torch.ones(nt, nt, dtype=torch.bool).tril()
        page.add(
            self.decoder_self,
            self.target,
            name="decoder self-attention (causal)",
            mask=causal,
            layer_names=self.decoder_names,
        )
        layer, head = _sharpest_head(self.cross)
        return page.open_at(layer=layer, head=head)


@dataclasses.dataclass
class _Picture:
    name: str
    title: str
    caption: str


def _words_to_ids(words: Sequence[str], vocab_size: int) -> Tuple[List[int], Dict[int, str]]:
    """Give each distinct word a content token id (3, 4, ...) in order of first appearance.

    The synthetic tasks do not care which ids the tokens have, so a sentence in words is as good
    an input as any: the ids only have to be distinct per distinct word.
    """
    vocabulary: Dict[str, int] = {}
    for word in words:
        if word not in vocabulary:
            vocabulary[word] = NUM_SPECIAL_TOKENS + len(vocabulary)
    if NUM_SPECIAL_TOKENS + len(vocabulary) > vocab_size:
        raise ValueError(
            f"sentence has {len(vocabulary)} distinct words but the model knows only "
            f"{vocab_size - NUM_SPECIAL_TOKENS} content tokens; use fewer distinct words"
        )
    names = {i: w for w, i in vocabulary.items()}
    names.update({PAD_ID: "<pad>", BOS_ID: "<bos>", EOS_ID: "<eos>"})
    return [vocabulary[w] for w in words], names


def _mirror_head(cross: torch.Tensor, n: int) -> Tuple[int, int, float]:
    """The (layer, head) of decoder cross-attention ``[L, H, Nt, Ns]`` that puts most weight on the
    mirrored source position (output ``i`` -> input ``n - 1 - i``), and that mean weight."""
    rows = torch.arange(n)
    mirrored = cross[:, :, rows, n - 1 - rows].mean(dim=-1)  # [L, H]
    flat = int(mirrored.argmax())
    layer, head = divmod(flat, cross.shape[1])
    return layer, head, float(mirrored.flatten()[flat])


def _sharpest_head(weights: torch.Tensor) -> Tuple[int, int]:
    """The (layer, head) of ``[L, H, Nq, Nk]`` whose queries attend most decisively (the highest
    mean over queries of the largest weight): where a learned alignment shows first."""
    peaks = weights.amax(dim=-1).mean(dim=-1)  # [L, H]
    layer, head = divmod(int(peaks.argmax()), weights.shape[1])
    return layer, head


def _positional_only_weights(device: torch.device, d_model: int) -> torch.Tensor:
    """Attention of 512 positions whose queries and keys are nothing but their sinusoidal
    encodings, through the kernels: [1, 1, N, N] weights (a long input for the tour)."""
    pe = attnlens.sinusoidal_positional_encoding(_LONG_LENGTH, d_model).to(device)
    q = k = pe[None, None]
    v = torch.zeros_like(q[..., :1])
    _, weights = attnlens.scaled_dot_product_attention(
        q, k, v, is_causal=True, scale=2.0 / d_model**0.5, return_weights=True
    )
    return weights


def train_tour_model(
    task: str = "reverse",
    *,
    steps: Optional[int] = None,
    seed: int = 0,
    d_model: int = 64,
    nhead: int = 4,
    num_layers: int = 2,
    device: Optional[str] = None,
    progress: bool = True,
) -> TrainedModel:
    """Train the tour's encoder-decoder on ``task`` (``attnlens.tiny.train_on_task`` with the
    tour's sizes); about a minute on two CPU cores at the default 600 steps, seconds at 100.

    On a CPU it trains on the CPU path (plain PyTorch operations) with one thread, whether or not
    Triton's interpreter is on (the interpreter runs the kernels one program at a time in numpy:
    fine for looking at one example, far too slow for thousands of training steps); on a GPU on
    the compiled kernels.
    """
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    backend = "torch" if dev.type == "cpu" else "auto"
    started = time.perf_counter()
    threads = torch.get_num_threads()
    if dev.type == "cpu":
        # A model this small gains nothing from a second thread, and torch's OpenMP threads slow
        # down several-fold the moment another process wants a core (measured on 2 cores).
        torch.set_num_threads(1)
    try:
        with attnlens.use_backend(backend):
            model, history, data = train_on_task(
                task,
                steps=steps,
                seed=seed,
                device=dev,
                progress=progress,
                d_model=d_model,
                nhead=nhead,
                num_layers=num_layers,
            )
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - started
    backend = attnlens.selected_backend(dev) if backend == "auto" else backend
    return TrainedModel(model.eval(), history, data, task, seconds, backend, dev)


def look_inside(model: torch.nn.Module, words: Sequence[str]) -> SentenceAttention:
    """Run ``words`` through a trained encoder-decoder of the kit: decode greedily, then capture
    every attention layer while the decoder re-reads its own output.

    Each distinct word becomes one content token (``_words_to_ids``), so the model must know enough
    of them (``vocab_size - 3``) and have been trained on sentences at least this long. The weights
    come from the path ``attnlens.selected_backend`` picks for the model's device (the kernels, in
    Triton's interpreter when ``TRITON_INTERPRET=1`` on a CPU). Raises ``ValueError`` for an empty
    sentence or one the model cannot read.
    """
    words = list(words)
    if not words:
        raise ValueError("words must hold at least one word")
    max_length = getattr(model, "max_len", None)
    if max_length is not None and len(words) + 2 > max_length:
        raise ValueError(f"sentence has {len(words)} words; the model reads at most {max_length - 2}")
    dev = next(model.parameters()).device
    ids, names = _words_to_ids(words, model.vocab_size)
    src = torch.tensor([ids], device=dev)
    backend = attnlens.selected_backend(dev)
    model.eval()
    generated = model.generate(src)[0].tolist()
    if EOS_ID in generated:
        generated = generated[: generated.index(EOS_ID) + 1]
    tgt_in = torch.tensor([[BOS_ID] + [t for t in generated if t != EOS_ID]], device=dev)
    with torch.no_grad(), attnlens.capture_attention(model) as captured:
        model(src, tgt_in)

    def label(token_id: int) -> str:
        return names.get(token_id, f"#{token_id}")

    def stacked(kind: str, name: Optional[str]) -> Tuple[torch.Tensor, List[str]]:
        records = captured.select(kind, name)
        return captured.stack(kind, name)[:, 0].float().cpu(), [r.name for r in records]

    encoder_self, encoder_names = stacked("self", "encoder")
    decoder_self, decoder_names = stacked("self", "decoder")
    cross, cross_names = stacked("cross", None)
    return SentenceAttention(
        source=[label(i) for i in ids],
        target=[label(i) for i in tgt_in[0].tolist()],
        prediction=[label(i) for i in generated],
        encoder_self=encoder_self,
        decoder_self=decoder_self,
        cross=cross,
        encoder_names=encoder_names,
        decoder_names=decoder_names,
        cross_names=cross_names,
        backend=backend,
    )


def _save(fig, path: str, dpi: int = 110) -> str:
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def run_tour(
    out_dir: str,
    *,
    task: str = "reverse",
    sentence: str = DEFAULT_SENTENCE,
    seed: int = 0,
    steps: Optional[int] = None,
    d_model: int = 64,
    nhead: int = 4,
    num_layers: int = 2,
    device: Optional[str] = None,
    progress: bool = True,
    long_input: bool = True,
) -> TourResult:
    """Train, capture, draw. Returns what was written; ``index.html`` shows it in order.

    Args:
        out_dir: folder for the pictures and ``index.html`` (created).
        task: a synthetic task of ``attnlens.tiny.TASKS`` (``copy``, ``reverse``, ``sort``, ``random``).
        sentence: the example, split on spaces; each distinct word becomes one token.
        seed: seeds the data, the model and the training.
        steps: training steps (default: ``attnlens.tiny.DEFAULT_TASK_CONFIG``'s).
        d_model, nhead, num_layers: the model's size.
        device: ``"cuda"``, ``"cpu"`` or None for CUDA when available.
        progress: show the training progress bar.
        long_input: also draw a 512-token attention matrix (positional encodings only).
    """
    started = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    words = sentence.split()
    if not words:
        raise ValueError("sentence must hold at least one word")

    # 1. Train (on the CPU path on a CPU: see train_tour_model).
    trained = train_tour_model(
        task,
        steps=steps,
        seed=seed,
        d_model=d_model,
        nhead=nhead,
        num_layers=num_layers,
        device=device,
        progress=progress,
    )
    model, history, data, dev = trained.model, trained.history, trained.data, trained.device
    train_seconds, train_backend = trained.seconds, trained.backend

    max_length = data.train.max_length
    if len(words) > max_length:
        raise ValueError(f"sentence has {len(words)} words; the model was trained on at most {max_length}")
    ids, names = _words_to_ids(words, model.vocab_size)
    n = len(ids)

    # 2. Look inside: decode the example, then capture every attention layer through the kernels
    # (teacher-forced on the model's own output, so the pictures show what produced it).
    inside = look_inside(model, words)
    capture_backend = inside.backend
    src_tokens, tgt_tokens, prediction = inside.source, inside.target, inside.prediction
    enc_self, dec_self, cross = inside.encoder_self, inside.decoder_self, inside.cross  # [L, H, N?, N?]
    mirror_layer, mirror_head, mirror_weight = _mirror_head(cross, min(n, cross.shape[2]))

    pictures: List[_Picture] = []
    paths: List[str] = []

    def add(name: str, fig, title: str, caption: str) -> None:
        paths.append(_save(fig, os.path.join(out_dir, name)))
        pictures.append(_Picture(name, title, caption))

    # Masks, as the kernel sees them for this example padded into a batch of data.max_length.
    width = max_length
    padded = torch.full((1, width), PAD_ID, dtype=torch.long)
    padded[0, :n] = torch.tensor(ids)
    pad_allowed = ~attnlens.padding_mask(padded, PAD_ID)[0]  # True = real token
    causal_allowed = attnlens.causal_mask(width)
    if causal_allowed.dtype != torch.bool:
        causal_allowed = causal_allowed == 0
    padded_tokens = [names.get(i, f"#{i}") for i in padded[0].tolist()]
    masks = {
        "padding (keys)": pad_allowed[None, :].expand(width, width),
        "causal": causal_allowed,
        "padding and causal": causal_allowed & pad_allowed[None, :],
    }
    add(
        "masks.png",
        viz.mask_picture(masks, padded_tokens),
        "Masks: which keys each query may look at",
        f"The example padded to the batch width of {width} tokens. Rows are queries, columns keys; "
        "blue cells are attended, grey cells blocked. The padding mask blocks the <pad> columns for "
        "every query; the causal mask (used by the decoder's self-attention) blocks every key to the "
        "right of the query; the decoder combines both. attnlens skips key blocks that are entirely "
        "blocked instead of computing and discarding them.",
    )

    pe = attnlens.sinusoidal_positional_encoding(64, d_model)
    add(
        "positional_heatmap.png",
        viz.positional_encoding_heatmap(pe),
        "Sinusoidal positional encoding",
        "Attention itself ignores order: shuffle the keys and each query gets the same answer. So "
        "the model adds a vector to each token embedding that depends on its position: "
        "PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(the same angle). Rows are "
        "positions, columns dimensions: the first dimensions oscillate fast, the last ones slowly.",
    )
    add(
        "positional_curves.png",
        viz.positional_encoding_curves(pe),
        "The encoding, one dimension at a time",
        "A few columns of the picture above as curves: each dimension pair is a sine and cosine of "
        "its own wavelength, from 2 pi to 10000 * 2 pi positions, like the hands of a clock "
        "turning at different speeds.",
    )
    add(
        "positional_similarity.png",
        viz.positional_encoding_similarity(pe),
        "Why it carries relative order",
        "The cosine similarity of every pair of position vectors. It depends (almost) only on the "
        "distance between the two positions, so the picture is a band along the diagonal: a dot "
        "product of two encoded positions tells the model how far apart they are.",
    )

    add(
        "training_curves.png",
        viz.training_curves(history, title=f"training on '{task}'"),
        "Training",
        f"The model ({d_model}-wide, {nhead} heads, {num_layers} encoder and {num_layers} decoder "
        f"layers) learning the '{task}' task on synthetic token sequences: loss and token accuracy "
        f"per step, and accuracy on held-out sequences it never trained on"
        + (f" (final: {history.final_val_accuracy:.1%})" if history.final_val_accuracy is not None else "")
        + f". Trained in {train_seconds:.0f} s on {dev.type} ({train_backend} path).",
    )

    mirror = cross[mirror_layer, mirror_head]
    task_hint = {
        "reverse": "For 'reverse' the right key for output i is input n-1-i: an anti-diagonal.",
        "copy": "For 'copy' the right key for output i is input i: the diagonal.",
        "sort": "For 'sort' each output looks for the next-larger input token.",
        "random": "The 'random' task has no structure to learn.",
    }.get(task, "")
    add(
        "cross_attention.png",
        viz.attention_heatmap(
            mirror, tgt_tokens, src_tokens, title=f"decoder layer {mirror_layer}, cross-attention head {mirror_head}"
        ),
        "What the decoder looks at",
        f"Input: '{' '.join(words)}'. The model wrote: '{' '.join(prediction)}'. Each row is one "
        "step of the decoder (it reads <bos> and the words written so far) and shows how that step "
        "spreads its attention over the input words; the row sums to 1. "
        + task_hint
        + f" This head puts {mirror_weight:.0%} of its weight, on average, on the mirrored word. These "
        f"are the exact weights the fused kernel computed ({capture_backend} path), not a recomputation.",
    )

    add(
        "encoder_heads.png",
        viz.attention_heads(enc_self[0], src_tokens, title="encoder layer 0: self-attention, every head"),
        "Heads side by side",
        "The first encoder layer's self-attention, one panel per head, on one colour scale. Heads "
        "learn different patterns from the same input: some look at neighbours, some at the "
        "token itself, some spread out. Multi-head attention concatenates what they find and mixes "
        "it with the output projection.",
    )

    add(
        "encoder_layers.png",
        viz.attention_layers(enc_self, src_tokens, title="encoder self-attention (layers x heads)"),
        "Every layer and head of the encoder",
        "The model view: one row per layer, one column per head. Later layers attend over "
        "representations that already mix information from several tokens.",
    )
    add(
        "decoder_self_layers.png",
        viz.attention_layers(dec_self, tgt_tokens, title="decoder self-attention (layers x heads)"),
        "The decoder's self-attention is causal",
        "Each output step may only look at itself and the steps before it: everything above the "
        "diagonal is exactly zero, because the causal mask removed those keys before the softmax.",
    )
    add(
        "cross_layers.png",
        viz.attention_layers(cross, tgt_tokens, src_tokens, title="decoder cross-attention (layers x heads)"),
        "Every cross-attention head",
        "Cross-attention is where the decoder reads the input. Compare the heads: the task's "
        "structure is usually carried by one or two of them.",
    )

    add(
        "rollout.png",
        viz.attention_rollout_heatmap(enc_self, src_tokens, title="attention rollout through the encoder"),
        "Attention rollout",
        "Single-layer weights do not say where information ends up after several layers. Rollout "
        "(Abnar and Zuidema, 2020) follows it: average the heads, add the identity for the residual "
        "connection, normalise the rows and multiply the layers' matrices. Row i says how much of "
        "encoder output i comes from each input token.",
    )

    add(
        "attention_received.png",
        viz.attention_received_bar(mirror, src_tokens, title="attention each input word receives"),
        "Which input words get attention",
        "The same head's weights averaged over the output steps: the attention each input word "
        "receives. The dashed line is what uniform attention would give.",
    )
    add(
        "statistics.png",
        viz.attention_statistics_table(mirror, src_tokens, title="attention received per input word"),
        "Statistics per word",
        "Mean, standard deviation, minimum and maximum of the weight each input word receives "
        "across the output steps. A word with a high maximum but a low mean is looked at by one "
        "step only: the signature of a one-to-one alignment like reversing.",
    )

    if long_input:
        long_weights = _positional_only_weights(dev, d_model)[0, 0].float().cpu()
        add(
            "long_input.png",
            viz.attention_heatmap(
                long_weights,
                list(range(_LONG_LENGTH)),
                vmax=0.25,
                title=f"{_LONG_LENGTH} positions, causal, queries = keys = positional encoding",
            ),
            "A long input",
            f"Attention over {_LONG_LENGTH} positions whose queries and keys are only their positional "
            "encodings, through the fused kernels with a causal mask. With that many tokens the "
            "matrix is drawn as one image with thinned labels (and the colour scale stops at 0.25 so "
            "the tail shows). Each query attends mostly to itself and its recent past, fading with "
            "distance: the band the similarity picture predicted.",
        )

    # The interactive page: every layer and head of all three attentions, in one file.
    explorer_path = inside.explorer(title=f"attnlens tour: the '{task}' task on \"{' '.join(words)}\"").save(
        os.path.join(out_dir, EXPLORER_PAGE)
    )

    total_seconds = time.perf_counter() - started
    index = _write_index(
        out_dir,
        pictures,
        task=task,
        sentence=words,
        prediction=prediction,
        val_accuracy=history.final_val_accuracy,
        train_seconds=train_seconds,
        total_seconds=total_seconds,
        device=dev,
        train_backend=train_backend,
        capture_backend=capture_backend,
        explorer=EXPLORER_PAGE,
    )
    return TourResult(
        index=index,
        pictures=paths,
        source=src_tokens,
        prediction=prediction,
        val_accuracy=history.final_val_accuracy,
        train_seconds=train_seconds,
        total_seconds=total_seconds,
        train_backend=train_backend,
        capture_backend=capture_backend,
        explorer=explorer_path,
    )


def _write_index(
    out_dir: str,
    pictures: Sequence[_Picture],
    *,
    task: str,
    sentence: Sequence[str],
    prediction: Sequence[str],
    val_accuracy: Optional[float],
    train_seconds: float,
    total_seconds: float,
    device: torch.device,
    train_backend: str,
    capture_backend: str,
    explorer: Optional[str] = None,
) -> str:
    accuracy = "n/a" if val_accuracy is None else f"{val_accuracy:.1%}"
    explorer_link = ""
    if explorer:
        explorer_link = (
            f'<p class="explorer"><a href="{html.escape(explorer)}"><b>Open the interactive explorer</b></a>: '
            "every layer and head of the encoder, the decoder and the cross-attention for this example, "
            "with zoom, hover for exact weights, the head mean, attention rollout and a text view. "
            "One self-contained file: it works offline.</p>"
        )
    sections = []
    for number, picture in enumerate(pictures, 1):
        sections.append(
            f'<section id="{html.escape(os.path.splitext(picture.name)[0])}">\n'
            f"<h2>{number}. {html.escape(picture.title)}</h2>\n"
            f"<p>{html.escape(picture.caption)}</p>\n"
            f'<img src="{html.escape(picture.name)}" alt="{html.escape(picture.title)}">\n'
            "</section>"
        )
    body = "\n".join(sections)
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>attnlens tour: attention on the '{html.escape(task)}' task</title>
<style>
body {{ font-family: sans-serif; max-width: 980px; margin: 2em auto; padding: 0 1em; line-height: 1.5; }}
img {{ max-width: 100%; border: 1px solid #ddd; }}
section {{ margin-bottom: 2.5em; }}
table {{ border-collapse: collapse; }} td {{ padding: 0.2em 0.8em; border-bottom: 1px solid #eee; }}
.explorer {{ background: #eef4fb; border: 1px solid #c9dcf0; border-radius: 6px; padding: 0.6em 1em; }}
</style>
</head>
<body>
<h1>A look inside attention</h1>
<p>A small transformer learned the <b>{html.escape(task)}</b> task on synthetic token sequences.
Below, the pictures walk from the inputs attention sees (masks, positions) to what the trained
model attends to, layer by layer and head by head. Every weight shown was returned by attnlens's
fused attention kernel itself.</p>
<table>
<tr><td>input</td><td>{html.escape(" ".join(sentence))}</td></tr>
<tr><td>model output</td><td>{html.escape(" ".join(prediction))}</td></tr>
<tr><td>held-out token accuracy</td><td>{accuracy}</td></tr>
<tr><td>training</td><td>{train_seconds:.0f} s on {html.escape(str(device))}
({html.escape(train_backend)} path)</td></tr>
<tr><td>attention captured by</td><td>{html.escape(capture_backend)} path</td></tr>
<tr><td>whole tour</td><td>{total_seconds:.0f} s</td></tr>
</table>
{explorer_link}
{body}
<p>Regenerate with <code>python -m attnlens demo --out DIR</code> (see <code>--help</code>).</p>
</body>
</html>
"""
    path = os.path.join(out_dir, "index.html")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(page)
    return path
