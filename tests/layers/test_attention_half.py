"""The kept and chunked paths in fp16 / bf16: logits and their gradient formed in fp32."""

import pytest
import torch

from nl_detectron.layers.attention import softmax_attention
from nl_detectron.layers.attention_policy import CHUNKED, KEPT, PathChoice


def _inputs(dtype, logit_scale, gen):
    q, k, v = (torch.randn(1, 96, 8, generator=gen) for _ in range(3))
    return q.mul(logit_scale).to(dtype), k.to(dtype), v.to(dtype)


@pytest.mark.parametrize("path", [KEPT, CHUNKED])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_large_logits_do_not_lose_the_probabilities(path, dtype):
    # Logits near 60: a bf16 logit is rounded by 0.25 there, which changed P by up to 13%.
    gen = torch.Generator().manual_seed(0)
    q, k, v = _inputs(dtype, 25.0, gen)
    q, k, v = (t.requires_grad_(True) for t in (q, k, v))
    y = softmax_attention(q, k, v, 8**-0.5, PathChoice(path, 32))
    assert y.dtype == dtype
    q64, k64, v64 = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    y64 = torch.softmax(q64 @ k64.transpose(1, 2) * 8**-0.5, dim=-1) @ v64
    cotangent = torch.randn(y.shape, generator=gen).to(dtype)
    grads = torch.autograd.grad(y, (q, k, v), cotangent)
    grads64 = torch.autograd.grad(y64, (q64, k64, v64), cotangent.double())
    # A few roundings in the dtype (bf16 2^-8, fp16 2^-11 relative); measured: at most half the
    # bound, and 5.8 times it in bf16 when the logits were rounded to bf16.
    bound = 1.5 * (2**-8 if dtype == torch.bfloat16 else 2**-11)
    for got, want in zip((y, *grads), (y64, *grads64)):
        error = (got.double() - want).norm() / want.norm()
        assert error < bound, error


def test_a_second_backward_through_the_16_bit_kept_path_is_refused():
    # Its backward writes dS over the kept P: a retained graph cannot be run again silently.
    gen = torch.Generator().manual_seed(0)
    q, k, v = (t.requires_grad_(True) for t in _inputs(torch.bfloat16, 1.0, gen))
    y = softmax_attention(q, k, v, 8**-0.5, PathChoice(KEPT, 96))
    y.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()
