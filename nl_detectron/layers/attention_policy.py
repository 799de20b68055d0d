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
tensors. In fp16 / bf16 the softmax paths form logits and their gradient in fp32: the chunked
path's chunks are fp32, and the kept path holds its 16-bit P beside two fp32 chunks of a quarter
of the rows (as many bytes as a second 16-bit affinity); where torch cannot multiply 16-bit
matrices into fp32 (the CPU) both add fp32 copies of their per-position operands
(:func:`fp32_copies`). Fused SDPA and the sorted concatenation hold nothing N x M. The aggregation's
backward is where the block's memory peaks, so the budget is close to the block's whole extra
memory on those paths (measured in docs/attention_paths.md). A budget below what the chosen path
needs at the least (:func:`peak_bytes` of its choice) cannot be met; :func:`plan_aggregation`
then warns.

Path table (softmax forms = embedded Gaussian, Gaussian, DNL's pairwise term):

========================  =========================================================  ===========
device                    condition (first that holds)                               path
========================  =========================================================  ===========
any                       traced (export records one SDPA call), compiled on CUDA    fused
CUDA                      the block asks for Triton (``use_triton``; opt-in)         triton
CPU                       affinity fits the budget, and v narrower, or training      kept
                          (not under torch.compile)
CPU                       otherwise (the CPU flash kernel, value zero-padded)        fused
CUDA                      fp16/bf16, q, k, v of one width <= 256 (flash, cuDNN)      fused
CUDA                      affinity fits the budget                                   kept
CUDA                      fp32 without TF32, one width <= 256 (memory-efficient)     fused
CUDA                      otherwise (TF32, wide heads, Gaussian's unequal widths)    chunked
                          (rows: two chunks fill what working_bytes leaves, >= 128)
========================  =========================================================  ===========

Under torch.compile on the CPU the Gaussian (v narrower) keeps its affinity as in eager, the
other softmax forms take ``fused``: compiled, the kept path trains the Gaussian faster than the
fused one with its value padded, and the others no faster while holding two affinities
(docs/attention_paths.md, "torch.compile").

Concatenation: ``sorted`` (O(M log M + N C'), see ``relu_pair_sum``) when traced and on the CPU;
on CUDA ``chunked_concat``, the broadcast ReLU(a_i + b_j) in query chunks that fit the budget (one
chunk when the whole map does), or ``triton_concat`` for a block that asks for Triton.

The Triton paths run wherever the kernels do (CUDA; the CPU under Triton's interpreter, for
tests) unless traced; they hold nothing N x M, so the budget plays no part. They are opt-in until
GPU timings decide. So is ``efficient`` (SDPA's memory-efficient CUDA kernel, which takes the
Gaussian's value width C/2 beside its key width C unpadded): no row above names it until a GPU
run times it against ``chunked``. Figures behind the choices: docs/attention_paths.md.
"""

import contextlib
import math
from dataclasses import dataclass
from typing import Optional

import torch

KEPT = "kept"  # the affinity built in place and kept for the backward
FUSED = "fused"  # torch's scaled_dot_product_attention kernels
CHUNKED = "chunked"  # query chunks, log-sum-exp kept, affinity recomputed in the backward
TRITON = "triton"  # nl_detectron's flash-style Triton kernels, nothing N x M stored
# SDPA restricted to its memory-efficient kernel, value width as it is: a candidate the policy
# does not choose yet (forced in benchmarks and tests; see softmax_attention).
EFFICIENT = "efficient"
SORTED_CONCAT = "sorted"  # concatenation from sorted key terms and suffix sums
CHUNKED_CONCAT = "chunked_concat"  # concatenation as a broadcast in query chunks
TRITON_CONCAT = "triton_concat"  # concatenation in Triton kernels, nothing N x M stored

SOFTMAX = "softmax"
CONCATENATION = "concatenation"
KINDS = (SOFTMAX, CONCATENATION)

# Default budgets. On the CPU 512 MiB keeps res4's affinity of an 800x1333 input at batch 2 in
# training (embedded Gaussian needs 417 MiB: two 134.6 MiB affinities and 148 MiB of operands and
# gradients; Gaussian 482 MiB); on CUDA a sixteenth of the card (H200: 8.8 GiB, 16 GB: 1 GiB).
CPU_DEFAULT_BUDGET_MB = 512
CUDA_DEFAULT_BUDGET_FRACTION = 1 / 16
# Head widths the CUDA flash / cuDNN and memory-efficient kernels take without the math fallback.
FUSED_MAX_WIDTH = 256
_HALF_DTYPES = (torch.float16, torch.bfloat16)
# Fewest query rows per chunk: smaller chunks cost a kernel launch per few rows and buy little
# memory next to the per-position tensors.
MIN_CHUNK_ROWS = 128
# The kept path in fp16 / bf16 forms P and its gradient from fp32 products in this many chunks of
# query rows (each [B, N/4, M] fp32, half a 16-bit affinity).
KEPT_CHUNKS = 4
# torch >= 2.8 multiplies 16-bit matrices into an fp32 result on CUDA (``aten::bmm.dtype``).
_BMM_INTO_FP32 = hasattr(torch.ops.aten.bmm, "dtype")


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
    tracing: bool = False  # traced (TorchScript, export) or compiled
    compiled: bool = False  # compiled by torch.compile (not exported)
    triton: bool = False  # the block asks for Triton kernels, and they run on this device
    # DNL's unary term: in a backward its sum with y [N, E] is held and the gradient it sends to V
    # [M, E] waits beside the aggregation's (a forward alone holds the sum after the N x M buffers).
    unary: bool = False
    shared_keys: bool = False  # the keys are the queries, one tensor (Gaussian, no sub-sampling)

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
    """Per-position memory one aggregation holds at its peak on any path, in bytes (nothing
    N x M-shaped; what a path adds: :func:`peak_bytes`).

    Softmax forms keep Q [N, D], K [M, D] (unless it is Q), V [M, E] and the output [N, E]; a
    backward adds the incoming gradient and its contiguous copy (2 x [N, E]), dQ [N, D] and,
    summed in at least fp32, dK [M, D] and dV [M, E].
    In a backward, DNL's unary term (``call.unary``) adds its sum with the output [N, E] and the
    gradient of V [M, E] it sends. The concatenation keeps the embeddings theta [N, D] and phi
    [M, D] (for its terms' gradient), V and the output, its terms a, b and their gradients; a
    backward adds the incoming gradient and its contiguous copy (2 x [N, E]) and, summed in at
    least fp32, dV (plus a 16-bit chunk's product to add in). All times the batch.
    """
    n, m = call.num_queries, call.num_keys
    d, e = call.query_width, call.value_width
    item, acc = call.itemsize, max(call.itemsize, 4)
    total = (n * d + (0 if call.shared_keys else m * d) + (n + m) * e) * item
    if call.kind == CONCATENATION:
        total += 2 * (n + m) * acc  # the terms a, b and their gradients
        if call.needs_grad:
            product = item if fp32_copies(call.device_type, call.dtype) else acc
            total += 2 * n * e * item + m * e * acc + (m * e * product if acc != item else 0)
        return call.batch * total
    if call.needs_grad:
        total += (2 * n * e + n * d) * item + m * (d + e) * acc
    if call.unary and call.needs_grad:
        total += (n + m) * e * item
    return call.batch * total


def fp32_copies(device_type: str, dtype: torch.dtype) -> bool:
    """Whether the kept and chunked paths copy 16-bit operands to fp32 for the products they form
    in fp32 (the logits, dO V^T): where torch cannot multiply 16-bit matrices into an fp32 result
    (the CPU; CUDA before torch 2.8)."""
    return dtype.itemsize < 4 and not (device_type == "cuda" and _BMM_INTO_FP32)


def kept_chunk_rows(num_queries: int) -> int:
    """Query rows per fp32 chunk of the kept path in fp16 / bf16 (a KEPT_CHUNKS-th of them)."""
    return max(-(-num_queries // KEPT_CHUNKS), 1)


# Per-position [B, n, E] temporaries of the sorted concatenation beyond working_bytes, in at least
# fp32, as (n = N, n = M) counts: the sorted values, suffix sums and their flipped copies over the
# keys and the gathered sums over the queries (measured on the CPU).
SORTED_TEMPORARIES = {True: (3, 2), False: (2, 3)}  # needs_grad -> counts


def _path_bytes(call: AggregationCall, path: str) -> int:
    """Per-position bytes that ``path`` holds beyond working_bytes. Kept, chunked and Triton
    softmax paths: the scaled queries beside the block's own where both are held (a forward
    alone; a backward where the keys are the queries), except on the kept and chunked paths in
    fp16 / bf16 (unscaled); the fused path on the CPU with a value narrower than the keys: the
    value and output zero-padded to the keys' width (and the padded output gradient); with DNL's
    unary term, its sum with the output in a forward alone where nothing N x M is held; the
    chunked concatenation in a backward, the block's division of its output by M; the chunked
    path in fp16 / bf16 a chunk's 16-bit dV / dK product to add in (fp32 on CUDA); and where 16-bit
    matrices cannot be multiplied into fp32 (:func:`fp32_copies`) fp32 copies of K^T (and V^T in
    a backward) for the chunked path, of K^T, then V^T, and a chunk of queries or gradients for
    the kept path. The sorted concatenation: SORTED_TEMPORARIES. All times the batch."""
    n, m = call.num_queries, call.num_keys
    d, e = call.query_width, call.value_width
    item, acc = call.itemsize, max(call.itemsize, 4)
    if path == SORTED_CONCAT:
        on_queries, on_keys = SORTED_TEMPORARIES[call.needs_grad]
        return call.batch * (on_queries * n + on_keys * m) * e * acc
    if path == CHUNKED_CONCAT:
        return call.batch * n * e * item if call.needs_grad else 0
    if path in (FUSED, TRITON) and call.unary and not call.needs_grad:
        return call.batch * n * e * item
    if path == FUSED and call.device_type == "cpu" and e < d:
        return call.batch * (m + n + (n if call.needs_grad else 0)) * d * item
    if call.kind != SOFTMAX or path not in (KEPT, CHUNKED, TRITON):
        return 0
    total = 0
    scaled = item >= 4 or path == TRITON
    if scaled and (call.shared_keys or not call.needs_grad):
        total += n * d * item
    copies = fp32_copies(call.device_type, call.dtype)
    if path == CHUNKED and call.needs_grad and item < acc:
        total += m * max(d, e) * (item if copies else acc)
    if copies and path == CHUNKED:  # its chunks' query and gradient copies: _chunk_row_bytes
        total += 4 * m * (d + e if call.needs_grad else d)
    elif copies and path == KEPT:
        width = max(d, e) if call.needs_grad else d
        total += 4 * width * (m + kept_chunk_rows(n))
    return call.batch * total


def _room(call: AggregationCall, path: str) -> int:
    """Bytes the budget leaves for N x M-shaped buffers on ``path``."""
    return call.budget_bytes - working_bytes(call) - _path_bytes(call, path)


def _chunk_buffers(call: AggregationCall) -> int:
    """[B, rows, M] buffers a chunked path holds at once: the chunk and its gradient in a
    backward, the chunk alone in a forward without one."""
    return 2 if call.needs_grad else 1


def _chunk_row_bytes(call: AggregationCall) -> int:
    """Bytes per query row of a chunked path's [B, rows, M] buffers at their peak. Softmax
    chunks are in at least fp32 (in fp16 / bf16 a forward alone adds P's 16-bit copy to be
    multiplied), and where 16-bit products into fp32 need copies, each chunk's queries or output
    gradients are copied to fp32 too."""
    if call.kind == CONCATENATION:
        return _chunk_buffers(call) * call.row_bytes
    item, acc = call.itemsize, max(call.itemsize, 4)
    entry = 2 * acc if call.needs_grad else acc + (item if item < acc else 0)
    copies = fp32_copies(call.device_type, call.dtype)
    widths = 4 * max(call.query_width, call.value_width) if copies else 0
    return call.batch * (call.num_keys * entry + widths)


def budget_rows(call: AggregationCall) -> int:
    """Query rows whose [B, rows, M] chunks fit what the budget leaves (all N when the whole map
    does; at least MIN_CHUNK_ROWS, or N when smaller)."""
    path = CHUNKED if call.kind == SOFTMAX else CHUNKED_CONCAT
    rows = max(_room(call, path), 0) // max(_chunk_row_bytes(call), 1)
    return int(min(max(rows, MIN_CHUNK_ROWS, 1), max(call.num_queries, 1)))


def _kept_square_bytes(call: AggregationCall) -> int:
    """N x M-shaped bytes of the kept path at its peak: two affinities (logits and P, then P and
    dS; one in a CPU forward alone, whose softmax is in place); in fp16 / bf16 the 16-bit P and
    two fp32 chunks of kept_chunk_rows rows (one in a CPU forward alone)."""
    pairs = 2 if call.needs_grad or call.device_type != "cpu" else 1
    if call.itemsize >= 4:
        return pairs * call.affinity_bytes
    rows = kept_chunk_rows(call.num_queries)
    return call.affinity_bytes + pairs * rows * call.batch * call.num_keys * 4


def _fits(call: AggregationCall) -> bool:
    return _kept_square_bytes(call) <= _room(call, KEPT)


def peak_bytes(call: AggregationCall, choice: PathChoice) -> int:
    """What ``call`` holds at its peak on ``choice``: working_bytes, the path's own per-position
    tensors and its N x M buffers."""
    if choice.path == KEPT:
        square = _kept_square_bytes(call)
    elif choice.path in (CHUNKED, CHUNKED_CONCAT):
        square = choice.rows * _chunk_row_bytes(call)
    else:
        square = 0
    return working_bytes(call) + _path_bytes(call, choice.path) + square


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
    if call.tracing and not (cpu and call.compiled):
        return PathChoice(FUSED, whole)
    if call.triton:
        return PathChoice(TRITON, whole)
    if cpu:
        narrow_value = call.value_width < call.query_width
        training = call.needs_grad and not call.compiled
        if _fits(call) and (narrow_value or training):
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


@contextlib.contextmanager
def cuda_fp32_precision(tf32: bool):
    """CUDA's fp32 matmuls and cuDNN convolutions in TF32 (``tf32``) or in full (IEEE) precision
    inside the block, the previous settings restored after (torch >= 2.9 reads and writes them
    as precision strings, and refuses the older flags once those were used)."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision"):
        saved = matmul.fp32_precision, cudnn.conv.fp32_precision
        mode = "tf32" if tf32 else "ieee"
        matmul.fp32_precision = cudnn.conv.fp32_precision = mode
    else:
        saved = matmul.allow_tf32, cudnn.allow_tf32
        matmul.allow_tf32 = cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        if hasattr(matmul, "fp32_precision"):
            matmul.fp32_precision, cudnn.conv.fp32_precision = saved
        else:
            matmul.allow_tf32, cudnn.allow_tf32 = saved


def compute_dtype(device_type: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype the products run in: autocast's for its device when enabled, else ``dtype``."""
    if dtype.is_floating_point and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return dtype


def is_tracing() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def is_compiled() -> bool:
    """Whether torch.compile is tracing this call (torch.export, which traces the same way, is
    not: an export records the portable path)."""
    return torch.compiler.is_compiling() and not torch.compiler.is_exporting()
