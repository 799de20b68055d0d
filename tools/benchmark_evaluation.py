#!/usr/bin/env python
"""Time COCO evaluation: detectron2's COCOEvaluator (pycocotools) against FastCOCOEvaluator.

A synthetic COCO-val-sized run (default 5,000 images; 80 classes, 7.3 objects and 100 detections per
image with boxes and masks; a person set with 17 keypoints and 20 detections per image) is evaluated
by both evaluators' ``evaluate()``, one task at a time, and the seconds, the speedup and the largest
difference between their metrics are printed. Mask encoding in ``process()`` costs the same for both
and is skipped: the COCO-format predictions are handed to the evaluators directly.

    python tools/benchmark_evaluation.py                 # full size, a few minutes on 2 cores
    python tools/benchmark_evaluation.py --num-images 200
"""

import argparse
import contextlib
import copy
import io
import json
import logging
import math
import os
import tempfile
import time

from faster_coco_eval import COCO as FasterCOCO

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator

from nl_detectron.evaluation import FastCOCOEvaluator, default_num_workers, evaluate_on_coco_fast
from nl_detectron.evaluation.synthetic import synthetic_coco


def register(name, gt, folder):
    """Register ``gt`` as a detectron2 dataset backed by a COCO json file."""
    json_file = os.path.join(folder, f"{name}.json")
    with open(json_file, "w") as f:
        json.dump(gt, f)
    cat_ids = [c["id"] for c in gt["categories"]]
    DatasetCatalog.register(name, list)
    MetadataCatalog.get(name).set(
        json_file=json_file,
        thing_classes=[c["name"] for c in gt["categories"]],
        thing_dataset_id_to_contiguous_id={c: i for i, c in enumerate(cat_ids)},
    )
    return {c: i for i, c in enumerate(cat_ids)}


def as_predictions(results, contiguous_id):
    """COCO results -> the per-image list that ``COCOEvaluator.process()`` accumulates."""
    per_image = {}
    for r in results:
        r = {**r, "category_id": contiguous_id[r["category_id"]]}
        per_image.setdefault(r["image_id"], []).append(r)
    return [{"image_id": i, "instances": dets} for i, dets in per_image.items()]


def timed_evaluate(evaluator, predictions):
    """-> (wall seconds, CPU seconds of this process, results) of ``evaluator.evaluate()``."""
    # The evaluators edit their predictions (category ids, loadRes fields): each gets a copy.
    evaluator._predictions = copy.deepcopy(predictions)
    wall, cpu = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        results = evaluator.evaluate()
    return time.perf_counter() - wall, time.process_time() - cpu, results


def max_difference(a, b):
    diffs = [
        abs(a[k] - b[k])
        for k in a
        if not (math.isnan(a[k]) and math.isnan(b[k]))  # NaN on both sides agrees
    ]
    return max(diffs) if diffs else 0.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-images", type=int, default=5000)
    parser.add_argument("--dets-per-image", type=int, default=100)
    parser.add_argument("--keypoint-dets-per-image", type=int, default=20)
    parser.add_argument("--tasks", nargs="+", default=["bbox", "segm", "keypoints"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    tic = time.perf_counter()
    det_gt, det_results = synthetic_coco(
        args.num_images, dets_per_image=args.dets_per_image, seed=args.seed
    )
    kpt_gt, kpt_results = synthetic_coco(
        args.num_images,
        num_categories=1,
        objects_per_image=2.2,  # COCO val2017: 11,004 persons in 5,000 images
        dets_per_image=args.keypoint_dets_per_image,
        num_keypoints=17,
        seed=args.seed + 1,
    )
    print(f"generated the synthetic data in {time.perf_counter() - tic:.1f} s")
    print(f"CPUs available: {os.cpu_count()}, mask-IoU threads used: {default_num_workers()}")

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        datasets = {
            "bench_det": (det_gt, det_results, register("bench_det", det_gt, folder)),
            "bench_kpt": (kpt_gt, kpt_results, register("bench_kpt", kpt_gt, folder)),
        }
        for task in args.tasks:
            name = "bench_kpt" if task == "keypoints" else "bench_det"
            gt, results, contiguous_id = datasets[name]
            predictions = as_predictions(results, contiguous_id)
            kwargs = {"tasks": (task,), "distributed": False}
            with contextlib.redirect_stdout(io.StringIO()):
                reference = COCOEvaluator(name, use_fast_impl=False, **kwargs)
                fast = FastCOCOEvaluator(name, **kwargs)
            t_ref, cpu_ref, r_ref = timed_evaluate(reference, predictions)
            t_fast, cpu_fast, r_fast = timed_evaluate(fast, predictions)
            diff = max_difference(r_ref[task], r_fast[task])
            rows.append((task, len(gt["annotations"]), len(results), cpu_ref, cpu_fast))
            print(
                f"{task:9s}: COCOEvaluator {t_ref:6.1f} s ({cpu_ref:6.1f} s CPU), "
                f"FastCOCOEvaluator {t_fast:5.1f} s ({cpu_fast:5.1f} s CPU), "
                f"speedup {t_ref / t_fast:4.1f}x ({cpu_ref / cpu_fast:4.1f}x CPU), "
                f"AP {r_fast[task]['AP']:.2f}, max |difference| {diff:.1e} "
                f"over {len(r_ref[task])} metrics"
            )

    if "segm" in args.tasks:
        # faster-coco-eval parallelises only the mask IoUs; time its thread counts interleaved.
        coco_gt = FasterCOCO(det_gt)
        for workers in [1, os.cpu_count() or 1] * 2:
            start = time.perf_counter()
            evaluate_on_coco_fast(coco_gt, det_results, "segm", num_workers=workers)
            print(f"segm with {workers} mask-IoU thread(s): {time.perf_counter() - start:.1f} s")

    # CPU seconds: on a shared machine they vary far less than wall-clock seconds.
    print()
    print(
        "| task | images | GT objects | detections | COCOEvaluator | FastCOCOEvaluator | speedup |"
    )
    print("|---|---|---|---|---|---|---|")
    for task, n_gt, n_dt, cpu_ref, cpu_fast in rows:
        print(
            f"| {task} | {args.num_images:,} | {n_gt:,} | {n_dt:,} | {cpu_ref:.1f} s "
            f"| {cpu_fast:.1f} s | {cpu_ref / cpu_fast:.1f}x |"
        )


if __name__ == "__main__":
    main()
