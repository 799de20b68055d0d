"""torch.compile: every block and an NL backbone compile in training mode to one graph (fullgraph),
equal eager in outputs and gradients, and take a second and third input size with one recompile
(dynamic shapes) at the most.

The backend is ``aot_eager``: dynamo captures the graph (a graph break raises under fullgraph)
and AOTAutograd traces the backward, as inductor does, without compiling C++; one test (marked slow)
runs inductor itself on the default block."""

import pytest
import torch
from block_cases import CASE_IDS, CASES, make_block
from torch._dynamo.testing import CompileCounterWithBackend

from detectron2.modeling import build_backbone

from nl_detectron.layers.attention_policy import FUSED, KEPT, SORTED_CONCAT
from nl_detectron.layers.base import NonLocalBase
from nl_detectron.model_zoo import get_config

# A first input size, then two more: the second compiles a graph with dynamic sizes, which the
# third reuses. Odd sizes, so that sub-sampling pools a map of odd width too.
BLOCK_SIZES = [(2, 32, 12, 14), (2, 32, 10, 16), (2, 32, 9, 11)]
# Multiples of 32 (FPN), from which no level of the pyramid is 1 wide (a size 1 is specialised).
BACKBONE_SIZES = [(2, 3, 96, 128), (2, 3, 128, 160), (2, 3, 160, 96)]
# Compiled, the embedded Gaussian and DNL take the fused path, eager the kept affinity on the
# CPU: sums in another order.
RTOL = 3e-5


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from scratch and leaves no compiled code behind."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _step(module, x):
    """One training step (loss: the sum of the squared outputs): the outputs and the input's
    gradient, and the parameters' gradients."""
    module.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    out = module(x)
    outputs = list(out.values()) if isinstance(out, dict) else [out]
    sum(o.square().sum() for o in outputs).backward()
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return [o.detach() for o in outputs] + [x.grad], grads


def _assert_close(got, want, what):
    """Equal up to fp32 sums of another order: the errors of each output and of the input's
    gradient scale with its largest entry, those of the parameters' gradients with the largest
    of them all (a bias before a training-mode norm gets a gradient of 0 plus that rounding):
    |got - want| <= RTOL (|want| + scale)."""
    (got_values, got_grads), (values, grads) = got, want
    assert len(got_values) == len(values) and len(got_grads) == len(grads), what
    largest_grad = max(g.abs().max().item() for g in grads)
    pairs = [(g, w, w.abs().max().item()) for g, w in zip(got_values, values)]
    pairs += [(g, w, largest_grad) for g, w in zip(got_grads, grads)]
    for i, (g, w, scale) in enumerate(pairs):
        error = ((g - w).abs() - RTOL * w.abs()).max().item()
        assert error <= RTOL * scale, (what, i, error / scale)


def _check_compiled(module, sizes, backend="aot_eager"):
    """Compile ``module`` with fullgraph=True; each size's training step must equal eager's, the
    first size make one graph and the others one more at the most. Returns the paths its blocks
    took in the last compiled step (``last_path``)."""
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(module, fullgraph=True, backend=counter)
    blocks = [m for m in module.modules() if isinstance(m, NonLocalBase)]
    for n, size in enumerate(sizes):
        x = torch.randn(size)
        got = _step(compiled, x)
        paths = [b.last_path.path for b in blocks if b.last_path is not None]
        _assert_close(got, _step(module, x), f"{size}")
        assert counter.frame_count <= min(n + 1, 2), (size, counter.frame_count)
    return paths


def _fp32_block(cls, kwargs):
    """A block in training mode with a BatchNorm, in fp32 as it is compiled for training;
    parameters of scale 0.2 keep DNL's rows (logits times 5 at temperature 0.05) from being
    so sharp that fp32 rounding of the two paths differs by more than RTOL."""
    block = make_block(cls, kwargs, dim=2, channels=32, norm="BN", std=0.2, dtype=torch.float32)
    return block.train()


@pytest.mark.parametrize("cls, kwargs", [c[1:] for c in CASES], ids=CASE_IDS)
def test_block_compiles_to_one_graph_and_equals_eager(cls, kwargs):
    block = _fp32_block(cls, kwargs)
    paths = _check_compiled(block, BLOCK_SIZES)
    # The policy's rows under compile on the CPU: the Gaussian (value narrower than its keys)
    # keeps its affinity, the other softmax forms take the fused SDPA call, the concatenation its
    # sorted key terms; the other blocks have a single path.
    compiled_paths = {"gaussian": KEPT, "concatenation": SORTED_CONCAT}
    expected = compiled_paths.get(kwargs.get("instantiation", "embedded_gaussian"), FUSED)
    assert paths == ([expected] if block.last_path is not None else [])


@pytest.mark.slow  # inductor compiles C++ for the forward and the backward: tens of seconds
def test_default_block_under_inductor():
    block = _fp32_block(*CASES[CASE_IDS.index("nl-embedded_gaussian")][1:])
    assert _check_compiled(block, BLOCK_SIZES[:1], backend="inductor") == [FUSED]


def test_nl_backbone_compiles_to_one_graph_and_equals_eager():
    """R-18-FPN with a non-local block in res4 (the quick schedule's backbone, GroupNorm), the
    block's zero-initialised gate made non-zero so that it takes part."""
    torch.manual_seed(0)
    cfg = get_config("quick_schedules/mask_rcnn_nl_R18_kp_quick.yaml")
    backbone = build_backbone(cfg).train()
    blocks = [m for m in backbone.modules() if isinstance(m, NonLocalBase)]
    assert len(blocks) == 1
    with torch.no_grad():
        for weight in blocks[0].gate_weights():
            weight.normal_(0.0, 0.5)
    assert _check_compiled(backbone, BACKBONE_SIZES) == [FUSED]
