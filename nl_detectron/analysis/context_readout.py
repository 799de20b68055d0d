"""What a detector decides about ``nl_context`` objects, read on their true boxes.

COCO AP mixes finding an object with naming it. On ``nl_context`` finding is easy and naming a
target is the long-range part, so the benchmark also reads the category decision alone:

- :func:`true_box_accuracy`: the box head's scores on the ground-truth boxes (no proposals, no
  NMS); a target counts as right when the higher of its two target-category scores is its own
  category, a cue object likewise between the two cue categories (chance: 1/2 each).
- :func:`reference_ap`: the AP that the true boxes themselves score on the target categories,
  named by the rule (100) or by a coin (each box once per target category, scores s and 1 - s):
  the levels a model's target AP lies between.
"""

import contextlib
import io
from typing import Dict, Iterable, Optional

import numpy as np
import torch
from torch import nn

from detectron2.data import detection_utils
from detectron2.modeling.roi_heads import Res5ROIHeads, StandardROIHeads
from detectron2.structures import Boxes, BoxMode

from nl_detectron.data import context

__all__ = ["reference_ap", "true_box_accuracy"]

_TARGETS = [context.CATEGORY_NAMES.index(n) for n in context.TARGET_CATEGORIES]
_CUES = [context.CATEGORY_NAMES.index(n) for n in context.CUE_CATEGORIES]


def _box_logits(model: nn.Module, image: np.ndarray, boxes: np.ndarray, transform) -> torch.Tensor:
    """Class logits [R, K + 1] of the box head for XYXY ``boxes`` [R, 4] of ``image`` (HWC, the
    model's input format), after ``transform`` (e.g. the test-time resize)."""
    roi_heads = model.roi_heads
    if not isinstance(roi_heads, (StandardROIHeads, Res5ROIHeads)):
        raise ValueError(
            "true-box readout needs detectron2's StandardROIHeads (FPN) or Res5ROIHeads (C4); "
            f"got {type(roi_heads).__name__}"
        )
    tfm = transform.get_transform(image)
    resized = tfm.apply_image(image)
    tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
    images = model.preprocess_image([{"image": tensor}])
    features = model.backbone(images.tensor)
    scaled = Boxes(torch.as_tensor(tfm.apply_box(boxes), dtype=torch.float32).to(model.device))
    levels = [features[f] for f in roi_heads.in_features]
    if isinstance(roi_heads, Res5ROIHeads):
        # res5 on each box's crop, averaged over its positions, as Res5ROIHeads predicts
        crops = roi_heads._shared_roi_transform(levels, [scaled])
        logits, _ = roi_heads.box_predictor(crops.mean(dim=[2, 3]))
    else:
        pooled = roi_heads.box_pooler([features[f] for f in roi_heads.box_in_features], [scaled])
        logits, _ = roi_heads.box_predictor(roi_heads.box_head(pooled))
    return logits


def true_box_accuracy(
    model: nn.Module, records: Iterable[dict], transform, input_format: str
) -> Dict[str, float]:
    """Category accuracy of ``model`` (eval mode) on the true boxes of ``records`` (detectron2
    dataset dicts of an nl_context split).

    Returns:
        ``target_accuracy``, ``cue_accuracy`` (fractions) and ``targets``, ``cues`` (counts).
    """
    right = {"target": 0, "cue": 0}
    count = {"target": 0, "cue": 0}
    with torch.no_grad():
        for record in records:
            annotations = record["annotations"]
            if not annotations:
                continue
            image = detection_utils.read_image(record["file_name"], format=input_format)
            boxes = np.array(
                [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations]
            )
            logits = _box_logits(model, image, boxes, transform)
            for ann, row in zip(annotations, logits):
                kind, choices = ("target", _TARGETS) if context.is_target(ann) else ("cue", _CUES)
                picked = choices[int(row[choices].argmax())]
                right[kind] += int(picked == ann["category_id"])
                count[kind] += 1
    return {
        "target_accuracy": right["target"] / max(count["target"], 1),
        "cue_accuracy": right["cue"] / max(count["cue"], 1),
        "targets": count["target"],
        "cues": count["cue"],
    }


def reference_ap(json_file: str, naming: str, seed: Optional[int] = 0) -> Dict[str, float]:
    """Box AP and AP50 (%) on the target categories of the true boxes of a COCO ``json_file``,
    named by ``naming``: "rule" (each box its own category, score 1) or "chance" (each box
    once per target category with scores s and 1 - s, s uniform, drawn from ``seed``)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if naming not in ("rule", "chance"):
        raise ValueError(f"naming={naming!r} is not one of 'rule', 'chance'")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(json_file)
    target_ids = [gt.getCatIds(catNms=[name])[0] for name in context.TARGET_CATEGORIES]
    rng = np.random.default_rng(seed)
    detections = []
    for ann in gt.loadAnns(gt.getAnnIds(catIds=target_ids)):
        if naming == "rule":
            scores = {ann["category_id"]: 1.0}
        else:
            s = float(rng.uniform())
            scores = dict(zip(target_ids, (s, 1 - s)))
        for category_id, score in scores.items():
            detections.append(
                {
                    "image_id": ann["image_id"],
                    "category_id": category_id,
                    "bbox": ann["bbox"],
                    "score": score,
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(detections)
        evaluation = COCOeval(gt, dt, "bbox")
        evaluation.params.catIds = target_ids
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {"AP": 100 * float(evaluation.stats[0]), "AP50": 100 * float(evaluation.stats[1])}
