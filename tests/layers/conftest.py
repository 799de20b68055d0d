"""Fixtures of the block, path and kernel tests."""

import pytest

from nl_detectron.layers.attention_policy import cuda_fp32_precision


@pytest.fixture
def ieee_fp32():
    """CUDA's fp32 convolutions and matmuls in full precision during the test, restored after.

    cuDNN runs fp32 convolutions in TF32 by default on Ampere and later GPUs (a 10-bit mantissa:
    errors of 1e-4 to 1e-3), and the Triton kernels follow torch's TF32 setting; an fp32 result
    compared with float64 must measure the code under test, not that. No effect on the CPU.
    """
    with cuda_fp32_precision(tf32=False):
        yield
