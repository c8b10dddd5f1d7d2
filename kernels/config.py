"""Block sizes, warps and pipeline stages for every attnlens kernel, per GPU architecture.

This is the one place launch configurations live. ``get_config`` picks an entry from the tables
below by kernel, architecture family, element size and head-dimension bucket; ``override_config``
replaces any field for a block of code (tests use it to run the GPU tile shapes through the
interpreter, and users use it to tune for their card).

The tables are starting points chosen from the compile report (registers, spills, shared memory;
see ``python -m attnlens.kernels.report``) and the usual FlashAttention-2 choices for each family.
They are not yet tuned on hardware: ``bench/NOTES.md`` records what has been measured.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Dict, Iterator, Optional, Tuple

import torch

__all__ = [
    "KernelConfig",
    "KERNELS",
    "arch_family",
    "capability_family",
    "get_config",
    "is_heavy",
    "override_config",
    "head_dim_bucket",
]

#: kernels that take a launch configuration
KERNELS = ("forward", "weights", "backward_dkdv", "backward_dq", "backward_preprocess")


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Launch configuration of one kernel.

    ``block_m`` tiles the query rows a program owns, ``block_n`` the keys streamed per step;
    both must be powers of two and at least 16 (a ``tl.dot`` smaller than 16 compiles in the
    interpreter but not for a GPU). ``tma`` (off in every table row until a GPU run shows it pays)
    uses tensor descriptors on compute capability 9.x and newer where the tensors allow it
    (``attnlens.kernels.forward.tma_eligible``): the forward reads Q, K and V through them, the
    weights kernel writes its tiles through one; the backward kernels ignore it.
    """

    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2
    tma: bool = False

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 16 or value & (value - 1):
                raise ValueError(f"KernelConfig.{name} must be a power of two >= 16, got {value!r}")
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"KernelConfig.num_warps must be 1, 2, 4, 8 or 16, got {self.num_warps!r}")
        if not isinstance(self.num_stages, int) or self.num_stages < 1:
            raise ValueError(f"KernelConfig.num_stages must be a positive int, got {self.num_stages!r}")
        if not isinstance(self.tma, bool):
            raise TypeError(f"KernelConfig.tma must be a bool, got {type(self.tma).__name__}")


def head_dim_bucket(head_dim: int) -> int:
    """The padded tile width a head dimension compiles to: the next power of two, at least 16."""
    if head_dim < 1:
        raise ValueError(f"head_dim must be >= 1, got {head_dim}")
    return max(16, 1 << (head_dim - 1).bit_length())


def capability_family(major: int, minor: int) -> str:
    """The table family of a CUDA compute capability: ``"sm90"`` (Hopper), ``"sm100"``
    (datacenter Blackwell, 10.x), ``"sm80"`` (A100), ``"sm8x"`` (other 8.x and consumer Blackwell
    12.x: mma.sync, 99 KiB of shared memory per block on most) or ``"default"`` for anything else."""
    if major == 9:
        return "sm90"
    if major == 10:  # datacenter Blackwell (B200, B300): tcgen05, 227 KiB of shared memory per block
        return "sm100"
    if (major, minor) == (8, 0):
        return "sm80"
    if major == 8 or major == 12:  # consumer Ampere/Ada/Blackwell: mma.sync, 99 KiB shared memory
        return "sm8x"
    return "default"


def arch_family(device: torch.device, interpreted: bool) -> str:
    """``"interpreter"`` for interpreted or non-CUDA launches, else ``capability_family`` of the
    device's compute capability."""
    if interpreted or device.type != "cuda":
        return "interpreter"
    return capability_family(*torch.cuda.get_device_capability(device))


# Key: (family, kernel, element bits, head-dim bucket upper bound) -> config.
# Element bits 16 covers fp16/bf16; 32 is fp32 (ieee dot products, no tensor cores); 64 is the
# gradcheck dtype. A bucket entry applies to head dims up to and including its bound.
_K = KernelConfig
_TABLE: Dict[Tuple[str, str, int, int], KernelConfig] = {}
# Rows for heavy calls (see ``get_config``), where the table's row for the commonest call spills.
_HEAVY: Dict[Tuple[str, str, int, int], KernelConfig] = {}


def _fill(family: str, kernel: str, bits: int, rows: Dict[int, KernelConfig], heavy: bool = False) -> None:
    for bound, cfg in rows.items():
        (_HEAVY if heavy else _TABLE)[(family, kernel, bits, bound)] = cfg


def table_config(family: str, kernel: str, bits: int, head_dim: int, heavy: bool = False) -> Optional[KernelConfig]:
    """The table's row for ``kernel`` in architecture ``family`` at element size ``bits`` and
    head dim ``head_dim`` (its bucket), the heavy-call row where one exists when ``heavy``;
    ``None`` when the table has none. No overrides applied: ``get_config`` applies them."""
    bucket = head_dim_bucket(head_dim)
    bounds = sorted(
        bound for (fam, ker, b, bound) in _TABLE if (fam, ker, b) == (family, kernel, bits) and bucket <= bound
    )
    if not bounds:
        return None
    key = (family, kernel, bits, bounds[0])
    return _HEAVY.get(key, _TABLE[key]) if heavy else _TABLE[key]


# The interpreter runs one program at a time with numpy and costs a few milliseconds per loop
# iteration whatever the tile size, so large tiles keep the test suite fast. Tests override these
# to small tiles (multi-block logic on short sequences) and to the GPU shapes.
for _kernel in KERNELS:
    for _bits in (16, 32, 64):
        _fill("interpreter", _kernel, _bits, {256: _K(64, 64)})

# sm_90, sm_100 and sm_80: the large-shared-memory parts. Every 16-bit entry was compiled for its
# architecture with the commonest call's flags (python -m attnlens.kernels.report --full) and with
# ragged lengths, causal masking and key padding, alone and together; every heavy entry also with
# bool and float masks, dropout and the weights' gradient, alone and in the pairs and triples
# bench/NOTES.md step 4 lists (all of them at once still spills a little). None of those keeps
# anything in a stack frame (no STL/LDL). Some sm_90 combinations with dropout do (bench/NOTES.md
# step 6: dK/dV at d<=128 with a bool mask and dropout on ragged lengths, 184 B, in the loop); the
# spill-free tiles there give up wgmma, so the rows wait for a GPU run. The rows differ where one
# architecture's ptxas spills with another's choice. fp32/fp64 rows: the commonest call only, but
# fp32 dK/dV (step 5, below).
_LARGE_SHARED_16 = {
    #                  ordinary rows per head-dim bound        heavy rows (is_heavy) where they differ
    "sm90": {
        "forward": (
            {64: _K(128, 64, 4, 3), 128: _K(128, 64, 8, 3), 256: _K(64, 32, 8, 2)},
            {64: _K(128, 64, 8, 3), 128: _K(128, 32, 8, 3)},
        ),
        "weights": ({64: _K(128, 64, 4, 2), 128: _K(128, 64, 8, 2), 256: _K(64, 64, 4, 2)}, {64: _K(128, 64, 8, 2)}),
        "backward_dkdv": (
            {64: _K(32, 128, 8, 2), 128: _K(16, 128, 8, 2), 256: _K(32, 16, 8, 2)},
            {64: _K(16, 128, 8, 2)},
        ),  # Triton 3.6 spills 16-32 B with 32x128 here
        "backward_dq": (
            {64: _K(128, 64, 8, 2), 128: _K(128, 64, 8, 2), 256: _K(64, 32, 8, 2)},
            {128: _K(128, 32, 8, 2), 256: _K(64, 16, 8, 2)},
        ),
    },
    "sm100": {  # tcgen05 (UTCHMMA), accumulators in tensor memory; 227 KiB per block
        "forward": (
            {64: _K(128, 64, 4, 3), 128: _K(128, 64, 8, 3), 256: _K(64, 64, 8, 1)},
            {64: _K(128, 32, 8, 3), 128: _K(64, 32, 8, 3)},
        ),
        "weights": ({64: _K(128, 64, 4, 2), 128: _K(64, 64, 4, 2), 256: _K(64, 64, 4, 2)}, {64: _K(64, 64, 4, 2)}),
        "backward_dkdv": ({64: _K(32, 64, 8, 2), 128: _K(32, 64, 8, 1), 256: _K(32, 16, 8, 2)}, {}),
        "backward_dq": (
            {64: _K(128, 64, 8, 2), 128: _K(128, 64, 8, 2), 256: _K(64, 32, 8, 2)},
            {64: _K(128, 32, 8, 2)},
        ),
    },
    "sm80": {
        "forward": ({64: _K(128, 64, 8, 3), 128: _K(128, 64, 8, 3), 256: _K(64, 32, 8, 2)}, {128: _K(128, 32, 8, 3)}),
        "weights": ({64: _K(128, 64, 8, 2), 128: _K(128, 64, 8, 2), 256: _K(64, 64, 4, 2)}, {256: _K(64, 64, 8, 2)}),
        "backward_dkdv": (
            {64: _K(16, 128, 8, 2), 128: _K(32, 64, 8, 2), 256: _K(32, 16, 8, 2)},
            {64: _K(32, 32, 8, 2), 128: _K(32, 32, 8, 2)},
        ),
        "backward_dq": ({64: _K(128, 32, 8, 2), 128: _K(64, 64, 8, 2), 256: _K(64, 32, 8, 2)}, {}),
    },
}


def _fill_16bit(family: str, kernels: Dict[str, Tuple[Dict[int, KernelConfig], Dict[int, KernelConfig]]]) -> None:
    """A family's 16-bit rows: per kernel (ordinary rows, heavy rows), and the preprocess kernel."""
    for kernel, (rows, heavy_rows) in kernels.items():
        _fill(family, kernel, 16, rows)
        _fill(family, kernel, 16, heavy_rows, heavy=True)
    _fill(family, "backward_preprocess", 16, {256: _K(64, 64, 4, 2)})


for _family, _kernels in _LARGE_SHARED_16.items():
    _fill_16bit(_family, _kernels)
    # fp32 (ieee dot products on FFMA, or TF32 when allowed) and fp64 (DMMA): 8 warps where 4 spill.
    # fp32 dK/dV holds the most (two accumulators, five products per step): 16x16 tiles, 16 warps
    # at d<=64 where 8 spilled with ragged lengths, masks or dropout; 8 at d<=256, where 16 spill in
    # the loop with TF32 products (bench/NOTES.md, step 5).
    for _kernel in KERNELS:
        backward = _kernel.startswith("backward")
        if _kernel == "backward_dkdv":
            warps = 8 if _family == "sm80" else 16
            _fill(_family, _kernel, 32, {64: _K(16, 16, warps, 2), 128: _K(16, 16, 8, 2), 256: _K(16, 16, 8, 1)})
        else:
            _fill(_family, _kernel, 32, {64: _K(32, 32, 8, 2), 128: _K(16, 32, 8, 2), 256: _K(16, 16, 8, 1)})
        _fill(
            _family,
            _kernel,
            64,
            {64: _K(32, 16, 8 if _kernel == "backward_dkdv" else 4, 1), 256: _K(16, 16, 8 if backward else 4, 1)},
        )

# sm8x: 99 KiB of shared memory per block, and two ptxas back ends (sm_86/89 and sm_120) that
# spill at different points; every entry was compiled for sm_86, sm_89 and sm_120 and spills on
# none, and the 16-bit rows also with the flag combinations of the large-shared-memory rows above
# (bench/NOTES.md, step 5; sm_120 spilled with ragged lengths at head dim 64). All fit except the
# fp64 backward above head dim 128, which needs more than 99 KiB at the smallest tile (the launch
# then raises a RuntimeError saying so). "default" takes these rows
# unchecked: cards older than Triton supports (Volta, Turing; only when the kernels are forced, see
# attnlens.functional.MIN_KERNEL_CAPABILITY) and any architecture newer than the families above.
_SMALL_SHARED_16 = {
    #                  ordinary rows per head-dim bound        heavy rows (is_heavy) where they differ
    "forward": ({64: _K(64, 32, 4, 3), 128: _K(128, 32, 8, 2), 256: _K(64, 32, 8, 1)}, {256: _K(64, 16, 8, 1)}),
    "weights": ({64: _K(128, 64, 8, 2), 128: _K(64, 64, 4, 2), 256: _K(64, 32, 4, 1)}, {}),
    "backward_dkdv": (
        {64: _K(16, 32, 8, 2), 128: _K(32, 64, 8, 2), 256: _K(32, 16, 8, 2)},
        {128: _K(32, 32, 8, 2), 256: _K(16, 16, 8, 2)},
    ),
    "backward_dq": (
        {64: _K(128, 32, 8, 2), 128: _K(64, 32, 4, 2), 256: _K(64, 32, 8, 1)},
        {128: _K(64, 32, 8, 2), 256: _K(32, 32, 8, 1)},
    ),
}
for _family in ("sm8x", "default"):
    _fill_16bit(_family, _SMALL_SHARED_16)
    for _kernel in KERNELS:
        dkdv, dq = _kernel == "backward_dkdv", _kernel == "backward_dq"
        # fp32 dK/dV: 16x16 tiles at d<=128 (bench/NOTES.md, step 5)
        _fill(
            _family,
            _kernel,
            32,
            {
                64: _K(32, 32, 8, 2),
                128: _K(16, 16, 8, 1) if dkdv else _K(16, 32, 8, 2),
                256: _K(16, 16, 4 if dq else 8, 1),
            },
        )
        _fill(_family, _kernel, 64, {64: _K(16, 16, 8, 1) if dkdv else _K(32, 16, 4, 1), 256: _K(16, 16, 8, 1)})

_OVERRIDES: Dict[Optional[str], Dict[str, object]] = {}


def is_heavy(mask_kind: int, has_dropout: bool, has_dw: bool = False) -> bool:
    """Whether a call holds more per-element state in its kernels than the commonest call: a mask
    tensor (``mask_kind`` 1 bool, 2 float), dropout (its random numbers), or the weights' gradient
    in the backward. Causal masking, key padding and ragged lengths are not heavy: the table's
    ordinary rows are compiled spill-free with them."""
    return bool(mask_kind) or bool(has_dropout) or bool(has_dw)


def get_config(
    kernel: str, device: torch.device, dtype: torch.dtype, head_dim: int, interpreted: bool = False, heavy: bool = False
) -> KernelConfig:
    """The launch configuration for ``kernel`` on ``device`` for inputs of ``dtype`` and the
    larger of the query/key and value head dimensions ``head_dim``.

    ``heavy`` (``is_heavy``: a mask tensor, dropout or the weights' gradient) selects the
    heavy-call row where the table has one: a configuration that stays spill-free with those
    flags compiled in, where the commonest call's row would spill.

    Order of precedence: ``override_config`` (innermost wins), then the environment variable
    ``ATTNLENS_CONFIG_<KERNEL>="block_m,block_n,num_warps,num_stages"`` (``,tma`` at the end turns
    on ``KernelConfig.tma``), then the table.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    bits = torch.finfo(dtype).bits
    family = arch_family(device, interpreted)
    cfg = table_config(family, kernel, bits, head_dim, heavy)
    if cfg is None:
        raise ValueError(f"no {kernel} configuration for {family}, {dtype}, head_dim={head_dim}")
    env = os.environ.get(f"ATTNLENS_CONFIG_{kernel.upper()}")
    if env:
        parts = [x.strip() for x in env.split(",")]
        tma = parts[-1].lower() == "tma"
        try:
            fields = [int(x) for x in (parts[:-1] if tma else parts)]
            if not 1 <= len(fields) <= 4:
                raise ValueError
        except ValueError:
            raise ValueError(
                f"ATTNLENS_CONFIG_{kernel.upper()} must be comma-separated ints "
                f"'block_m,block_n[,num_warps[,num_stages]]', optionally ending in ',tma', "
                f"got {env!r}"
            ) from None
        cfg = dataclasses.replace(cfg, **dict(zip(("block_m", "block_n", "num_warps", "num_stages"), fields)))
        if tma:
            cfg = dataclasses.replace(cfg, tma=True)
    for key in (None, kernel):
        if key in _OVERRIDES:
            cfg = dataclasses.replace(cfg, **_OVERRIDES[key])
    return cfg


@contextlib.contextmanager
def override_config(kernel: Optional[str] = None, **fields: object) -> Iterator[None]:
    """Replace configuration fields for every kernel (``kernel=None``) or one kernel::

        with override_config(block_m=16, block_n=16):
            attnlens.scaled_dot_product_attention(q, k, v)

    Fields: ``block_m``, ``block_n``, ``num_warps``, ``num_stages``, ``tma``.
    """
    if kernel is not None and kernel not in KERNELS:
        raise ValueError(f"kernel must be None or one of {KERNELS}, got {kernel!r}")
    allowed = {f.name for f in dataclasses.fields(KernelConfig)}
    unknown = set(fields) - allowed
    if unknown:
        raise TypeError(f"override_config got unknown fields {sorted(unknown)}; expected some of {sorted(allowed)}")
    dataclasses.replace(KernelConfig(16, 16), **fields)  # validate values now, not at launch
    previous = _OVERRIDES.get(kernel)
    _OVERRIDES[kernel] = {**(previous or {}), **fields}
    try:
        yield
    finally:
        if previous is None:
            del _OVERRIDES[kernel]
        else:
            _OVERRIDES[kernel] = previous
