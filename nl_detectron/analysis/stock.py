"""The stock detectron2 counterpart of a config that uses this package's context blocks."""

from typing import Dict, List, Tuple

from .attention import find_nonlocal_blocks

__all__ = ["GENERIC_BACKBONE", "STOCK_COMPONENTS", "load_stock_weights", "stock_config"]

# Builds the registered backbone named by MODEL.NONLOCAL.BACKBONE, with blocks.
GENERIC_BACKBONE = "build_nonlocal_backbone"
# (config key, component with context blocks) -> detectron2's own component it wraps
STOCK_COMPONENTS: Dict[Tuple[str, str], str] = {
    ("MODEL.BACKBONE.NAME", "build_resnet_nl_fpn_backbone"): "build_resnet_fpn_backbone",
    ("MODEL.BACKBONE.NAME", "build_resnet_nl_backbone"): "build_resnet_backbone",
    (
        "MODEL.ROI_KEYPOINT_HEAD.NAME",
        "NonLocalKRCNNConvDeconvUpsampleHead",
    ): "KRCNNConvDeconvUpsampleHead",
}


def _get(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def stock_config(cfg, *, source: str = "the config"):
    """
    Returns:
        CfgNode: a copy of ``cfg`` whose backbone and keypoint head are detectron2's stock builders
        of the same architecture (same depth, FPN, heads, input), without context blocks.

    Raises:
        ValueError: when ``cfg`` uses none of this package's components (nothing to compare).
    """
    stock = cfg.clone()
    stock.defrost()
    replaced = []
    if stock.MODEL.BACKBONE.NAME == GENERIC_BACKBONE:
        # the generic wrapper builds MODEL.NONLOCAL.BACKBONE and adds blocks: that is the stock one
        stock.MODEL.BACKBONE.NAME = stock.MODEL.NONLOCAL.BACKBONE
        replaced.append(f"MODEL.BACKBONE.NAME={GENERIC_BACKBONE!r}")
    for (key, name), stock_name in STOCK_COMPONENTS.items():
        if _get(stock, key) == name:
            *parents, leaf = key.split(".")
            _get(stock, ".".join(parents))[leaf] = stock_name
            replaced.append(f"{key}={name!r}")
    if not replaced:
        allowed = sorted({f"{key}={name!r}" for key, name in STOCK_COMPONENTS})
        allowed.append(f"MODEL.BACKBONE.NAME={GENERIC_BACKBONE!r}")
        raise ValueError(
            f"{source} has no non-local component (MODEL.BACKBONE.NAME="
            f"{cfg.MODEL.BACKBONE.NAME!r}); expected one of: {', '.join(allowed)}"
        )
    stock.freeze()
    return stock


def load_stock_weights(model, stock_model, *, source: str = "the model") -> List[str]:
    """
    Copy the weights of ``stock_model`` into ``model``, its version with context blocks.

    Stock parameter names are unchanged by the blocks, so everything but the blocks' own
    parameters must load. With zero-initialised blocks both models then compute the same function.

    Returns:
        list[str]: the parameters and buffers left at their initial values (the blocks').

    Raises:
        RuntimeError: when a stock weight has no place in ``model`` or a non-block weight of
            ``model`` is missing from the stock weights.
    """
    block_prefixes = tuple(name + "." for name in find_nonlocal_blocks(model))
    result = model.load_state_dict(stock_model.state_dict(), strict=False)
    foreign = [k for k in result.missing_keys if not k.startswith(block_prefixes)]
    if result.unexpected_keys or foreign:
        raise RuntimeError(
            f"stock weights do not fit {source} outside its context blocks: unexpected "
            f"{result.unexpected_keys}, missing {foreign}"
        )
    return list(result.missing_keys)
