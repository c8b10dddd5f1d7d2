"""The architecture sweep as tests: every architecture in transformers' auto mappings matches eager
or is refused at load (see sweep.py for what each outcome checks); one the sweep cannot build or
feed is skipped with the reason.

Every run sweeps ``FAST``, one or two families of each kind plus the refused families the bridge
must keep refusing, on every CPU path attnlens has. The rest is marked ``hf_sweep`` and runs with
``pytest -m hf_sweep tests/integrations`` (the summary at the end of the run counts the outcomes).
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("transformers.masking_utils")

from transformers.models.auto import modeling_auto  # noqa: E402

from attnlens.integrations.huggingface import attention_outside_interface  # noqa: E402
from integrations.architectures import architectures  # noqa: E402
from integrations.conftest import SWEEP_MARKER  # noqa: E402
from integrations.sweep import sweep  # noqa: E402

# model type -> the outcome it must have, on every run.
FAST = {
    "llama": "matches",  # decoder: grouped-query attention, generation with a cache
    "gpt2": "matches",
    "mistral": "matches",  # sliding window
    "bert": "matches",  # encoder
    "bart": "matches",  # encoder-decoder with cross-attention
    "t5": "matches",  # relative position bias
    "nllb-moe": "matches",  # a causal mask for layers whose is_causal flag is False
    "vit": "matches",  # vision
    "wav2vec2": "matches",  # speech
    "whisper": "matches",
    "clip": "matches",  # text and image towers
    "llava": "matches",  # multimodal (its text model)
    "bloom": "refused",  # attention in its own code, misreading the mask
    "gpt_neo": "refused",  # picks its attention class from a table without attnlens
    # transformers 5.25 moved Falcon's attention onto AttentionInterface; before, its layers
    # computed attention themselves. Whichever code is installed, the outcome must follow it.
    "falcon": "refused" if attention_outside_interface(transformers.FalconForCausalLM) else "matches",
    "deberta-v2": "refused",
    "pegasus_x": "refused",  # one attention module of its own beside interface ones
    "gemma2": "matches",  # soft-capped scores, sliding windows
    "gpt_oss": "matches",  # attention sinks, sliding windows
    "gemma3_text": "matches",  # sliding and global layers
}
# The CPU paths: the CPU path users get (the whole sweep runs there), and the reference.
CPU_BACKENDS = ["torch", "reference"]
ARCHITECTURES = architectures()


def _params():
    for architecture in ARCHITECTURES:
        for backend in CPU_BACKENDS:
            fast = architecture.model_type in FAST
            if not fast and backend != CPU_BACKENDS[0]:
                continue  # the whole sweep runs on one CPU path; the fast subset on each
            marks = () if fast else (getattr(pytest.mark, SWEEP_MARKER),)
            yield pytest.param(architecture, backend, id=f"{architecture.model_type}-{backend}", marks=marks)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("architecture,backend", list(_params()))
def test_architecture_matches_eager_or_is_refused(architecture, backend, registered, record_property):
    torch.manual_seed(0)
    outcome = sweep(architecture, backend)
    record_property("hf_sweep_outcome", outcome.result)
    print(f"{outcome.model_type}: {outcome.result} in {outcome.seconds:.2f}s: {outcome.detail}; {outcome.errors}")
    if outcome.model_type in FAST:
        assert outcome.result == FAST[outcome.model_type], outcome.detail
    if outcome.result == "skipped":
        pytest.skip(f"{outcome.model_type}: {outcome.detail}")
    assert outcome.result in ("matches", "refused")
    if outcome.result == "refused":
        assert "use attn_implementation='eager'" not in outcome.detail  # the reason, not the message
    else:
        assert outcome.attention_calls or "no attention layers" in outcome.detail


def test_the_sweep_lists_every_architecture_of_the_mappings():
    """Generated from MODEL_MAPPING_NAMES, nothing dropped: each base model type once, with a kind
    the other mappings give it."""
    swept = [architecture.model_type for architecture in ARCHITECTURES]
    assert len(swept) == len(set(swept)) == len(modeling_auto.MODEL_MAPPING_NAMES)
    assert set(FAST) <= set(swept)
    kinds = {architecture.model_type: architecture.kind for architecture in ARCHITECTURES}
    assert kinds["llama"] == "decoder" and kinds["bert"] == "encoder" and kinds["bart"] == "seq2seq"
    assert kinds["vit"] == "vision" and kinds["wav2vec2"] == "speech" and kinds["llava"] == "multimodal"
