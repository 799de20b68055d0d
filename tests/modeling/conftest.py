"""Shared helpers for the modeling tests: CPU configs and module-order probes."""

import os

import pytest

from detectron2.config import get_cfg

from nl_detectron import add_nonlocal_config

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "configs")


def _make_cfg(config_file=None, *opts):
    """A CPU config with the MODEL.NONLOCAL node, from a repo config (relative to configs/)."""
    cfg = get_cfg()
    add_nonlocal_config(cfg)
    if config_file is not None:
        cfg.merge_from_file(os.path.join(CONFIGS_DIR, config_file))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.merge_from_list(list(opts))
    return cfg


def _record_execution_order(model, names):
    """Register forward hooks on the named submodules; returns the list they append to."""
    order = []
    modules = dict(model.named_modules())
    for name in names:
        modules[name].register_forward_hook(lambda m, i, o, name=name: order.append(name))
    return order


@pytest.fixture
def make_cfg():
    """``make_cfg(config_file=None, *opts)``: a CPU config with MODEL.NONLOCAL, from configs/."""
    return _make_cfg


@pytest.fixture
def record_order():
    """``record_order(model, names)``: hook the named submodules; returns the names as they run."""
    return _record_execution_order
