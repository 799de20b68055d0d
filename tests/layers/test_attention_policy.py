"""The path policy as a pure function: every row of its table, without the hardware.

Shapes are the README's stages at batch 2: res4 = N 4200 (C 1024, C' 512), res3 = N 16800
(C 512, C' 256); their fp32 affinities are 141 MB and 2.26 GB.
"""

import dataclasses

import pytest
import torch

from nl_detectron.layers.attention_policy import (
    CHUNKED,
    CHUNKED_CONCAT,
    CONCATENATION,
    CPU_DEFAULT_BUDGET_MB,
    EFFICIENT,
    FUSED,
    KEPT,
    MIN_CHUNK_ROWS,
    SOFTMAX,
    SORTED_CONCAT,
    TRITON,
    TRITON_CONCAT,
    AggregationCall,
    PathChoice,
    budget_bytes,
    check_budget_mb,
    choose_path,
    compute_dtype,
    default_budget_mb,
    peak_bytes,
    tf32_allowed,
    working_bytes,
)

MiB = 2**20
H200_DEFAULT = int(143771 * MiB / 16)  # a sixteenth of the H200's 140.4 GiB


def call(stage="res4", variant="embedded", **changes):
    n, d = {"res4": (4200, 512), "res3": (16800, 256)}[stage]
    widths = {"embedded": (d, d), "gaussian": (2 * d, d), "wide": (512, 512)}[variant]
    facts = {
        "kind": SOFTMAX,
        "device_type": "cuda",
        "dtype": torch.float32,
        "batch": 2,
        "num_queries": n,
        "num_keys": n,
        "query_width": widths[0],
        "value_width": widths[1],
        "needs_grad": True,
        "budget_bytes": H200_DEFAULT,
    }
    facts.update(changes)
    return AggregationCall(**facts)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("tf32", [False, True], ids=["ieee", "tf32"])
@pytest.mark.parametrize("budget_mb", [64, 1024, None], ids=["64MiB", "1GiB", "H200-default"])
@pytest.mark.parametrize("stage", ["res4", "res3"])
def test_the_efficient_candidate_is_never_chosen_and_holds_nothing_square(
    stage, budget_mb, tf32, dtype
):
    # A GPU run decides whether the Gaussian over its budget should take it; until then the
    # policy's choices stay as they are. Its kernel holds no N x M buffer.
    budget = H200_DEFAULT if budget_mb is None else budget_mb * MiB
    for variant in ("embedded", "gaussian", "wide"):
        facts = call(stage, variant, budget_bytes=budget, tf32=tf32, dtype=dtype)
        assert choose_path(facts).path != EFFICIENT
        whole = PathChoice(EFFICIENT, facts.num_queries)
        assert peak_bytes(facts, whole) == working_bytes(facts)


def test_affinity_sizes_are_those_of_the_stages():
    assert call("res4").affinity_bytes == 2 * 4200 * 4200 * 4  # 141 MB
    assert call("res3", dtype=torch.bfloat16).affinity_bytes == 2 * 16800 * 16800 * 2


def test_working_bytes_count_the_per_position_tensors():
    # res3 fp32 embedded Gaussian, B 2, N = M = 16800, D = E = 256, one [B, N, 256] tensor 32.8 MiB:
    # Q, K, V, out; dO twice, dQ; dK, dV -> 9 of them.
    one = 2 * 16800 * 256 * 4
    assert working_bytes(call("res3")) == 9 * one
    assert working_bytes(call("res3", needs_grad=False)) == 4 * one
    # DNL's unary term: its sum with y and the gradient of V it sends, in a backward.
    assert working_bytes(call("res3", unary=True)) == 11 * one
    assert working_bytes(call("res3", unary=True, needs_grad=False)) == 4 * one
    # Gaussian without sub-sampling: the keys are the queries (D = 512: two of the units above).
    assert working_bytes(call("res3", "gaussian", shared_keys=True, needs_grad=False)) == 4 * one
    # Concatenation: theta, phi, V, out; dO twice, dV; plus the scalar terms a, b and their grads.
    concat = call("res3", kind=CONCATENATION)
    assert working_bytes(concat) == 7 * one + 2 * 2 * 2 * 16800 * 4
    # bf16: Q, K, V, out, dO twice, dQ in bf16, the sums of dK and dV in fp32.
    half = 2 * 16800 * 256 * 2
    assert working_bytes(call("res3", dtype=torch.bfloat16)) == 7 * half + 2 * (2 * half)


def test_paths_add_their_own_per_position_tensors():
    one = 2 * 16800 * 256 * 4
    facts = call("res3", budget_bytes=2**40, needs_grad=False)
    # A forward alone holds the scaled queries beside the block's own on the kept and chunked
    # paths; the fused path holds nothing more.
    assert peak_bytes(facts, PathChoice(FUSED, 16800)) == 4 * one
    chunk = 128 * 2 * 16800 * 4
    assert peak_bytes(facts, PathChoice(CHUNKED, 128)) == 5 * one + chunk
    # The CPU's fused path zero-pads the Gaussian's value and output to the keys' width (512).
    gaussian = call("res3", "gaussian", device_type="cpu", shared_keys=True, needs_grad=False)
    assert peak_bytes(gaussian, PathChoice(FUSED, 16800)) == 4 * one + 2 * 2 * one
    on_cuda = dataclasses.replace(gaussian, device_type="cuda")
    assert peak_bytes(on_cuda, PathChoice(FUSED, 16800)) == 4 * one


def test_16_bit_paths_hold_fp32_chunks_and_copies():
    bf16 = call("res3", dtype=torch.bfloat16, budget_bytes=2**40)
    rows, m = 1024, 16800
    # chunked: two fp32 [B, rows, M] chunks in a backward, and a chunk's dK / dV product in fp32
    # on CUDA, which multiplies 16-bit matrices into fp32 ...
    product = 2 * m * 256 * 4
    chunked = peak_bytes(bf16, PathChoice(CHUNKED, rows))
    assert chunked == working_bytes(bf16) + product + rows * 2 * m * 2 * 4
    # ... where the CPU copies the operands of those products to fp32 instead (K and V whole, a
    # chunk of queries or gradients per row) and rounds the product to bf16.
    cpu = dataclasses.replace(bf16, device_type="cpu")
    copies = 4 * 2 * m * (256 + 256) + rows * 2 * 4 * 256
    assert peak_bytes(cpu, PathChoice(CHUNKED, rows)) == chunked - product // 2 + copies
    # kept: the bf16 P beside two fp32 chunks of a quarter of its rows, two bf16 affinities.
    assert peak_bytes(bf16, PathChoice(KEPT, m)) == working_bytes(bf16) + 2 * bf16.affinity_bytes


# (description, call, expected path); one row per line of the module's table, and its edges.
CPU_DEFAULT = int(CPU_DEFAULT_BUDGET_MB * MiB)
ROWS = [
    ("traced: one SDPA call", call("res3", tracing=True), FUSED),
    ("traced on the CPU", call("res4", device_type="cpu", tracing=True), FUSED),
    ("compiled on CUDA: one SDPA call", call("res4", tracing=True, compiled=True), FUSED),
    (
        "compiled on the CPU, res4 training: fused (kept is no faster compiled)",
        call("res4", device_type="cpu", budget_bytes=CPU_DEFAULT, tracing=True, compiled=True),
        FUSED,
    ),
    (
        "compiled on the CPU, Gaussian res4 training: kept (fused would pad its value)",
        call(
            "res4",
            "gaussian",
            device_type="cpu",
            budget_bytes=CPU_DEFAULT,
            shared_keys=True,
            tracing=True,
            compiled=True,
        ),
        KEPT,
    ),
    (
        "compiled on the CPU, Gaussian over its budget: fused",
        call(
            "res4",
            "gaussian",
            device_type="cpu",
            budget_bytes=140 * MiB,
            tracing=True,
            compiled=True,
        ),
        FUSED,
    ),
    (
        "CPU res4 training keeps its 141 MB affinity by default",
        call("res4", device_type="cpu", budget_bytes=CPU_DEFAULT),
        KEPT,
    ),
    (
        "CPU res4 inference: the flash kernel, nothing kept",
        call("res4", device_type="cpu", budget_bytes=CPU_DEFAULT, needs_grad=False),
        FUSED,
    ),
    (
        "CPU Gaussian inference keeps (the fused kernel would pad its value)",
        call("res4", "gaussian", device_type="cpu", budget_bytes=CPU_DEFAULT, needs_grad=False),
        KEPT,
    ),
    (
        "CPU res4 Gaussian training keeps by default too",
        call("res4", "gaussian", device_type="cpu", budget_bytes=CPU_DEFAULT),
        KEPT,
    ),
    (
        "CPU res4 with a budget below the affinity keeps none",
        call("res4", device_type="cpu", budget_bytes=140 * MiB),
        FUSED,
    ),
    (
        "CPU res4 with a budget of twice the affinity but not its operands keeps none",
        call("res4", device_type="cpu", budget_bytes=2 * 2 * 4200 * 4200 * 4),
        FUSED,
    ),
    (
        "CPU res3 training: too large, flash",
        call("res3", device_type="cpu", budget_bytes=CPU_DEFAULT),
        FUSED,
    ),
    ("CUDA bf16 res3, head 256: flash", call("res3", dtype=torch.bfloat16), FUSED),
    ("CUDA fp16 res3, head 256: flash", call("res3", dtype=torch.float16), FUSED),
    (
        "CUDA bf16 res3 flash even under a tiny budget",
        call("res3", dtype=torch.bfloat16, budget_bytes=MiB),
        FUSED,
    ),
    ("CUDA bf16 res4, head 512: kept", call("res4", dtype=torch.bfloat16), KEPT),
    (
        "CUDA bf16 Gaussian res3 (512 vs 256): kept",
        call("res3", "gaussian", dtype=torch.bfloat16),
        KEPT,
    ),
    ("CUDA fp32 res4: kept", call("res4"), KEPT),
    ("CUDA TF32 res4: kept", call("res4", tf32=True), KEPT),
    ("CUDA fp32 res3 under the H200 default: kept", call("res3"), KEPT),
    ("CUDA fp32 Gaussian res3: kept", call("res3", "gaussian"), KEPT),
    ("CUDA inference fp32 res3: kept", call("res3", needs_grad=False), KEPT),
    (
        "CUDA fp32 res3 under 1 GiB: memory-efficient SDPA",
        call("res3", budget_bytes=1024 * MiB),
        FUSED,
    ),
    (
        "CUDA TF32 res3 under 1 GiB: chunked",
        call("res3", tf32=True, budget_bytes=1024 * MiB),
        CHUNKED,
    ),
    (
        "CUDA fp32 Gaussian res3 under 1 GiB: chunked, never a padded value",
        call("res3", "gaussian", budget_bytes=1024 * MiB),
        CHUNKED,
    ),
    (
        "CUDA bf16 res4 head 512 under 64 MiB: chunked",
        call("res4", dtype=torch.bfloat16, budget_bytes=64 * MiB),
        CHUNKED,
    ),
    (
        "CUDA fp32 res4 head 512 under 64 MiB: no memory-efficient kernel, chunked",
        call("res4", budget_bytes=64 * MiB),
        CHUNKED,
    ),
    (
        "another accelerator: no flash assumed, kept when it fits",
        call("res3", dtype=torch.bfloat16, device_type="mps"),
        KEPT,
    ),
    (
        "another accelerator over budget: chunked",
        call("res3", device_type="mps", budget_bytes=64 * MiB),
        CHUNKED,
    ),
    (
        "concatenation on the CPU: sorted",
        call("res3", kind=CONCATENATION, device_type="cpu"),
        SORTED_CONCAT,
    ),
    ("concatenation traced: sorted", call("res3", kind=CONCATENATION, tracing=True), SORTED_CONCAT),
    ("concatenation on CUDA: chunked broadcast", call("res4", kind=CONCATENATION), CHUNKED_CONCAT),
    ("asking for Triton on CUDA", call("res3", triton=True, budget_bytes=MiB), TRITON),
    ("asking for Triton in bf16", call("res3", triton=True, dtype=torch.bfloat16), TRITON),
    (
        "asking for Triton, interpreted on the CPU",
        call("res4", triton=True, device_type="cpu"),
        TRITON,
    ),
    ("asking for Triton, traced: one SDPA call", call("res4", triton=True, tracing=True), FUSED),
    (
        "concatenation asking for Triton on CUDA",
        call("res3", kind=CONCATENATION, triton=True, budget_bytes=MiB),
        TRITON_CONCAT,
    ),
    (
        "concatenation asking for Triton, interpreted on the CPU",
        call("res4", kind=CONCATENATION, triton=True, device_type="cpu"),
        TRITON_CONCAT,
    ),
    (
        "concatenation asking for Triton, traced: sorted",
        call("res4", kind=CONCATENATION, triton=True, tracing=True),
        SORTED_CONCAT,
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_policy_table(row):
    _, facts, expected = row
    assert choose_path(facts).path == expected


def test_kept_boundary_is_twice_the_affinity_plus_the_working_memory():
    res4 = call("res4", device_type="cpu")
    need = 2 * res4.affinity_bytes + working_bytes(res4)
    assert need == peak_bytes(res4, PathChoice(KEPT, 4200))
    assert 416 * MiB < need < 417 * MiB < CPU_DEFAULT  # the CPU default keeps res4 at batch 2
    assert choose_path(dataclasses.replace(res4, budget_bytes=need)).path == KEPT
    assert choose_path(dataclasses.replace(res4, budget_bytes=need - 1)).path == FUSED


@pytest.mark.parametrize(
    "facts",
    [
        call("res3", tf32=True, budget_bytes=1024 * MiB),
        call("res3", "gaussian", budget_bytes=1024 * MiB),
        call("res3", "gaussian", dtype=torch.bfloat16, budget_bytes=512 * MiB),
        call("res4", kind=CONCATENATION, budget_bytes=200 * MiB),
        call("res3", kind=CONCATENATION, budget_bytes=1024 * MiB),
        call("res3", tf32=True, needs_grad=False, budget_bytes=512 * MiB),
    ],
    ids=[
        "tf32",
        "gaussian-fp32",
        "gaussian-bf16",
        "concatenation-res4",
        "concatenation-res3",
        "tf32-inference",
    ],
)
def test_chunks_fill_what_the_budget_leaves(facts):
    choice = choose_path(facts)
    assert MIN_CHUNK_ROWS <= choice.rows < facts.num_queries
    assert peak_bytes(facts, choice) <= facts.budget_bytes
    bigger = PathChoice(choice.path, choice.rows + 1)
    assert peak_bytes(facts, bigger) > facts.budget_bytes  # and no fewer rows than it allows


def test_a_forward_alone_holds_one_chunk_and_gets_twice_the_rows():
    training = call("res3", tf32=True, budget_bytes=1024 * MiB)
    inference = dataclasses.replace(training, needs_grad=False)
    # what a forward alone holds besides its chunk: working_bytes and the scaled queries
    room = training.budget_bytes - peak_bytes(inference, PathChoice(CHUNKED, 0))
    assert choose_path(inference).rows == room // training.row_bytes
    assert choose_path(inference).rows > 2 * choose_path(training).rows


@pytest.mark.parametrize("kind, path", [(SOFTMAX, TRITON), (CONCATENATION, TRITON_CONCAT)])
def test_triton_paths_hold_nothing_n_by_m(kind, path):
    facts = call("res3", kind=kind, triton=True)
    choice = choose_path(facts)
    assert choice == PathChoice(path, 16800)
    assert peak_bytes(facts, choice) == working_bytes(facts)


def test_one_chunk_when_the_whole_map_fits():
    assert choose_path(call("res4", kind=CONCATENATION)) == PathChoice(CHUNKED_CONCAT, 4200)


def test_a_budget_below_the_working_memory_gets_the_smallest_chunks_and_shows_it():
    tiny = call("res3", tf32=True, budget_bytes=MiB)
    choice = choose_path(tiny)
    assert choice == PathChoice(CHUNKED, MIN_CHUNK_ROWS)
    assert peak_bytes(tiny, choice) > tiny.budget_bytes
    few = call("res3", tf32=True, num_queries=50, budget_bytes=MiB)
    assert choose_path(few) == PathChoice(CHUNKED, 50)  # never more rows than queries


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="kind='cosine'"):
        choose_path(call(kind="cosine"))


@pytest.mark.parametrize("bad", [0, -5, float("nan"), float("inf"), "512", True])
def test_bad_budgets_are_refused_by_name(bad):
    with pytest.raises(ValueError, match=r"affinity_budget_mb=.* must be a number of MiB > 0"):
        check_budget_mb("NonLocalBlock", bad)


def test_budget_defaults():
    assert check_budget_mb("x", None) is None and check_budget_mb("x", 512) == 512.0
    cpu = torch.device("cpu")
    assert default_budget_mb(cpu) == CPU_DEFAULT_BUDGET_MB
    assert budget_bytes(None, cpu) == CPU_DEFAULT
    assert budget_bytes(0.5, cpu) == MiB // 2


def test_compute_dtype_follows_autocast():
    assert compute_dtype("cpu", torch.float32) == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert compute_dtype("cpu", torch.float32) == torch.bfloat16
    assert compute_dtype("cpu", torch.int64) == torch.int64


@pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, "fp32_precision"), reason="torch < 2.9")
def test_tf32_is_read_from_the_precision_setting():
    matmul = torch.backends.cuda.matmul
    saved = matmul.fp32_precision
    try:
        assert not tf32_allowed("cpu")
        matmul.fp32_precision = "tf32"
        assert tf32_allowed("cuda") and not tf32_allowed("cpu")
        matmul.fp32_precision = "ieee"
        assert not tf32_allowed("cuda")
    finally:
        matmul.fp32_precision = saved
