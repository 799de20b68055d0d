"""Models with context blocks for the engine tests: a small module, and the quick R-18 configs."""

import os

import torch
from torch import nn

from detectron2.config import get_cfg

from nl_detectron import add_nonlocal_config
from nl_detectron.layers import (
    ContextBlock,
    DisentangledNonLocalBlock,
    NonLocalBlock,
    SpectralNonLocalBlock,
)
from nl_detectron.layers.base import NonLocalBase

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS_DIR = os.path.join(REPO_ROOT, "configs")
MAIN_QUICK = "quick_schedules/mask_rcnn_nl_R18_kp_quick.yaml"  # the main job: GN, one block
HEAD_QUICK = "quick_schedules/keypoint_rcnn_nlhead_R18_quick.yaml"  # blocks in the head too
LAZY_QUICK = os.path.join(CONFIGS_DIR, "quick_schedules", "mask_rcnn_nl_R18_quick.py")


class ContextNet(nn.Module):
    """A stock conv (weight, bias), a GroupNorm and a head beside one block of each type."""

    def __init__(self, nl_norm: str = "BN", snl_norm: str = ""):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.stem_norm = nn.GroupNorm(8, 32)
        self.nl = NonLocalBlock(32, norm=nl_norm)
        self.dnl = DisentangledNonLocalBlock(32, norm="GN")
        self.snl = SpectralNonLocalBlock(32, norm=snl_norm)
        self.gc = ContextBlock(32, ratio=1 / 4)
        self.head = nn.Conv2d(32, 4, 1)


def quick_cfg(config_file: str, *opts):
    """A CPU config with MODEL.NONLOCAL from configs/ (e.g. quick_schedules/...yaml)."""
    cfg = get_cfg()
    add_nonlocal_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIGS_DIR, config_file))
    cfg.MODEL.DEVICE = "cpu"
    cfg.merge_from_list(list(opts))
    return cfg


def block_parameter_names(model: nn.Module):
    """The names (in ``model``) of every parameter of its context blocks."""
    return {
        f"{name}.{param}"
        for name, module in model.named_modules()
        if isinstance(module, NonLocalBase)
        for param, _ in module.named_parameters()
    }


def hyperparams_by_name(model: nn.Module, groups):
    """{parameter name: its group's hyperparameters}; checks each parameter is in one group."""
    names = {id(p): n for n, p in model.named_parameters()}
    found = {}
    for group in groups:
        hyperparams = {k: v for k, v in group.items() if k != "params"}
        for p in group["params"]:
            assert names[id(p)] not in found, names[id(p)]
            found[names[id(p)]] = hyperparams
    return found


def group_structure(groups):
    """Groups as comparable values: (hyperparameters, parameter ids in order) per group."""
    return [
        ({k: v for k, v in g.items() if k != "params"}, [id(p) for p in g["params"]])
        for g in groups
    ]
