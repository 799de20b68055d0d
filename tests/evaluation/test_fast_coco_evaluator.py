"""faster-coco-eval must reproduce pycocotools' COCO metrics, alone and inside the evaluator."""

import contextlib
import copy
import io
import json
import logging
import math
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation.coco_evaluation import _evaluate_predictions_on_coco
from detectron2.structures import Boxes, BoxMode, Instances

from nl_detectron.evaluation import (
    FastCOCOEvaluator,
    coco_evaluation,
    default_num_workers,
    evaluate_on_coco_fast,
)
from nl_detectron.evaluation.synthetic import synthetic_coco

requires_faster = pytest.mark.skipif(
    coco_evaluation.COCOeval_faster is None, reason="faster-coco-eval is not installed"
)
COCOAPI_DIR = os.path.join(
    os.path.dirname(__file__), "..", "..", "..", "shared", "data", "cocoapi_val2014_100"
)
TOL = 1e-12
# Small images keep the dense masks of Instances cheap, yet hold small, medium and large objects.
SIZE = (160, 200)


def _pycocotools_eval(gt_dataset, results, iou_type, max_dets=None, img_ids=None):
    """Reference: pycocotools' COCOeval through detectron2's own helper (drops bbox for segm)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt_dataset)
        coco_gt.createIndex()
        return _evaluate_predictions_on_coco(
            coco_gt,
            copy.deepcopy(results),
            iou_type,
            cocoeval_fn=COCOeval,
            img_ids=img_ids,
            max_dets_per_image=max_dets,
        )


def _fast_eval(gt_dataset, results, iou_type, **kwargs):
    return evaluate_on_coco_fast(
        coco_evaluation.FasterCOCO(copy.deepcopy(gt_dataset)), results, iou_type, **kwargs
    )


def _assert_same_eval(ref, fast):
    assert len(fast.stats) == len(ref.stats) == (10 if ref.params.iouType == "keypoints" else 12)
    np.testing.assert_allclose(fast.stats, ref.stats, rtol=0, atol=TOL)
    for key in ("precision", "recall"):
        assert fast.eval[key].shape == ref.eval[key].shape
        np.testing.assert_allclose(fast.eval[key], ref.eval[key], rtol=0, atol=TOL)


@pytest.fixture(scope="module")
def detection_data():
    return synthetic_coco(
        60, num_categories=4, dets_per_image=30, image_size=SIZE, crowd_fraction=0.05, seed=3
    )


@pytest.fixture(scope="module")
def keypoint_data():
    return synthetic_coco(
        60,
        num_categories=1,
        dets_per_image=10,
        num_keypoints=17,
        image_size=SIZE,
        crowd_fraction=0.05,
        seed=4,
    )


@requires_faster
@pytest.mark.skipif(not os.path.isdir(COCOAPI_DIR), reason="shared COCO API demo data is absent")
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_cocoapi_demo_published_numbers(iou_type):
    with open(os.path.join(COCOAPI_DIR, "instances_val2014_100.json")) as f:
        gt = json.load(f)
    with open(os.path.join(COCOAPI_DIR, f"instances_val2014_fake{iou_type}100_results.json")) as f:
        results = json.load(f)
    fast = _fast_eval(gt, results, iou_type)
    _assert_same_eval(_pycocotools_eval(gt, results, iou_type), fast)
    if iou_type == "bbox":  # the COCO API demo's published figures
        assert [round(v, 3) for v in fast.stats[:3]] == [0.505, 0.697, 0.573]
    else:
        assert round(fast.stats[0], 4) == 0.3195


@requires_faster
@pytest.mark.parametrize("iou_type", ["bbox", "segm", "keypoints"])
def test_synthetic_matches_pycocotools(iou_type, detection_data, keypoint_data):
    gt, results = keypoint_data if iou_type == "keypoints" else detection_data
    before = copy.deepcopy(results)
    fast = _fast_eval(gt, results, iou_type)
    assert results == before, "the caller's results must not be modified"
    ref = _pycocotools_eval(gt, results, iou_type)
    _assert_same_eval(ref, fast)
    # The synthetic detections are neither hopeless nor perfect: the comparison means something.
    assert 0.05 < fast.stats[0] < 0.9


@requires_faster
def test_custom_max_dets_and_image_subset(detection_data):
    gt, results = detection_data
    img_ids = [img["id"] for img in gt["images"][::3]]
    ref = _pycocotools_eval(gt, results, "bbox", max_dets=[1, 10, 20], img_ids=img_ids)
    fast = _fast_eval(gt, results, "bbox", max_dets_per_image=[1, 10, 20], img_ids=img_ids)
    _assert_same_eval(ref, fast)
    assert fast.params.imgIds == img_ids


def test_synthetic_data_is_reproducible_and_validated():
    gt, results = synthetic_coco(5, num_categories=2, dets_per_image=4, seed=7)
    assert (gt, results) == synthetic_coco(5, num_categories=2, dets_per_image=4, seed=7)
    assert len(results) == 5 * 4
    assert {r["category_id"] for r in results} <= {1, 3}
    with pytest.raises(ValueError, match="num_images=0"):
        synthetic_coco(0)


def test_default_num_workers():
    assert default_num_workers(1) == default_num_workers(2) == 1
    assert default_num_workers(4) == 4
    assert default_num_workers(64) == 8
    assert default_num_workers() >= 1


@requires_faster
def test_bad_arguments(keypoint_data):
    gt, results = keypoint_data
    with pytest.raises(ValueError, match="iou_type='boundary'"):
        _fast_eval(gt, results, "boundary")
    with pytest.raises(ValueError, match="empty"):
        _fast_eval(gt, [], "bbox")
    with pytest.raises(ValueError, match="17 keypoints.*5 values"):
        _fast_eval(gt, results, "keypoints", kpt_oks_sigmas=[0.05] * 5)


# ---- the evaluator, fed detectron2 Instances ------------------------------------------------


def _outputs_for_image(image, results, contiguous_id):
    """detectron2 model outputs that instances_to_coco_json turns back into ``results``."""
    h, w = image["height"], image["width"]
    inst = Instances((h, w))
    boxes = np.array([r["bbox"] for r in results], dtype=np.float64).reshape(-1, 4)
    inst.pred_boxes = Boxes(BoxMode.convert(boxes, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS))
    inst.scores = torch.tensor([r["score"] for r in results], dtype=torch.float32)
    inst.pred_classes = torch.tensor([contiguous_id[r["category_id"]] for r in results])
    masks = [mask_util.decode(r["segmentation"]) for r in results]
    inst.pred_masks = torch.as_tensor(np.array(masks, dtype=bool).reshape(-1, h, w))
    if results and "keypoints" in results[0]:
        kpts = torch.tensor([r["keypoints"] for r in results], dtype=torch.float32)
        kpts = kpts.reshape(len(results), -1, 3)
        kpts[:, :, :2] += 0.5  # detectron2 predicts pixel centres; the json writer subtracts 0.5
        inst.pred_keypoints = kpts
    return {"instances": inst}


def _run(evaluator, gt, results, contiguous_id):
    evaluator.reset()
    for image in gt["images"]:
        dets = [r for r in results if r["image_id"] == image["id"]]
        # process() edits keypoints in place, so every evaluator gets freshly built outputs.
        outputs = _outputs_for_image(image, dets, contiguous_id)
        evaluator.process([{"image_id": image["id"]}], [outputs])
    return evaluator.evaluate()


def _assert_same_results(fast, ref):
    assert fast.keys() == ref.keys()
    for task in ref:
        assert fast[task].keys() == ref[task].keys()
        for metric, value in ref[task].items():
            if math.isnan(value):
                assert math.isnan(fast[task][metric]), (task, metric)
            else:
                assert fast[task][metric] == pytest.approx(value, rel=0, abs=1e-9), (task, metric)


@pytest.fixture(scope="module")
def registered(tmp_path_factory, detection_data, keypoint_data):
    """Two datasets registered with detectron2: 4 classes (bbox, segm) and 1 (bbox, keypoints)."""
    folder = tmp_path_factory.mktemp("coco")
    names = {}
    for name, (gt, results) in {
        "nl_eval_test_det": detection_data,
        "nl_eval_test_kpt": keypoint_data,
    }.items():
        gt, results = copy.deepcopy(gt), copy.deepcopy(results)
        json_file = str(folder / f"{name}.json")
        with open(json_file, "w") as f:
            json.dump(gt, f)
        cat_ids = [c["id"] for c in gt["categories"]]
        contiguous_id = {c: i for i, c in enumerate(cat_ids)}
        DatasetCatalog.register(name, lambda: [])
        MetadataCatalog.get(name).set(
            json_file=json_file,
            thing_classes=[c["name"] for c in gt["categories"]],
            thing_dataset_id_to_contiguous_id=contiguous_id,
            evaluator_type="coco",
        )
        names[name] = (gt, results, contiguous_id)
    yield names
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


@requires_faster
@pytest.mark.parametrize("dataset", ["nl_eval_test_det", "nl_eval_test_kpt"])
def test_evaluator_matches_coco_evaluator(registered, dataset, tmp_path, caplog):
    gt, results, contiguous_id = registered[dataset]
    sigmas = [0.05 + 0.005 * i for i in range(17)] if dataset.endswith("kpt") else ()
    with caplog.at_level(logging.INFO, logger=coco_evaluation.__name__):
        fast_eval = FastCOCOEvaluator(
            dataset, distributed=False, output_dir=str(tmp_path), kpt_oks_sigmas=sigmas
        )
    assert fast_eval.backend == "faster_coco_eval"
    assert "faster-coco-eval" in caplog.text
    ref_eval = COCOEvaluator(dataset, distributed=False, use_fast_impl=False, kpt_oks_sigmas=sigmas)

    fast = _run(fast_eval, gt, results, contiguous_id)
    ref = _run(ref_eval, gt, results, contiguous_id)
    expected_tasks = {"bbox", "segm", "keypoints"} if dataset.endswith("kpt") else {"bbox", "segm"}
    assert set(fast) == expected_tasks
    _assert_same_results(fast, ref)
    if dataset.endswith("det"):
        assert sum(k.startswith("AP-") for k in fast["bbox"]) == 4  # per-category AP

    # Evaluating twice gives the same numbers (the parent remaps category ids in place).
    _assert_same_results(fast_eval.evaluate(), ref)
    with open(tmp_path / "coco_instances_results.json") as f:
        dumped = json.load(f)
    assert {r["category_id"] for r in dumped} <= set(contiguous_id)


@requires_faster
def test_evaluator_custom_max_dets_and_no_detections(registered):
    gt, results, contiguous_id = registered["nl_eval_test_det"]
    kwargs = {"distributed": False, "max_dets_per_image": 20}
    fast = _run(FastCOCOEvaluator("nl_eval_test_det", **kwargs), gt, results, contiguous_id)
    ref = _run(
        COCOEvaluator("nl_eval_test_det", use_fast_impl=False, **kwargs), gt, results, contiguous_id
    )
    _assert_same_results(fast, ref)

    fast = _run(FastCOCOEvaluator("nl_eval_test_det", tasks=("bbox",)), gt, [], contiguous_id)
    assert all(math.isnan(v) for v in fast["bbox"].values())


def test_evaluator_falls_back_to_pycocotools(registered, monkeypatch, caplog):
    gt, results, contiguous_id = registered["nl_eval_test_det"]
    assert FastCOCOEvaluator("nl_eval_test_det", use_fast_impl=False).backend == "pycocotools"
    monkeypatch.setattr(coco_evaluation, "COCOeval_faster", None)
    with caplog.at_level(logging.INFO, logger=coco_evaluation.__name__):
        evaluator = FastCOCOEvaluator("nl_eval_test_det", tasks=("bbox",), distributed=False)
    assert evaluator.backend == "pycocotools"
    assert "faster-coco-eval is not installed" in caplog.text
    fast = _run(evaluator, gt, results, contiguous_id)
    ref = _run(
        COCOEvaluator("nl_eval_test_det", tasks=("bbox",), distributed=False, use_fast_impl=False),
        gt,
        results,
        contiguous_id,
    )
    _assert_same_results(fast, ref)


def test_evaluator_rejects_unknown_task(registered):
    with pytest.raises(ValueError, match="boundary"):
        FastCOCOEvaluator("nl_eval_test_det", tasks=("bbox", "boundary"))
