"""Shared set-up of the Hugging Face tests: the registrations, and the ``hf_sweep`` marker.

Tests marked ``hf_sweep`` (the architecture sweep beyond its fast subset) are deselected unless
the marker expression names the marker (``pytest -m hf_sweep tests/integrations``), so that
``make test`` runs the fast subset only. The count of outcomes is printed at the end of a run that
names ``tests/integrations`` (under pytest-xdist, only a conftest on the command line's path reaches
the controller, which prints the summary).
"""

from __future__ import annotations

from typing import Any, Optional

import pytest
import torch

SWEEP_MARKER = "hf_sweep"
# An attention implementation for the tests only: eager's maths in float64, as an oracle.
ORACLE = "eager_float64_test_oracle"


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        f"{SWEEP_MARKER}: the whole Hugging Face architecture sweep (minutes); run with -m {SWEEP_MARKER}",
    )


def pytest_collection_modifyitems(config, items):
    if SWEEP_MARKER in (config.getoption("markexpr", "") or ""):
        return
    deselected = [item for item in items if SWEEP_MARKER in item.keywords]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if SWEEP_MARKER not in item.keywords]


_outcomes: dict = {}


def pytest_runtest_logreport(report):
    """Collects the sweep's outcomes (recorded by the tests, carried by the reports through
    pytest-xdist) for the summary."""
    for key, value in report.user_properties:
        if key == "hf_sweep_outcome" and report.when == "call":
            _outcomes[report.nodeid] = value if report.outcome != "failed" else "failed"


def pytest_terminal_summary(terminalreporter):
    if not _outcomes:
        return
    counts: dict = {}
    for value in _outcomes.values():
        counts[value] = counts.get(value, 0) + 1
    line = ", ".join(f"{count} {value}" for value, count in sorted(counts.items()))
    terminalreporter.write_line(f"Hugging Face architecture sweep: {len(_outcomes)} runs: {line}")


def float64_eager_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    dropout: float = 0.0,
    scaling: Optional[float] = None,
    position_bias: Optional[torch.Tensor] = None,
    **kwargs: Any,
):
    """Eager attention without the float32 softmax some models' eager code casts to (a float32
    cast turns the float64 mask minimum into -inf and fully masked rows into NaN)."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    if position_bias is not None:
        scores = scores + position_bias
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = scores.softmax(dim=-1)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


@pytest.fixture(scope="session")
def registered() -> str:
    """Registers attnlens (and the float64 oracle) with transformers; returns attnlens's name."""
    pytest.importorskip("transformers.masking_utils")
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    from attnlens.integrations import huggingface

    name = huggingface.register()
    AttentionInterface.register(ORACLE, float64_eager_attention)
    AttentionMaskInterface.register(ORACLE, eager_mask)
    return name
