"""Every Python config in configs/ instantiates with its blocks in place and starts as stock."""

import copy
import glob
import os
import types

import pytest
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from detectron2 import model_zoo
from detectron2.config import LazyConfig, instantiate

from nl_detectron.layers import NonLocalBlock

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "configs")
# config -> (the detectron2 model-zoo file it wraps, or None; the block it adds)
PY_CONFIGS = {
    "mask_rcnn_nl_R50_FPN_1x.py": (
        "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py",
        "backbone.bottom_up.res4.nonlocal5",
    ),
    "mask_rcnn_nl_R50_FPN_50ep_LSJ.py": (
        "new_baselines/mask_rcnn_R_50_FPN_50ep_LSJ.py",
        "backbone.bottom_up.res4.nonlocal5",
    ),
    "mask_rcnn_nl_R50_FPN_100ep_LSJ.py": (
        "new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py",
        "backbone.bottom_up.res4.nonlocal5",
    ),
    "mask_rcnn_nl_R50_FPN_200ep_LSJ.py": (
        "new_baselines/mask_rcnn_R_50_FPN_200ep_LSJ.py",
        "backbone.bottom_up.res4.nonlocal5",
    ),
    "mask_rcnn_nl_R50_FPN_400ep_LSJ.py": (
        "new_baselines/mask_rcnn_R_50_FPN_400ep_LSJ.py",
        "backbone.bottom_up.res4.nonlocal5",
    ),
    "mask_rcnn_nl_R101_FPN_100ep_LSJ.py": (
        "new_baselines/mask_rcnn_R_101_FPN_100ep_LSJ.py",
        "backbone.bottom_up.res4.nonlocal22",
    ),
    "mask_rcnn_nl_R101_FPN_200ep_LSJ.py": (
        "new_baselines/mask_rcnn_R_101_FPN_200ep_LSJ.py",
        "backbone.bottom_up.res4.nonlocal22",
    ),
    "mask_rcnn_nl_R101_FPN_400ep_LSJ.py": (
        "new_baselines/mask_rcnn_R_101_FPN_400ep_LSJ.py",
        "backbone.bottom_up.res4.nonlocal22",
    ),
    "quick_schedules/mask_rcnn_nl_R18_quick.py": (None, "backbone.bottom_up.res4.nonlocal1"),
}


def test_every_python_config_is_listed():
    found = {
        os.path.relpath(path, CONFIGS_DIR)
        for path in glob.glob(os.path.join(CONFIGS_DIR, "**", "*.py"), recursive=True)
        if os.path.relpath(path, CONFIGS_DIR).split(os.sep)[0] != "common"
    }
    assert found == set(PY_CONFIGS)


def _comparable(node):
    """A config as plain containers; a lambda (e.g. a norm factory) becomes its code, since each
    load of a config file creates new function objects."""
    if isinstance(node, (DictConfig, ListConfig)):
        return _comparable(OmegaConf.to_container(node))
    if isinstance(node, dict):
        return {k: _comparable(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_comparable(v) for v in node]
    if isinstance(node, types.FunctionType):
        code = node.__code__  # its module has a new random name per load
        return (node.__qualname__, code.co_code, code.co_consts, code.co_names)
    return node


def _cheap(model_cfg):
    # Random weights, cheap to run: few proposals and detections, all kept.
    model_cfg.proposal_generator.post_nms_topk = (100, 20)
    model_cfg.roi_heads.box_predictor.test_score_thresh = 0.0
    model_cfg.roi_heads.box_predictor.test_topk_per_image = 5


@pytest.mark.parametrize("config_file", sorted(PY_CONFIGS))
def test_python_config_adds_blocks_to_the_stock_model(config_file, assert_same_outputs):
    zoo_file, block = PY_CONFIGS[config_file]
    cfg = LazyConfig.load(os.path.join(CONFIGS_DIR, config_file))
    # The only change to the stock model's config is the wrapper around the backbone.
    stock_cfg = copy.deepcopy(cfg.model)
    stock_cfg.backbone = stock_cfg.backbone.module
    if zoo_file is not None:
        assert _comparable(stock_cfg) == _comparable(model_zoo.get_config(zoo_file).model)
    _cheap(cfg.model)
    _cheap(stock_cfg)

    torch.manual_seed(0)
    stock = instantiate(stock_cfg).eval()
    torch.manual_seed(1)
    nl = instantiate(cfg.model).eval()
    added = [n for n, _ in nl.named_modules() if n.split(".")[-1].startswith("nonlocal")]
    assert added == [block]
    assert isinstance(nl.get_submodule(block).block, NonLocalBlock)
    incompatible = nl.load_state_dict(stock.state_dict(), strict=False)
    assert incompatible.unexpected_keys == []
    assert incompatible.missing_keys
    assert all(k.startswith(block + ".") for k in incompatible.missing_keys)

    image = {"image": torch.rand(3, 64, 96) * 255, "height": 64, "width": 96}
    with torch.no_grad():
        features = stock.backbone(stock.preprocess_image([image]).tensor)
        assert_same_outputs(features, nl.backbone(nl.preprocess_image([image]).tensor))
        # (Untrained BatchNorm lets R-50/101 activations grow to ~1e6, so the detections may be
        # empty; the features above are compared in any case.)
        assert_same_outputs(stock([image]), nl([image]))
    assert all(torch.isfinite(f).all() for f in features.values())
