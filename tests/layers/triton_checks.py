"""What the Triton tests share: where the kernels run, tolerances, float64 comparisons.

Without a GPU the kernels run in Triton's interpreter (tests/conftest.py), which checks their
indexing, masking and arithmetic; test_triton_compile.py builds them for GPUs. With a GPU they
run compiled on it and carry the ``cuda`` mark (``pytest -m cuda``).
"""

import contextlib

import pytest
import torch

from nl_detectron.layers.triton_support import INTERPRETED, triton_runs_on

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The module-level mark of every Triton test file; fp32 results are compared with float64, so
# CUDA's convolutions and matmuls run in full fp32 precision (conftest.py).
MARKS = [
    pytest.mark.skipif(
        not triton_runs_on(DEVICE),
        reason=f"Triton cannot run on {DEVICE} here (no triton package, or on the CPU no "
        "working interpreter: tests/conftest.py)",
    ),
    pytest.mark.usefixtures("ieee_fp32"),
    *([pytest.mark.cuda] if DEVICE == "cuda" else []),
]
# Relative to the reference's largest entry: bf16 and fp16 round the tiles they multiply to 8
# and 11 bits.
TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
DTYPE_IDS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def values_and_grads(fn, inputs, cotangent):
    """[fn(*inputs), d(fn . cotangent)/d input for each input]; the cotangent goes to fn's
    device."""
    inputs = [t.detach().requires_grad_() for t in inputs]
    out = fn(*inputs)
    cotangent = cotangent.to(out.device)
    grads = torch.autograd.grad((out.to(cotangent.dtype) * cotangent).sum(), inputs)
    return [out, *grads]


def assert_close(actual, expected, tol, floor=1e-12):
    """Each max |actual - expected| within ``tol`` of max |expected| (at least ``floor``)."""
    for got, want in zip(actual, expected):
        scale = want.abs().max().clamp_min(floor)
        error = (got.cpu().double() - want.cpu()).abs().max() / scale
        assert error < tol, f"relative error {error:.3g} >= {tol:g}"


def for_each_launch_configuration(*config_lists):
    """Runs the decorated test(index, dtype) once per dtype and per index into ``config_lists``
    (see :func:`one_launch_configuration`), where the kernels are compiled (a GPU): the
    interpreter runs one block size of its own."""

    def decorate(test):
        test = pytest.mark.parametrize("dtype", list(TOL), ids=DTYPE_IDS.get)(test)
        test = pytest.mark.parametrize("index", range(max(map(len, config_lists))))(test)
        reason = "the interpreter runs its own block sizes, not the launch configurations"
        return pytest.mark.skipif(INTERPRETED, reason=reason)(test)

    return decorate


@contextlib.contextmanager
def one_launch_configuration(index, *kernels):
    """The autotuned ``kernels`` each restricted to entry ``index`` (modulo its length) of their
    launch configurations: launches run that configuration, untimed."""
    saved = [(kernel.configs, kernel.cache) for kernel in kernels]
    for kernel in kernels:
        kernel.configs, kernel.cache = [kernel.configs[index % len(kernel.configs)]], {}
    try:
        yield
    finally:
        for kernel, (configs, cache) in zip(kernels, saved):
            kernel.configs, kernel.cache = configs, cache
