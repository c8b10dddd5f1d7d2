"""The Hugging Face bridge: ``attn_implementation="attnlens"`` against transformers' ``"eager"``.

Every model is tiny and randomly initialised from a config built here (nothing is downloaded). Each
parity check runs the same weights three ways: attnlens (float32, the kernels through the
interpreter on a CPU), transformers' eager attention (float32) and an eager twin in float64, and
applies flash-attn's rule to the hidden states and to every layer's attention weights: attnlens may
be at most 2x as far from float64 as eager float32 is, plus a rounding floor. They also compare
attnlens with eager float32 directly.

Eager gives a query with nothing to attend to (a left-padding position in a causal model) a
uniform row; attnlens gives zeros. Such rows, and the hidden states at those positions, are
compared with nothing but their own expected value (zeros); the other positions never see them.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Dict, List, Optional

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("transformers.masking_utils")

from transformers import (  # noqa: E402
    AttentionInterface,
    AutoModel,
    BertConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    T5Config,
    T5EncoderModel,
)
from transformers.masking_utils import AttentionMaskInterface  # noqa: E402

import attnlens  # noqa: E402
from attnlens.integrations import huggingface as hf  # noqa: E402
from helpers import DEVICE, assert_rule, describe_worst, max_error  # noqa: E402
from integrations.conftest import ORACLE  # noqa: E402

VOCAB = 100
# Measured: float32 attnlens vs float32 eager differs by <= 6e-7 in hidden states and <= 1.2e-7 in
# weights on these models; the direct bounds leave a few ulps of room above that.
HIDDEN_ATOL = 2e-6
WEIGHTS_ATOL = 5e-7


@pytest.fixture(scope="module", autouse=True)
def _registered(registered):
    return registered


@dataclasses.dataclass
class Call:
    """What one attention layer handed the kernels."""

    backend: str
    attn_mask: Optional[torch.Tensor]
    key_padding_mask: Optional[torch.Tensor]
    is_causal: bool
    causal_alignment: str
    enable_gqa: bool
    dropout_p: float
    return_weights: Any
    window: Any = None
    softcap: Any = None
    sinks: Any = None


@pytest.fixture
def calls(monkeypatch) -> List[Call]:
    """Records every call the bridge makes to attnlens, and which path each one took."""
    recorded: List[Call] = []
    original = hf._functions.scaled_dot_product_attention

    def spy(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False, **kwargs):
        recorded.append(
            Call(
                attnlens.selected_backend(query.device),
                attn_mask,
                kwargs.get("key_padding_mask"),
                is_causal,
                kwargs.get("causal_alignment", "top_left"),
                enable_gqa,
                dropout_p,
                kwargs.get("return_weights", False),
                kwargs.get("window"),
                kwargs.get("softcap"),
                kwargs.get("sinks"),
            )
        )
        return original(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, **kwargs)

    monkeypatch.setattr(hf._functions, "scaled_dot_product_attention", spy)
    return recorded


# The size every small grouped-query decoder here shares: 4 query heads on 2 key/value heads.
GQA_DECODER = dict(vocab_size=VOCAB, hidden_size=32, num_attention_heads=4, num_key_value_heads=2)


def bert() -> BertConfig:
    return BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_attention_heads=2,
        num_hidden_layers=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )


def gpt2() -> GPT2Config:
    return GPT2Config(vocab_size=VOCAB, n_embd=32, n_head=2, n_layer=2, n_positions=32, bos_token_id=0, eos_token_id=0)


def llama() -> LlamaConfig:  # grouped-query attention: 4 query heads share 2 key/value heads
    return LlamaConfig(
        **GQA_DECODER,
        num_hidden_layers=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )


def mistral() -> MistralConfig:  # a sliding window shorter than the sequence
    return MistralConfig(
        **GQA_DECODER,
        num_hidden_layers=1,
        intermediate_size=64,
        max_position_embeddings=32,
        sliding_window=4,
    )


def gemma2() -> "transformers.Gemma2Config":  # soft-capped scores, sliding and global layers
    return transformers.Gemma2Config(
        **GQA_DECODER,
        head_dim=8,
        num_hidden_layers=2,
        intermediate_size=64,
        max_position_embeddings=32,
        sliding_window=4,
        attn_logit_softcapping=5.0,
        query_pre_attn_scalar=8,
    )


def gpt_oss() -> "transformers.GptOssConfig":  # attention sinks, sliding and full layers
    return transformers.GptOssConfig(
        **GQA_DECODER,
        head_dim=8,
        num_hidden_layers=2,
        intermediate_size=32,
        num_local_experts=2,
        num_experts_per_tok=1,
        max_position_embeddings=32,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention"],
    )


def t5() -> T5Config:  # relative position bias added to the scores
    return T5Config(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_heads=2,
        num_layers=1,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
    )


CONFIGS = {
    "bert": bert,
    "gpt2": gpt2,
    "llama": llama,
    "mistral": mistral,
    "t5": t5,
    "gemma2": gemma2,
    "gpt_oss": gpt_oss,
}
CAUSAL = {"gpt2", "llama", "mistral", "gemma2", "gpt_oss"}


def build(name: str, implementation: str = "eager") -> torch.nn.Module:
    config = CONFIGS[name]()
    if name == "t5":  # an encoder without an AutoModel of its own
        return T5EncoderModel._from_config(config, attn_implementation=implementation).to(DEVICE).eval()
    return AutoModel.from_config(config, attn_implementation=implementation).to(DEVICE).eval()


def twin(model: torch.nn.Module, implementation: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The same weights under another attention implementation."""
    other = copy.deepcopy(model).to(dtype)
    other.set_attn_implementation(implementation)
    return other


def padded_batch(padding: str, batch: int = 3, seqlen: int = 9):
    """Token ids and a transformers attention mask (1 = token, 0 = padding): row 0 is full, the others
    lose 2 and 5 tokens on the given side."""
    input_ids = torch.randint(1, VOCAB, (batch, seqlen), device=DEVICE)
    attention_mask = torch.ones(batch, seqlen, dtype=torch.long, device=DEVICE)
    for row, pads in ((1, 2), (2, 5)):
        if padding == "left":
            attention_mask[row, :pads] = 0
        elif padding == "right":
            attention_mask[row, seqlen - pads :] = 0
    return input_ids, attention_mask


def run(model: torch.nn.Module, input_ids, attention_mask, **kwargs):
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


def compared_queries(
    name: str, padding: str, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor]
) -> torch.Tensor:
    """bool [B, N]: the query positions where attnlens and eager must agree: all but the left
    padding of a causal model, whose rows have nothing to attend to, and the padding of a model
    with a sliding window, whose padded rows past the window see nothing either."""
    windowed = name in ("mistral", "gemma2", "gpt_oss")
    if attention_mask is not None and ((name in CAUSAL and padding == "left") or (windowed and padding != "none")):
        return attention_mask.bool()
    return torch.ones_like(input_ids, dtype=torch.bool)


def check_pair(
    what: str,
    actual: torch.Tensor,
    eager: torch.Tensor,
    exact: Optional[torch.Tensor],
    atol: float,
    measured: Dict[str, float],
) -> None:
    if exact is not None:  # (a model that cannot run in float64 has no exact twin)
        assert_rule(what, actual, exact, eager)
    error = max_error(actual, eager)
    measured[what] = max(measured.get(what, 0.0), error)
    assert error <= atol, f"{what}: attnlens vs eager {error:.3g} > {atol}; {describe_worst(actual, eager)}"


PARITY_CASES = [
    ("bert", "right"),
    ("bert", "left"),
    ("gpt2", "right"),
    ("gpt2", "left"),
    ("llama", "none"),
    ("llama", "right"),
    ("llama", "left"),
    ("llama", "packed"),
    ("mistral", "left"),
    ("gemma2", "right"),
    ("gpt_oss", "left"),
    ("t5", "right"),
]


def packed_batch(seqlen: int = 9):
    """Two sequences of 4 and 5 tokens packed into each row, told apart only by position_ids
    (transformers then masks attention across the boundary)."""
    input_ids = torch.randint(1, VOCAB, (2, seqlen), device=DEVICE)
    position_ids = torch.cat([torch.arange(4), torch.arange(seqlen - 4)]).to(DEVICE).expand(2, -1)
    return input_ids, dict(position_ids=position_ids, use_cache=False)


@pytest.mark.parametrize("name,padding", PARITY_CASES)
def test_outputs_and_attentions_match_eager(name, padding, calls):
    eager = build(name)
    lens = twin(eager, "attnlens")
    # gpt-oss's experts take float32/16-bit matrices only (torch's grouped matmul): no float64 twin
    exact = None if name == "gpt_oss" else twin(eager, ORACLE, torch.float64)
    if padding == "packed":
        input_ids, extra = packed_batch()
        attention_mask = None
    else:
        (input_ids, attention_mask), extra = padded_batch(padding), {}

    got = run(lens, input_ids, attention_mask, output_attentions=True, **extra)
    expected = run(eager, input_ids, attention_mask, output_attentions=True, **extra)
    exact_out = run(exact, input_ids, attention_mask, output_attentions=True, **extra) if exact else None

    layers = eager.config.num_layers if name == "t5" else eager.config.num_hidden_layers
    assert len(calls) == layers and all(call.backend == "kernels" for call in calls), calls
    assert all(call.return_weights is True for call in calls)
    queries = compared_queries(name, padding, input_ids, attention_mask)
    measured: Dict[str, float] = {}
    check_pair(
        "hidden states",
        got.last_hidden_state[queries],
        expected.last_hidden_state[queries],
        exact_out.last_hidden_state[queries] if exact_out else None,
        HIDDEN_ATOL,
        measured,
    )
    assert len(got.attentions) == len(expected.attentions) == layers
    exact_attentions = exact_out.attentions if exact_out else [None] * layers
    for layer, (weights, eager_weights, exact_weights) in enumerate(
        zip(got.attentions, expected.attentions, exact_attentions)
    ):
        assert weights.shape == eager_weights.shape
        rows = queries[:, None, :].expand(weights.shape[:3])
        exact_rows = None if exact_weights is None else exact_weights[rows]
        check_pair(f"layer {layer} weights", weights[rows], eager_weights[rows], exact_rows, WEIGHTS_ATOL, measured)
        # A query with nothing to attend to gets weights 0, not eager's uniform row; the other
        # rows left out (padding that still sees a token) are probabilities.
        sums = weights[~rows].sum(-1)
        assert torch.all((sums == 0) | ((sums - 1).abs() < 1e-5)), sums
    if padding == "packed":  # the second sequence never attends to the first
        assert all(float(weights[:, :, 4:, :4].abs().max()) == 0.0 for weights in got.attentions)
    if name == "gemma2":  # every layer soft-caps its scores
        assert all(call.softcap == eager.config.attn_logit_softcapping for call in calls)
    if name == "gpt_oss":  # every layer has its sinks
        assert all(call.sinks is not None and call.sinks.shape == (eager.config.num_attention_heads,) for call in calls)
    if name == "mistral":  # nothing outside the window: query i sees keys i - window + 1 .. i
        seqlen, window = input_ids.shape[1], eager.config.sliding_window
        outside = torch.ones(seqlen, seqlen, dtype=torch.bool, device=DEVICE).tril(-window)
        assert all(float(weights[..., outside].abs().max()) == 0.0 for weights in got.attentions)
    print(f"{name} {padding}: " + ", ".join(f"{k} {v:.2g}" for k, v in measured.items()))


def test_register_is_idempotent_and_from_config_uses_it(registered, calls):
    assert hf.register() == hf.register() == registered == "attnlens"
    assert AttentionInterface()["attnlens"] is hf.attention_function
    assert AttentionMaskInterface()["attnlens"] is hf.attention_mask
    eager = build("llama")
    lens = AutoModel.from_config(llama(), attn_implementation="attnlens").eval()
    lens.to(DEVICE).load_state_dict(eager.state_dict())
    assert lens.config._attn_implementation == "attnlens"
    input_ids, attention_mask = padded_batch("right")
    got = run(lens, input_ids, attention_mask)
    expected = run(eager, input_ids, attention_mask)
    assert max_error(got.last_hidden_state, expected.last_hidden_state) <= HIDDEN_ATOL
    assert len(calls) == 2 and all(call.enable_gqa for call in calls)


def test_without_output_attentions_no_weights_are_computed(calls):
    eager = build("gpt2")
    lens = twin(eager, "attnlens")
    input_ids, attention_mask = padded_batch("right")
    got = run(lens, input_ids, attention_mask)
    assert not got.attentions  # None, or an empty tuple when every layer returned None
    assert [call.return_weights for call in calls] == [False, False]
    expected = run(eager, input_ids, attention_mask)
    assert max_error(got.last_hidden_state, expected.last_hidden_state) <= HIDDEN_ATOL


@pytest.mark.parametrize(
    "name,padding,expect",
    [
        ("bert", "left", dict(dense=False, padding=True, is_causal=False)),
        ("bert", "none", dict(dense=False, padding=False, is_causal=False)),
        ("llama", "left", dict(dense=False, padding=True, is_causal=True)),
        ("llama", "none", dict(dense=False, padding=False, is_causal=True)),
        ("mistral", "none", dict(dense=False, padding=False, is_causal=True, window=(3, 0))),
        ("mistral", "left", dict(dense=False, padding=True, is_causal=True, window=(3, 0))),
    ],
)
def test_masks_reach_the_kernels_as_padding_causal_and_window_flags(name, padding, expect, calls):
    """Padding, causality and sliding windows arrive as key_padding_mask, is_causal and window,
    which let the kernels skip masked key blocks, not as a dense mask."""
    lens = twin(build(name), "attnlens")
    input_ids, attention_mask = padded_batch(padding)
    run(lens, input_ids, attention_mask)
    for call in calls:
        assert (call.attn_mask is not None) == expect["dense"]
        assert (call.key_padding_mask is not None) == expect["padding"]
        assert call.is_causal == expect["is_causal"] and call.causal_alignment == "top_left"
        assert call.window == expect.get("window")
        if call.key_padding_mask is not None:
            assert torch.equal(call.key_padding_mask, attention_mask == 0)


def test_decoding_with_a_cache_matches_eager(calls):
    """Prefill, a chunk of 3 tokens and one token, left padded: the chunk needs the causal mask
    aligned bottom-right, the single token sees every cached key that is not padding."""
    eager = build("llama")
    lens = twin(eager, "attnlens")
    input_ids, attention_mask = padded_batch("left", seqlen=10)
    steps = [(0, 6), (6, 9), (9, 10)]
    caches = {id(eager): None, id(lens): None}
    for start, end in steps:
        outputs = {}
        for model in (eager, lens):
            out = run(
                model,
                input_ids[:, start:end],
                attention_mask[:, :end],
                past_key_values=caches[id(model)],
                use_cache=True,
            )
            caches[id(model)] = out.past_key_values
            outputs[id(model)] = out.last_hidden_state
        valid = attention_mask[:, start:end].bool()
        error = max_error(outputs[id(lens)][valid], outputs[id(eager)][valid])
        assert error <= HIDDEN_ATOL, f"tokens {start}:{end}: {error:.3g}"
    chunk_calls = calls[2:4]
    assert all(
        c.is_causal and c.causal_alignment == "bottom_right" and c.attn_mask is None and c.key_padding_mask is not None
        for c in chunk_calls
    ), chunk_calls
    assert all(c.backend == "kernels" for c in calls)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_generate_matches_eager(cache, calls):
    """Greedy generation from a left-padded batch picks the same tokens; a static cache is longer
    than what has been seen, so its masks stay dense (or None at prefill, top-left causal)."""
    config = llama()
    config.num_hidden_layers = 1
    config.pad_token_id, config.bos_token_id, config.eos_token_id = 0, 1, 2
    eager = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").to(DEVICE).eval()
    lens = twin(eager, "attnlens")
    input_ids, attention_mask = padded_batch("left", seqlen=7)
    input_ids = input_ids.masked_fill(attention_mask == 0, 0)
    settings = dict(attention_mask=attention_mask, max_new_tokens=3, do_sample=False, cache_implementation=cache)
    with torch.no_grad():
        expected = eager.generate(input_ids, **settings)
        got = lens.generate(input_ids, **settings)
    assert torch.equal(got, expected), (got, expected)
    assert len(calls) == 3 and all(call.backend == "kernels" for call in calls)


def test_dropout_applies_in_training_only(calls):
    """In training the layer's attention dropout reaches the kernels: every weight is either dropped
    (0) or the eval-mode weight scaled by 1 / (1 - p)."""
    config = bert()
    config.attention_probs_dropout_prob = 0.5
    config.hidden_dropout_prob = 0.0  # so the first layer sees the same input in both modes
    config.num_hidden_layers = 1
    lens = AutoModel.from_config(config, attn_implementation="attnlens").to(DEVICE)
    input_ids, attention_mask = padded_batch("right")
    evaluated = run(lens.eval(), input_ids, attention_mask, output_attentions=True).attentions[0]
    trained = run(lens.train(), input_ids, attention_mask, output_attentions=True).attentions[0]
    assert [call.dropout_p for call in calls] == [0.0, 0.5]
    dropped = trained == 0
    kept_error = max_error(trained[~dropped], evaluated[~dropped] * 2.0)
    assert kept_error <= 1e-6
    kept_fraction = (~dropped & (evaluated > 0)).sum() / (evaluated > 0).sum()
    assert 0.3 < float(kept_fraction) < 0.7


class _Layer(torch.nn.Module):
    is_causal = True


def test_a_sliding_window_without_its_mask_raises():
    query = torch.randn(1, 2, 4, 8, device=DEVICE)
    with pytest.raises(NotImplementedError, match="sliding_window"):
        hf.attention_function(_Layer(), query, query, query, None, sliding_window=2)


def test_head_mask_is_ignored_as_eager_ignores_it(calls):
    """transformers 5 removed head_mask from every model: passed to the forward call it reaches the
    attention function unread, and eager's output does not change. attnlens does the same."""
    eager = build("bert")
    lens = twin(eager, "attnlens")
    input_ids, attention_mask = padded_batch("right")
    head_mask = torch.zeros(eager.config.num_hidden_layers, eager.config.num_attention_heads, device=DEVICE)
    plain = run(eager, input_ids, attention_mask).last_hidden_state
    masked = run(eager, input_ids, attention_mask, head_mask=head_mask).last_hidden_state
    if not torch.equal(plain, masked):
        pytest.skip(f"eager applies head_mask in transformers {transformers.__version__}")
    assert not hf._functions._eager_reads_head_mask(type(eager).__module__)
    got = run(lens, input_ids, attention_mask, head_mask=head_mask).last_hidden_state
    assert torch.equal(got, run(lens, input_ids, attention_mask).last_hidden_state)
    assert max_error(got, masked) <= HIDDEN_ATOL
    assert len(calls) == 2 * eager.config.num_hidden_layers


def legacy_eager_attention_weights(weights: torch.Tensor, head_mask: torch.Tensor) -> torch.Tensor:
    """What transformers 4.x eager attention did with a head mask (this module's source reads
    head_mask, as those modeling files did)."""
    return weights * head_mask


def test_head_mask_raises_where_the_model_applies_it():
    query = torch.randn(1, 2, 4, 8, device=DEVICE)
    assert hf._functions._eager_reads_head_mask(_Layer.__module__)
    with pytest.raises(NotImplementedError, match="head_mask"):
        hf.attention_function(_Layer(), query, query, query, None, head_mask=torch.ones(2))
    # without a head mask the same layer runs
    out, _ = hf.attention_function(_Layer(), query, query, query, None)
    assert out.shape == (1, 4, 2, 8)


# The kernels fold log2(e) into the scores, clamping the float32 minimum first so that it stays
# finite (as in eager); the masked keys' exp underflows to 0. Kept in case numpy (the interpreter)
# warns about an intermediate overflow.
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_float_and_bool_masks_are_taken_as_transformers_means_them():
    """A custom 4-D mask reaches the attention function as the user built it: float (added to the
    scores, transformers' eager convention with the dtype's minimum) or bool (True = attend)."""
    query, key, value = (torch.randn(2, 2, n, 8, device=DEVICE) for n in (3, 5, 5))
    allowed = torch.rand(2, 1, 3, 5, device=DEVICE) > 0.3
    allowed[..., 0] = True
    additive = torch.zeros(2, 1, 3, 5, device=DEVICE).masked_fill(~allowed, torch.finfo(torch.float32).min)
    layer = _Layer()
    out_bool, weights_bool = hf.attention_function(layer, query, key, value, allowed, output_attentions=True)
    out_float, weights_float = hf.attention_function(layer, query, key, value, additive, output_attentions=True)
    expected_out, expected_weights = attnlens.reference.scaled_dot_product_attention(
        query, key, value, attn_mask=allowed, return_weights=True
    )
    for out, weights in ((out_bool, weights_bool), (out_float, weights_float)):
        assert out.shape == (2, 3, 2, 8)
        assert max_error(out, expected_out.transpose(1, 2)) <= 1e-6
        assert max_error(weights, expected_weights) <= 1e-6


# ---- which models attnlens refuses at load, and the run-time guard -----------------------------


def bloom_config() -> "transformers.BloomConfig":
    return transformers.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4)


REFUSED = {
    # its attention layers compute attention themselves and misread the attnlens mask
    "bloom": (bloom_config, "BloomAttention"),
    "gpt_neo": (
        lambda: transformers.GPTNeoConfig(
            vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]]
        ),
        "GPTNeoSelfAttention",
    ),
}


if hf.attention_outside_interface(transformers.FalconForCausalLM):  # transformers < 5.25
    REFUSED["falcon"] = (
        lambda: transformers.FalconConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4),
        "FalconAttention",
    )


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_unsupported_models_are_refused_by_from_config(name):
    make_config, reason = REFUSED[name]
    with pytest.raises(ValueError, match="cannot use attn_implementation='attnlens'") as refusal:
        transformers.AutoModelForCausalLM.from_config(make_config(), attn_implementation="attnlens")
    message = str(refusal.value)
    assert reason in message  # the reason...
    assert "use attn_implementation='eager'" in message  # ...and the alternative


def test_unsupported_models_are_refused_by_from_pretrained(tmp_path):
    transformers.BloomForCausalLM(bloom_config()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="BloomAttention"):
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="attnlens")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager")
    assert loaded.config._attn_implementation == "eager"


def test_unsupported_models_are_refused_by_set_attn_implementation():
    """transformers itself only warns for such a model and keeps its implementation; attnlens
    refuses, and leaves the model as it was."""
    model = transformers.BloomForCausalLM(bloom_config())
    with pytest.raises(ValueError, match="BloomAttention"):
        model.set_attn_implementation("attnlens")
    assert model.config._attn_implementation == "eager"
    # Other implementations are untouched: transformers warns and keeps eager, as without attnlens.
    model.set_attn_implementation("sdpa")
    assert model.config._attn_implementation == "eager"


def test_supported_models_are_accepted_and_guarded():
    assert hf.unsupported_reason(transformers.LlamaForCausalLM, llama()) is None
    config = transformers.Gemma2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=64,
        attn_logit_softcapping=None,  # without soft-capping Gemma 2 is plain attention
    )
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="attnlens")
    assert model.config._attn_implementation == "attnlens"
    assert getattr(model, hf._guard._HOOKED) and getattr(model.model, hf._guard._HOOKED)


def forced_onto_attnlens(model: torch.nn.Module) -> torch.nn.Module:
    """A model switched to attnlens past the load checks (as editing its config would), with the
    guard attached."""
    for module in model.modules():
        if isinstance(module, transformers.PreTrainedModel):
            module.config._attn_implementation_internal = "attnlens"
            hf._guard.attach(module)
    return model


@pytest.mark.parametrize("padding", ["none", "right"])
def test_guard_raises_when_the_mask_was_built_but_attnlens_never_ran(padding, calls):
    """Forced past the load check, Bloom builds its mask through attnlens and reads it as an
    additive bias (padding and causality silently lost); the guard stops it at the end of the
    forward, also when no padding made the mask trivial."""
    model = forced_onto_attnlens(transformers.BloomForCausalLM(bloom_config()).eval())
    input_ids, attention_mask = padded_batch(padding)
    with pytest.raises(RuntimeError, match="none of its layers called the attnlens attention function"):
        run(model, input_ids, attention_mask)
    assert calls == []
    assert hf._guard._stack() == []  # every record the forward opened was closed
    # The guarded model stays usable under eager, and raises nothing there.
    for module in model.modules():
        if isinstance(module, transformers.PreTrainedModel):
            module.config._attn_implementation_internal = "eager"
    assert run(model, input_ids, attention_mask).logits.shape == (3, 9, VOCAB)


def test_guard_keeps_its_records_straight_when_a_forward_raises():
    model = twin(build("llama"), "attnlens")
    with pytest.raises(IndexError):
        run(model, torch.full((1, 4), VOCAB + 5, device=DEVICE), None)  # ids past the vocabulary
    assert hf._guard._stack() == []
    input_ids, attention_mask = padded_batch("left")
    assert run(model, input_ids, attention_mask).last_hidden_state.shape == (3, 9, 32)


# ---- training ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_training_gradients_match_eager(name):
    """A training step's loss and every parameter gradient (through the CPU path's backward) match
    eager's on a padded batch. Measured: gradients differ by 1.5e-7 (BERT) and 1.3e-6 (Llama)
    relative to the largest one; the bound leaves room for other CPUs' rounding."""
    eager = build(name).train()
    for module in eager.modules():  # dropout off: the two runs would draw different masks
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    lens = twin(eager, "attnlens").train()
    input_ids, attention_mask = padded_batch("right")
    grads = []
    for model in (eager, lens):
        with attnlens.use_backend("reference"):
            hidden = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        loss = (hidden * attention_mask[..., None]).square().mean()
        loss.backward()
        grads.append({key: p.grad.clone() for key, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    scale = max(float(g.abs().max()) for g in grads[0].values())
    worst = max(max_error(grads[1][key], grads[0][key]) for key in grads[0])
    assert worst <= 1e-5 * scale, f"gradients differ by {worst:.3g} (largest gradient {scale:.3g})"


def test_training_t5_raises_for_its_learned_position_bias():
    """attnlens computes no gradient for an additive float mask, so T5's learned relative bias
    cannot be trained through it: the error says so instead of silently freezing the bias."""
    model = twin(build("t5"), "attnlens").train()
    input_ids, attention_mask = padded_batch("right")
    with pytest.raises(NotImplementedError, match="no gradient for position_bias"):
        model(input_ids=input_ids, attention_mask=attention_mask)
    with torch.no_grad():  # inference is fine
        assert model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.shape == (3, 9, 32)
