"""Block configurations shared by the tests in tests/layers (imported by the test modules)."""

import torch

from nl_detectron.layers import (
    ContextBlock,
    DisentangledNonLocalBlock,
    NonLocalBlock,
    SpectralNonLocalBlock,
)

# (case id, class, keyword arguments); blocks get zero_init=False so gradients are not trivial.
CASES = [
    (f"nl-{inst}{'-sub' if sub else ''}", NonLocalBlock, {"instantiation": inst, "sub_sample": sub})
    for inst in ("gaussian", "embedded_gaussian", "dot_product", "concatenation")
    for sub in (False, True)
] + [
    ("dnl", DisentangledNonLocalBlock, {}),
    ("dnl-sub", DisentangledNonLocalBlock, {"sub_sample": True}),
    ("snl", SpectralNonLocalBlock, {}),
    ("snl-order3", SpectralNonLocalBlock, {"order": 3}),
    ("gc", ContextBlock, {"ratio": 0.25}),
    (
        "gc-avg-mul",
        ContextBlock,
        {"ratio": 0.25, "pooling": "avg", "fusions": ("channel_mul", "channel_add")},
    ),
]
CASE_IDS = [case[0] for case in CASES]
NO_SUB_SAMPLE = [case for case in CASES if not case[2].get("sub_sample")]

# Odd sizes and 1x1 maps for each number of spatial dims.
SHAPES = [(7,), (1,), (5, 3), (1, 1), (2, 3, 5), (1, 1, 1)]


def make_block(cls, kwargs, dim, channels=8, norm="", seed=0, std=0.5, dtype=torch.float64):
    """A block with random parameters of scale ``std`` (softmax rows far from uniform)."""
    torch.manual_seed(seed)
    options = dict(kwargs, dim=dim, zero_init=False)
    if cls is not ContextBlock:
        options["norm"] = norm
    block = cls(channels, **options).to(dtype)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0.0, std)
    return block
