import torch

from detectron2.modeling import build_model

from nl_detectron.analysis import load_stock_weights, stock_config


def test_generic_backbone_maps_to_the_backbone_it_wraps(tiny_cfg):
    tiny_cfg.MODEL.BACKBONE.NAME = "build_nonlocal_backbone"
    tiny_cfg.MODEL.NONLOCAL.BACKBONE = "build_resnet_fpn_backbone"
    tiny_cfg.MODEL.RESNETS.NORM = "GN"
    stock = stock_config(tiny_cfg)
    assert stock.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone"
    torch.manual_seed(0)
    model, stock_model = build_model(tiny_cfg), build_model(stock)
    missing = load_stock_weights(model, stock_model)
    assert missing and all(".nonlocal" in name for name in missing)
