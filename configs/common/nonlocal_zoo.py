"""
detectron2's own model-zoo LazyConfigs with context blocks, for tools/lazyconfig_train_net.py.

The stock file is loaded from the installed detectron2 (not copied), its ``model.backbone`` is
wrapped in ``insert_nonlocal_blocks``, its optimizer's parameter groups come from
``get_nonlocal_optimizer_params`` (the blocks' lr and weight decay on the command line:
``optimizer.params.block_lr_multiplier=10.0``, ``optimizer.params.block_weight_decay=0.0``) and
its COCO evaluation runs through FastCOCOEvaluator. After wrapping, the stock backbone is
``model.backbone.module`` (e.g. the ResNet depth is
``model.backbone.module.bottom_up.stages.depth``).
"""

from detectron2 import model_zoo
from detectron2.config import LazyCall as L

from nl_detectron.engine import get_nonlocal_optimizer_params
from nl_detectron.evaluation import FastCOCOEvaluator
from nl_detectron.modeling import insert_nonlocal_blocks


def nonlocal_zoo_config(zoo_file, **block_args):
    """
    Args:
        zoo_file: a LazyConfig of detectron2's model zoo, relative to its ``configs/`` (e.g.
            ``"new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py"``).
        block_args: arguments of ``insert_nonlocal_blocks`` (``MODEL.NONLOCAL`` in lower case);
            the defaults put one embedded-Gaussian NL block before the last unit of res4.

    Returns:
        the entries of a training config for tools/lazyconfig_train_net.py, in the order
        ``dataloader, lr_multiplier, model, optimizer, train``.
    """
    cfg = model_zoo.get_config(zoo_file)
    cfg.model.backbone = L(insert_nonlocal_blocks)(module=cfg.model.backbone, **block_args)
    # The stock groups (same arguments), with the blocks' own lr factor and weight decay; the lr
    # they multiply is the optimizer's.
    params = cfg.optimizer.params
    params._target_ = get_nonlocal_optimizer_params
    params.setdefault("base_lr", "${..lr}")
    params.block_lr_multiplier = 1.0
    params.block_weight_decay = None
    if "evaluator" in cfg.dataloader:
        cfg.dataloader.evaluator._target_ = FastCOCOEvaluator
    return cfg.dataloader, cfg.lr_multiplier, cfg.model, cfg.optimizer, cfg.train
