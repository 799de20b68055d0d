"""What each context block's pairwise aggregation would hold, before a run: the memory planner.

For the blocks of a model, an input size, a batch, a device type, a compute dtype and a budget, the
path policy (:mod:`nl_detectron.layers.attention_policy`, a pure function of those facts) names
the path each N x M aggregation would take and what it would hold at its peak
(:func:`~nl_detectron.layers.attention_policy.peak_bytes`), in training and in inference. Nothing
runs on the device, so a GPU's plan needs no GPU.

A block in stage ``resN`` sees the padded input at the stage's stride (res2 4, res3 8, res4 16,
res5 32, as the ResNet reports them; detectron2's stem and stride-2 convolutions halve a side
rounding up); a block in the keypoint head sees each ROI's pooled features, one ROI per sample.
"""

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from detectron2.modeling.backbone import ResNet

from ..layers import DisentangledNonLocalBlock, NonLocalBlock
from ..layers.attention_policy import (
    CONCATENATION,
    SOFTMAX,
    AggregationCall,
    PathChoice,
    choose_path,
    peak_bytes,
)
from .attention import find_nonlocal_blocks

# name -> (compute dtype, TF32 allowed): fp32 without TF32, fp32 with TF32 matmuls (CUDA), and
# the 16-bit autocast dtypes.
DTYPES = {
    "fp32": (torch.float32, False),
    "tf32": (torch.float32, True),
    "bf16": (torch.bfloat16, False),
    "fp16": (torch.float16, False),
}
DEVICES = ("cuda", "cpu")


@dataclass(frozen=True)
class Settings:
    """What a plan is made for: images per device, device type, dtype name (:data:`DTYPES`) and
    budget (MiB; None: each block's own, else the device's default ``default_budget_mb``)."""

    batch: int
    device_type: str
    dtype_name: str
    budget_mb: Optional[float]
    default_budget_mb: float


@dataclass(frozen=True)
class BlockPlan:
    """One block's aggregation: where it sits, its map, and per mode (``training``,
    ``inference``) the policy's choice and predicted peak bytes; the modes are None for blocks
    without an N x M aggregation (``kind`` says why: "associative" or "pooled")."""

    name: str
    block: str  # e.g. "NL embedded_gaussian"
    channels: int
    kind: str  # "softmax", "concatenation", "associative" or "pooled"
    widths: Optional[Tuple[int, int]]  # (D, E)
    spatial: Tuple[int, ...]
    num_queries: int
    num_keys: int
    batch: Tuple[int, int]  # (training, inference) samples
    budget_mb: float
    training: Optional[Tuple[PathChoice, int]]
    inference: Optional[Tuple[PathChoice, int]]


def parse_size(text: str) -> Tuple[int, int]:
    """ "800x1333" -> (800, 1333), height by width in pixels; a ValueError naming the text."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"--size {text!r} must be HEIGHTxWIDTH in pixels, e.g. 800x1333")
    height, width = (int(p) for p in parts)
    if min(height, width) < 32:
        raise ValueError(f"--size {text!r}: at least 32 pixels per side")
    return height, width


def largest_test_size(cfg) -> Tuple[int, int]:
    """The largest network input the config's test resize gives: short side
    max(INPUT.MIN_SIZE_TEST), long side INPUT.MAX_SIZE_TEST (800x1333 for the COCO configs)."""
    short = cfg.INPUT.MIN_SIZE_TEST
    short = max(short) if isinstance(short, (list, tuple)) else short
    return short, max(cfg.INPUT.MAX_SIZE_TEST, short)


def padded(size: int, divisibility: int) -> int:
    """``size`` padded up to a multiple of ``divisibility`` (detectron2's ImageList)."""
    return size if divisibility <= 1 else -(-size // divisibility) * divisibility


def feature_side(side: int, stride: int) -> int:
    """Side of the stride-``stride`` map of a ``side``-pixel input: halved log2(stride) times,
    rounding up, as the stem's stride-2 conv and pool and each stage's stride-2 conv do."""
    for _ in range(int(round(math.log2(stride)))):
        side = -(-side // 2)
    return side


def aggregation_call(
    block: nn.Module,
    batch: int,
    spatial: Sequence[int],
    settings: Settings,
    needs_grad: bool,
    budget_mb: float,
) -> Optional[AggregationCall]:
    """The facts the policy decides ``block``'s aggregation by, for a [batch, C, *spatial] input,
    as the block describes it at run time (its widths, key positions, Triton request); None for
    blocks without an N x M aggregation (dot product, SNL, GC)."""
    if isinstance(block, NonLocalBlock):
        if block.instantiation == "dot_product":
            return None
        kind = CONCATENATION if block.instantiation == "concatenation" else SOFTMAX
        gaussian = block.instantiation == "gaussian"
        query_width = block.in_channels if gaussian else block.inter_channels
    elif isinstance(block, DisentangledNonLocalBlock):
        kind, query_width = SOFTMAX, block.inter_channels
    else:
        return None
    dtype, tf32 = DTYPES[settings.dtype_name]
    return AggregationCall(
        kind=kind,
        device_type=settings.device_type,
        dtype=dtype,
        batch=batch,
        num_queries=math.prod(spatial),
        num_keys=math.prod(block.key_shape(tuple(spatial))),
        query_width=query_width,
        value_width=block.inter_channels,
        needs_grad=needs_grad,
        budget_bytes=int(budget_mb * 2**20),
        tf32=tf32 and settings.device_type == "cuda",
        triton=block.use_triton and settings.device_type == "cuda",
        unary=isinstance(block, DisentangledNonLocalBlock),
        shared_keys=isinstance(block, NonLocalBlock) and gaussian and not block.sub_sample,
    )


def describe_block(block: nn.Module) -> str:
    """ "NL embedded_gaussian", "DNL", "SNL" or "GC"."""
    if isinstance(block, NonLocalBlock):
        return f"NL {block.instantiation}"
    if isinstance(block, DisentangledNonLocalBlock):
        return "DNL"
    return {"SpectralNonLocalBlock": "SNL", "ContextBlock": "GC"}.get(type(block).__name__, "?")


def plan_block(
    name: str, block: nn.Module, spatial: Sequence[int], batch: Tuple[int, int], settings: Settings
) -> BlockPlan:
    """The plan of ``block`` on [batch, C, *spatial] inputs (``batch``: training, inference)."""
    budget_mb = settings.budget_mb
    if budget_mb is None:
        budget_mb = getattr(block, "affinity_budget_mb", None) or settings.default_budget_mb
    modes = []
    for needs_grad, samples in zip((True, False), batch):
        call = aggregation_call(block, samples, spatial, settings, needs_grad, budget_mb)
        if call is None:
            modes.append(None)
            continue
        choice = choose_path(call)
        modes.append((choice, peak_bytes(call, choice)))
    call = aggregation_call(block, 1, spatial, settings, False, budget_mb)
    if call is not None:
        kind, widths = call.kind, (call.query_width, call.value_width)
    else:
        kind = "pooled" if describe_block(block) == "GC" else "associative"
        widths = None
    num_queries = math.prod(spatial)
    key_shape = getattr(block, "key_shape", lambda s: s)(tuple(spatial))
    return BlockPlan(
        name=name,
        block=describe_block(block),
        channels=block.in_channels,
        kind=kind,
        widths=widths,
        spatial=tuple(spatial),
        num_queries=num_queries,
        num_keys=math.prod(key_shape),
        batch=tuple(batch),
        budget_mb=budget_mb,
        training=modes[0],
        inference=modes[1],
    )


def block_places(model: nn.Module, cfg, height: int, width: int, images: int) -> Dict[str, tuple]:
    """name -> (block, spatial shape, (training, inference) samples) for every context block of
    ``model`` in module order: backbone blocks at their stage's stride of the padded input,
    keypoint-head blocks on the pooled ROI features (at most POSITIVE_FRACTION x
    BATCH_SIZE_PER_IMAGE ROIs per image in training, DETECTIONS_PER_IMAGE in inference)."""
    backbone = getattr(model, "backbone", None)
    divisibility = getattr(backbone, "size_divisibility", 0) or 0
    height, width = padded(height, divisibility), padded(width, divisibility)
    stage_maps = {}  # module name prefix of a ResNet stage -> its map
    for resnet_name, resnet in model.named_modules():
        if isinstance(resnet, ResNet):
            for stage in resnet.stage_names:
                stride = resnet._out_feature_strides[stage]
                prefix = f"{resnet_name}.{stage}." if resnet_name else f"{stage}."
                stage_maps[prefix] = (feature_side(height, stride), feature_side(width, stride))
    heads = cfg.MODEL.ROI_HEADS
    rois = (
        images * int(heads.BATCH_SIZE_PER_IMAGE * heads.POSITIVE_FRACTION),
        images * cfg.TEST.DETECTIONS_PER_IMAGE,
    )
    side = cfg.MODEL.ROI_KEYPOINT_HEAD.POOLER_RESOLUTION
    places = {}
    for name, block in find_nonlocal_blocks(model).items():
        spatial = [m for prefix, m in stage_maps.items() if name.startswith(prefix)]
        if spatial:
            places[name] = (block, spatial[0], (images, images))
        elif ".keypoint_head." in f".{name}":
            places[name] = (block, (side, side), rois)
        else:
            raise ValueError(
                f"memory plan: block {name!r} is neither in a ResNet stage nor in the keypoint "
                "head, so its map size is unknown"
            )
    return places


def plan_model(
    model: nn.Module, cfg, height: int, width: int, settings: Settings
) -> List[BlockPlan]:
    """The plan of every context block of ``model`` (built from ``cfg``) for one
    ``height`` x ``width`` network input per image, in module order."""
    places = block_places(model, cfg, height, width, settings.batch)
    return [plan_block(name, *place, settings) for name, place in places.items()]


def totals(plans: Sequence[BlockPlan]) -> Dict[str, Tuple[int, int]]:
    """{"training": (sum, largest), "inference": (sum, largest)} of the predicted peaks."""
    result = {}
    for mode in ("training", "inference"):
        peaks = [getattr(p, mode)[1] for p in plans if getattr(p, mode) is not None]
        result[mode] = (sum(peaks), max(peaks, default=0))
    return result
