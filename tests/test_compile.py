"""Every shipped kernel variant compiles for real GPUs (sm_80, sm_90, and sm_86/sm_100/sm_120
for their own rows) on this CPU-only machine.

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
    failures = [
        f"{r.variant.kernel} sm_{r.variant.arch} {r.variant.dtype} d={r.variant.head_dim} "
        f"[{r.variant.label()}]:\n{r.error}"
        for r in coverage_results
        if r.error
    ]
    assert not failures, "\n\n".join(failures)


def test_shared_memory_fits(coverage_results):
    over = [r.as_dict() for r in coverage_results if r.shared_bytes > r.shared_limit]
    assert not over, over


def test_matrix_instructions(coverage_results):
    """16-bit dot products use tensor cores: HMMA on sm_80, HGMMA (wgmma) on sm_90 for the main
    kernels; fp64 uses DMMA.

    One exception, chosen: dK/dV at head dims above 128 on sm_90 owns 32 keys per program (wgmma
    needs 64 rows per warpgroup), because every tile that gives wgmma its 64 rows there spills
    (bench/NOTES.md, step 1); it runs on HMMA, the tensor cores' synchronous path."""
    for r in coverage_results:
        v = r.variant
        if v.dtype in ("fp16", "bf16") and v.kernel in ("forward", "backward_dkdv", "backward_dq"):
            wide_dkdv = v.kernel == "backward_dkdv" and v.head_dim > 128
            expected = "HGMMA" if v.arch == 90 and not wide_dkdv else "HMMA"
            assert r.mma.get(expected, 0) > 0, f"{v.kernel} sm_{v.arch} {v.dtype}: {r.mma}"
        if v.dtype == "fp64" and v.kernel != "backward_preprocess":
            assert r.mma.get("DMMA", 0) > 0, f"{v.kernel} sm_{v.arch} fp64: {r.mma}"


@pytest.fixture(scope="module")
def default_sm90_results():
    return report.compile_all(report.default_variants(archs=(90,)), jobs=2)


def test_default_sm90_configs_do_not_spill(default_sm90_results):
    """The shipped Hopper launch configurations (kernels/config.py's sm90 entries, every kernel,
    16-bit dtypes at head dims 64/128/256, fp32 and fp64 at 64, flags of the commonest call) keep
    everything in registers: no stack frame (where ptxas puts spilled registers; cuobjdump's
    STACK) and no local stores or loads (STL/LDL) in the SASS."""
    variants = [r.variant for r in default_sm90_results]
    assert {v.kernel for v in variants} == set(report.KERNEL_FUNCTIONS)
    assert {(v.dtype, v.head_dim) for v in variants} >= {("fp16", 64), ("fp16", 128), ("bf16", 64), ("bf16", 128)}
    failures = [
        f"{r.variant.kernel} {r.variant.dtype} d={r.variant.head_dim}: {r.error}"
        for r in default_sm90_results
        if r.error
    ]
    assert not failures, "\n\n".join(failures)
    assert all(r.registers > 0 for r in default_sm90_results)  # the cubin was read, not defaulted
    spilled = [
        f"{r.variant.kernel} {r.variant.dtype} d={r.variant.head_dim} {r.variant.config}: "
        f"{r.registers} registers, {r.local_bytes} bytes of stack, {r.spill_stores} STL, {r.spill_loads} LDL"
        for r in default_sm90_results
        if r.spills
    ]
    assert not spilled, "\n".join(spilled)


def test_candidate_configurations():
    """``--config`` compiles the selected variants with candidate configurations instead of the
    table's: the tool for reading a tuning step's cost before timing it."""
    assert report.parse_config("128x64x8x3") == report.KernelConfig(128, 64, 8, 3)
    assert report.parse_config("64X32") == report.KernelConfig(64, 32)
    assert report.parse_config("128x64x8x3+tma") == report.KernelConfig(128, 64, 8, 3, tma=True)
    for bad in ("128", "128x64x4x3x1", "axb", "128x48", "128x64+tmax"):
        with pytest.raises(ValueError, match="128x64|power of two|'\\+tma'"):
            report.parse_config(bad)
    base = [v for v in report.default_variants(archs=(90,), kernels=["forward"]) if v.dtype == "fp16"]
    configs = [report.KernelConfig(64, 64, 4, 2), report.KernelConfig(128, 128, 8, 3)]
    variants = report.with_configs(base, configs)
    assert len(variants) == 2 * len(base)
    assert {v.config for v in variants} == set(configs) and {v.flags for v in variants} == {v.flags for v in base}


def test_report_command_line_with_a_candidate(capsys):
    assert (
        report.main(
            [
                "--kernel",
                "forward",
                "--arch",
                "90",
                "--dtype",
                "fp16",
                "--head-dim",
                "64",
                "--config",
                "64x64x4x2",
                "--jobs",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| forward | sm_90 | fp16 | 64 |" in out and "| 64x64, 4, 2 |" in out
    with pytest.raises(SystemExit):
        report.main(["--kernel", "forward", "--head-dim", "48"])  # no variant at head dim 48


def test_spills_are_detected():
    """The no-spill test above is only as good as the reading: a variant known to spill (fp32,
    sm_90, 64x32 tiles with 4 warps: 255 registers and a 400-byte stack frame under Triton 3.9)
    must be reported as spilling, with its local stores and loads counted."""
    (variant,) = [v for v in report.default_variants(archs=(90,), kernels=["forward"]) if v.dtype == "fp32"]
    (result,) = report.compile_all(report.with_configs([variant], [report.KernelConfig(64, 32, 4, 2)]), jobs=1)
    assert result.error is None, result.error
    assert result.spills and result.local_bytes > 0 and result.spill_stores > 0 and result.spill_loads > 0
    assert 0 < result.loop_spills <= result.spill_stores + result.spill_loads  # 255 registers: in the loop too


def test_loop_spills_count_only_the_local_accesses_inside_a_loop():
    """A loop in ``nvdisasm -c`` output runs from a label to a branch back to it; local stores and
    loads outside every loop (before the main loop, after it, or in a forward-branch block) do not
    count, nor does the trailing self-branch. Uniform branches (``BRA.U UP1, ...``, sm_120's ptxas)
    close loops too."""
    sass = """
        /*0010*/                   STL [R1], R4 ;
        /*0020*/               @P0 BRA `(.L_x_0) ;
.L_x_2:
        /*0030*/                   LDL R8, [R1] ;
.L_x_3:
        /*0040*/                   STL.64 [R1+0x8], R6 ;
        /*0050*/              @!P3 BRA `(.L_x_3) ;
        /*0060*/                   FADD R2, R2, R3 ;
        /*0070*/                   BRA.U !UP1, `(.L_x_2) ;
.L_x_0:
        /*0080*/                   LDL.LU R4, [R1] ;
.L_x_1:
        /*0090*/                   BRA `(.L_x_1);
"""
    assert report.loop_spill_count(sass) == 2
    assert report.loop_spill_count(sass.replace("(.L_x_2)", "(.L_x_0)")) == 1  # forward branch: one loop left


@pytest.mark.parametrize("arch", [86, 120])
def test_consumer_card_configs_fit_and_do_not_spill(arch):
    """The sm8x rows (99 KiB of shared memory per block; compute capability 8.6/8.9 and 12.x, whose
    ptxas spills at different points) for the kernels and head dims where the earlier rows did not
    fit (dQ at d=256) or spilled (forward, dK/dV), in fp16. The whole set, every dtype and head dim
    on sm_86, sm_89 and sm_120, is `report --full --arch 86 --arch 89 --arch 120` (bench/NOTES.md,
    step 2)."""
    variants = [
        v
        for v in report.default_variants(archs=(arch,), kernels=["forward", "backward_dkdv", "backward_dq"])
        if v.dtype == "fp16"
    ]
    assert {v.head_dim for v in variants} == {64, 128, 256}
    results = report.compile_all(variants, jobs=2)
    bad = [
        f"{r.variant.kernel} d={r.variant.head_dim} {r.variant.config}: error={r.error}, "
        f"{r.shared_bytes}/{r.shared_limit} B shared, {r.local_bytes} B stack, {r.spill_stores} STL"
        for r in results
        if not r.ok or r.spills
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("arch", [86, 120])
def test_consumer_card_rows_do_not_spill_with_masks_padding_and_ragged_lengths(arch):
    """The sm8x rows at head dim 64 (where sm_120's ptxas spilled with ragged lengths) with causal
    masking, key padding and ragged lengths, and the heavy-call rows with a float mask, padding and
    ragged lengths (the backward: the weights' gradient, causal, padding): no spills on sm_86 or
    sm_120. The wider check is bench/NOTES.md step 5."""
    variants = _flagged_variants(arch, 64)
    results = report.compile_all(variants, jobs=2)
    bad = [
        f"{r.variant.kernel} [{r.variant.label()}] {r.variant.config}: error={r.error}, "
        f"{r.shared_bytes}/{r.shared_limit} B shared, {r.local_bytes} B stack, {r.spill_stores} STL"
        for r in results
        if not r.ok or r.spills
    ]
    assert not bad, "\n".join(bad)


def _flagged_variants(arch, head_dim):
    """Per kernel: causal + padding + ragged lengths (an ordinary row), and a heavy call (float
    mask + padding + ragged lengths; in the backward the weights' gradient + causal + padding)."""
    ragged = dict(EVEN_M=False, EVEN_N=False, HAS_PADDING=True)
    variants = []
    for kernel in ("forward", "weights", "backward_dkdv", "backward_dq"):
        variants.append(report.variant_with_flags(kernel, arch, "fp16", head_dim, IS_CAUSAL=True, **ragged))
        if kernel.startswith("backward"):
            heavy = dict(HAS_DW=True, IS_CAUSAL=True, HAS_PADDING=True, EVEN_N=False)
        else:
            heavy = dict(ragged, MASK_KIND=2)
        variants.append(report.variant_with_flags(kernel, arch, "fp16", head_dim, **heavy))
    return variants


@pytest.mark.parametrize("head_dim", [64, 128])
def test_sm90_rows_do_not_spill_with_masks_padding_and_ragged_lengths(head_dim):
    """The commonest call is not the only one: causal masking with key padding on lengths that do
    not divide the blocks (the ordinary rows), a float mask with key padding on ragged lengths and,
    in the backward, the weights' gradient with causal masking and padding (the heavy-call rows,
    ``config.is_heavy``) compile for sm_90 without spills. The wider check (dropout too, head dims
    64-256, sm_80 and sm_100) is bench/NOTES.md step 4, which also lists the combinations that still
    spill (dropout, a float mask, padding and ragged lengths all at once)."""
    variants = _flagged_variants(90, head_dim)
    assert sum(v.config != report.variant_with_flags(v.kernel, 90, "fp16", head_dim).config for v in variants) >= 1
    results = report.compile_all(variants, jobs=2)
    bad = [
        f"{r.variant.kernel} [{r.variant.label()}] {r.variant.config}: error={r.error}, "
        f"{r.registers} registers, {r.local_bytes} B stack, {r.spill_stores} STL"
        for r in results
        if not r.ok or r.spills
    ]
    assert not bad, "\n".join(bad)
    with pytest.raises(ValueError, match="no constexpr flags"):
        report.variant_with_flags("forward", 90, "fp16", 64, HAS_DW=True)


def test_sm90_fp32_dkdv_rows_do_not_spill_with_flags():
    """fp32 dK/dV (FMA products, which spill at 80-128 registers) on sm_90 at head dim 64: causal
    padding on ragged lengths, and the weights' gradient with causal padding, compile without
    spills (the 32x32 tiles it had spilled up to 112 B; bench/NOTES.md step 5)."""
    variants = [
        report.variant_with_flags(
            "backward_dkdv", 90, "fp32", 64, IS_CAUSAL=True, HAS_PADDING=True, EVEN_M=False, EVEN_N=False
        ),
        report.variant_with_flags(
            "backward_dkdv", 90, "fp32", 64, HAS_DW=True, IS_CAUSAL=True, HAS_PADDING=True, EVEN_N=False
        ),
    ]
    results = report.compile_all(variants, jobs=2)
    bad = [
        f"[{r.variant.label()}] {r.variant.config}: error={r.error}, {r.local_bytes} B stack, "
        f"{r.loop_spills} STL/LDL in loops"
        for r in results
        if not r.ok or r.spills
    ]
    assert not bad, "\n".join(bad)


def test_sm100_configs_fit_do_not_spill_and_use_tcgen05():
    """Datacenter Blackwell (sm_100) has its own rows: the 16-bit products compile to tcgen05
    (UTCHMMA in the SASS) except dK/dV above head dim 128 (HMMA, as on sm_90), without spills,
    within 227 KiB of shared memory."""
    variants = [
        v
        for v in report.default_variants(archs=(100,), kernels=["forward", "backward_dkdv", "backward_dq"])
        if v.dtype == "fp16"
    ]
    results = report.compile_all(variants, jobs=2)
    bad = [
        f"{r.variant.kernel} d={r.variant.head_dim} {r.variant.config}: error={r.error}, "
        f"{r.shared_bytes}/{r.shared_limit} B shared, {r.local_bytes} B stack"
        for r in results
        if not r.ok or r.spills
    ]
    assert not bad, "\n".join(bad)
    for r in results:
        wide_dkdv = r.variant.kernel == "backward_dkdv" and r.variant.head_dim > 128
        assert r.mma.get("HMMA" if wide_dkdv else "UTCHMMA", 0) > 0, (r.variant.kernel, r.variant.head_dim, r.mma)


def test_descriptor_loads_reach_the_sass():
    """``+tma`` compiles the USE_TMA paths: the forward's TMA loads (UTMALDG) feeding wgmma (HGMMA)
    and the weights kernel's TMA store (UTMASTG) on sm_90, without spills; the table's own
    configurations do not use them."""
    (variant,) = [
        v for v in report.default_variants(archs=(90,), kernels=["forward"]) if v.dtype == "fp16" and v.head_dim == 128
    ]
    (result,) = report.compile_all(report.with_configs([variant], [report.parse_config("128x64x8x3+tma")]), jobs=1)
    assert result.variant.flag_dict["USE_TMA"] is True and result.error is None, result.error
    assert result.mma.get("UTMALDG", 0) > 0 and result.mma.get("HGMMA", 0) > 0, result.mma
    assert not result.spills
    assert not any(
        v.config.tma or v.flag_dict["USE_TMA"]
        for v in report.default_variants(archs=(80, 90), kernels=["forward", "weights"], full=True)
    )
    (variant,) = [
        v for v in report.default_variants(archs=(90,), kernels=["weights"]) if v.dtype == "bf16" and v.head_dim == 64
    ]
    (result,) = report.compile_all(report.with_configs([variant], [report.parse_config("128x64x4x2+tma")]), jobs=1)
    assert result.mma.get("UTMASTG", 0) > 0 and result.mma.get("HGMMA", 0) > 0 and not result.spills, result.mma
