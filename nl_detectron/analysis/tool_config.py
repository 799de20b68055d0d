"""Config loading and command lines shared by the analysis tools (analyze_model, benchmark_model,
demo, visualize_attention)."""

import argparse
import logging
from typing import Optional, Sequence

import torch

from detectron2.config import CfgNode, get_cfg
from detectron2.utils.logger import setup_logger

from ..config import add_nonlocal_config

__all__ = [
    "add_opts_argument",
    "image_tool_argument_parser",
    "load_tool_config",
    "parse_tool_args",
]

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


def image_tool_argument_parser(
    description: str, output_help: str, *, input_required: bool = True
) -> argparse.ArgumentParser:
    """A parser with ``--config-file``, ``--input`` (image files, folders or glob patterns;
    optional with ``input_required=False``, for tools that can take images from elsewhere) and
    ``--output`` (a folder). The tool adds its own options; :func:`parse_tool_args` adds
    ``--opts``."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument(
        "--input", nargs="+", required=input_required, help="image files, folders or glob patterns"
    )
    parser.add_argument("--output", required=True, help=output_help)
    return parser


def add_opts_argument(parser: argparse.ArgumentParser) -> None:
    """``--opts KEY VALUE ...``, the config overrides; it takes the rest of the command line, so it
    must be the last option added and given."""
    parser.add_argument(
        "--opts",
        default=[],
        nargs=argparse.REMAINDER,
        help="config KEY VALUE pairs; must come last",
    )


def parse_tool_args(
    parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None
) -> argparse.Namespace:
    """Add ``--opts``, parse ``argv`` (default: the command line) and set up the nl_detectron and
    root loggers the way detectron2's tools do."""
    add_opts_argument(parser)
    args = parser.parse_args(argv)
    setup_logger(name="nl_detectron")
    setup_logger()
    return args
