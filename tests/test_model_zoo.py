"""nl_detectron.model_zoo finds every config of configs/ by its relative path, like detectron2's."""

import os

import pytest

from detectron2.config import CfgNode, get_cfg, instantiate

from nl_detectron import add_nonlocal_config, model_zoo
from nl_detectron.model_zoo import model_zoo as zoo_module

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
ALL_CONFIGS = sorted(
    os.path.relpath(os.path.join(folder, name), CONFIGS_DIR)
    for folder, _, files in os.walk(CONFIGS_DIR)
    for name in files
    if name.endswith((".yaml", ".py")) and name != "__init__.py"
)
LAZY_CONFIGS = [
    path for path in ALL_CONFIGS if path.endswith(".py") and not path.startswith("common" + os.sep)
]


@pytest.mark.parametrize("config_path", ALL_CONFIGS)
def test_every_config_is_found_by_its_relative_path(config_path):
    assert model_zoo.get_config_file(config_path) == os.path.join(CONFIGS_DIR, config_path)


def test_yaml_config_equals_the_file_merged_over_the_nonlocal_defaults():
    cfg = model_zoo.get_config("mask_rcnn_nl_R50.yaml")
    assert isinstance(cfg, CfgNode)
    expected = get_cfg()
    add_nonlocal_config(expected)
    expected.merge_from_file(os.path.join(CONFIGS_DIR, "mask_rcnn_nl_R50.yaml"))
    assert cfg.dump() == expected.dump()
    assert cfg.MODEL.NONLOCAL.STAGES == ["res4"]


def test_a_config_in_a_subfolder():
    cfg = model_zoo.get_config("quick_schedules/mask_rcnn_nl_R18_kp_quick.yaml")
    assert cfg.MODEL.KEYPOINT_ON and cfg.MODEL.RESNETS.DEPTH == 18


def test_python_config_loads_as_lazy_config(tmp_path, monkeypatch):
    # A LazyConfig that imports a shared part relative to itself, as detectron2's configs do.
    (tmp_path / "common").mkdir()
    (tmp_path / "common" / "parts.py").write_text("from collections import OrderedDict\n")
    (tmp_path / "tiny.py").write_text(
        "from detectron2.config import LazyCall as L\n"
        "from .common.parts import OrderedDict\n"
        "model = L(OrderedDict)(depth=18)\n"
    )
    monkeypatch.setattr(zoo_module, "configs_root", lambda: str(tmp_path))
    cfg = model_zoo.get_config("tiny.py")
    assert cfg.model.depth == 18
    assert instantiate(cfg.model) == {"depth": 18}


@pytest.mark.parametrize("config_path", LAZY_CONFIGS)
def test_shipped_python_configs_load(config_path):
    cfg = model_zoo.get_config(config_path)
    assert "model" in cfg


@pytest.mark.parametrize(
    "bad_path",
    [
        "mask_rcnn_nl_R999.yaml",  # no such file
        "quick_schedules",  # a folder
        "../setup.py",  # outside configs/
        os.path.join(CONFIGS_DIR, "mask_rcnn_nl_R50.yaml"),  # absolute
    ],
)
def test_unknown_path_names_it_and_lists_the_configs(bad_path):
    with pytest.raises(RuntimeError) as error:
        model_zoo.get_config(bad_path)
    message = str(error.value)
    assert repr(bad_path) in message
    assert "mask_rcnn_nl_R50.yaml" in message
    assert "quick_schedules/mask_rcnn_nl_R18_kp_quick.yaml" in message
    assert "Base-NL-RCNN-FPN.yaml" not in message
