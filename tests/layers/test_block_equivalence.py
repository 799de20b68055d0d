"""Every fast path equals a straightforward computation with the explicit N x M affinity.

The references below are written from the formulas (and the blocks' submodules), not from the
library's code paths: outputs, gradients and attention rows are compared in float64.
"""

import pytest
import torch
import torch.nn.functional as F
from block_cases import CASE_IDS, CASES, SHAPES, make_block

from nl_detectron.layers import (
    ContextBlock,
    DisentangledNonLocalBlock,
    NonLocalBlock,
    SpectralNonLocalBlock,
)
from nl_detectron.layers.attention import relu_pair_sum

TOL = {"rtol": 1e-9, "atol": 1e-10}


def _to_map(y, x):
    """[B, N, C'] -> [B, C', *spatial of x]."""
    return y.transpose(1, 2).reshape(x.shape[0], y.shape[-1], *x.shape[2:])


def reference_nonlocal(block: NonLocalBlock, x):
    theta = block.theta(x).flatten(2)  # [B, D, N]
    phi = block.phi(x).flatten(2)  # [B, D, M]
    g = block.g(x).flatten(2).transpose(1, 2)  # [B, M, C']
    num_keys = phi.shape[2]
    if block.instantiation == "concatenation":
        n = theta.shape[2]
        pairs = torch.cat(
            [
                theta.unsqueeze(3).expand(-1, -1, -1, num_keys),
                phi.unsqueeze(2).expand(-1, -1, n, -1),
            ],
            dim=1,
        )  # [B, 2C', N, M]
        affinity = block.concat_project(pairs).squeeze(1) / num_keys
    else:
        logits = theta.transpose(1, 2) @ phi  # [B, N, M]
        if block.instantiation == "dot_product":
            affinity = logits / num_keys
        else:
            scale = theta.shape[1] ** -0.5 if block.use_scale else 1.0
            affinity = torch.softmax(logits * scale, dim=-1)
    return x + block.out(_to_map(affinity @ g, x)), affinity


def reference_disentangled(block: DisentangledNonLocalBlock, x):
    theta = block.theta(x).flatten(2)
    phi = block.phi(x).flatten(2)
    theta = theta - theta.mean(dim=2, keepdim=True)
    phi = phi - phi.mean(dim=2, keepdim=True)
    g = block.g(x).flatten(2).transpose(1, 2)
    scale = block.temperature * (theta.shape[1] ** 0.5 if block.use_scale else 1.0)
    pairwise = torch.softmax(theta.transpose(1, 2) @ phi / scale, dim=-1)
    unary = torch.softmax(block.unary(x).flatten(1), dim=1)  # [B, M]
    affinity = pairwise + unary.unsqueeze(1)
    return x + block.out(_to_map(affinity @ g, x)), affinity


def reference_spectral(block: SpectralNonLocalBlock, x):
    t = F.relu(block.theta(x).flatten(2)).transpose(1, 2)  # [B, N, C']
    p = F.relu(block.phi(x).flatten(2)).transpose(1, 2)
    m = t @ p.transpose(1, 2)
    m_hat = (m + m.transpose(1, 2)) / 2
    degree = m_hat.sum(dim=2)
    inv_sqrt = torch.where(degree > 0, degree.clamp(min=1e-300).rsqrt(), torch.zeros_like(degree))
    affinity = inv_sqrt.unsqueeze(2) * m_hat * inv_sqrt.unsqueeze(1)
    z = block.g(x).flatten(2).transpose(1, 2)
    total = 0
    for k in range(block.order):
        total = total + getattr(block, f"w{k + 1}")(
            _to_map(torch.linalg.matrix_power(affinity, k) @ z, x)
        )
    return x + block.norm(total), affinity


def reference_context(block: ContextBlock, x):
    n = x.shape[2:].numel()
    if block.pooling == "avg":
        weights = x.new_full((x.shape[0], n), 1.0 / n)
    else:
        weights = torch.softmax(block.w_k(x).flatten(1), dim=1)
    context = torch.einsum("bcn,bn->bc", x.flatten(2), weights)
    context = context.reshape(x.shape[0], x.shape[1], *([1] * (x.dim() - 2)))
    out = x
    if "channel_mul" in block.fusions:
        out = out * torch.sigmoid(block.transform_mul(context))
    if "channel_add" in block.fusions:
        out = out + block.transform(context)
    return out, weights.unsqueeze(1).expand(-1, n, -1)


def reference(block, x):
    fn = {
        NonLocalBlock: reference_nonlocal,
        DisentangledNonLocalBlock: reference_disentangled,
        SpectralNonLocalBlock: reference_spectral,
        ContextBlock: reference_context,
    }[type(block)]
    return fn(block, x)


def _outputs_and_grads(block, x, fn):
    x = x.clone().requires_grad_(True)
    out = fn(x)
    # A fixed random cotangent so that every output element contributes to the gradients: drawn
    # on the CPU in float64, so that a block on a GPU or in fp32 gets the same one.
    gen = torch.Generator().manual_seed(1)
    cotangent = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out)
    params = [p for p in block.parameters() if p.requires_grad]
    grads = torch.autograd.grad((out * cotangent).sum(), [x] + params, allow_unused=True)
    return out.detach(), grads


def _assert_grads_close(grads, ref_grads):
    for g, r in zip(grads, ref_grads):
        if r is None:  # a parameter outside the computation (e.g. the pooled-away part)
            assert g is None or torch.count_nonzero(g) == 0
        else:
            torch.testing.assert_close(g, r, **TOL)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_fast_path_matches_reference(case, shape):
    _, cls, kwargs = case
    block = make_block(cls, kwargs, dim=len(shape))
    x = torch.randn(2, 8, *shape, dtype=torch.float64)
    out, grads = _outputs_and_grads(block, x, block)
    ref_out, ref_grads = _outputs_and_grads(block, x, lambda t: reference(block, t)[0])
    torch.testing.assert_close(out, ref_out, **TOL)
    _assert_grads_close(grads, ref_grads)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_explicit_chunked_path_matches_fast_path(case):
    _, cls, kwargs = case
    block = make_block(cls, kwargs, dim=2)
    x = torch.randn(2, 8, 5, 7, dtype=torch.float64)
    out, grads = _outputs_and_grads(block, x, block)
    block.explicit, block.chunk_size = True, 4  # 35 queries: chunks of 4 and a last one of 3
    explicit_out, explicit_grads = _outputs_and_grads(block, x, block)
    torch.testing.assert_close(explicit_out, out, **TOL)
    _assert_grads_close(explicit_grads, grads)


@pytest.mark.parametrize("shape", [(7,), (5, 3), (2, 3, 5), (1, 1)], ids=str)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_attention_weights_are_reference_rows(case, shape):
    _, cls, kwargs = case
    block = make_block(cls, kwargs, dim=len(shape))
    x = torch.randn(2, 8, *shape, dtype=torch.float64)
    n = x.shape[2:].numel()
    queries = torch.tensor([n - 1, 0, n // 2], dtype=torch.long)
    weights = block.attention_weights(x, queries)
    _, affinity = reference(block, x)
    torch.testing.assert_close(weights, affinity[:, queries], **TOL)
    assert weights.shape[-1] == torch.Size(block.key_shape(shape)).numel()


def test_sub_sampled_key_shape_follows_the_pool():
    block = NonLocalBlock(8, sub_sample=True, dim=3, norm="")
    assert block.key_shape((3, 5, 4)) == (3, 3, 2)  # time kept, space halved (rounded up)
    assert NonLocalBlock(8, sub_sample=True, dim=2).key_shape((1, 1)) == (1, 1)
    assert DisentangledNonLocalBlock(8, sub_sample=True, dim=1).key_shape((7,)) == (4,)
    assert SpectralNonLocalBlock(8).key_shape((5, 3)) == (5, 3)


def _explicit_relu_pair_sum(a, b, v):
    return F.relu(a.unsqueeze(2) + b.unsqueeze(1)) @ v


def test_relu_pair_sum_with_ties_matches_explicit_values_and_gradients():
    # Integer-valued inputs create exact ties b_j == -a_i (ReLU at its kink) and repeated b_j.
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(-3, 4, (2, 9), generator=gen).double().requires_grad_(True)
    b = torch.randint(-3, 4, (2, 11), generator=gen).double().requires_grad_(True)
    v = torch.randn(2, 11, 4, generator=gen, dtype=torch.float64).requires_grad_(True)
    cotangent = torch.randn(2, 9, 4, generator=gen, dtype=torch.float64)
    fast = relu_pair_sum(a, b, v)
    slow = _explicit_relu_pair_sum(a, b, v)
    torch.testing.assert_close(fast, slow, **TOL)
    fast_grads = torch.autograd.grad((fast * cotangent).sum(), (a, b, v))
    slow_grads = torch.autograd.grad((slow * cotangent).sum(), (a, b, v))
    for f, s in zip(fast_grads, slow_grads):
        torch.testing.assert_close(f, s, **TOL)


def test_relu_pair_sum_gradcheck():
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(1, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(relu_pair_sum, (a, b, v))


def test_spectral_zero_degree_rows_give_zero_weights_and_finite_grads():
    block = make_block(SpectralNonLocalBlock, {}, dim=1)
    with torch.no_grad():  # theta = phi = ReLU(-|x| summed) = 0 wherever the input is positive
        block.theta.weight.fill_(-1.0)
        block.theta.bias.zero_()
        block.phi.weight.fill_(-1.0)
        block.phi.bias.zero_()
    x = torch.rand(1, 8, 6, dtype=torch.float64)
    x[..., :3] *= -1  # only the first three positions have non-zero embeddings
    x.requires_grad_(True)
    weights = block.attention_weights(x, torch.arange(6))
    assert torch.count_nonzero(weights[:, 3:]) == 0 and torch.count_nonzero(weights[:, :, 3:]) == 0
    out, grads = _outputs_and_grads(block, x.detach(), block)
    ref_out, ref_grads = _outputs_and_grads(block, x.detach(), lambda t: reference(block, t)[0])
    torch.testing.assert_close(out, ref_out, **TOL)
    assert all(torch.isfinite(g).all() for g in grads if g is not None)
    _assert_grads_close(grads, ref_grads)


SOFTMAX_CASES = [c for c in CASES if c[0].startswith(("nl-gaussian", "nl-embedded", "dnl"))]


@pytest.mark.parametrize("case", SOFTMAX_CASES, ids=[c[0] for c in SOFTMAX_CASES])
def test_softmax_blocks_with_the_flash_backward(case):
    # Small maps keep the affinity for the backward; a tiny budget forces the flash kernel's
    # (and is reported as one that cannot be met).
    _, cls, kwargs = case
    block = make_block(cls, kwargs, dim=2)
    block.affinity_budget_mb = 1e-6
    x = torch.randn(2, 8, 5, 7, dtype=torch.float64)
    with pytest.warns(UserWarning, match="affinity_budget_mb=1e-06 cannot be met .* 'fused'"):
        out, grads = _outputs_and_grads(block, x, block)
    ref_out, ref_grads = _outputs_and_grads(block, x, lambda t: reference(block, t)[0])
    torch.testing.assert_close(out, ref_out, **TOL)
    _assert_grads_close(grads, ref_grads)
