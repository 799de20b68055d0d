# Copyright (c) nl_detectron contributors. Licensed under the Apache License 2.0.
"""
Context blocks in any backbone that holds a detectron2 ``ResNet``: one splice, two front doors.

- :func:`insert_nonlocal_blocks` takes the settings as keyword arguments (LazyConfig:
  ``L(insert_nonlocal_blocks)(module=model.backbone, stages=["res4"])``);
- :func:`add_nonlocal_blocks` reads them from ``cfg.MODEL.NONLOCAL``; the registered builder
  :func:`build_nonlocal_backbone` builds the stock backbone named by ``MODEL.NONLOCAL.BACKBONE``
  and calls it.

Both end in :func:`splice_nonlocal_blocks`. The stock backbone is built first, so every stock
parameter keeps its name and a stock (or Caffe2 ImageNet) checkpoint loads with only the new blocks
missing.
"""

import logging
from typing import Optional, Sequence, Tuple

from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone import ResNet

from .build import NonLocalSettings
from .splice import insert_stage_units, stage_unit_names

__all__ = [
    "add_nonlocal_blocks",
    "build_nonlocal_backbone",
    "build_resnet_nl_backbone",
    "build_resnet_nl_fpn_backbone",
    "find_resnet",
    "insert_nonlocal_blocks",
    "splice_nonlocal_blocks",
]

logger = logging.getLogger(__name__)

# Builders of this module: each already inserts blocks, so none can be MODEL.NONLOCAL.BACKBONE.
_NONLOCAL_BUILDERS = (
    "build_nonlocal_backbone",
    "build_resnet_nl_backbone",
    "build_resnet_nl_fpn_backbone",
)


def find_resnet(module: nn.Module, *, what: Optional[str] = None) -> Tuple[str, ResNet]:
    """
    The one detectron2 ``ResNet`` in ``module``'s tree: ``module`` itself, ``module.bottom_up``
    (FPN, RetinaNet's FPN) or deeper.

    Args:
        what: how error messages name ``module`` (default: its class).

    Returns:
        (its qualified name in ``module``, "" for ``module`` itself; the ResNet).
    """
    found = [(name, m) for name, m in module.named_modules() if isinstance(m, ResNet)]
    what = what or f"the {type(module).__name__}"
    if not found:
        raise ValueError(
            f"{what} holds no detectron2 ResNet (searched its whole module tree); context blocks "
            "go into a detectron2.modeling.backbone.ResNet or a module that holds one (e.g. an "
            "FPN whose bottom_up is a ResNet)."
        )
    if len(found) > 1:
        names = [name or "<itself>" for name, _ in found]
        raise ValueError(
            f"{what} holds {len(found)} detectron2 ResNets ({', '.join(names)}); pass the one "
            "that gets the blocks."
        )
    return found[0]


def _frozen_stages(resnet: ResNet) -> Sequence[str]:
    """Stages with no trainable parameter (those that ``ResNet.freeze(freeze_at)`` froze)."""
    return [
        name
        for name in resnet.stage_names
        if not any(p.requires_grad for p in getattr(resnet, name).parameters())
    ]


def splice_nonlocal_blocks(
    module: nn.Module, settings: NonLocalSettings, *, what: Optional[str] = None
) -> nn.Module:
    """
    Insert the blocks of ``settings`` into the ResNet inside ``module``, in place; returns it.

    A block placed at position ``k`` of stage ``resN`` becomes the child ``resN.nonlocal{k}`` and
    runs right before residual unit ``k``; it takes that unit's input channels.
    """
    path, resnet = find_resnet(module, what=what)
    num_units = {name: len(stage_unit_names(getattr(resnet, name))) for name in resnet.stage_names}
    placement = settings.resolve_positions(num_units, _frozen_stages(resnet))
    inserted = insert_stage_units(
        resnet, placement, lambda stage, channels: settings.build_block(channels, where=stage)
    )
    if inserted:
        prefix = f"{path}." if path else ""
        logger.info(
            "Inserted %d '%s' context block(s): %s",
            len(inserted),
            settings.type,
            ", ".join(prefix + name for name in inserted),
        )
    return module


def insert_nonlocal_blocks(
    module: nn.Module,
    *,
    type: str = "nl",
    instantiation: str = "embedded_gaussian",
    stages: Sequence[str] = ("res4",),
    positions: Sequence[Sequence[int]] = ((-1,),),
    reduction: int = 2,
    sub_sample: bool = False,
    use_scale: bool = True,
    norm: str = "BN",
    zero_init: bool = True,
    affinity_budget_mb: Optional[float] = None,
    use_triton: bool = False,
    dnl_temperature: float = 0.05,
    snl_order: int = 2,
    gc_ratio: float = 1.0 / 16,
    gc_pooling: str = "attention",
    gc_fusions: Sequence[str] = ("channel_add",),
) -> nn.Module:
    """
    Insert context blocks into a detectron2 ``ResNet`` or a module holding one, without a config.

    The keyword arguments are the keys of ``MODEL.NONLOCAL`` in lower case, with the same
    defaults (see :func:`nl_detectron.add_nonlocal_config`): by default one embedded-Gaussian
    non-local block right before the last unit of res4. For LazyConfig::

        model.backbone = L(insert_nonlocal_blocks)(module=model.backbone, norm="SyncBN")

    Args:
        module: a ResNet, or a module whose tree holds exactly one (FPN, a whole model).

    Returns:
        ``module``, edited in place: the ResNet's stage ``resN`` gains the child ``nonlocal{k}``
        before unit ``k``; stock parameter names are unchanged.
    """
    settings = NonLocalSettings(
        type=type,
        instantiation=instantiation,
        stages=stages,
        positions=positions,
        reduction=reduction,
        sub_sample=sub_sample,
        use_scale=use_scale,
        norm=norm,
        zero_init=zero_init,
        affinity_budget_mb=affinity_budget_mb,
        use_triton=use_triton,
        dnl_temperature=dnl_temperature,
        snl_order=snl_order,
        gc_ratio=gc_ratio,
        gc_pooling=gc_pooling,
        gc_fusions=gc_fusions,
        source="insert_nonlocal_blocks",
    )
    # (Here ``type`` is the argument, hence ``__class__``.)
    what = f"the {module.__class__.__name__} given to insert_nonlocal_blocks()"
    return splice_nonlocal_blocks(module, settings, what=what)


def add_nonlocal_blocks(module: nn.Module, cfg, *, what: Optional[str] = None) -> nn.Module:
    """:func:`insert_nonlocal_blocks` with the settings of ``cfg.MODEL.NONLOCAL``."""
    return splice_nonlocal_blocks(module, NonLocalSettings.from_config(cfg), what=what)


def _build_with_blocks(cfg, input_shape: ShapeSpec, builder: str) -> Backbone:
    backbone = BACKBONE_REGISTRY.get(builder)(cfg, input_shape)
    what = f"the {type(backbone).__name__} built by {builder!r} (MODEL.NONLOCAL.BACKBONE)"
    return add_nonlocal_blocks(backbone, cfg, what=what)


@BACKBONE_REGISTRY.register()
def build_nonlocal_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """
    The backbone of the registered builder ``MODEL.NONLOCAL.BACKBONE`` (e.g.
    ``build_resnet_fpn_backbone``, ``build_resnet_backbone``,
    ``build_retinanet_resnet_fpn_backbone``) with context blocks in its ResNet.

    A stock model-zoo config switches on with ``MODEL.BACKBONE.NAME build_nonlocal_backbone``
    and ``MODEL.NONLOCAL.BACKBONE <its MODEL.BACKBONE.NAME>``.
    """
    NonLocalSettings.from_config(cfg)  # before the (possibly large) stock backbone is built
    builder = cfg.MODEL.NONLOCAL.BACKBONE
    stock = sorted(name for name, _ in BACKBONE_REGISTRY if name not in _NONLOCAL_BUILDERS)
    if builder not in stock:
        problem = "already inserts blocks" if builder in _NONLOCAL_BUILDERS else "is not registered"
        raise ValueError(
            f"MODEL.NONLOCAL.BACKBONE={builder!r} {problem}; allowed: a registered builder of a "
            f"backbone that holds a detectron2 ResNet, one of {stock}."
        )
    return _build_with_blocks(cfg, input_shape, builder)


def _fixed_builder(cfg, name: str, builder: str) -> str:
    """``builder``, after checking MODEL.NONLOCAL.BACKBONE does not ask for another one."""
    chosen = cfg.MODEL.NONLOCAL.BACKBONE
    if chosen not in (builder, "build_resnet_fpn_backbone"):  # that key's default
        raise ValueError(
            f"MODEL.NONLOCAL.BACKBONE={chosen!r} is not used by MODEL.BACKBONE.NAME={name!r}, "
            f"which always builds {builder!r}. Allowed: MODEL.BACKBONE.NAME "
            f"'build_nonlocal_backbone' to build {chosen!r}, or MODEL.NONLOCAL.BACKBONE "
            f"{builder!r}."
        )
    return builder


@BACKBONE_REGISTRY.register()
def build_resnet_nl_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """``build_nonlocal_backbone`` of ``build_resnet_backbone`` (C4, DC5, plain ResNet)."""
    NonLocalSettings.from_config(cfg)
    builder = _fixed_builder(cfg, "build_resnet_nl_backbone", "build_resnet_backbone")
    return _build_with_blocks(cfg, input_shape, builder)


@BACKBONE_REGISTRY.register()
def build_resnet_nl_fpn_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """``build_nonlocal_backbone`` of ``build_resnet_fpn_backbone``."""
    NonLocalSettings.from_config(cfg)
    builder = _fixed_builder(cfg, "build_resnet_nl_fpn_backbone", "build_resnet_fpn_backbone")
    return _build_with_blocks(cfg, input_shape, builder)
