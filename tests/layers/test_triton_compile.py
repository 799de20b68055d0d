"""The Triton kernels compile for real GPUs, within their shared memory, in every dtype and
launch configuration: Triton's own compiler (and the ptxas shipped with it) needs no GPU, and it
catches what the interpreter cannot (unsupported constructs, block sizes that do not fit)."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

# Run in a fresh process without TRITON_INTERPRET (the kernels must be built compiled): prints
# [kernel, dtype, ieee, BLOCK_N, BLOCK_M, BLOCK_E, shared bytes] per case as JSON.
_COMPILE = r"""
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import nl_detectron.layers.triton_relu_pair_sum as kernels

capability = int(sys.argv[1])
cases = [
    (kernels._relu_pair_product_kernel, kernels.PRODUCT_CONFIGS, ("w_ptr", "out_ptr")),
    (kernels._masked_pair_dot_kernel, kernels.PAIR_DOT_CONFIGS, ("p_ptr", "q_ptr")),
]
results = []
for kernel, configs, typed in cases:
    names = kernel.arg_names
    for dtype in ("fp32", "bf16", "fp16"):
        for ieee in (True, False) if dtype == "fp32" else (False,):
            signature = {}
            for name in names:
                if name in ("N", "M", "E"):
                    signature[name] = "i32"
                elif name.endswith("_ptr"):
                    signature[name] = f"*{dtype}" if name in typed else "*fp32"
                else:
                    signature[name] = "constexpr"
            for n, m, e, warps, stages in configs:
                values = {"IEEE": ieee, "BLOCK_N": n, "BLOCK_M": m, "BLOCK_E": e}
                constants = {(names.index(k),): v for k, v in values.items()}
                compiled = triton.compile(
                    ASTSource(kernel, signature, constexprs=constants),
                    target=GPUTarget("cuda", capability, 32),
                    options={"num_warps": warps, "num_stages": stages},
                )
                results.append([kernel.__name__, dtype, ieee, n, m, e, compiled.metadata.shared])
print(json.dumps(results))
"""
# Shared memory a block may use: A100 (sm_80) 163 KiB, H100/H200 (sm_90) 227 KiB.
SHARED_LIMITS = {80: 166912, 90: 232448}


@pytest.mark.parametrize("capability", sorted(SHARED_LIMITS))
def test_every_launch_configuration_compiles_for_the_gpu(capability):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run(
        [sys.executable, "-c", _COMPILE, str(capability)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(results) == 2 * 4 * 4  # 2 kernels x (fp32 ieee/tf32, bf16, fp16) x 4 configs
    too_big = [r for r in results if r[-1] > SHARED_LIMITS[capability]]
    assert not too_big, too_big
