"""Which computation path a pairwise aggregation y = A v takes: one decision, made here.

The blocks describe a call (:class:`AggregationCall`: device, compute dtype, TF32, widths, sizes,
whether a backward will run, the memory budget) and :func:`choose_path` names the path. It is a
pure function of those facts, so every row of its table is tested without the hardware.

Memory model. The budget bounds what one aggregation holds at its peak, forward or backward: its
per-position tensors (:func:`working_bytes`: the kept operands and output, the incoming gradient
and the operand gradients) plus its N x M-shaped buffers. Paths that build the affinity hold two
N x M tensors at their peak (the logits and the probabilities in the forward, the kept
probabilities and their gradient in the backward); chunked paths hold two ``[B, rows, M]`` chunks
in a backward and one in a forward alone, sized to what the budget leaves after the per-position
tensors. Fused SDPA and the sorted concatenation hold nothing of that shape. The aggregation's
backward is where the block's memory peaks, so the budget is close to the block's whole extra
memory on those paths (measured in docs/attention_paths.md). A budget below what the chosen path
needs at the least (:func:`peak_bytes` of its choice) cannot be met; :func:`plan_aggregation`
then warns.

Path table (softmax forms = embedded Gaussian, Gaussian, DNL's pairwise term):

========================  =========================================================  ===========
device                    condition (first that holds)                               path
========================  =========================================================  ===========
any                       traced or compiled (export records one SDPA call)         fused
CUDA                      the block asks for Triton (``use_triton``; opt-in)         triton
CPU                       affinity fits the budget, and training or v narrower      kept
CPU                       otherwise (the CPU flash kernel, value zero-padded)        fused
CUDA                      fp16/bf16, q, k, v of one width <= 256 (flash, cuDNN)      fused
CUDA                      affinity fits the budget                                   kept
CUDA                      fp32 without TF32, one width <= 256 (memory-efficient)     fused
CUDA                      otherwise (TF32, wide heads, Gaussian's unequal widths)    chunked
                          (rows: two chunks fill what working_bytes leaves, >= 128)
========================  =========================================================  ===========

Concatenation: ``sorted`` (O(M log M + N C'), see ``relu_pair_sum``) when traced and on the CPU;
on CUDA ``chunked_concat``, the broadcast ReLU(a_i + b_j) in query chunks that fit the budget (one
chunk when the whole map does), or ``triton_concat`` for a block that asks for Triton.

The Triton paths run wherever the kernels do (CUDA; the CPU under Triton's interpreter, for
tests) unless traced; they hold nothing N x M, so the budget plays no part. They are opt-in until
GPU timings decide. Figures behind the choices: docs/attention_paths.md.
"""

import math
from dataclasses import dataclass
from typing import Optional

import torch

KEPT = "kept"  # the affinity built in place and kept for the backward
FUSED = "fused"  # torch's scaled_dot_product_attention kernels
CHUNKED = "chunked"  # query chunks, log-sum-exp kept, affinity recomputed in the backward
TRITON = "triton"  # nl_detectron's flash-style Triton kernels, nothing N x M stored
SORTED_CONCAT = "sorted"  # concatenation from sorted key terms and suffix sums
CHUNKED_CONCAT = "chunked_concat"  # concatenation as a broadcast in query chunks
TRITON_CONCAT = "triton_concat"  # concatenation in Triton kernels, nothing N x M stored

SOFTMAX = "softmax"
CONCATENATION = "concatenation"
KINDS = (SOFTMAX, CONCATENATION)

# Default budgets. On the CPU 512 MiB keeps res4's affinity of an 800x1333 input at batch 2 in
# training (embedded Gaussian needs 433 MiB: two 134 MiB affinities and 164 MiB of operands and
# gradients; Gaussian 499 MiB); on CUDA a sixteenth of the card (H200: 8.8 GiB, 16 GB: 1 GiB).
CPU_DEFAULT_BUDGET_MB = 512
CUDA_DEFAULT_BUDGET_FRACTION = 1 / 16
# Head widths the CUDA flash / cuDNN and memory-efficient kernels take without the math fallback.
FUSED_MAX_WIDTH = 256
_HALF_DTYPES = (torch.float16, torch.bfloat16)
# Fewest query rows per chunk: smaller chunks cost a kernel launch per few rows and buy little
# memory next to the per-position tensors.
MIN_CHUNK_ROWS = 128


@dataclass(frozen=True)
class AggregationCall:
    """The facts a path choice depends on; widths are D (query = key) and E (value)."""

    kind: str
    device_type: str
    dtype: torch.dtype
    batch: int
    num_queries: int
    num_keys: int
    query_width: int
    value_width: int
    needs_grad: bool
    budget_bytes: int
    tf32: bool = False
    tracing: bool = False
    triton: bool = False  # the block asks for Triton kernels, and they run on this device

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    @property
    def row_bytes(self) -> int:
        """Bytes of one query row of the affinity over the batch: B * M * itemsize."""
        return self.batch * self.num_keys * self.itemsize

    @property
    def affinity_bytes(self) -> int:
        return self.num_queries * self.row_bytes


@dataclass(frozen=True)
class PathChoice:
    """``path`` and, for chunked paths, the query ``rows`` per chunk (else all N)."""

    path: str
    rows: int


def working_bytes(call: AggregationCall) -> int:
    """Per-position memory one aggregation holds at its peak, in bytes (nothing N x M-shaped).

    Softmax forms keep Q (scaled) [N, D], K [M, D], V [M, E] and the output [N, E]; the
    concatenation keeps the embeddings theta [N, D] and phi [M, D] (for its terms' gradient), V and
    the output. A backward adds the incoming gradient and its contiguous copy (2 x [N, E]), the
    softmax's dQ [N, D] and, summed over chunks in at least fp32, dK [M, D] and dV [M, E] (plus a
    16-bit product per chunk to add in); for the softmax forms also a gradient of V [M, E] that
    waits from elsewhere in the block (DNL's unary term sums V too). All times the batch.
    """
    n, m = call.num_queries, call.num_keys
    d, e = call.query_width, call.value_width
    item, acc = call.itemsize, max(call.itemsize, 4)
    summed = m * e if call.kind == CONCATENATION else m * (d + e)
    total = (n + m) * (d + e) * item
    if call.needs_grad:
        softmax = call.kind == SOFTMAX
        total += (2 * n * e + (n * d + m * e if softmax else 0)) * item
        total += summed * acc + (m * max(d, e) * item if acc != item else 0)
    if call.kind == CONCATENATION:
        total += 2 * (n + m) * acc  # the terms a, b and their gradients
    return call.batch * total


def _room(call: AggregationCall) -> int:
    """Bytes the budget leaves for N x M-shaped buffers."""
    return call.budget_bytes - working_bytes(call)


def _chunk_buffers(call: AggregationCall) -> int:
    """[B, rows, M] buffers a chunked path holds at once: the chunk and its gradient in a
    backward, the chunk alone in a forward without one."""
    return 2 if call.needs_grad else 1


def budget_rows(call: AggregationCall) -> int:
    """Query rows whose [B, rows, M] chunks fit what the budget leaves (all N when the whole map
    does; at least MIN_CHUNK_ROWS, or N when smaller)."""
    rows = max(_room(call), 0) // (_chunk_buffers(call) * max(call.row_bytes, 1))
    return int(min(max(rows, MIN_CHUNK_ROWS, 1), max(call.num_queries, 1)))


def _fits(call: AggregationCall) -> bool:
    return 2 * call.affinity_bytes <= _room(call)


def peak_bytes(call: AggregationCall, choice: PathChoice) -> int:
    """What ``call`` holds at its peak on ``choice``: working_bytes plus its N x M buffers."""
    if choice.path == KEPT:
        square = 2 * call.affinity_bytes
    elif choice.path in (CHUNKED, CHUNKED_CONCAT):
        square = _chunk_buffers(call) * choice.rows * call.row_bytes
    else:
        square = 0
    return working_bytes(call) + square


def choose_path(call: AggregationCall) -> PathChoice:
    """The path for ``call`` by the table in this module's docstring."""
    if call.kind not in KINDS:
        raise ValueError(f"choose_path: kind={call.kind!r} is not one of {KINDS}")
    whole = call.num_queries
    cpu = call.device_type == "cpu"
    if call.kind == CONCATENATION:
        if call.tracing:
            return PathChoice(SORTED_CONCAT, whole)
        if call.triton:
            return PathChoice(TRITON_CONCAT, whole)
        if cpu:
            return PathChoice(SORTED_CONCAT, whole)
        return PathChoice(CHUNKED_CONCAT, budget_rows(call))
    if call.tracing:
        return PathChoice(FUSED, whole)
    if call.triton:
        return PathChoice(TRITON, whole)
    if cpu:
        narrow_value = call.value_width < call.query_width
        if _fits(call) and (call.needs_grad or narrow_value):
            return PathChoice(KEPT, whole)
        return PathChoice(FUSED, whole)
    one_width = call.query_width == call.value_width <= FUSED_MAX_WIDTH
    on_cuda = call.device_type == "cuda"
    if on_cuda and call.dtype in _HALF_DTYPES and one_width:
        return PathChoice(FUSED, whole)
    if _fits(call):
        return PathChoice(KEPT, whole)
    if on_cuda and call.dtype == torch.float32 and not call.tf32 and one_width:
        return PathChoice(FUSED, whole)
    return PathChoice(CHUNKED, budget_rows(call))


def check_budget_mb(owner: str, budget_mb) -> Optional[float]:
    """``budget_mb`` if it is None or a number > 0, else a ValueError naming it."""
    if budget_mb is None:
        return None
    if (
        isinstance(budget_mb, bool)
        or not isinstance(budget_mb, (int, float))
        or not math.isfinite(budget_mb)
        or budget_mb <= 0
    ):
        raise ValueError(
            f"{owner}: affinity_budget_mb={budget_mb!r} must be a number of MiB > 0, or None for "
            "the device's default"
        )
    return float(budget_mb)


def default_budget_mb(device: torch.device) -> float:
    """The budget used when none is set: 1/16 of a CUDA device's memory, else 512 MiB."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return total * CUDA_DEFAULT_BUDGET_FRACTION / 2**20
    return float(CPU_DEFAULT_BUDGET_MB)


def budget_bytes(budget_mb: Optional[float], device: torch.device) -> int:
    """``budget_mb`` (None: the device's default) in bytes."""
    if budget_mb is None:
        budget_mb = default_budget_mb(device)
    return int(budget_mb * 2**20)


def tf32_allowed(device_type: str) -> bool:
    """Whether fp32 matmuls may run in TF32 on ``device_type`` (only CUDA has it)."""
    if device_type != "cuda":
        return False
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        # torch >= 2.9 reflects every way of setting it here ("tf32", "ieee", or "none" when
        # unset); reading the legacy flags after the new API was used raises.
        return matmul.fp32_precision == "tf32"
    return matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest"


def compute_dtype(device_type: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype the products run in: autocast's for its device when enabled, else ``dtype``."""
    if dtype.is_floating_point and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return dtype


def is_tracing() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling()
