# Copyright (c) nl_detectron contributors. Licensed under the Apache License 2.0.
"""
A detectron2 hook that records whether the context blocks are in use while a model trains.

Every ``period`` iterations (and on the last one: the iterations detectron2's ``PeriodicWriter``
writes) the hook sets ``record_health`` on every context block before the step and reads each
block's :class:`~nl_detectron.layers.health.BlockHealth` after it, into the trainer's
``EventStorage`` as

- ``nonlocal/<block>/gate``, ``.../share``, ``.../entropy``, ``.../diversity`` (the statistics a
  block has; non-finite values are not written), and
- ``nonlocal/<block>/path/<path>``: 1.0 for the path the step took, 0.0 for the paths the block
  took at earlier records,

with ``<block>`` the shortest unique tail of the block's module name (``res4.nonlocal1``,
``keypoint_head.nonlocal2``). One line per record goes to this module's logger. In DDP training
each process records its own blocks; only the main process's writers reach ``metrics.json``.
"""

import logging
import math
from typing import Dict, Set

from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

from detectron2.engine import HookBase

from nl_detectron.layers.base import NonLocalBase
from nl_detectron.layers.health import BlockHealth
from nl_detectron.modeling.build import check_monitor_period
from nl_detectron.modeling.splice import StageContextUnit

__all__ = ["BlockHealthMonitor", "DEFAULT_PERIOD", "context_blocks", "format_health"]

logger = logging.getLogger(__name__)

# Iterations between records by default: detectron2's logging period, so every metrics.json line
# of losses also has the blocks' health.
DEFAULT_PERIOD = 20
PREFIX = "nonlocal"


def context_blocks(model: nn.Module) -> Dict[str, NonLocalBase]:
    """Every context block of ``model`` (DDP unwrapped) by a short name, in module order.

    The name is the shortest tail of at least two parts of the module name (a wrapping
    StageContextUnit's ``.block`` dropped) that no other block's name ends with.
    """
    if isinstance(model, (DistributedDataParallel, DataParallel)):
        model = model.module
    modules = dict(model.named_modules())
    found = {}
    for name, module in modules.items():
        if isinstance(module, NonLocalBase):
            parts = name.split(".") if name else [type(module).__name__]
            if len(parts) > 1 and isinstance(modules[name.rpartition(".")[0]], StageContextUnit):
                parts = parts[:-1]  # res4.nonlocal1.block is res4.nonlocal1
            found[tuple(parts)] = module
    named = {}
    for parts, block in found.items():
        size = min(2, len(parts))
        while size < len(parts) and any(o != parts and o[-size:] == parts[-size:] for o in found):
            size += 1
        named[".".join(parts[-size:])] = block
    return named


def format_health(name: str, health: BlockHealth) -> str:
    """``res4.nonlocal1 gate 0.021 share 0.3% entropy 0.998 diversity 0.001 path kept``."""
    text = f"{name} gate {health.gate:.3g} share {100 * health.share:.2g}%"
    if health.entropy is not None:
        text += f" entropy {health.entropy:.3f} diversity {health.diversity:.3f}"
    return f"{text} path {health.path}"


class BlockHealthMonitor(HookBase):
    """
    Records the health statistics of every context block of the trained model, periodically.

    The hook only arms the blocks on the iterations it records and disarms them in its
    ``after_step``, so hooks after it (evaluation, PreciseBN) run without recording; blocks record
    only in training mode anyway. Place it before the hooks that run forward passes and before
    the ``PeriodicWriter`` (whose ``after_step`` then writes the same iteration's values).
    """

    def __init__(self, model: nn.Module, period: int = DEFAULT_PERIOD):
        """
        Args:
            model: the trained model, or its DistributedDataParallel wrapper.
            period: iterations between records, as PeriodicWriter's; 0 records nothing.
        """
        self.period = check_monitor_period(period, "BlockHealthMonitor(period)")
        self.blocks = context_blocks(model)
        self._armed = False
        self._paths: Dict[str, Set[str]] = {name: set() for name in self.blocks}

    def _due(self) -> bool:
        if not self.period or not self.blocks:
            return False
        it = self.trainer.iter
        return (it + 1) % self.period == 0 or it == self.trainer.max_iter - 1

    def before_step(self):
        self._armed = self._due()
        if self._armed:
            for block in self.blocks.values():
                block.last_health = None  # a block that does not run this step reports nothing
                block.record_health = True

    def after_step(self):
        if not self._armed:
            return
        self._disarm()
        records = {name: b.last_health for name, b in self.blocks.items()}
        records = {name: health for name, health in records.items() if health is not None}
        storage = self.trainer.storage
        for name, health in records.items():
            for stat, value in health.scalars().items():
                if math.isfinite(value):
                    storage.put_scalar(f"{PREFIX}/{name}/{stat}", value, smoothing_hint=False)
            self._paths[name].add(health.path)
            for path in sorted(self._paths[name]):
                value = float(path == health.path)
                storage.put_scalar(f"{PREFIX}/{name}/path/{path}", value, smoothing_hint=False)
        lines = [format_health(name, health) for name, health in records.items()]
        logger.info("block health @ iter %d: %s", self.trainer.iter, "; ".join(lines) or "none ran")

    def after_train(self):
        self._disarm()  # training stopped inside a recorded step

    def _disarm(self):
        self._armed = False
        for block in self.blocks.values():
            block.record_health = False
