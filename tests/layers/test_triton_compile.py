"""The Triton kernels compile for real GPUs, within their shared memory, in every dtype and
launch configuration: Triton's own compiler (and the ptxas shipped with it) needs no GPU, and it
catches what the interpreter cannot (unsupported constructs, block sizes that do not fit)."""

import json
import os
import subprocess
import sys

import pytest

from nl_detectron.layers.triton_relu_pair_sum import PAIR_DOT_CONFIGS, PRODUCT_CONFIGS
from nl_detectron.layers.triton_softmax_attention import BACKWARD_CONFIGS, FORWARD_CONFIGS

pytest.importorskip("triton")

# The launch configurations of every kernel, once each.
CONFIGS = PRODUCT_CONFIGS + PAIR_DOT_CONFIGS + FORWARD_CONFIGS + 2 * BACKWARD_CONFIGS

# Run in a fresh process without TRITON_INTERPRET (the kernels must be built compiled): prints
# [kernel, dtype, constexpr values, shared bytes] per case as JSON.
_COMPILE = r"""
import itertools, json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from nl_detectron.layers import triton_relu_pair_sum as pair, triton_softmax_attention as attn

capability = int(sys.argv[1])
# (kernel, its launch configurations, pointers that are always fp32, other constexpr choices)
cases = [
    (pair._relu_pair_product_kernel, pair.PRODUCT_CONFIGS, ("x_ptr", "y_ptr"), {}),
    (pair._masked_pair_dot_kernel, pair.PAIR_DOT_CONFIGS, ("x_ptr", "y_ptr", "out_ptr"), {}),
    (attn._attention_forward_kernel, attn.FORWARD_CONFIGS, ("lse_ptr",), {}),
    (
        attn._attention_backward_kv_kernel,
        attn.BACKWARD_CONFIGS,
        ("lse_ptr", "delta_ptr"),
        {"WITH_KEYS": (True, False)},
    ),
    (attn._attention_backward_q_kernel, attn.BACKWARD_CONFIGS, ("lse_ptr", "delta_ptr"), {}),
]
results = []
for kernel, configs, fp32_pointers, choices in cases:
    names = kernel.arg_names
    for dtype in ("fp32", "bf16", "fp16"):
        signature = {}
        for name in names:
            if name.endswith("_ptr"):
                signature[name] = "*fp32" if name in fp32_pointers else f"*{dtype}"
            elif name in ("N", "M", "D", "E"):
                signature[name] = "i32"
            else:
                signature[name] = "constexpr"
        ieee_choices = (True, False) if dtype == "fp32" else (False,)
        for ieee, config, *chosen in itertools.product(ieee_choices, configs, *choices.values()):
            n, m, w, warps, stages = config
            values = {"IEEE": ieee, "BLOCK_N": n, "BLOCK_M": m, "BLOCK_W": w}
            values.update(zip(choices, chosen))
            constants = {(names.index(k),): v for k, v in values.items()}
            compiled = triton.compile(
                ASTSource(kernel, signature, constexprs=constants),
                target=GPUTarget("cuda", capability, 32),
                options={"num_warps": warps, "num_stages": stages},
            )
            results.append([kernel.__name__, dtype, values, compiled.metadata.shared])
print(json.dumps(results))
"""
# Shared memory a block may use: A100 (sm_80) 163 KiB, H100/H200 (sm_90) 227 KiB.
SHARED_LIMITS = {80: 166912, 90: 232448}


def test_every_launch_configuration_compiles_for_the_gpus(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile afresh, not from an earlier run's cache
    # One compiler process per architecture, side by side (each is single-threaded).
    runs = {
        capability: subprocess.Popen(
            [sys.executable, "-c", _COMPILE, str(capability)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for capability in SHARED_LIMITS
    }
    for capability, run in runs.items():
        stdout, stderr = run.communicate(timeout=900)
        assert run.returncode == 0, stderr[-3000:]
        results = json.loads(stdout.strip().splitlines()[-1])
        # every configuration in fp32 (full precision and TF32), bf16 and fp16; the backward of
        # K and V also with and without dK
        assert len(results) == 4 * (len(CONFIGS) + len(BACKWARD_CONFIGS))
        too_big = [r for r in results if r[-1] > SHARED_LIMITS[capability]]
        assert not too_big, (capability, too_big)
