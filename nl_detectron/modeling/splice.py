# Copyright (c) nl_detectron contributors. Licensed under the Apache License 2.0.
"""
Insert extra modules into an existing ``nn.Sequential`` without renaming its children.

Inserting with ``nn.Sequential.insert`` renumbers every later child (``res4.5`` would become
``res4.6``), so pretrained weights would load into the wrong unit or not at all. Here a new child
gets its own name (``nonlocal5``) and is placed in the module order, which is also the execution
order of ``nn.Sequential``; the stock children keep their names and their objects.
"""

from typing import Callable, Dict, List, Sequence

from torch import nn

from detectron2.layers import CNNBlockBase
from detectron2.modeling.backbone import ResNet

__all__ = ["StageContextUnit", "insert_before", "insert_stage_units", "stage_unit_names"]


class StageContextUnit(CNNBlockBase):
    """
    A shape-preserving context block as one unit of a ResNet stage: [B, C, H, W] -> [B, C, H, W].

    ``ResNet.freeze()`` calls ``freeze()`` on every child of a frozen stage; being a
    :class:`CNNBlockBase` gives the context block that interface (no gradient, BatchNorm turned
    into FrozenBatchNorm). The wrapped block is ``self.block``, e.g. ``res4.nonlocal5.block``.
    """

    def __init__(self, block: nn.Module, channels: int):
        """
        Args:
            block: a module mapping [B, C, H, W] to the same shape (e.g. NonLocalBlock).
            channels: C, its input and output channels.
        """
        super().__init__(channels, channels, 1)
        self.block = block

    def forward(self, x):
        return self.block(x)


def insert_before(seq: nn.Sequential, anchor: str, name: str, module: nn.Module) -> None:
    """
    Add ``module`` to ``seq`` as child ``name``, right before the child named ``anchor``.

    The container is edited in place, so every reference to it (such as ``ResNet.stages``, a plain
    list beside the ``resN`` attributes) sees the change. Only public ``nn.Module`` calls are used:
    children after the anchor are removed and added back behind the new one.
    """
    children = list(seq.named_children())
    names = [n for n, _ in children]
    if anchor not in names:
        raise ValueError(f"No child named {anchor!r} in {type(seq).__name__}; has {names}.")
    if name in names:
        raise ValueError(f"{type(seq).__name__} already has a child named {name!r}.")
    tail = children[names.index(anchor) :]
    for n, _ in tail:
        delattr(seq, n)
    seq.add_module(name, module)
    for n, m in tail:
        seq.add_module(n, m)


def stage_unit_names(stage: nn.Sequential) -> List[str]:
    """Names of the stock residual units of a stage ("0", "1", ...), without inserted modules."""
    return [n for n, _ in stage.named_children() if n.isdigit()]


def insert_stage_units(
    resnet: ResNet,
    placement: Dict[str, Sequence[int]],
    make_block: Callable[[str, int], nn.Module],
) -> List[str]:
    """
    Insert a context block before chosen residual units of a detectron2 ResNet, in place.

    The block inserted before unit ``k`` of stage ``resN`` is the child ``resN.nonlocal{k}``; it
    takes the input of unit ``k``, so it has ``unit.in_channels`` channels. Stock parameter and
    buffer names (``res4.5.conv1.weight``) do not change.

    Args:
        resnet: the backbone; must have every stage named in ``placement``.
        placement: stage name -> unit indices in ``[0, number of units)``.
        make_block: ``make_block(stage_name, channels)`` returns a module mapping [B, C, H, W]
            to the same shape.

    Returns:
        the qualified names of the inserted units, e.g. ``["res4.nonlocal5"]``.
    """
    inserted = []
    for stage_name, positions in placement.items():
        stage = getattr(resnet, stage_name)
        units = stage_unit_names(stage)
        for k in sorted(set(positions)):
            if not 0 <= k < len(units):
                raise ValueError(
                    f"{stage_name} has units 0..{len(units) - 1}; cannot insert before unit {k}."
                )
            channels = getattr(stage, units[k]).in_channels
            unit = StageContextUnit(make_block(stage_name, channels), channels)
            insert_before(stage, units[k], f"nonlocal{k}", unit)
            inserted.append(f"{stage_name}.nonlocal{k}")
    return inserted
