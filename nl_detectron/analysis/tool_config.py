"""Config loading shared by the analysis tools (analyze_model, benchmark_model, demo, attention)."""

import logging
from typing import Sequence

import torch

from detectron2.config import CfgNode, get_cfg

from ..config import add_nonlocal_config

__all__ = ["load_tool_config"]

logger = logging.getLogger(__name__)


def load_tool_config(config_file: str, opts: Sequence[str], defaults: Sequence = ()) -> CfgNode:
    """
    detectron2's config with ``MODEL.NONLOCAL``, merged from ``config_file``, then the tool's
    ``defaults`` (KEY VALUE pairs the user may still override), then the user's ``opts``.

    A CUDA device without a GPU falls back to the CPU with a warning. The config is returned
    unfrozen so the tool can set its own fixed keys before freezing it.
    """
    cfg = get_cfg()
    add_nonlocal_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(defaults))
    cfg.merge_from_list(list(opts))
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(f"MODEL.DEVICE={cfg.MODEL.DEVICE!r} but no GPU is available: using the CPU")
        cfg.MODEL.DEVICE = "cpu"
    return cfg
