# Copyright (c) nl_detectron contributors. Licensed under the Apache License 2.0.
"""
From ``cfg.MODEL.NONLOCAL`` to context blocks: checks of the node, placement and block construction.

Every check raises a ValueError that names the config key, the bad value and what is allowed, before
any weight is created where the config alone decides it.
"""

import numbers
from typing import Dict, List, Sequence

from torch import nn

from nl_detectron.layers import (
    ContextBlock,
    DisentangledNonLocalBlock,
    NonLocalBlock,
    SpectralNonLocalBlock,
)

__all__ = [
    "BLOCK_TYPES",
    "check_nonlocal_config",
    "build_nonlocal_block",
    "resolve_stage_positions",
    "resolve_head_positions",
]

_KEY = "MODEL.NONLOCAL"

BLOCK_TYPES = {
    "nl": NonLocalBlock,
    "dnl": DisentangledNonLocalBlock,
    "snl": SpectralNonLocalBlock,
    "gc": ContextBlock,
}
INSTANTIATIONS = ("gaussian", "embedded_gaussian", "dot_product", "concatenation")
NORMS = ("", "BN", "SyncBN", "GN", "FrozenBN")
GC_POOLINGS = ("attention", "avg")
GC_FUSIONS = ("channel_add", "channel_mul")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _fail(key: str, value, allowed: str):
    raise ValueError(f"{_KEY}.{key}={value!r} is invalid; allowed: {allowed}.")


def check_nonlocal_config(cfg) -> None:
    """
    Check the keys of ``cfg.MODEL.NONLOCAL`` that do not depend on the model's shapes.

    Raises:
        ValueError: naming the key, the bad value and what is allowed.
    """
    if "NONLOCAL" not in cfg.MODEL:
        raise ValueError(
            f"The config has no {_KEY} node: call nl_detectron.add_nonlocal_config(cfg) before "
            "merging a config file that uses the non-local backbones or heads."
        )
    c = cfg.MODEL.NONLOCAL
    if c.TYPE not in BLOCK_TYPES:
        _fail("TYPE", c.TYPE, ", ".join(repr(t) for t in BLOCK_TYPES))
    if c.TYPE == "nl" and c.INSTANTIATION not in INSTANTIATIONS:
        _fail("INSTANTIATION", c.INSTANTIATION, ", ".join(repr(i) for i in INSTANTIATIONS))
    if c.NORM not in NORMS:
        _fail("NORM", c.NORM, ", ".join(repr(n) for n in NORMS))
    if c.NORM == "FrozenBN" and c.ZERO_INIT:
        raise ValueError(
            f"{_KEY}.NORM='FrozenBN' with {_KEY}.ZERO_INIT=True cannot learn: the frozen, "
            "zero-initialised scale keeps every block the identity forever. Allowed with "
            "ZERO_INIT: NORM '', 'BN', 'SyncBN' or 'GN'."
        )
    if not _is_int(c.REDUCTION) or c.REDUCTION < 1:
        _fail("REDUCTION", c.REDUCTION, "an integer >= 1 (inter channels = channels // REDUCTION)")
    if c.SUB_SAMPLE and c.TYPE in ("snl", "gc"):
        _fail("SUB_SAMPLE", c.SUB_SAMPLE, f"False for TYPE {c.TYPE!r} (only 'nl' and 'dnl' pool)")
    if not isinstance(c.DNL_TEMPERATURE, numbers.Real) or not c.DNL_TEMPERATURE > 0:
        _fail("DNL_TEMPERATURE", c.DNL_TEMPERATURE, "a number > 0")
    if not _is_int(c.SNL_ORDER) or c.SNL_ORDER < 2:
        _fail("SNL_ORDER", c.SNL_ORDER, "an integer >= 2 (number of filter terms)")
    if not isinstance(c.GC_RATIO, numbers.Real) or not 0 < c.GC_RATIO <= 1:
        _fail("GC_RATIO", c.GC_RATIO, "a number in (0, 1]")
    if c.GC_POOLING not in GC_POOLINGS:
        _fail("GC_POOLING", c.GC_POOLING, ", ".join(repr(p) for p in GC_POOLINGS))
    fusions = list(c.GC_FUSIONS)
    if not fusions or len(set(fusions)) != len(fusions) or not set(fusions) <= set(GC_FUSIONS):
        _fail("GC_FUSIONS", c.GC_FUSIONS, f"a non-empty subset of {list(GC_FUSIONS)}")
    if c.TYPE == "gc" and c.ZERO_INIT and "channel_mul" in fusions:
        raise ValueError(
            f"{_KEY}.GC_FUSIONS={fusions!r} with {_KEY}.ZERO_INIT=True: x * sigmoid(.) cannot "
            "start as the identity. Allowed with ZERO_INIT: GC_FUSIONS ['channel_add']; or "
            "ZERO_INIT False."
        )
    if len(c.STAGES) != len(c.POSITIONS):
        raise ValueError(
            f"{_KEY}.POSITIONS={c.POSITIONS!r} must have one list per entry of {_KEY}.STAGES="
            f"{c.STAGES!r} ({len(c.STAGES)} lists, got {len(c.POSITIONS)})."
        )
    if len(set(c.STAGES)) != len(c.STAGES):
        _fail("STAGES", c.STAGES, "each stage at most once (list all its positions in POSITIONS)")
    for positions in c.POSITIONS:
        if isinstance(positions, (str, bytes)) or not isinstance(positions, Sequence):
            _fail("POSITIONS", c.POSITIONS, "a list of integer lists, e.g. [[-1]]")
        if not positions or not all(_is_int(p) for p in positions):
            _fail("POSITIONS", c.POSITIONS, "non-empty lists of integers, e.g. [[-1]]")


def build_nonlocal_block(cfg, in_channels: int, *, where: str = "") -> nn.Module:
    """
    Build one context block of ``cfg.MODEL.NONLOCAL.TYPE``: [B, C, H, W] -> [B, C, H, W].

    Args:
        cfg: a config with the ``MODEL.NONLOCAL`` node (see :func:`add_nonlocal_config`).
        in_channels: C.
        where: where the block goes, for error messages (e.g. "res4").
    """
    c = cfg.MODEL.NONLOCAL
    place = f" at {where}" if where else ""
    if c.TYPE == "gc":
        if int(in_channels * c.GC_RATIO) < 1:
            _fail(
                "GC_RATIO",
                c.GC_RATIO,
                f"at least 1/{in_channels} for the {in_channels}-channel block{place}",
            )
        return ContextBlock(
            in_channels,
            ratio=c.GC_RATIO,
            pooling=c.GC_POOLING,
            fusions=tuple(c.GC_FUSIONS),
            dim=2,
            zero_init=c.ZERO_INIT,
        )
    # The GC transform has its own LayerNorm; the other blocks normalise their output with NORM.
    common = {"dim": 2, "norm": c.NORM, "zero_init": c.ZERO_INIT}
    inter_channels = in_channels // c.REDUCTION
    if inter_channels < 1:
        _fail(
            "REDUCTION",
            c.REDUCTION,
            f"1..{in_channels} for the {in_channels}-channel block{place}",
        )
    if c.TYPE == "nl":
        return NonLocalBlock(
            in_channels,
            inter_channels=inter_channels,
            instantiation=c.INSTANTIATION,
            sub_sample=c.SUB_SAMPLE,
            use_scale=c.USE_SCALE,
            **common,
        )
    if c.TYPE == "dnl":
        return DisentangledNonLocalBlock(
            in_channels,
            inter_channels=inter_channels,
            temperature=c.DNL_TEMPERATURE,
            use_scale=c.USE_SCALE,
            sub_sample=c.SUB_SAMPLE,
            **common,
        )
    return SpectralNonLocalBlock(
        in_channels, inter_channels=inter_channels, order=c.SNL_ORDER, **common
    )


def resolve_stage_positions(cfg, num_units: Dict[str, int], freeze_at: int) -> Dict[str, List[int]]:
    """
    Turn ``MODEL.NONLOCAL.STAGES`` / ``POSITIONS`` into non-negative unit indices per stage.

    Args:
        num_units: stage name -> number of residual units, for the stages the backbone has.
        freeze_at: ``MODEL.BACKBONE.FREEZE_AT``; a block in a frozen stage could never learn.

    Returns:
        stage name -> sorted unit indices, in the order of STAGES.
    """
    c = cfg.MODEL.NONLOCAL
    placement = {}
    for stage, positions in zip(c.STAGES, c.POSITIONS):
        if stage not in num_units:
            _fail(
                "STAGES",
                list(c.STAGES),
                f"stages this backbone builds: {list(num_units)} (it stops at the last of "
                "MODEL.RESNETS.OUT_FEATURES; in a C4 model res5 is the ROI head, not the backbone)",
            )
        if freeze_at >= int(stage[len("res") :]):
            raise ValueError(
                f"{_KEY}.STAGES has {stage!r}, which MODEL.BACKBONE.FREEZE_AT={freeze_at} freezes; "
                f"a frozen block never learns. Allowed: stages above res{freeze_at}, or a lower "
                "FREEZE_AT."
            )
        n = num_units[stage]
        resolved = []
        for p in positions:
            if not -n <= p < n:
                _fail(
                    "POSITIONS",
                    list(c.POSITIONS),
                    f"unit indices of {stage} (it has {n} units): {-n}..{n - 1}",
                )
            resolved.append(p % n)
        if len(set(resolved)) != len(resolved):
            _fail("POSITIONS", list(c.POSITIONS), f"distinct units of {stage} (got {positions})")
        placement[stage] = sorted(resolved)
    return placement


def resolve_head_positions(cfg, num_convs: int) -> List[int]:
    """``MODEL.NONLOCAL.KEYPOINT_HEAD_POSITIONS`` checked against a head of ``num_convs`` convs."""
    positions = list(cfg.MODEL.NONLOCAL.KEYPOINT_HEAD_POSITIONS)
    if not all(_is_int(p) and 1 <= p <= num_convs for p in positions) or len(set(positions)) != len(
        positions
    ):
        _fail(
            "KEYPOINT_HEAD_POSITIONS",
            positions,
            f"distinct conv indices 1..{num_convs} (MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS has "
            f"{num_convs} convs)",
        )
    return sorted(positions)
