"""Shared helpers for the tool tests: the tools as modules, a tiny CPU config, test images."""

import importlib.util
import os

import numpy as np
import pytest

from detectron2.config import get_cfg

from nl_detectron import add_nonlocal_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NL_CONFIG = os.path.join(REPO, "configs", "mask_rcnn_nl_R50.yaml")
PHOTOS = os.path.join(REPO, "..", "shared", "data", "coco_person_mini")

# R-18 Mask R-CNN with one NL block before the last unit of res4 (res4.nonlocal1); test images
# are not resized (short side 200), so pixel and feature coordinates relate by the stride alone.
TINY_OPTS = [
    "MODEL.WEIGHTS", "",
    "MODEL.DEVICE", "cpu",
    "MODEL.RESNETS.DEPTH", "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.FPN.OUT_CHANNELS", "64",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
    "TEST.DETECTIONS_PER_IMAGE", "5",
    "INPUT.MIN_SIZE_TEST", "200",
    "INPUT.MAX_SIZE_TEST", "1000",
]  # fmt: skip


def tiny_opts(weights=""):
    """TINY_OPTS with MODEL.WEIGHTS set to ``weights``."""
    opts = list(TINY_OPTS)
    opts[opts.index("MODEL.WEIGHTS") + 1] = weights
    return opts


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(
        f"tool_{name}", os.path.join(REPO, "tools", name + ".py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_tool():
    """``load_tool("demo")``: the module tools/demo.py."""
    return _load_tool


@pytest.fixture(scope="session")
def nl_config():
    """Path of the repo's NL Mask R-CNN config, the base of the tiny test model."""
    return NL_CONFIG


@pytest.fixture(scope="session")
def opts_for():
    """``opts_for(weights)``: the tiny model's config options with MODEL.WEIGHTS ``weights``."""
    return tiny_opts


@pytest.fixture
def tiny_cfg():
    cfg = get_cfg()
    add_nonlocal_config(cfg)
    cfg.merge_from_file(NL_CONFIG)
    cfg.merge_from_list(TINY_OPTS)
    return cfg


@pytest.fixture
def synthetic_image(tmp_path):
    """A 200 x 300 PNG of random coloured rectangles; returns (path, RGB array)."""
    import cv2

    rng = np.random.default_rng(0)
    image = np.full((200, 300, 3), 90, dtype=np.uint8)
    for _ in range(12):
        x0, y0 = rng.integers(0, 260), rng.integers(0, 170)
        w, h = rng.integers(10, 60), rng.integers(10, 50)
        image[y0 : y0 + h, x0 : x0 + w] = rng.integers(0, 256, 3)
    path = str(tmp_path / "shapes.png")
    cv2.imwrite(path, image[:, :, ::-1])
    return path, image


@pytest.fixture
def photo():
    path = os.path.join(PHOTOS, "000000040083.jpg")
    if not os.path.isfile(path):
        pytest.skip(f"shared COCO photos not found at {PHOTOS}")
    return path
