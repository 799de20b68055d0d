"""Analysis of models with context blocks: FLOP handles, attention maps, stock counterparts."""

from .attention import (
    CONTEXT_BLOCK_TYPES,
    AttentionMap,
    Grid,
    ImageGeometry,
    attention_maps,
    capture_inputs,
    find_nonlocal_blocks,
    record_block_inputs,
    strongest_queries,
)
from .attention_overlay import KEY_COLOR, QUERY_COLOR, draw_attention, tile_images
from .flop_handles import matmul_flop_count, nonlocal_flop_handles, sdpa_flop_count
from .images import expand_image_paths
from .partner_attention import (
    PartnerAttention,
    cells_covered,
    partner_attention,
    target_attention_shares,
)
from .receptive_field import effective_receptive_radius
from .stock import load_stock_weights, stock_config
from .tool_config import (
    add_opts_argument,
    image_tool_argument_parser,
    load_tool_config,
    parse_tool_args,
)

__all__ = [
    "CONTEXT_BLOCK_TYPES",
    "AttentionMap",
    "Grid",
    "ImageGeometry",
    "KEY_COLOR",
    "PartnerAttention",
    "QUERY_COLOR",
    "attention_maps",
    "capture_inputs",
    "cells_covered",
    "draw_attention",
    "effective_receptive_radius",
    "add_opts_argument",
    "expand_image_paths",
    "find_nonlocal_blocks",
    "image_tool_argument_parser",
    "load_stock_weights",
    "load_tool_config",
    "matmul_flop_count",
    "nonlocal_flop_handles",
    "parse_tool_args",
    "partner_attention",
    "record_block_inputs",
    "sdpa_flop_count",
    "stock_config",
    "strongest_queries",
    "target_attention_shares",
    "tile_images",
]
