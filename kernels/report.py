"""Kernel compile report: build every shipped kernel variant for real GPUs, without a GPU.

    python -m attnlens.kernels.report                # the default configs, sm_80 and sm_90
    python -m attnlens.kernels.report --coverage     # every constexpr flag on and off
    python -m attnlens.kernels.report --json out.json
    python -m attnlens.kernels.report --kernel forward --arch 90 --dtype fp16 --head-dim 64 \
        --config 128x64x4x3 --config 128x128x8x3   # candidates, before timing them on a GPU

For each variant it compiles with ``triton.compile(ASTSource(...), target=GPUTarget(...))`` and
reads the cubin with the ``cuobjdump`` and ``nvdisasm`` that Triton's wheel ships: registers per
thread, spills, shared memory (checked against the architecture's limit), and which matrix
instructions the SASS uses (HMMA on sm_80, HGMMA = wgmma on sm_90, UTCHMMA = tcgen05.mma on sm_100,
DMMA for fp64).

Spills: ptxas puts spilled registers in the thread's stack frame, which ``cuobjdump -res-usage``
reports as ``STACK`` (its ``LOCAL`` is memory the program itself declared local, 0 here); the
SASS shows them as local stores and loads (``STL``/``LDL``). A variant spills when either is
non-zero.

Argument specialisation mirrors what a launch from torch sees in the common case: pointers and
the batch/head/sequence strides divisible by 16, the last-dimension strides equal to 1.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from attnlens.kernels import config as config_mod
from attnlens.kernels.config import KernelConfig

__all__ = [
    "Variant",
    "CompileResult",
    "KERNEL_FUNCTIONS",
    "default_variants",
    "coverage_variants",
    "table_config",
    "variant_with_flags",
    "with_configs",
    "parse_config",
    "compile_variant",
    "compile_all",
    "opcode_counts",
    "format_table",
    "main",
]

ARCHS = (80, 90)
DTYPES = ("fp16", "bf16", "fp32", "fp64")
HEAD_DIM_BUCKETS = (16, 32, 64, 128, 256)
#: the largest dynamic shared memory a block may use, per compute capability (bytes)
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024, 100: 227 * 1024, 120: 99 * 1024}

_TORCH_DTYPE = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}
_FAMILY = {arch: config_mod.capability_family(arch // 10, arch % 10) for arch in SHARED_LIMIT}
_MMA = ("UTCHMMA", "HGMMA", "HMMA", "DMMA", "IMMA")  # UTCHMMA: tcgen05.mma (sm_100)
_TMA = ("UTMALDG", "UTMASTG")  # tensor-descriptor (TMA) loads and stores in sm_90 SASS
_STL, _LDL = re.compile(r"\bSTL(?:\.\w+)*\b"), re.compile(r"\bLDL(?:\.\w+)*\b")  # local stores, loads


def _kernel_functions() -> Dict[str, object]:
    from attnlens.kernels import forward

    kernels = {"forward": forward._attn_fwd_kernel, "weights": forward._attn_weights_kernel}
    try:
        from attnlens.kernels import backward
    except ImportError:
        return kernels
    kernels.update(
        {
            "backward_preprocess": backward._bwd_preprocess_kernel,
            "backward_dkdv": backward._bwd_dkdv_kernel,
            "backward_dq": backward._bwd_dq_kernel,
        }
    )
    return kernels


KERNEL_FUNCTIONS = _kernel_functions()

# Pointer element types: "q" means the input dtype, "acc" fp32 (fp64 for fp64 inputs).
_POINTER_TYPES = {
    "row_stats_ptr": "acc",
    "delta_ptr": "acc",
    "kv_range_ptr": "i32",
    "seed_ptr": "i64",
    "pad_ptr": "u8",
    "alibi_ptr": "acc",
    "sinks_ptr": "acc",
}
_UNIT_STRIDES = ("_dim", "stride_mask_k", "stride_pad_k", "stride_w_k", "stride_dw_k")
_FLOAT_ARGS = (
    "qk_scale",
    "qk_scale_lo",
    "softcap_scale",
    "softcap_scale_lo",
    "dropout_p",
    "keep_scale",
    "mean_scale",
    "sm_scale",
    "sm_scale_lo",
)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One compiled specialisation of one kernel."""

    kernel: str
    arch: int
    dtype: str
    head_dim: int
    flags: Tuple[Tuple[str, object], ...]
    config: KernelConfig

    @property
    def flag_dict(self) -> Dict[str, object]:
        return dict(self.flags)

    def label(self) -> str:
        on = [name for name, value in self.flags if value is True]
        mask = self.flag_dict.get("MASK_KIND", 0)
        if mask:
            on.append(f"MASK_KIND={mask}")
        return ",".join(on) or "-"


@dataclasses.dataclass
class CompileResult:
    variant: Variant
    registers: int
    local_bytes: int  # stack frame + declared local memory, bytes per thread
    shared_bytes: int
    shared_limit: int
    mma: Dict[str, int]
    error: Optional[str] = None
    spill_stores: int = 0  # STL instructions in the SASS
    spill_loads: int = 0  # LDL instructions in the SASS
    loop_spills: int = 0  # of those, the STL/LDL inside a loop of the SASS (``loop_spill_count``)
    opcodes: Dict[str, int] = dataclasses.field(default_factory=dict)  # SASS instruction mix

    @property
    def ok(self) -> bool:
        return self.error is None and self.shared_bytes <= self.shared_limit

    @property
    def spills(self) -> bool:
        return self.local_bytes > 0 or self.spill_stores > 0 or self.spill_loads > 0

    def as_dict(self) -> dict:
        v = self.variant
        return {
            "kernel": v.kernel,
            "arch": f"sm_{v.arch}",
            "dtype": v.dtype,
            "head_dim": v.head_dim,
            "flags": v.label(),
            "block_m": v.config.block_m,
            "block_n": v.config.block_n,
            "num_warps": v.config.num_warps,
            "num_stages": v.config.num_stages,
            "registers": self.registers,
            "local_bytes": self.local_bytes,
            "spill_stores": self.spill_stores,
            "spill_loads": self.spill_loads,
            "loop_spills": self.loop_spills,
            "shared_bytes": self.shared_bytes,
            "shared_limit": self.shared_limit,
            "mma": self.mma,
            "opcodes": self.opcodes,
            "error": self.error,
        }


def _constexpr_flags(kernel) -> List[str]:
    """The kernel's constexpr parameters other than the block sizes, in order."""
    import triton.language as tl

    fn = kernel.fn  # the Python function, under both JITFunction and InterpretedFunction
    names = fn.__code__.co_varnames[: fn.__code__.co_argcount]

    def is_constexpr(annotation) -> bool:  # a string under `from __future__ import annotations`
        return annotation is tl.constexpr or (isinstance(annotation, str) and annotation.endswith("constexpr"))

    return [n for n in names if is_constexpr(fn.__annotations__.get(n)) and not n.startswith("BLOCK_")]


def _flag_value(name: str, pattern: int, index: int, dtype: str):
    """The value of flag ``name`` in flag pattern ``pattern`` (0: all off, 1: all on,
    2/3: alternating), the ``index``-th flag of its kernel."""
    if name == "USE_FP64":
        return dtype == "fp64"
    if name == "DOT_PRECISION":
        return "ieee"
    if name == "MASK_KIND":
        return (0, 1, 2, 0)[pattern]
    if pattern in (0, 1):
        return pattern == 1
    return (index + pattern) % 2 == 0


def _make_variant(kernel: str, arch: int, dtype: str, head_dim: int, pattern: int) -> Variant:
    fn = KERNEL_FUNCTIONS[kernel]
    flags = tuple((name, _flag_value(name, pattern, i, dtype)) for i, name in enumerate(_constexpr_flags(fn)))
    return Variant(kernel, arch, dtype, head_dim, flags, table_config(kernel, arch, dtype, head_dim, dict(flags)))


def variant_with_flags(kernel: str, arch: int, dtype: str, head_dim: int, **flags: object) -> Variant:
    """The variant a launch with these constexpr flags compiles (every other flag off, the EVEN_*
    ones on unless given), with the table's configuration for them: heavy flags get the heavy row.
    ``variant_with_flags("backward_dkdv", 90, "fp16", 128, IS_CAUSAL=True, EVEN_N=False)``."""
    base = _make_variant(kernel, arch, dtype, head_dim, 0)
    values = {name: (True if name.startswith("EVEN_") else value) for name, value in base.flags}
    unknown = set(flags) - set(values)
    if unknown:
        raise ValueError(f"{kernel} has no constexpr flags {sorted(unknown)}; it has {sorted(values)}")
    values.update(flags)
    config = table_config(kernel, arch, dtype, head_dim, values)
    return dataclasses.replace(base, flags=_with_tma_flag(tuple(values.items()), config), config=config)


def table_config(kernel: str, arch: int, dtype: str, head_dim: int, flags: Dict[str, object]) -> KernelConfig:
    """The configuration a launch with these constexpr flags gets from the table on ``arch``
    (the heavy-call row when the flags make the call heavy, as the launchers decide)."""
    heavy = config_mod.is_heavy(flags.get("MASK_KIND", 0), flags.get("HAS_DROPOUT", False), flags.get("HAS_DW", False))
    return config_mod.table_config(_FAMILY[arch], kernel, torch.finfo(_TORCH_DTYPE[dtype]).bits, head_dim, heavy)


def default_variants(
    archs: Sequence[int] = ARCHS, kernels: Optional[Iterable[str]] = None, full: bool = False
) -> List[Variant]:
    """The table's configuration for each kernel, dtype and head-dim bucket, with the flags of the
    commonest call (no masks, no dropout, shapes that divide the blocks). Without ``full``: 16-bit
    dtypes at head dims 64, 128 and 256, fp32 and fp64 at 64."""
    out = []
    for kernel in kernels or KERNEL_FUNCTIONS:
        for arch in archs:
            for dtype in DTYPES:
                dims = HEAD_DIM_BUCKETS if full else ((64, 128, 256) if dtype in ("fp16", "bf16") else (64,))
                out.extend(variant_with_flags(kernel, arch, dtype, head_dim) for head_dim in dims)
    return out


def coverage_variants(archs: Sequence[int] = ARCHS, kernels: Optional[Iterable[str]] = None) -> List[Variant]:
    """Per kernel and architecture: every dtype, every head-dim bucket, and every constexpr flag
    both on and off (MASK_KIND 0, 1 and 2), in five compiles."""
    plan = [("fp16", 16, 0), ("bf16", 32, 1), ("fp32", 64, 2), ("fp64", 128, 3), ("fp16", 256, 1)]
    return [
        _make_variant(kernel, arch, dtype, head_dim, pattern)
        for kernel in (kernels or KERNEL_FUNCTIONS)
        for arch in archs
        for dtype, head_dim, pattern in plan
    ]


def parse_config(text: str) -> KernelConfig:
    """``"128x64x4x3"`` (block_m x block_n x num_warps x num_stages; warps and stages optional),
    with ``+tma`` at the end for tensor-descriptor loads (``KernelConfig.tma``)."""
    body, plus, extra = text.lower().partition("+")
    if plus and extra != "tma":
        raise ValueError(f"a configuration ends in nothing or '+tma', got {text!r}")
    try:
        fields = [int(x) for x in body.split("x")]
        if not 2 <= len(fields) <= 4:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"a configuration is 'BLOCK_MxBLOCK_N[xWARPS[xSTAGES]][+tma]', e.g. '128x64x4x3', got {text!r}"
        ) from None
    return KernelConfig(*fields, tma=bool(plus))


def with_configs(variants: Sequence[Variant], configs: Sequence[KernelConfig]) -> List[Variant]:
    """Each variant once per configuration, in place of the table's: what a candidate would cost in
    registers, spills and shared memory before it is timed."""
    return [dataclasses.replace(v, config=c, flags=_with_tma_flag(v.flags, c)) for v in variants for c in configs]


def _with_tma_flag(flags: Tuple[Tuple[str, object], ...], config: KernelConfig) -> Tuple[Tuple[str, object], ...]:
    """A kernel with a USE_TMA flag compiles it as its configuration says."""
    return tuple((name, config.tma if name == "USE_TMA" else value) for name, value in flags)


def _signature(v: Variant):
    fn = KERNEL_FUNCTIONS[v.kernel]
    flags = v.flag_dict
    elem = {"fp16": "fp16", "bf16": "bf16", "fp32": "fp32", "fp64": "fp64"}[v.dtype]
    acc = "fp64" if v.dtype == "fp64" else "fp32"
    bucket = config_mod.head_dim_bucket(v.head_dim)
    constexprs = dict(flags)
    constexprs.update(BLOCK_M=v.config.block_m, BLOCK_N=v.config.block_n)
    for name in ("BLOCK_DQK", "BLOCK_DV", "BLOCK_D"):
        if name in fn.arg_names:
            constexprs[name] = bucket
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            kind = _POINTER_TYPES.get(name, "q")
            if name == "mask_ptr":
                kind = {0: "q", 1: "u8", 2: "q"}[flags.get("MASK_KIND", 0)]
            signature[name] = "*" + {"q": elem, "acc": acc}.get(kind, kind)
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name.startswith("stride_") and name.endswith(_UNIT_STRIDES):
            signature[name] = "constexpr"
            constexprs[name] = 1
        elif name.startswith("stride_"):
            signature[name] = "i32"
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in _FLOAT_ARGS:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
    return signature, constexprs, attrs


def _tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def compile_variant(v: Variant) -> CompileResult:
    """Compile ``v`` for its architecture and measure the cubin."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    limit = SHARED_LIMIT[v.arch]
    signature, constexprs, attrs = _signature(v)
    try:
        compiled = triton.compile(
            ASTSource(fn=KERNEL_FUNCTIONS[v.kernel], signature=signature, constexprs=constexprs, attrs=attrs),
            target=GPUTarget("cuda", v.arch, 32),
            options={"num_warps": v.config.num_warps, "num_stages": v.config.num_stages},
        )
    except Exception as exc:  # report the failure, keep going with the other variants
        messages = []
        cause: Optional[BaseException] = exc
        while cause is not None:  # Triton nests the failing line inside each caller's error
            messages.append(f"{type(cause).__name__}: {cause}")
            cause = cause.__cause__ or cause.__context__
        return CompileResult(v, 0, 0, 0, limit, {}, error="\n".join(reversed(messages))[:4000])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as fh:
            fh.write(compiled.asm["cubin"])
        usage = subprocess.run([_tool("cuobjdump"), "-res-usage", path], capture_output=True, text=True).stdout
        sass = subprocess.run([_tool("nvdisasm"), "-c", path], capture_output=True, text=True).stdout
    registers = int(re.search(r"REG:(\d+)", usage).group(1))
    local = int(re.search(r"STACK:(\d+)", usage).group(1)) + int(re.search(r"LOCAL:(\d+)", usage).group(1))
    stores = len(_STL.findall(sass))
    loads = len(_LDL.findall(sass))
    counts = collections.Counter(m.group(1) for m in re.finditer(r"\b(" + "|".join(_MMA + _TMA) + r")\b", sass))
    return CompileResult(
        v,
        registers,
        local,
        int(compiled.metadata.shared),
        limit,
        dict(counts),
        spill_stores=stores,
        spill_loads=loads,
        loop_spills=loop_spill_count(sass),
        opcodes=opcode_counts(sass),
    )


# An instruction line of nvdisasm: "/*0080*/   @!P0 LDG.E.128 R4, desc[UR4][R2.64] ;"
_INSTRUCTION = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)")


def opcode_counts(sass: str) -> Dict[str, int]:
    """How many times each opcode (without its modifiers: ``LDG.E.128`` counts as ``LDG``) stands
    in the SASS: the instruction mix two builds of a kernel are compared by."""
    return dict(sorted(collections.Counter(_INSTRUCTION.findall(sass)).items()))


def loop_spill_count(sass: str) -> int:
    """The local-memory stores and loads (STL/LDL) that lie inside a loop of ``nvdisasm -c``
    output: between a label and a branch back to it from further down. A spill outside every loop
    (a value parked before the main loop and read back after it) costs a few instructions per
    thread; one inside the loop costs memory traffic on every iteration."""
    labels: Dict[str, int] = {}
    loops: List[Tuple[int, int]] = []
    spills: List[int] = []
    pending: List[str] = []
    for line in sass.splitlines():
        label = re.match(r"\s*(\.L_\w+):", line)
        if label:
            pending.append(label.group(1))
            continue
        instruction = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s*(.*)", line)
        if not instruction:
            continue
        address, text = int(instruction.group(1), 16), instruction.group(2)
        for name in pending:
            labels[name] = address
        pending = []
        target = re.search(r"\bBRA\b[^`;]*`\((\.L_\w+)\)", text)  # BRA, BRA.U UP0, ...
        if target and target.group(1) in labels and labels[target.group(1)] < address:
            loops.append((labels[target.group(1)], address))
        if _STL.search(text) or _LDL.search(text):
            spills.append(address)
    return sum(any(start <= a <= end for start, end in loops) for a in spills)


def compile_all(variants: Sequence[Variant], jobs: int = 0) -> List[CompileResult]:
    """Compile in parallel worker processes (``jobs=0``: one per CPU).

    Workers are spawned with ``TRITON_INTERPRET=0``: under the interpreter ``@triton.jit`` gives
    interpreter objects, which cannot be compiled, so this works from inside the test suite too.
    """
    import multiprocessing

    jobs = max(1, min(jobs or os.cpu_count() or 1, len(variants)))
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "0"
    try:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            return list(pool.map(compile_variant, variants))
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous


def _spills(r: CompileResult) -> str:
    if not r.spills:
        return "0"
    return f"{r.local_bytes} ({r.spill_stores}/{r.spill_loads}, {r.loop_spills} in loops)"


def format_table(results: Sequence[CompileResult]) -> str:
    """A Markdown table of the results."""
    lines = [
        "| kernel | arch | dtype | head dim | flags | block m x n, warps, stages | registers | "
        "spills: stack bytes (STL/LDL, in loops) | shared KiB | matrix instructions |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        v = r.variant
        if r.error:
            lines.append(
                f"| {v.kernel} | sm_{v.arch} | {v.dtype} | {v.head_dim} | {v.label()} | - | "
                f"FAILED: {r.error.splitlines()[0][:80]} | | | |"
            )
            continue
        mma = ", ".join(f"{k} {n}" for k, n in sorted(r.mma.items())) or "none (FFMA)"
        shared = f"{r.shared_bytes / 1024:.0f}" + ("" if r.shared_bytes <= r.shared_limit else " OVER LIMIT")
        lines.append(
            f"| {v.kernel} | sm_{v.arch} | {v.dtype} | {v.head_dim} | {v.label()} | "
            f"{v.config.block_m}x{v.config.block_n}, {v.config.num_warps}, {v.config.num_stages} | "
            f"{r.registers} | {_spills(r)} | {shared} | {mma} |"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attnlens.kernels.report", description=__doc__.splitlines()[0])
    parser.add_argument("--coverage", action="store_true", help="compile the flag-coverage set instead")
    parser.add_argument("--full", action="store_true", help="every dtype at every head-dim bucket")
    parser.add_argument(
        "--arch",
        type=int,
        action="append",
        choices=sorted(SHARED_LIMIT),
        help="compute capability (repeatable; default 80 and 90)",
    )
    parser.add_argument("--kernel", action="append", choices=sorted(KERNEL_FUNCTIONS), help="repeatable")
    parser.add_argument("--dtype", action="append", choices=DTYPES, help="only these dtypes (repeatable)")
    parser.add_argument("--head-dim", type=int, action="append", help="only these head dims (repeatable)")
    parser.add_argument(
        "--config",
        action="append",
        type=parse_config,
        metavar="MxNxWxS",
        help="compile with this configuration instead of the table's (repeatable): "
        "block_m x block_n x warps x stages, e.g. 128x64x4x3; "
        "add +tma for tensor-descriptor loads",
    )
    parser.add_argument("--jobs", type=int, default=0, help="parallel compiles (default: CPU count)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    archs = tuple(args.arch or ARCHS)
    variants = (
        coverage_variants(archs, args.kernel)
        if args.coverage
        else default_variants(archs, args.kernel, full=args.full or bool(args.head_dim))
    )
    if args.dtype:
        variants = [v for v in variants if v.dtype in args.dtype]
    if args.head_dim:
        variants = [v for v in variants if v.head_dim in args.head_dim]
    if not variants:
        parser.error("no variant matches the --kernel/--arch/--dtype/--head-dim selection")
    if args.config:
        variants = with_configs(variants, args.config)
    results = compile_all(variants, args.jobs)
    import triton

    print(f"attnlens kernel compile report (triton {triton.__version__}, torch {torch.__version__})\n")
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {"triton": triton.__version__, "torch": torch.__version__, "results": [r.as_dict() for r in results]},
                fh,
                indent=1,
            )
    failed = [r for r in results if not r.ok]
    spilled = [r for r in results if r.spills and r.variant.arch == 90 and not args.coverage and not args.config]
    if failed:
        print(f"\n{len(failed)} variant(s) failed to compile or exceed shared memory", file=sys.stderr)
    if spilled:
        print(f"\n{len(spilled)} default sm_90 variant(s) spill registers", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
