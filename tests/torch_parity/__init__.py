"""PyTorch's own tests of scaled_dot_product_attention and nn.MultiheadAttention, ported to attnlens.

Sources (re-written for attnlens, not copied): ``test/test_transformers.py`` (TestTransformers'
SDPA test, TestSDPA, TestSDPAFailureModes, TestAttnBias), ``test/nn/test_multihead_attention.py``,
and the samples the torch wheel ships in ``torch.testing._internal`` (the OpInfo samples of
``scaled_dot_product_attention`` and ``multi_head_attention_forward``, the ModuleInfo samples of
``nn.MultiheadAttention``). Those modules need ``expecttest``, which is not a dependency here, so
the samples are re-created in ``common.py`` with the same shapes and options.

Each test compares attnlens with torch itself (or with torch's reference maths) using torch's
assertion and tolerances; each deliberate difference has a test in ``test_differences.py`` that
asserts attnlens's documented behaviour (see docs/torch-compat.md). The kernels run through
Triton's interpreter on a CPU, so the kernel path covers a representative subset of each sweep and
the plain-PyTorch path the rest.
"""
