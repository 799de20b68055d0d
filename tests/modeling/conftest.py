"""Shared helpers for the modeling tests: CPU configs, module-order probes, output comparison."""

import os

import pytest
import torch

from detectron2.config import get_cfg
from detectron2.structures import Boxes, Instances

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


def _assert_same_outputs(expected, actual, where="output"):
    """Equal nested outputs: dicts, lists, Instances, Boxes, tensors (bitwise).

    Returns:
        the number of tensor elements compared.
    """
    assert type(expected) is type(actual), where
    if isinstance(expected, dict):
        assert expected.keys() == actual.keys(), where
        return sum(
            _assert_same_outputs(expected[k], actual[k], f"{where}[{k!r}]") for k in expected
        )
    if isinstance(expected, (list, tuple)):
        assert len(expected) == len(actual), where
        return sum(
            _assert_same_outputs(e, a, f"{where}[{i}]")
            for i, (e, a) in enumerate(zip(expected, actual))
        )
    if isinstance(expected, Instances):
        assert expected.image_size == actual.image_size, where
        return _assert_same_outputs(expected.get_fields(), actual.get_fields(), where)
    if isinstance(expected, Boxes):
        return _assert_same_outputs(expected.tensor, actual.tensor, where)
    if isinstance(expected, torch.Tensor):
        assert torch.equal(expected, actual), where
        return expected.numel()
    assert expected == actual, where
    return 0


@pytest.fixture
def make_cfg():
    """``make_cfg(config_file=None, *opts)``: a CPU config with MODEL.NONLOCAL, from configs/."""
    return _make_cfg


@pytest.fixture
def record_order():
    """``record_order(model, names)``: hook the named submodules; returns the names as they run."""
    return _record_execution_order


@pytest.fixture
def assert_same_outputs():
    """``assert_same_outputs(expected, actual)``: bitwise-equal model outputs; returns the number
    of tensor elements compared."""
    return _assert_same_outputs
