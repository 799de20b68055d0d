"""fvcore FLOP handles for the operators that non-local blocks emit.

fvcore (and detectron2's ``FlopCountAnalysis`` on top of it) has no handle for
``aten::scaled_dot_product_attention``, so the pairwise term of an NL block, which is most of its
cost, is reported as an unsupported op and left out of the total. Its ``aten::matmul`` handle also
ignores broadcasting (``[C', C] @ [B, C, N]`` is counted once instead of B times).

Convention (fvcore's): one fused multiply-add is one flop; elementwise ops and reductions
(softmax, mean, ...) cost nothing and are ignored explicitly, as detectron2 does, so that fvcore's
"unsupported operator" warnings only name ops that would really be missed. The exception are the
ops that replace a contraction: the concatenation NL sums ReLU(a_i + b_j) v_j over j by sorting b
and taking suffix sums, so ``aten::sort`` (n log2 n comparisons), ``aten::searchsorted``
(log2 n per lookup) and ``aten::cumsum`` (one add per element) are counted.

Usage::

    flops = FlopCountAnalysis(model, inputs)
    flops.set_op_handle(**nonlocal_flop_handles())
"""

import math
from typing import Any, Dict, List, Optional, Sequence

from fvcore.nn.jit_handles import Handle, get_shape

__all__ = ["nonlocal_flop_handles", "sdpa_flop_count", "matmul_flop_count"]


def _prod(values: Sequence[int]) -> int:
    return math.prod(int(v) for v in values)


def sdpa_flop_count(
    q_shape: Sequence[int], k_shape: Sequence[int], v_shape: Sequence[int], is_causal: bool = False
) -> int:
    """
    Multiply-adds of ``softmax(q k^T * scale) v``.

    Args:
        q_shape: [*batch, L, E] (e.g. [B, heads, L, E] or [B, L, E]).
        k_shape: [*batch', S, E].
        v_shape: [*batch', S, Ev].
        is_causal: only the L x S pairs of the top-left causal mask are computed.

    Returns:
        prod(batch) * P * (E + Ev), with P = L * S pairs (fewer when causal): P * E for the
        scores q k^T and P * Ev for the weighted sum of values. The batch of ``q`` is used
        because with grouped-query attention k and v have fewer heads than q.
    """
    *batch, num_queries, dim_qk = q_shape
    num_keys = k_shape[-2]
    dim_v = v_shape[-1]
    if is_causal:
        # query i sees keys 0..i (torch aligns the causal mask to the top-left corner)
        pairs = sum(min(i + 1, num_keys) for i in range(num_queries))
    else:
        pairs = num_queries * num_keys
    return _prod(batch) * pairs * (dim_qk + dim_v)


def matmul_flop_count(a_shape: Sequence[int], b_shape: Sequence[int]) -> int:
    """
    Multiply-adds of ``torch.matmul(a, b)`` with its 1-D promotion and batch broadcasting.

    Args:
        a_shape: [*batch_a, n, k] or [k].
        b_shape: [*batch_b, k, m] or [k].

    Returns:
        prod(broadcast(batch_a, batch_b)) * n * k * m.
    """
    a_shape = list(a_shape) if len(a_shape) > 1 else [1, a_shape[0]]
    b_shape = list(b_shape) if len(b_shape) > 1 else [b_shape[0], 1]
    if a_shape[-1] != b_shape[-2]:
        raise ValueError(f"matmul shapes {a_shape} and {b_shape} have mismatched inner dimensions")
    batch_a, batch_b = a_shape[:-2], b_shape[:-2]
    ndim = max(len(batch_a), len(batch_b))
    batch_a = [1] * (ndim - len(batch_a)) + batch_a
    batch_b = [1] * (ndim - len(batch_b)) + batch_b
    batch = [max(x, y) for x, y in zip(batch_a, batch_b)]
    return _prod(batch) * a_shape[-2] * a_shape[-1] * b_shape[-1]


def _sdpa_handle(is_causal_index: int) -> Handle:
    # each SDPA kernel has its own signature; only the position of `is_causal` differs
    def handle(inputs: List[Any], outputs: List[Any]) -> int:
        q, k, v = (get_shape(x) for x in inputs[:3])
        is_causal = bool(inputs[is_causal_index].toIValue())
        return sdpa_flop_count(q, k, v, is_causal=is_causal)

    return handle


def _matmul_handle(inputs: List[Any], outputs: List[Any]) -> int:
    return matmul_flop_count(get_shape(inputs[0]), get_shape(inputs[1]))


def _baddbmm_handle(inputs: List[Any], outputs: List[Any]) -> int:
    # beta * self + alpha * (batch1 @ batch2): the product dominates, the add is elementwise
    return matmul_flop_count(get_shape(inputs[1]), get_shape(inputs[2]))


def _cumsum_handle(inputs: List[Any], outputs: List[Any]) -> int:
    return _prod(get_shape(inputs[0]))


def _log2_ceil(n: int) -> int:
    return math.ceil(math.log2(n)) if n > 1 else 0


def _sort_handle(inputs: List[Any], outputs: List[Any]) -> int:
    # aten::sort(self, dim, descending) or aten::sort.stable(self, stable, dim, descending)
    shape = get_shape(inputs[0])
    dim = inputs[2 if len(inputs) == 4 else 1].toIValue()
    return _prod(shape) * _log2_ceil(shape[dim] if shape else 1)


def _searchsorted_handle(inputs: List[Any], outputs: List[Any]) -> int:
    # one binary search over the last dimension of the sorted sequence per value
    sorted_shape, values_shape = get_shape(inputs[0]), get_shape(inputs[1])
    return _prod(values_shape) * _log2_ceil(sorted_shape[-1] + 1)


# `aten::scaled_dot_product_attention` is what a trace records; the private kernels are listed
# for code that calls them directly, with the index of their `is_causal` argument.
_SDPA_OPS = {
    "aten::scaled_dot_product_attention": 5,
    "aten::_scaled_dot_product_attention_math": 5,
    "aten::_scaled_dot_product_flash_attention_for_cpu": 4,
    "aten::_scaled_dot_product_flash_attention": 4,
    "aten::_scaled_dot_product_efficient_attention": 6,
    "aten::_scaled_dot_product_cudnn_attention": 6,
}

# Elementwise ops, reductions and index ops used by the blocks (normalising attention, centring
# embeddings for DNL, graph degrees for SNL) and data movement: ignored under fvcore's convention.
_IGNORED_OPS = (
    "aten::softmax",
    "aten::_softmax",
    "aten::log_softmax",
    "aten::mean",
    "aten::sum",
    "aten::argsort",
    "aten::topk",
    "aten::gather",
    "aten::index_select",
    "aten::clamp",
    "aten::clamp_min",
    "aten::pow",
    "aten::rsqrt",
    "aten::sqrt",
    "aten::reciprocal",
    "aten::exp",
    "aten::sub",
    "aten::rsub",
    "aten::add",
    "aten::add_",
    "aten::mul",
    "aten::mul_",
    "aten::div",
    "aten::div_",
    "aten::neg",
    "aten::relu",
    "aten::relu_",
    "aten::sigmoid",
    "aten::max_pool1d",
    "aten::max_pool2d",
    "aten::max_pool3d",
    # data movement: padding values to the query width for the fused kernel, suffix sums by flips
    "aten::pad",
    "aten::constant_pad_nd",
    "aten::flip",
    "aten::expand_as",
    "aten::where",
)


def nonlocal_flop_handles() -> Dict[str, Optional[Handle]]:
    """
    Returns:
        dict: op name -> fvcore handle (or None to ignore the op), to pass as
        ``FlopCountAnalysis.set_op_handle(**nonlocal_flop_handles())``. Counts SDPA (all its
        kernels), broadcasting ``aten::matmul``/``aten::mm``, ``aten::baddbmm`` and the
        sort/searchsorted/cumsum of the concatenation pairwise sum; fvcore's own
        handles keep counting convolutions, ``bmm``, ``einsum``, norms and pooling.
    """
    handles: Dict[str, Optional[Handle]] = {
        name: _sdpa_handle(index) for name, index in _SDPA_OPS.items()
    }
    handles["aten::matmul"] = _matmul_handle
    handles["aten::mm"] = _matmul_handle
    handles["aten::baddbmm"] = _baddbmm_handle
    handles["aten::sort"] = _sort_handle
    handles["aten::searchsorted"] = _searchsorted_handle
    handles["aten::cumsum"] = _cumsum_handle
    handles.update(dict.fromkeys(_IGNORED_OPS))
    return handles
