"""Launch configurations: which table row a card gets, how users replace it, and what a launch
that does not fit the card says.

No GPU is needed: ``torch.cuda.get_device_capability`` is replaced so that every architecture
family's rows are looked up as they would be on that card.
"""

from __future__ import annotations

import pytest
import torch

import attnlens
from attnlens.kernels import KernelConfig, get_config, launch, override_config
from attnlens.kernels import config as config_mod

CUDA = torch.device("cuda")


@pytest.fixture
def capability(monkeypatch):
    """Pretend the CUDA device has the compute capability given to the returned setter."""

    def set_capability(major: int, minor: int) -> None:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, minor))

    return set_capability


@pytest.mark.parametrize(
    "cc, family",
    [
        ((9, 0), "sm90"),
        ((8, 0), "sm80"),
        ((8, 6), "sm8x"),
        ((8, 7), "sm8x"),
        ((8, 9), "sm8x"),
        ((12, 0), "sm8x"),
        ((10, 0), "sm100"),
        ((10, 3), "sm100"),
        ((7, 5), "default"),
        ((11, 0), "default"),
    ],
)
def test_architecture_family(capability, cc, family):
    capability(*cc)
    assert config_mod.arch_family(CUDA, interpreted=False) == family
    assert config_mod.arch_family(CUDA, interpreted=True) == "interpreter"
    assert config_mod.arch_family(torch.device("cpu"), interpreted=False) == "interpreter"


@pytest.mark.parametrize("cc", [(9, 0), (10, 0), (8, 0), (8, 6), (12, 0), (7, 5)])
def test_every_kernel_dtype_and_head_dim_has_a_row(capability, cc):
    capability(*cc)
    for kernel in config_mod.KERNELS:
        for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            for head_dim in (1, 16, 17, 64, 65, 96, 128, 129, 200, 256):
                for heavy in (False, True):
                    cfg = get_config(kernel, CUDA, dtype, head_dim, heavy=heavy)
                    assert isinstance(cfg, KernelConfig), (kernel, dtype, head_dim, heavy)
    with pytest.raises(ValueError, match="head_dim=257"):
        get_config("forward", CUDA, torch.float16, 257)
    with pytest.raises(ValueError, match="kernel must be one of"):
        get_config("fwd", CUDA, torch.float16, 64)


def test_sm8x_rows_fit_99_kib_where_sm80_rows_do_not(capability):
    """The consumer cards' rows differ from the A100's where the A100's would not fit 99 KiB of
    shared memory (dQ at head dim 256) or spill there (forward at head dim 256)."""
    capability(8, 0)
    a100 = get_config("backward_dq", CUDA, torch.float16, 256)
    capability(8, 6)
    rtx = get_config("backward_dq", CUDA, torch.float16, 256)
    assert (a100.num_stages, rtx.num_stages) == (2, 1)
    capability(12, 0)
    assert get_config("backward_dq", CUDA, torch.float16, 256) == rtx


def test_heavy_call_rows(capability):
    """A heavy call (mask tensor, dropout, weights' gradient) gets its own row where the table has
    one, and the ordinary row elsewhere; every heavy row sits beside an ordinary row of the same
    family, kernel, element size and head-dim bucket."""
    assert not config_mod.is_heavy(0, False) and not config_mod.is_heavy(0, False, False)
    assert config_mod.is_heavy(1, False) and config_mod.is_heavy(2, False)
    assert config_mod.is_heavy(0, True) and config_mod.is_heavy(0, False, True)
    assert config_mod._HEAVY and set(config_mod._HEAVY) <= set(config_mod._TABLE)
    capability(9, 0)
    assert get_config("forward", CUDA, torch.float16, 64, heavy=True) == KernelConfig(128, 64, 8, 3)
    assert get_config("forward", CUDA, torch.float16, 64) == KernelConfig(128, 64, 4, 3)
    assert get_config("forward", CUDA, torch.float16, 128, heavy=True) == KernelConfig(128, 32, 8, 3)
    # no heavy row: the ordinary one
    weights = get_config("weights", CUDA, torch.float16, 128)
    assert get_config("weights", CUDA, torch.float16, 128, heavy=True) == weights
    assert get_config("forward", CUDA, torch.float32, 64, heavy=True) == get_config("forward", CUDA, torch.float32, 64)
    capability(12, 0)  # the consumer cards have heavy rows too (bench/NOTES.md step 5)
    assert get_config("backward_dkdv", CUDA, torch.float16, 128, heavy=True) == KernelConfig(32, 32, 8, 2)
    assert get_config("backward_dkdv", CUDA, torch.float16, 128) == KernelConfig(32, 64, 8, 2)
    capability(9, 0)
    with override_config("forward", num_warps=4):  # overrides apply to heavy rows too
        assert get_config("forward", CUDA, torch.float16, 64, heavy=True).num_warps == 4


@pytest.mark.parametrize(
    "call, heavy",
    [
        (lambda q: attnlens.scaled_dot_product_attention(q, q, q), False),
        (lambda q: attnlens.scaled_dot_product_attention(q, q, q, is_causal=True), False),
        (lambda q: attnlens.scaled_dot_product_attention(q, q, q, attn_mask=torch.ones(8, 8, dtype=torch.bool)), True),
        (lambda q: attnlens.scaled_dot_product_attention(q, q, q, dropout_p=0.5), True),
    ],
)
def test_launchers_ask_for_heavy_rows(monkeypatch, call, heavy):
    """The forward and backward launchers pass ``heavy`` as ``is_heavy`` says for the call; the
    backward also when the weights' gradient is in the loss."""
    from attnlens.kernels import backward, forward

    seen = []

    def recording(kernel, *args, **kwargs):
        seen.append((kernel, kwargs.get("heavy")))
        return get_config(kernel, *args, **kwargs)

    monkeypatch.setattr(forward, "get_config", recording)
    monkeypatch.setattr(backward, "get_config", recording)
    q = torch.randn(1, 2, 8, 16, requires_grad=True)
    with attnlens.use_backend("kernels"):
        call(q).sum().backward()
    assert {k for k, _ in seen} == {"forward", "backward_preprocess", "backward_dkdv", "backward_dq"}
    assert all(h is heavy for _, h in seen), seen
    if not heavy:  # the same call with the weights in the loss: a heavy backward
        seen.clear()
        with attnlens.use_backend("kernels"):
            out, w = _with_weights(q)
            (out.sum() + w.square().sum()).backward()
        assert ("forward", False) in seen and ("backward_dkdv", True) in seen and ("backward_dq", True) in seen


def _with_weights(q):
    return attnlens.scaled_dot_product_attention(q, q, q, return_weights=True)


def test_environment_and_override_precedence(capability, monkeypatch):
    capability(9, 0)
    table = get_config("forward", CUDA, torch.float16, 64)
    monkeypatch.setenv("ATTNLENS_CONFIG_FORWARD", "64,32")
    from_env = get_config("forward", CUDA, torch.float16, 64)
    assert (from_env.block_m, from_env.block_n) == (64, 32)
    assert (from_env.num_warps, from_env.num_stages) == (table.num_warps, table.num_stages)
    with override_config(num_warps=8), override_config("forward", block_n=16):
        cfg = get_config("forward", CUDA, torch.float16, 64)
        assert (cfg.block_m, cfg.block_n, cfg.num_warps) == (64, 16, 8)
        assert get_config("weights", CUDA, torch.float16, 64).num_warps == 8
    assert get_config("forward", CUDA, torch.float16, 64) == from_env
    monkeypatch.setenv("ATTNLENS_CONFIG_FORWARD", "128,64,8,3,tma")
    assert get_config("forward", CUDA, torch.float16, 64) == KernelConfig(128, 64, 8, 3, tma=True)
    monkeypatch.setenv("ATTNLENS_CONFIG_FORWARD", "64;32")
    with pytest.raises(ValueError, match="ATTNLENS_CONFIG_FORWARD.*'64;32'"):
        get_config("forward", CUDA, torch.float16, 64)
    monkeypatch.setenv("ATTNLENS_CONFIG_FORWARD", "64,32,4,2,1")
    with pytest.raises(ValueError, match="ATTNLENS_CONFIG_FORWARD"):
        get_config("forward", CUDA, torch.float16, 64)


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match="block_n must be a power of two >= 16, got 48"):
        KernelConfig(64, 48)
    with pytest.raises(ValueError, match="num_warps"):
        KernelConfig(64, 64, 3)
    with pytest.raises(TypeError, match="tma must be a bool"):
        KernelConfig(64, 64, tma=1)
    with pytest.raises(TypeError, match="unknown fields"):
        with override_config(block_k=16):
            pass
    with pytest.raises(ValueError, match="kernel must be None or one of"):
        with override_config("fwd", block_m=16):
            pass


def _out_of_resources():
    return launch.OutOfResources(133120, 101376, "shared memory")


def test_out_of_resources_names_the_kernel_and_the_remedy():
    cfg = KernelConfig(16, 16, 8, 1)
    with pytest.raises(RuntimeError) as info:
        with launch.explain_resources("backward_dq", cfg, torch.float16, 256):
            raise _out_of_resources()
    message = str(info.value)
    assert "backward_dq" in message and "block_m=16" in message and "133120 > 101376" in message
    assert "override_config('backward_dq'" in message and "ATTNLENS_CONFIG_BACKWARD_DQ" in message
    assert "fp64" not in message
    assert isinstance(info.value.__cause__, launch.OutOfResources)
    with pytest.raises(RuntimeError, match="fp64 backward above head dim 128.*use_backend.'torch'"):
        with launch.explain_resources("backward_dkdv", cfg, torch.float64, 200):
            raise _out_of_resources()


class _Refusing:
    """Stands in for a kernel whose launch needs more shared memory than the card has."""

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            raise _out_of_resources()

        return run


@pytest.mark.parametrize(
    "module, call, kernel",
    [
        ("forward", lambda q: attnlens.scaled_dot_product_attention(q, q, q), "forward"),
        ("backward", lambda q: attnlens.scaled_dot_product_attention(q, q, q).sum().backward(), "backward_preprocess"),
    ],
)
def test_a_launch_that_does_not_fit_raises_runtime_error(monkeypatch, module, call, kernel):
    import importlib

    mod = importlib.import_module(f"attnlens.kernels.{module}")
    monkeypatch.setattr(mod, "launchable", lambda fn: _Refusing())
    q = torch.randn(1, 2, 8, 16, requires_grad=True)
    with attnlens.use_backend("kernels"), pytest.raises(RuntimeError, match=f"the {kernel} kernel"):
        call(q)
