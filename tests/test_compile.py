"""Every shipped kernel variant compiles for real GPUs (sm_80, sm_90) on this CPU-only machine.

The interpreter accepts code the GPU compiler rejects (non-constexpr globals, dot shapes under 16,
type mismatches between branches), so this is the test that the kernels the tests exercise are
also kernels a GPU can run.
"""

from __future__ import annotations

import pytest

pytest.importorskip("triton")

from attnlens.kernels import report  # noqa: E402


@pytest.fixture(scope="module")
def coverage_results():
    return report.compile_all(report.coverage_variants(), jobs=2)


def test_coverage_set_turns_every_flag_on_and_off():
    variants = report.coverage_variants()
    for kernel, fn in report.KERNEL_FUNCTIONS.items():
        mine = [v for v in variants if v.kernel == kernel]
        assert {v.dtype for v in mine} == set(report.DTYPES)
        assert {v.head_dim for v in mine} == set(report.HEAD_DIM_BUCKETS)
        for flag in report._constexpr_flags(fn):
            values = {v.flag_dict[flag] for v in mine}
            if flag == "MASK_KIND":
                assert values == {0, 1, 2}
            elif flag == "USE_FP64":
                assert values == {True, False}
            elif flag != "DOT_PRECISION":
                assert values == {True, False}, f"{kernel}.{flag} only takes {values}"


def test_every_variant_compiles(coverage_results):
    failures = [f"{r.variant.kernel} sm_{r.variant.arch} {r.variant.dtype} d={r.variant.head_dim} "
                f"[{r.variant.label()}]:\n{r.error}" for r in coverage_results if r.error]
    assert not failures, "\n\n".join(failures)


def test_shared_memory_fits(coverage_results):
    over = [r.as_dict() for r in coverage_results if r.shared_bytes > r.shared_limit]
    assert not over, over


def test_matrix_instructions(coverage_results):
    """16-bit dot products use tensor cores: HMMA on sm_80, HGMMA (wgmma) on sm_90 for the main
    kernels; fp64 uses DMMA."""
    for r in coverage_results:
        v = r.variant
        if v.dtype in ("fp16", "bf16") and v.kernel in ("forward", "backward_dkdv", "backward_dq"):
            expected = "HGMMA" if v.arch == 90 else "HMMA"
            assert r.mma.get(expected, 0) > 0, f"{v.kernel} sm_{v.arch} {v.dtype}: {r.mma}"
        if v.dtype == "fp64" and v.kernel != "backward_preprocess":
            assert r.mma.get("DMMA", 0) > 0, f"{v.kernel} sm_{v.arch} fp64: {r.mma}"


@pytest.fixture(scope="module")
def default_sm90_results():
    return report.compile_all(report.default_variants(archs=(90,)), jobs=2)


def test_default_sm90_configs_do_not_spill(default_sm90_results):
    """The shipped Hopper launch configurations (kernels/config.py's sm90 entries, every kernel,
    16-bit dtypes at head dims 64/128/256, fp32 and fp64 at 64, flags of the commonest call) keep
    everything in registers: no local memory, which is where ptxas puts spilled registers."""
    variants = [r.variant for r in default_sm90_results]
    assert {v.kernel for v in variants} == set(report.KERNEL_FUNCTIONS)
    assert {(v.dtype, v.head_dim) for v in variants} >= {("fp16", 64), ("fp16", 128), ("bf16", 64), ("bf16", 128)}
    failures = [f"{r.variant.kernel} {r.variant.dtype} d={r.variant.head_dim}: {r.error}"
                for r in default_sm90_results if r.error]
    assert not failures, "\n\n".join(failures)
    assert all(r.registers > 0 for r in default_sm90_results)  # the cubin was read, not defaulted
    spilled = [f"{r.variant.kernel} {r.variant.dtype} d={r.variant.head_dim} {r.variant.config}: "
               f"{r.registers} registers, {r.local_bytes} bytes of local memory"
               for r in default_sm90_results if r.spills]
    assert not spilled, "\n".join(spilled)
