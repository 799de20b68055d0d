# Copyright (c) nl_detectron contributors. Licensed under the Apache License 2.0.
"""
The optimizer with its own learning rate and weight decay for the context blocks.

detectron2 builds one parameter group per combination of hyperparameters
(:func:`detectron2.solver.get_default_optimizer_params`). Here every parameter of a context block
(a :class:`nl_detectron.layers.base.NonLocalBase` anywhere in the model: backbone, keypoint head)
keeps the group detectron2 gives it, with two changes:

- lr: detectron2's lr for it (base_lr, times bias_lr_factor for a bias, times lr_factor_func of
  its name) times ``block_lr_multiplier``;
- weight_decay: ``block_weight_decay`` when it is a number, for every block parameter (norm
  scales and biases included); None keeps detectron2's rules.

Every other parameter gets exactly detectron2's lr and weight decay, and the groups are merged by
detectron2's ``reduce_param_groups``.
"""

import math
import numbers
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from detectron2.solver import get_default_optimizer_params
from detectron2.solver.build import maybe_add_gradient_clipping, reduce_param_groups

from nl_detectron.layers.base import NonLocalBase
from nl_detectron.modeling import NonLocalSettings

__all__ = ["build_nonlocal_optimizer", "get_nonlocal_optimizer_params"]


def _check_rate(name: str, value, allowed: str) -> None:
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (real and 0 <= value < math.inf):
        raise ValueError(
            f"get_nonlocal_optimizer_params(): {name}={value!r} is invalid; allowed: {allowed}."
        )


def get_nonlocal_optimizer_params(
    model: nn.Module,
    *,
    block_lr_multiplier: float = 1.0,
    block_weight_decay: Optional[float] = None,
    **kwargs,
) -> List[Dict[str, Any]]:
    """
    detectron2's parameter groups with the context blocks' lr multiplied and, optionally, their
    weight decay replaced. For LazyConfig (tools/lazyconfig_train_net.py sets ``params.model``)::

        optimizer.params = L(get_nonlocal_optimizer_params)(
            base_lr="${..lr}", weight_decay_norm=0.0, block_lr_multiplier=10.0
        )

    Args:
        model: the model the optimizer trains; its context blocks are the
            :class:`~nl_detectron.layers.base.NonLocalBase` modules in its tree.
        block_lr_multiplier: a block parameter's lr is the one detectron2 gives it times this
            (needs ``base_lr`` unless it is 1).
        block_weight_decay: None: detectron2's rules (``weight_decay``, ``weight_decay_norm``,
            ``weight_decay_bias``) apply to the blocks too; a number: the weight decay of every
            block parameter, the norm scale that gates the block's output included.
        kwargs: the arguments of :func:`detectron2.solver.get_default_optimizer_params`
            (``base_lr``, ``weight_decay``, ``weight_decay_norm``, ``bias_lr_factor``,
            ``weight_decay_bias``, ``lr_factor_func``, ``overrides``).

    Returns:
        parameter groups for a ``torch.optim.Optimizer``.
    """
    _check_rate("block_lr_multiplier", block_lr_multiplier, "a finite real >= 0")
    if block_weight_decay is not None:
        _check_rate("block_weight_decay", block_weight_decay, "None or a finite real >= 0")
    if block_lr_multiplier != 1 and kwargs.get("base_lr") is None:
        raise ValueError(
            f"get_nonlocal_optimizer_params(): block_lr_multiplier={block_lr_multiplier!r} "
            "needs base_lr, the lr it multiplies (LazyConfig: optimizer.params.base_lr="
            "'${..lr}', the optimizer's lr)."
        )
    groups = get_default_optimizer_params(model, **kwargs)
    blocks = [m for m in model.modules() if isinstance(m, NonLocalBase)]
    block_params = {id(p) for block in blocks for p in block.parameters()}
    per_param = []
    for group in groups:
        hyperparams = {k: v for k, v in group.items() if k != "params"}
        block_hyperparams = dict(hyperparams)
        if block_lr_multiplier != 1:
            block_hyperparams["lr"] = hyperparams["lr"] * block_lr_multiplier
        if block_weight_decay is not None:
            block_hyperparams["weight_decay"] = block_weight_decay
        for p in group["params"]:
            chosen = block_hyperparams if id(p) in block_params else hyperparams
            per_param.append({"params": [p], **chosen})
    return reduce_param_groups(per_param)


def build_nonlocal_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """
    detectron2's :func:`~detectron2.solver.build_optimizer` (SGD with ``cfg.SOLVER``'s lr,
    momentum, nesterov, weight decay rules and gradient clipping) with the context blocks' lr
    times ``MODEL.NONLOCAL.LR_MULTIPLIER`` and their weight decay ``MODEL.NONLOCAL.WEIGHT_DECAY``
    (see :func:`get_nonlocal_optimizer_params`).
    """
    settings = NonLocalSettings.from_config(cfg)
    params = get_nonlocal_optimizer_params(
        model,
        block_lr_multiplier=settings.lr_multiplier,
        block_weight_decay=settings.weight_decay,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    sgd_args = {
        "params": params,
        "lr": cfg.SOLVER.BASE_LR,
        "momentum": cfg.SOLVER.MOMENTUM,
        "nesterov": cfg.SOLVER.NESTEROV,
        "weight_decay": cfg.SOLVER.WEIGHT_DECAY,
        "foreach": True,
    }
    return maybe_add_gradient_clipping(cfg, torch.optim.SGD(**sgd_args))
