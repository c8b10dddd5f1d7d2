"""The visual tour behind ``make demo``."""

from __future__ import annotations

import math
import os
from typing import List

import torch

import attnlens


def run_demo(out_dir: str, sentence: str, seed: int = 0) -> List[str]:
    """Attention weights of ``sentence`` from the fused kernels, drawn as a heatmap.

    Uses a seeded random embedding and projection: the pattern is not learned, it shows what the
    kernel returns. Returns the paths written.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    tokens = sentence.split()
    gen = torch.Generator().manual_seed(seed)
    d_model, heads = 32, 4
    x = torch.randn(len(tokens), d_model, generator=gen)
    w_q, w_k, w_v = (torch.randn(d_model, d_model, generator=gen) / math.sqrt(d_model) for _ in range(3))

    def split(t):
        return t.view(len(tokens), heads, d_model // heads).transpose(0, 1)[None]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    q, k, v = (split(x @ w).to(device) for w in (w_q, w_k, w_v))
    _, weights = attnlens.scaled_dot_product_attention(q, k, v, is_causal=True, return_weights=True)
    weights = weights[0].float().cpu()
    backend = attnlens.selected_backend(device)

    fig, axes = plt.subplots(1, heads, figsize=(4 * heads, 4), constrained_layout=True)
    for h, ax in enumerate(axes):
        ax.imshow(weights[h].numpy(), vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(tokens)), tokens, rotation=90)
        ax.set_yticks(range(len(tokens)), tokens)
        ax.set_title(f"head {h}")
    fig.suptitle(f"causal attention weights ({backend} path)")
    path = os.path.join(out_dir, "attention_heads.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]
