"""The architecture sweep: each architecture ends matching eager, refused at load, or skipped.

``sweep(architecture, backend)`` builds the tiny model twice from the same config and weights,
once with ``attn_implementation="eager"`` and once with ``"attnlens"``, and returns an ``Outcome``:

- ``refused``: ``from_config`` raised the bridge's ``ValueError`` (reason and alternative). The
  refusal is then shown to be needed: the model forced onto attnlens past the check either raises
  (the run-time guard, or an unsupported feature) or never calls the attnlens attention function.
- ``matches``: attnlens accepted it, its attention function ran (every call counted by layer
  class), and on a right-padded batch with ``output_attentions=True`` every output tensor (hidden
  states, logits, each layer's weights) matches eager on the real positions; a decoder also
  generates the same tokens greedily from a left-padded batch. A model without attention layers
  (eager returns no weights and attnlens is never called) matches trivially and says so.
- ``skipped``: the sweep could not build or feed it (the reason says why); attnlens is not judged.

Anything else (attnlens raising where eager runs, a mismatch, an attention function never called
on a model that has attention) raises ``Mismatch``: the test fails.

Run as a script to sweep everything in one process and write the documentation's table::

    .venv/bin/python tests/integrations/sweep.py --table docs/huggingface_sweep.md
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import resource
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch

if __package__ in (None, ""):  # run as a script: make the test helpers importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import transformers  # noqa: E402
from transformers import AttentionInterface, PreTrainedModel  # noqa: E402

import attnlens  # noqa: E402
from attnlens.integrations import huggingface as hf  # noqa: E402
from attnlens.integrations.huggingface import _guard  # noqa: E402
from integrations.architectures import (  # noqa: E402
    BATCH,
    MAX_PARAMETERS,
    TEXT_LENGTH,
    Architecture,
    Inputs,
    Unbuildable,
    all_configs,
    architectures,
    build,
    check_size,
    default_config,
    model_class,
    parameters,
    synthetic_inputs,
    text_inputs,
    tiny_config,
)

# fp32 attnlens against fp32 eager, both the same maths in a different order. Measured over the
# whole sweep (see docs/huggingface.md): outputs differ by at most ~1e-6 relative to their largest
# magnitude and weights by ~1e-7; a lost mask, scale or bias moves them by 1e-2 or more.
OUTPUT_RTOL = 2e-5
WEIGHTS_ATOL = 2e-6
NEW_TOKENS = 3
REFUSAL = f"cannot use attn_implementation={hf.NAME!r}"


class Mismatch(AssertionError):
    """attnlens and eager disagree, or attnlens raised where eager ran: neither outcome."""


@dataclasses.dataclass
class Outcome:
    model_type: str
    kind: str
    class_name: str
    result: str  # "matches" | "refused" | "skipped"
    detail: str
    errors: Dict[str, float] = dataclasses.field(default_factory=dict)
    attention_calls: Dict[str, int] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0


@contextlib.contextmanager
def counting_attention() -> Iterator[Dict[Tuple[str, str], int]]:
    """Counts the calls to the registered attnlens attention function, by attention layer class
    (its module's name and its own)."""
    calls: Dict[Tuple[str, str], int] = collections.Counter()
    registered = AttentionInterface._global_mapping[hf.NAME]

    def counted(module, *args, **kwargs):
        calls[type(module).__module__, type(module).__name__] += 1
        return registered(module, *args, **kwargs)

    AttentionInterface._global_mapping[hf.NAME] = counted
    try:
        yield calls
    finally:
        AttentionInterface._global_mapping[hf.NAME] = registered


def _leaves(value: Any, name: str = "") -> Iterator[Tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        yield name, value
    elif isinstance(value, dict):  # ModelOutput is an OrderedDict
        for key, item in value.items():
            yield from _leaves(item, f"{name}.{key}" if name else key)
    elif isinstance(value, (tuple, list)):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{name}[{index}]")
    # caches and other objects are not outputs to compare


def _attention_count(output: Any) -> int:
    return sum(1 for name, leaf in _leaves(output) if "attentions" in name and leaf.dim() == 4)


def _real_part(name: str, leaf: torch.Tensor, real: Optional[torch.Tensor]) -> torch.Tensor:
    """The part of an output tensor that padding cannot touch: for attention weights the rows of
    real queries, for per-token tensors the real tokens. A padded query may have nothing left to
    attend to (in a sliding window): attnlens gives it zeros, eager a uniform row."""
    if real is None or leaf.dim() < 2 or leaf.shape[0] != BATCH:
        return leaf
    if "attentions" in name and leaf.dim() == 4 and leaf.shape[2] == TEXT_LENGTH:
        return leaf.transpose(1, 2)[real]
    if leaf.shape[1] == TEXT_LENGTH:
        return leaf[real]
    return leaf


def compare(got: Any, expected: Any, real: Optional[torch.Tensor]) -> Dict[str, float]:
    """Max errors by output kind; raises ``Mismatch`` past the tolerances."""
    got_leaves, expected_leaves = dict(_leaves(got)), dict(_leaves(expected))
    if got_leaves.keys() != expected_leaves.keys():
        missing = sorted(set(expected_leaves) ^ set(got_leaves))
        raise Mismatch(f"outputs differ in structure: {missing[:6]}")
    errors: Dict[str, float] = {}
    for name, expected_leaf in expected_leaves.items():
        got_leaf = got_leaves[name]
        if got_leaf.shape != expected_leaf.shape:
            raise Mismatch(f"{name}: shape {tuple(got_leaf.shape)} != eager's {tuple(expected_leaf.shape)}")
        actual, wanted = _real_part(name, got_leaf, real), _real_part(name, expected_leaf, real)
        if not wanted.is_floating_point():
            if not torch.equal(actual, wanted):
                raise Mismatch(f"{name}: integer outputs differ")
            continue
        finite = torch.isfinite(wanted)
        if not torch.equal(finite, torch.isfinite(actual)):
            raise Mismatch(f"{name}: non-finite values where eager has finite ones (or the reverse)")
        error = float((actual.double() - wanted.double())[finite].abs().max()) if finite.any() else 0.0
        if "attentions" in name:
            what, bound = "weights", WEIGHTS_ATOL
        else:  # relative to the tensor's largest magnitude (hidden states, logits, ...)
            scale = float(wanted.double()[finite].abs().max()) if finite.any() else 0.0
            what, bound = "outputs", OUTPUT_RTOL
            error = error / max(1.0, scale)
        errors[what] = max(errors.get(what, 0.0), error)
        if error > bound:
            raise Mismatch(f"{name}: attnlens differs from eager by {error:.3g} > {bound:.3g}")
    return errors


def _run(model: torch.nn.Module, inputs: Inputs) -> Any:
    torch.manual_seed(0)  # any sampling inside the forward draws the same numbers
    with torch.no_grad():
        return model(**inputs.kwargs, output_attentions=True)


def _force_attnlens(eager: torch.nn.Module) -> torch.nn.Module:
    """The model switched to attnlens past the load checks, with the run-time guard attached."""
    forced = copy.deepcopy(eager)
    for module in forced.modules():
        if isinstance(module, PreTrainedModel):
            for config in all_configs(module.config):
                config._attn_implementation_internal = hf.NAME
            _guard.attach(module)
    return forced


def _refusal_needed(eager: torch.nn.Module, inputs: Inputs, backend: str) -> str:
    """Why the refusal is right: what the model does when forced onto attnlens past the check.
    It raises (the run-time guard, an unsupported feature), or the attention modules the refusal
    names run without calling attnlens (other layers may: a text model inside is checked on its
    own, and a model may mix both kinds)."""
    forced = _force_attnlens(eager)
    with counting_attention() as calls, attnlens.use_backend(backend):
        try:
            got = _run(forced, inputs)
        except (RuntimeError, NotImplementedError, ValueError) as exc:
            return f"forced past the check, it raises {type(exc).__name__}"
        except Exception as exc:  # noqa: BLE001 - e.g. GPT-Neo's KeyError('attnlens') at run time
            return f"forced past the check, it fails with {type(exc).__name__}"
    named = set(hf._support.attention_outside_interface(type(eager)))
    if not named:
        # attnlens runs, but the model garbles what reaches it (a mask it extends): the refusal
        # holds only if the result really differs from eager's
        try:
            compare(got, _run(eager, inputs), inputs.real)
        except Mismatch as exc:
            return f"forced past the check, attnlens runs and differs from eager ({exc})"
        raise Mismatch(f"refused at load, yet forced past the check it runs and matches eager (calls: {dict(calls)})")
    called = sorted(name for (_, name), _ in calls.items() if name in named)
    if called:
        raise Mismatch(f"refused at load, yet forced past the check {called} call attnlens")
    built = sorted({type(module).__name__ for module in eager.modules()} & named)
    if not built:
        return f"this small config builds none of {sorted(named)}, which other configs of the family use"
    return f"forced past the check, {', '.join(built)} run without calling attnlens"


def _eager_inputs(eager: torch.nn.Module, config: Any, architecture: Architecture) -> Tuple[Inputs, Any]:
    """Inputs eager runs on, and eager's output: every modality first, then text alone."""
    failures = []
    attempts = [(True, False), (True, True)]  # spectrograms in either layout
    if architecture.kind == "multimodal":
        attempts.append((False, False))
    for with_media, frames_first in attempts:
        try:
            inputs = synthetic_inputs(eager, config, architecture, with_media, frames_first)
        except Unbuildable as exc:
            failures.append(str(exc))
            continue
        if frames_first and "input_features" not in inputs.kwargs:
            continue
        try:
            expected = _run(eager, inputs)
        except Exception as exc:  # noqa: BLE001
            failures.append(f"eager fails on {'+'.join(inputs.parts)} inputs: {_first_line(exc)}")
            continue
        broken = [name for name, leaf in _leaves(expected) if leaf.is_floating_point() and leaf.isnan().any()]
        if broken:  # nothing to compare with (eager's own fully masked rows, or its own bug)
            failures.append(f"eager returns NaN on {'+'.join(inputs.parts)} inputs (in {broken[0]})")
            continue
        return inputs, expected
    raise Unbuildable("; ".join(dict.fromkeys(failures)))


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:200]


def _generate(model: torch.nn.Module, config: Any) -> torch.Tensor:
    input_ids, attention_mask = text_inputs(config, torch.Generator().manual_seed(1), padding="left")
    pad = _find_id(config, "pad_token_id")
    start = _find_id(config, "decoder_start_token_id", "bos_token_id", "pad_token_id")
    with torch.no_grad():
        return model.generate(
            input_ids,
            attention_mask=attention_mask,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=0 if pad is None else pad,
            decoder_start_token_id=(0 if start is None else start) if config.is_encoder_decoder else None,
        )


def _find_id(config: Any, *names: str) -> Optional[int]:
    for name in names:
        for sub in all_configs(config):
            value = getattr(sub, name, None)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return None


def _check_generation(eager: torch.nn.Module, lens: torch.nn.Module, config: Any, backend: str) -> str:
    try:
        expected = _generate(eager, config)
    except Exception as exc:  # noqa: BLE001
        return f"; generation not compared (eager cannot generate here: {_first_line(exc)})"
    with attnlens.use_backend(backend):
        try:
            got = _generate(lens, config)
        except Exception as exc:  # noqa: BLE001
            raise Mismatch(f"eager generates, attnlens raises {_first_line(exc)}") from exc
    if not torch.equal(got, expected):
        raise Mismatch(f"greedy generation differs: {got.tolist()} != eager's {expected.tolist()}")
    return f"; generates the same {NEW_TOKENS} tokens"


def sweep(architecture: Architecture, backend: str = "torch") -> Outcome:
    """Run one architecture; see the module docstring for the outcomes."""
    start = time.perf_counter()
    outcome = Outcome(architecture.model_type, architecture.kind, architecture.class_name, "skipped", "")
    try:
        _sweep(architecture, backend, outcome)
    except Unbuildable as exc:
        outcome.result, outcome.detail = "skipped", str(exc)
    outcome.seconds = time.perf_counter() - start
    return outcome


def _refused_at_load(architecture: Architecture, config: Any) -> Optional[str]:
    """The bridge's refusal message when building with attnlens is refused, else None (and the
    built model is discarded)."""
    try:
        build(architecture, config, hf.NAME)
    except ValueError as exc:
        if REFUSAL in str(exc):
            return str(exc)
        raise
    return None


def _build_eager(architecture: Architecture, config: Any) -> torch.nn.Module:
    check_size(architecture, config)
    try:
        eager = build(architecture, config, "eager")
    except Exception as exc:  # noqa: BLE001
        raise Unbuildable(f"cannot build from a small config: {_first_line(exc)}") from exc
    count = parameters(eager)  # for the models the meta device could not count
    if count > MAX_PARAMETERS:
        raise Unbuildable(f"its small config still has {count / 1e6:.1f}M parameters")
    return eager


def _sweep(architecture: Architecture, backend: str, outcome: Outcome) -> None:
    cls = model_class(architecture)
    try:
        config = tiny_config(architecture)
    except Unbuildable as small_config_failure:
        # The load checks need only the class and a config: a model refused at load is refused
        # with its default config before any weight is made.
        default = default_config(architecture)
        if default is not None and hf.unsupported_reason(cls, default) is not None:
            message = _refused_at_load(architecture, default)
            if message is not None:
                outcome.result = "refused"
                outcome.detail = f"{hf.unsupported_reason(cls, default)} (not run: {small_config_failure})"
                return
        raise
    reason = hf.unsupported_reason(cls, config)
    if reason is not None:  # refused: through from_config, then shown to be needed where it runs
        outcome.result = "refused"
        try:
            accepted = _refused_at_load(architecture, config) is None
        except ImportError as exc:  # a backend the class needs (detectron2...) is missing here
            outcome.detail = f"{reason} (refusal not exercised: {_first_line(exc)})"
            return
        if accepted:
            raise Mismatch(f"unsupported_reason says {reason!r}, yet from_config accepts attnlens")
        try:
            eager = _build_eager(architecture, config)
            inputs, _ = _eager_inputs(eager, config, architecture)
        except Unbuildable as not_run:
            outcome.detail = f"{reason} (refusal not exercised: {not_run})"
            return
        outcome.detail = f"{reason}; {_refusal_needed(eager, inputs, backend)}"
        return
    eager = _build_eager(architecture, config)
    try:
        lens = build(architecture, config, hf.NAME)
    except ValueError as exc:  # a model built inside (an audio tower from its sub-config) refused
        if REFUSAL not in str(exc):
            raise Mismatch(f"from_config with attnlens raised an unexpected error: {exc}") from exc
        outcome.result = "refused"
        inputs, _ = _eager_inputs(eager, config, architecture)
        outcome.detail = f"{str(exc).split(': ', 1)[-1].split('; use ')[0]}; {_refusal_needed(eager, inputs, backend)}"
        return
    try:
        lens.load_state_dict(eager.state_dict())
    except RuntimeError:  # a model whose state dict does not round-trip: copy it instead
        lens = copy.deepcopy(eager)
        lens.set_attn_implementation(hf.NAME)
    inputs, expected = _eager_inputs(eager, config, architecture)
    with counting_attention() as calls, attnlens.use_backend(backend):
        try:
            got = _run(lens, inputs)
        except Exception as exc:  # noqa: BLE001
            raise Mismatch(f"eager runs, attnlens raises {_first_line(exc)}") from exc
    outcome.attention_calls = {name: n for (_, name), n in calls.items()}
    fed = "+".join(inputs.parts)
    if not calls:
        if _attention_count(expected):
            raise Mismatch("eager returns attention weights but attnlens's attention function never ran")
        outcome.errors = compare(got, expected, inputs.real)
        if any(outcome.errors.values()):
            raise Mismatch(f"no attention layers, yet the outputs differ: {outcome.errors}")
        outcome.result, outcome.detail = "matches", f"no attention layers reached on {fed} inputs (output identical)"
        return
    if _attention_count(got) != _attention_count(expected):
        raise Mismatch(f"{_attention_count(got)} attention tensors, eager returns {_attention_count(expected)}")
    outcome.errors = compare(got, expected, inputs.real)
    layers = ", ".join(f"{name} x{n}" for name, n in sorted(outcome.attention_calls.items()))
    outcome.result, outcome.detail = "matches", f"{fed} inputs, attnlens ran in {layers}"
    if architecture.generates and getattr(eager, "can_generate", lambda: False)():
        outcome.detail += _check_generation(eager, lens, config, backend)


def main(argv: List[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_types", nargs="*", help="sweep only these (default: every architecture)")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--table", type=Path, help="write the markdown table of outcomes here")
    args = parser.parse_args(argv)
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    hf.register()
    outcomes = []
    for architecture in architectures():
        if args.model_types and architecture.model_type not in args.model_types:
            continue
        torch.manual_seed(0)
        try:
            outcome = sweep(architecture, args.backend)
        except Mismatch as exc:
            outcome = Outcome(architecture.model_type, architecture.kind, architecture.class_name, "MISMATCH", str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug in the sweep itself: report it and go on
            outcome = Outcome(
                architecture.model_type, architecture.kind, architecture.class_name, "ERROR", _first_line(exc)
            )
        outcomes.append(outcome)
        memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        print(
            f"{outcome.model_type:32s} {outcome.result:9s} {outcome.seconds:6.2f}s {memory:6d}MB "
            f"{outcome.detail[:150]}",
            flush=True,
        )
    counts = collections.Counter(outcome.result for outcome in outcomes)
    print(dict(counts), f"{sum(o.seconds for o in outcomes):.0f}s")
    for what in ("outputs", "weights"):
        measured = [(o.errors[what], o.model_type) for o in outcomes if what in o.errors]
        if measured:
            print(f"largest {what} error: {max(measured)[0]:.3g} ({max(measured)[1]})")
    if args.table:
        args.table.write_text(table(outcomes, args.backend))
    return 1 if counts.get("MISMATCH") or counts.get("ERROR") else 0


def table(outcomes: List[Outcome], backend: str) -> str:
    """The markdown page of outcomes: counts by kind, then one row per architecture."""
    kinds = sorted({outcome.kind for outcome in outcomes})
    results = ("matches", "refused", "skipped")
    lines = [
        "# Hugging Face architectures under attnlens",
        "",
        f"Generated by `tests/integrations/sweep.py` with transformers {transformers.__version__} and torch "
        f"{torch.__version__} (CPU, attnlens backend `{backend}`); see",
        "[huggingface.md](huggingface.md) for what each outcome checks and how to regenerate this page.",
        "",
        "| kind | " + " | ".join(results) + " |",
        "| --- | " + " | ".join("---:" for _ in results) + " |",
    ]
    for kind in kinds + ["all"]:
        row = [o for o in outcomes if kind in ("all", o.kind)]
        counts = [sum(o.result == result for o in row) for result in results]
        lines.append(f"| {kind} | " + " | ".join(str(count) for count in counts) + " |")
    lines += ["", "| model type | kind | class | outcome | why |", "| --- | --- | --- | --- | --- |"]
    for o in sorted(outcomes, key=lambda o: o.model_type):
        detail = o.detail.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| `{o.model_type}` | {o.kind} | {o.class_name} | {o.result} | {detail} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
