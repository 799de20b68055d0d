# Copyright (c) nl_detectron contributors. Licensed under the Apache License 2.0.
"""
From block settings to context blocks: checks, placement and block construction.

The settings are those of ``cfg.MODEL.NONLOCAL`` in Python form (:class:`NonLocalSettings`, one
attribute per key, lower case), made either from a config or from keyword arguments (LazyConfig).
Every check raises a ValueError that names the setting as its source spells it
(``MODEL.NONLOCAL.TYPE`` or ``type``), the bad value and what is allowed, before any weight is
created where the settings alone decide it.
"""

import dataclasses
import math
import numbers
from typing import Dict, List, Optional, Sequence

from torch import nn

from nl_detectron.layers import (
    ContextBlock,
    DisentangledNonLocalBlock,
    NonLocalBlock,
    SpectralNonLocalBlock,
)

__all__ = [
    "BLOCK_TYPES",
    "NonLocalSettings",
    "check_monitor_period",
    "check_nonlocal_config",
    "build_nonlocal_block",
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


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_finite_nonnegative(value) -> bool:
    return _is_real(value) and 0 <= value < math.inf


def _is_sequence(value) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


@dataclasses.dataclass
class NonLocalSettings:
    """
    Where context blocks go in a ResNet and how they are built: ``MODEL.NONLOCAL`` in Python form.

    Each field is the config key in lower case (``TYPE`` -> ``type``); see
    :func:`nl_detectron.add_nonlocal_config` for their meaning and defaults. Creating an instance
    checks every setting that does not depend on the model's shapes.

    ``source`` says how messages spell a setting: ``"config"`` (``MODEL.NONLOCAL.TYPE``) or the
    name of the function whose keyword arguments they are (``insert_nonlocal_blocks(): type``).
    """

    type: str
    instantiation: str
    stages: Sequence[str]
    positions: Sequence[Sequence[int]]
    reduction: int
    sub_sample: bool
    use_scale: bool
    norm: str
    zero_init: bool
    affinity_budget_mb: Optional[float]
    use_triton: bool
    dnl_temperature: float
    snl_order: int
    gc_ratio: float
    gc_pooling: str
    gc_fusions: Sequence[str]
    # Read by the optimizer (nl_detectron.engine), not by the splice: keyword callers that only
    # place blocks leave them at their defaults.
    lr_multiplier: float = 1.0
    weight_decay: Optional[float] = None
    source: str = "config"

    @classmethod
    def from_config(cls, cfg) -> "NonLocalSettings":
        """The settings of ``cfg.MODEL.NONLOCAL`` (all but the keypoint head's and BACKBONE)."""
        if "NONLOCAL" not in cfg.MODEL:
            raise ValueError(
                f"The config has no {_KEY} node: call nl_detectron.add_nonlocal_config(cfg) before "
                "merging a config file that uses the non-local backbones or heads."
            )
        node = cfg.MODEL.NONLOCAL
        values = {
            f.name: node[f.name.upper()] for f in dataclasses.fields(cls) if f.name != "source"
        }
        return cls(**values, source="config")

    def key(self, name: str) -> str:
        """How messages spell the setting ``name``: its config key or its argument name."""
        return f"{_KEY}.{name.upper()}" if self.source == "config" else name

    def error(self, message: str) -> ValueError:
        """A ValueError about these settings; keyword arguments' messages name their function."""
        return ValueError(message if self.source == "config" else f"{self.source}(): {message}")

    def fail(self, name: str, value, allowed: str):
        raise self.error(f"{self.key(name)}={value!r} is invalid; allowed: {allowed}.")

    def __post_init__(self):
        if self.type not in BLOCK_TYPES:
            self.fail("type", self.type, ", ".join(repr(t) for t in BLOCK_TYPES))
        if self.type == "nl" and self.instantiation not in INSTANTIATIONS:
            self.fail("instantiation", self.instantiation, ", ".join(map(repr, INSTANTIATIONS)))
        if self.norm not in NORMS:
            self.fail("norm", self.norm, ", ".join(repr(n) for n in NORMS))
        if self.norm == "FrozenBN" and self.zero_init:
            raise self.error(
                f"{self.key('norm')}='FrozenBN' with {self.key('zero_init')}=True cannot learn: "
                "the frozen, zero-initialised scale keeps every block the identity forever. "
                f"Allowed: {self.key('norm')} '', 'BN', 'SyncBN' or 'GN'; or "
                f"{self.key('zero_init')}=False."
            )
        if not _is_int(self.reduction) or self.reduction < 1:
            self.fail("reduction", self.reduction, "an integer >= 1 (inter = channels // it)")
        if self.sub_sample and self.type in ("snl", "gc"):
            self.fail("sub_sample", self.sub_sample, f"False for type {self.type!r} (only nl, dnl)")
        budget = self.affinity_budget_mb
        if budget is not None and not (_is_real(budget) and 0 < budget < math.inf):
            self.fail("affinity_budget_mb", budget, "None (the device's default) or MiB > 0")
        if not isinstance(self.use_triton, bool):
            self.fail("use_triton", self.use_triton, "True or False")
        pairwise = self.type == "dnl" or (self.type == "nl" and self.instantiation != "dot_product")
        if self.use_triton and not pairwise:
            self.fail(
                "use_triton",
                self.use_triton,
                f"False, or True only for blocks with a pairwise aggregation: {self.key('type')} "
                f"'dnl', or 'nl' with {self.key('instantiation')} other than 'dot_product'; got "
                f"{self.type!r} / {self.instantiation!r}",
            )
        if not isinstance(self.dnl_temperature, numbers.Real) or not self.dnl_temperature > 0:
            self.fail("dnl_temperature", self.dnl_temperature, "a number > 0")
        if not _is_int(self.snl_order) or self.snl_order < 2:
            self.fail("snl_order", self.snl_order, "an integer >= 2 (number of filter terms)")
        if not isinstance(self.gc_ratio, numbers.Real) or not 0 < self.gc_ratio <= 1:
            self.fail("gc_ratio", self.gc_ratio, "a number in (0, 1]")
        if self.gc_pooling not in GC_POOLINGS:
            self.fail("gc_pooling", self.gc_pooling, ", ".join(repr(p) for p in GC_POOLINGS))
        fusions = list(self.gc_fusions) if _is_sequence(self.gc_fusions) else None
        if not fusions or len(set(fusions)) != len(fusions) or not set(fusions) <= set(GC_FUSIONS):
            self.fail("gc_fusions", self.gc_fusions, f"a non-empty subset of {list(GC_FUSIONS)}")
        if self.type == "gc" and self.zero_init and "channel_mul" in fusions:
            raise self.error(
                f"{self.key('gc_fusions')}={fusions!r} with {self.key('zero_init')}=True: "
                "x * sigmoid(.) cannot start as the identity. Allowed: "
                f"{self.key('gc_fusions')}=['channel_add']; or {self.key('zero_init')}=False."
            )
        self._check_placement()
        self._check_optimizer()

    def _check_optimizer(self):
        if not _is_finite_nonnegative(self.lr_multiplier):
            self.fail(
                "lr_multiplier",
                self.lr_multiplier,
                "a finite real >= 0 (the blocks' learning rate is the solver's times it)",
            )
        decay = self.weight_decay
        if decay is not None and not _is_finite_nonnegative(decay):
            self.fail(
                "weight_decay",
                decay,
                "None (the solver's weight decay rules) or a finite real >= 0 (for every "
                "parameter of the blocks)",
            )

    def _check_placement(self):
        if not _is_sequence(self.stages) or not all(isinstance(s, str) for s in self.stages):
            self.fail("stages", self.stages, "a list of stage names, e.g. ['res4']")
        if not _is_sequence(self.positions) or len(self.stages) != len(self.positions):
            raise self.error(
                f"{self.key('positions')}={self.positions!r} must have one list per entry of "
                f"{self.key('stages')}={self.stages!r} ({len(self.stages)} lists)."
            )
        if len(set(self.stages)) != len(self.stages):
            self.fail(
                "stages", self.stages, "each stage at most once (all its positions in one list)"
            )
        for positions in self.positions:
            if not _is_sequence(positions):
                self.fail("positions", self.positions, "a list of integer lists, e.g. [[-1]]")
            if not positions or not all(_is_int(p) for p in positions):
                self.fail("positions", self.positions, "non-empty lists of integers, e.g. [[-1]]")

    def build_block(self, in_channels: int, *, where: str = "") -> nn.Module:
        """
        One context block of ``self.type``: [B, C, H, W] -> [B, C, H, W].

        Args:
            in_channels: C.
            where: where the block goes, for error messages (e.g. "res4").
        """
        block = self._new_block(in_channels, where)
        # Block attributes, not constructor arguments: they only pick a computation path.
        block.affinity_budget_mb = self.affinity_budget_mb
        block.use_triton = self.use_triton
        return block

    def _new_block(self, in_channels: int, where: str) -> nn.Module:
        place = f" at {where}" if where else ""
        if self.type == "gc":
            if int(in_channels * self.gc_ratio) < 1:
                self.fail(
                    "gc_ratio",
                    self.gc_ratio,
                    f"at least 1/{in_channels} for the {in_channels}-channel block{place}",
                )
            return ContextBlock(
                in_channels,
                ratio=self.gc_ratio,
                pooling=self.gc_pooling,
                fusions=tuple(self.gc_fusions),
                dim=2,
                zero_init=self.zero_init,
            )
        # The GC transform has its own LayerNorm; the other blocks normalise their output with norm.
        common = {"dim": 2, "norm": self.norm, "zero_init": self.zero_init}
        inter_channels = in_channels // self.reduction
        if inter_channels < 1:
            self.fail(
                "reduction",
                self.reduction,
                f"1..{in_channels} for the {in_channels}-channel block{place}",
            )
        if self.type == "nl":
            return NonLocalBlock(
                in_channels,
                inter_channels=inter_channels,
                instantiation=self.instantiation,
                sub_sample=self.sub_sample,
                use_scale=self.use_scale,
                **common,
            )
        if self.type == "dnl":
            return DisentangledNonLocalBlock(
                in_channels,
                inter_channels=inter_channels,
                temperature=self.dnl_temperature,
                use_scale=self.use_scale,
                sub_sample=self.sub_sample,
                **common,
            )
        return SpectralNonLocalBlock(
            in_channels, inter_channels=inter_channels, order=self.snl_order, **common
        )

    def resolve_positions(
        self, num_units: Dict[str, int], frozen: Sequence[str]
    ) -> Dict[str, List[int]]:
        """
        Turn ``stages`` / ``positions`` into non-negative unit indices per stage.

        Args:
            num_units: stage name -> number of residual units, for the stages the ResNet has.
            frozen: the stages without a trainable parameter; a block there could never learn.

        Returns:
            stage name -> sorted unit indices, in the order of ``stages``.
        """
        placement = {}
        for stage, positions in zip(self.stages, self.positions):
            if stage not in num_units:
                self.fail(
                    "stages",
                    list(self.stages),
                    f"stages this ResNet builds: {list(num_units)} (it stops at the last of its "
                    "out_features, MODEL.RESNETS.OUT_FEATURES; in a C4 model res5 is the ROI "
                    "head, not the backbone)",
                )
            if stage in frozen:
                trainable = [s for s in num_units if s not in frozen]
                raise self.error(
                    f"{self.key('stages')} has {stage!r}, which the ResNet freezes (its "
                    "freeze_at, MODEL.BACKBONE.FREEZE_AT, is at least "
                    f"{stage[len('res') :]}); a frozen block never learns. Allowed: {trainable}, "
                    "or a lower freeze_at."
                )
            n = num_units[stage]
            resolved = []
            for p in positions:
                if not -n <= p < n:
                    self.fail(
                        "positions",
                        list(self.positions),
                        f"unit indices of {stage} (it has {n} units): {-n}..{n - 1}",
                    )
                resolved.append(p % n)
            if len(set(resolved)) != len(resolved):
                self.fail(
                    "positions",
                    list(self.positions),
                    f"distinct units of {stage} (got {positions})",
                )
            placement[stage] = sorted(resolved)
        return placement


def check_nonlocal_config(cfg) -> None:
    """
    Check the keys of ``cfg.MODEL.NONLOCAL`` that do not depend on the model's shapes.

    Raises:
        ValueError: naming the key, the bad value and what is allowed.
    """
    NonLocalSettings.from_config(cfg)
    check_monitor_period(cfg.MODEL.NONLOCAL.MONITOR_PERIOD)


def check_monitor_period(period, key: str = f"{_KEY}.MONITOR_PERIOD") -> int:
    """
    Iterations between block-health records (0: none), checked; ``key`` names it in the error.

    Not a block setting (the splice never reads it): the training scripts' hook does.
    """
    if not _is_int(period) or period < 0:
        raise ValueError(
            f"{key}={period!r} is invalid; allowed: an integer >= 0 (iterations between "
            "block-health records; 0 turns the monitor off)."
        )
    return int(period)


def build_nonlocal_block(cfg, in_channels: int, *, where: str = "") -> nn.Module:
    """One context block of ``cfg.MODEL.NONLOCAL``: see :meth:`NonLocalSettings.build_block`."""
    return NonLocalSettings.from_config(cfg).build_block(in_channels, where=where)


def resolve_head_positions(cfg, num_convs: int) -> List[int]:
    """``MODEL.NONLOCAL.KEYPOINT_HEAD_POSITIONS`` checked against a head of ``num_convs`` convs."""
    positions = list(cfg.MODEL.NONLOCAL.KEYPOINT_HEAD_POSITIONS)
    if not all(_is_int(p) and 1 <= p <= num_convs for p in positions) or len(set(positions)) != len(
        positions
    ):
        raise ValueError(
            f"{_KEY}.KEYPOINT_HEAD_POSITIONS={positions!r} is invalid; allowed: distinct conv "
            f"indices 1..{num_convs} (MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS has {num_convs} convs)."
        )
    return sorted(positions)
