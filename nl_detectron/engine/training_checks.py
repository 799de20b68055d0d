# Copyright (c) nl_detectron contributors. Licensed under the Apache License 2.0.
"""
Checks that the context blocks can learn, made once when training starts.

- :func:`check_training_config` (before any process starts): the config's errors, such as
  ``MODEL.NONLOCAL.NORM: SyncBN`` on the CPU.
- :func:`check_block_training` (the model and its optimizer; as a hook:
  :class:`BlockTrainingChecks`): a :class:`BlockTrainingWarning` naming the block's module for a
  block parameter that will not train, weight decay on the gate's scale, and BatchNorm over too
  few images.
"""

import warnings
from typing import Dict, List, Tuple

import torch
from torch import nn

from detectron2.engine import HookBase
from detectron2.modeling import ROIHeads
from detectron2.utils import comm

from nl_detectron.layers.base import NonLocalBase
from nl_detectron.modeling import check_nonlocal_config

__all__ = [
    "BlockTrainingChecks",
    "BlockTrainingWarning",
    "check_block_training",
    "check_training_config",
]

# BatchNorm over fewer images than this per device has noisy batch statistics.
MIN_BN_IMAGES = 8
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)  # not SyncBatchNorm


class BlockTrainingWarning(UserWarning):
    """A context block that training will not move as intended."""


def check_training_config(cfg) -> None:
    """
    Check ``cfg.MODEL.NONLOCAL`` for training, before any process starts: every key, and a norm
    that ``MODEL.DEVICE`` can train.

    Raises:
        ValueError: naming the key, the bad value and what is allowed.
    """
    check_nonlocal_config(cfg)
    node, device = cfg.MODEL.NONLOCAL, cfg.MODEL.DEVICE
    # GC blocks have no norm of their own: NORM does not apply to them.
    if node.TYPE != "gc" and node.NORM == "SyncBN" and torch.device(device).type == "cpu":
        raise ValueError(
            f"MODEL.NONLOCAL.NORM='SyncBN' is invalid with MODEL.DEVICE={device!r}: torch's "
            "SyncBatchNorm synchronises GPU modules only, and DistributedDataParallel rejects it "
            "on the CPU. Allowed on the CPU: 'GN', 'BN', '' (or 'FrozenBN' with ZERO_INIT False); "
            "or MODEL.DEVICE 'cuda'."
        )


def _named_blocks(model: nn.Module) -> Tuple[List[Tuple[str, NonLocalBase]], Tuple[str, ...]]:
    """The context blocks of ``model`` by module name, and the name prefixes of its ROI heads
    (whose blocks see regions, not images, as their batch)."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    modules = list(model.named_modules())
    blocks = [(name, m) for name, m in modules if isinstance(m, NonLocalBase)]
    return blocks, tuple(f"{name}." for name, m in modules if isinstance(m, ROIHeads))


def _untrained(name: str, block: NonLocalBase, groups: Dict[int, dict]) -> List[str]:
    params = list(block.named_parameters())
    frozen = [n for n, p in params if not p.requires_grad]
    absent = [n for n, p in params if p.requires_grad and id(p) not in groups]
    problems = []
    if frozen:
        problems.append(
            f"Context block {name}: parameter(s) {', '.join(frozen)} are frozen "
            "(requires_grad=False); training leaves them at their initial values."
        )
    if absent:
        problems.append(
            f"Context block {name}: parameter(s) {', '.join(absent)} are in no parameter group "
            "of the optimizer; training leaves them at their initial values. Build the optimizer "
            "after the blocks are inserted, from all the model's parameters."
        )
    return problems


def _decayed_gate(name: str, block: NonLocalBase, groups: Dict[int, dict]) -> List[str]:
    try:
        gate = {id(t) for t in block.gate_weights()}
    except NotImplementedError:  # a block type that does not say which its gate is
        return []
    decays = [
        f"{groups[id(p)]['weight_decay']:g} on {n}"
        for n, p in block.named_parameters()
        if id(p) in gate and id(p) in groups and groups[id(p)].get("weight_decay", 0) > 0
    ]
    if not decays:
        return []
    return [
        f"Context block {name}: weight decay {', '.join(decays)}, the scale of its gate (it "
        "scales what the block adds to its input; zero at init with ZERO_INIT). The decay "
        "pulls the gate back towards 0, shut, where the block returns its input unchanged. To "
        "let it open, train the blocks without decay: MODEL.NONLOCAL.WEIGHT_DECAY 0.0 "
        "(LazyConfig: optimizer.params.block_weight_decay=0.0)."
    ]


def _small_batch_norms(name: str, block: NonLocalBase, images_per_device: int) -> List[str]:
    if images_per_device >= MIN_BN_IMAGES:
        return []
    return [
        f"Context block {name}: its BatchNorm {n} normalises over {images_per_device} image(s) "
        f"per device (fewer than {MIN_BN_IMAGES}), too few for reliable batch statistics. Use "
        "GN (MODEL.NONLOCAL.NORM GN; LazyConfig: norm='GN' in insert_nonlocal_blocks), or "
        "SyncBN to pool the statistics of all GPUs."
        for n, m in block.named_modules()
        if isinstance(m, _BATCH_NORMS)
    ]


def check_block_training(
    model: nn.Module, optimizer: torch.optim.Optimizer, *, images_per_device: int
) -> List[str]:
    """
    Warn (:class:`BlockTrainingWarning`) about each context block of ``model`` that training
    with ``optimizer`` will not move as intended, naming the block's module:

    - a block parameter frozen (``requires_grad=False``) or in no parameter group of
      ``optimizer``;
    - weight decay > 0 on the gate's scale (``block.gate_weights()``: the last norm's weight,
      else the output conv weights; GC: ``transform.conv2.weight``), which pulls the gate back
      towards 0;
    - a BatchNorm in a block that sees fewer than 8 images per device (blocks in the ROI heads
      normalise over regions and are not checked).

    Args:
        model: the trained model (a DistributedDataParallel is unwrapped).
        optimizer: its optimizer.
        images_per_device: the images of one iteration on one device (SOLVER.IMS_PER_BATCH
            divided by the number of processes).

    Returns:
        the warnings' messages (empty when every block is set up to train).
    """
    groups = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    blocks, roi_modules = _named_blocks(model)
    problems = []
    for name, block in blocks:
        problems += _untrained(name, block, groups)
        problems += _decayed_gate(name, block, groups)
        if not name.startswith(roi_modules):
            problems += _small_batch_norms(name, block, images_per_device)
    for message in problems:
        warnings.warn(message, BlockTrainingWarning, stacklevel=2)
    return problems


class BlockTrainingChecks(HookBase):
    """
    :func:`check_block_training` on the trainer's model and optimizer before the first
    iteration, in the main process.
    """

    def __init__(self, ims_per_batch: int):
        """
        Args:
            ims_per_batch: images per iteration over all processes (SOLVER.IMS_PER_BATCH,
                ``dataloader.train.total_batch_size``).
        """
        self._ims_per_batch = ims_per_batch

    def before_train(self):
        if comm.is_main_process():
            check_block_training(
                self.trainer.model,
                self.trainer.optimizer,
                images_per_device=self._ims_per_batch // comm.get_world_size(),
            )
