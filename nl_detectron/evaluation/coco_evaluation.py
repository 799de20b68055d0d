"""COCO evaluation through faster-coco-eval's C++ COCOeval, with a pycocotools fallback.

detectron2's ``COCOEvaluator`` uses its own C++ ``COCOeval_opt`` only when detectron2 was compiled
with ``_C``; otherwise it runs pycocotools' pure-Python COCOeval, which takes minutes on COCO val.
``FastCOCOEvaluator`` keeps the evaluator's interface and result dict, and computes the COCO metrics
with faster-coco-eval (same numbers as pycocotools, several times faster) whenever it is importable.
"""

import contextlib
import copy
import gc
import itertools
import json
import logging
import os
from typing import List, Optional, Sequence

import numpy as np
from pycocotools.cocoeval import COCOeval

from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation.coco_evaluation import _evaluate_predictions_on_coco
from detectron2.utils.file_io import PathManager

try:
    from faster_coco_eval import COCO as FasterCOCO
    from faster_coco_eval import COCOeval_faster
    from faster_coco_eval import mask as faster_mask
except ImportError:  # the optional "fast-eval" extra is not installed
    FasterCOCO = COCOeval_faster = faster_mask = None

__all__ = ["FastCOCOEvaluator", "evaluate_on_coco_fast", "default_num_workers"]

logger = logging.getLogger(__name__)

_TASKS = ("bbox", "segm", "keypoints")


def default_num_workers(cpu_count: Optional[int] = None) -> int:
    """Threads for faster-coco-eval's mask-IoU pool, sized from the CPUs this process may use.

    On two cores or fewer a single worker is faster: the pool's threads then compete with the
    Python thread that feeds them (and with the training process's own threads).
    """
    if cpu_count is None:
        cpu_count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        cpu_count = cpu_count or os.cpu_count() or 1
    if cpu_count <= 2:
        return 1
    return min(cpu_count, 8)


@contextlib.contextmanager
def _gc_paused():
    """Pause Python's cyclic garbage collector inside the block.

    Evaluation allocates millions of small acyclic dicts and lists (one per detection); the
    collector's repeated scans over them cost 10-30% of the fast path and free nothing.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _check_num_keypoints(coco_gt, coco_results: List[dict], sigmas: np.ndarray) -> None:
    """The OKS needs one sigma per keypoint, and detections and ground truth with equal counts."""
    num_dt = len(coco_results[0]["keypoints"]) // 3
    gt_with_kpts = (a for a in coco_gt.anns.values() if "keypoints" in a)
    first_gt = next(gt_with_kpts, None)
    num_gt = len(first_gt["keypoints"]) // 3 if first_gt is not None else num_dt
    if not num_dt == num_gt == len(sigmas):
        raise ValueError(
            f"Keypoint counts disagree: predictions have {num_dt} keypoints, the ground truth has "
            f"{num_gt}, and kpt_oks_sigmas (cfg.TEST.KEYPOINT_OKS_SIGMAS) has {len(sigmas)} "
            "values; all three must be equal."
        )


def _load_mask_results(coco_gt, coco_results: List[dict]):
    """``coco_gt.loadRes`` for mask results, without their boxes, as detectron2 evaluates segm.

    Dropping "bbox" makes the mask area, not the box area, decide small/medium/large. Area and box
    of every RLE are computed as loadRes does, but in one batched call each: loadRes calls
    ``area``/``toBbox`` once per mask, which takes about 10x longer.
    """
    unknown = {r["image_id"] for r in coco_results} - set(coco_gt.getImgIds())
    if unknown:
        raise ValueError(f"Results refer to images {sorted(unknown)[:5]} absent from the dataset")
    rles = [r["segmentation"] for r in coco_results]
    areas = faster_mask.area(rles).tolist()
    boxes = faster_mask.toBbox(rles).tolist()
    anns = []
    for i, (r, area, box) in enumerate(zip(coco_results, areas, boxes)):
        ann = {k: v for k, v in r.items() if k != "bbox"}
        ann.update(area=float(area), bbox=box, id=i + 1, iscrowd=0)
        anns.append(ann)
    coco_dt = FasterCOCO()
    coco_dt.dataset = {
        "info": copy.deepcopy(coco_gt.dataset.get("info", {})),
        "images": list(coco_gt.dataset["images"]),
        "categories": copy.deepcopy(coco_gt.dataset["categories"]),
        "annotations": anns,
    }
    coco_dt.createIndex()
    return coco_dt


def evaluate_on_coco_fast(
    coco_gt,
    coco_results: List[dict],
    iou_type: str,
    *,
    kpt_oks_sigmas: Sequence[float] = (),
    img_ids: Optional[Sequence[int]] = None,
    max_dets_per_image: Sequence[int] = (1, 10, 100),
    num_workers: Optional[int] = None,
):
    """Evaluate COCO-format results with faster-coco-eval, as pycocotools' COCOeval would.

    Args:
        coco_gt (faster_coco_eval.COCO): the ground truth.
        coco_results (list[dict]): non-empty COCO-format results (``image_id``, ``category_id``,
            ``score`` and ``bbox`` / ``segmentation`` / ``keypoints``). Not modified.
        iou_type (str): "bbox", "segm" or "keypoints".
        kpt_oks_sigmas: per-keypoint OKS sigmas; empty means COCO's 17 person sigmas.
        img_ids: evaluate only these images (default: all images of ``coco_gt``).
        max_dets_per_image: ``params.maxDets`` for bbox/segm (keypoints always use 20); AP is
            reported at the last entry, like detectron2's ``COCOevalMaxDets``.
        num_workers: threads for mask IoU; default :func:`default_num_workers`.

    Returns:
        COCOeval_faster: evaluated and summarized; ``stats`` holds the 12 (keypoints: 10) COCO
        summary numbers and ``eval["precision"]`` the [T, R, K, A, M] precision array.
        ``evalImgs`` stays empty: faster-coco-eval keeps per-image results in C++.
    """
    if COCOeval_faster is None:
        raise ImportError("faster-coco-eval is not installed: pip install faster-coco-eval")
    if iou_type not in _TASKS:
        raise ValueError(f"iou_type={iou_type!r} is not supported; expected one of {_TASKS}")
    if len(coco_results) == 0:
        raise ValueError("coco_results is empty; COCOeval cannot evaluate zero detections")
    if iou_type == "segm":
        coco_dt = _load_mask_results(coco_gt, coco_results)
    else:
        # loadRes writes id/area/iscrowd into each dict; keep the caller's dicts untouched.
        coco_dt = coco_gt.loadRes([dict(r) for r in coco_results])
    coco_eval = COCOeval_faster(
        coco_gt,
        coco_dt,
        iou_type,
        print_function=logger.info,
        kpt_oks_sigmas=list(kpt_oks_sigmas) if len(kpt_oks_sigmas) else None,
        rle_iou_max_workers=num_workers or default_num_workers(),
    )
    if iou_type == "keypoints":
        # faster-coco-eval only keeps categories that have annotations; pycocotools (and the
        # per-category AP table, which indexes precision by category) expects all of them.
        coco_eval.params.catIds = sorted(coco_gt.getCatIds())
        _check_num_keypoints(coco_gt, coco_results, coco_eval.params.kpt_oks_sigmas)
    else:
        coco_eval.params.maxDets = list(max_dets_per_image)
    if img_ids is not None:
        coco_eval.params.imgIds = list(img_ids)

    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return coco_eval


class FastCOCOEvaluator(COCOEvaluator):
    """detectron2's ``COCOEvaluator`` with faster-coco-eval computing the COCO metrics.

    Same constructor and results as ``COCOEvaluator``. ``use_fast_impl=True`` (default) selects
    faster-coco-eval when it is importable, else pycocotools' official COCOeval;
    ``use_fast_impl=False`` always uses pycocotools. The backend in use is logged.
    """

    def __init__(
        self,
        dataset_name,
        tasks=None,
        distributed=True,
        output_dir=None,
        *,
        max_dets_per_image=None,
        use_fast_impl=True,
        kpt_oks_sigmas=(),
        allow_cached_coco=True,
    ):
        # The parent's own fast path needs detectron2's _C; this class picks its backend itself.
        super().__init__(
            dataset_name,
            tasks,
            distributed,
            output_dir,
            max_dets_per_image=max_dets_per_image,
            use_fast_impl=False,
            kpt_oks_sigmas=kpt_oks_sigmas,
            allow_cached_coco=allow_cached_coco,
        )
        if self._tasks is not None:
            unknown = set(self._tasks) - set(_TASKS)
            if unknown:
                raise ValueError(
                    f"tasks={tuple(self._tasks)} has {sorted(unknown)}; allowed: {_TASKS}"
                )
        if use_fast_impl and COCOeval_faster is None:
            logger.info("faster-coco-eval is not installed; using pycocotools' COCOeval.")
        self._use_faster_coco_eval = bool(use_fast_impl) and COCOeval_faster is not None
        logger.info(
            "COCO metrics will be computed with %s.",
            "faster-coco-eval" if self._use_faster_coco_eval else "pycocotools",
        )
        self._faster_coco_api = None

    @property
    def backend(self) -> str:
        """``"faster_coco_eval"`` or ``"pycocotools"``: the library computing the metrics."""
        return "faster_coco_eval" if self._use_faster_coco_eval else "pycocotools"

    def _to_dataset_category_ids(self, coco_results: List[dict]) -> List[dict]:
        """Copies of the results with contiguous class ids mapped back to the dataset's ids."""
        id_map = self._metadata.get("thing_dataset_id_to_contiguous_id")
        if not id_map:
            return [dict(r) for r in coco_results]
        reverse = {v: k for k, v in id_map.items()}
        mapped = []
        for r in coco_results:
            if r["category_id"] not in reverse:
                raise ValueError(
                    f"A prediction has category_id={r['category_id']}, but dataset "
                    f"'{self._metadata.name}' has contiguous ids 0..{len(reverse) - 1}."
                )
            mapped.append({**r, "category_id": reverse[r["category_id"]]})
        return mapped

    def _eval_predictions(self, predictions, img_ids=None):
        """Evaluate the instance predictions of all tasks and fill ``self._results``.

        Unlike the parent, the stored predictions are not modified, so ``evaluate()`` may be
        called more than once.
        """
        with _gc_paused():
            self._eval_instances(predictions, img_ids)

    def _eval_instances(self, predictions, img_ids):
        self._logger.info("Preparing results for COCO format ...")
        coco_results = list(itertools.chain.from_iterable(x["instances"] for x in predictions))
        coco_results = self._to_dataset_category_ids(coco_results)
        tasks = self._tasks or self._tasks_from_predictions(coco_results)

        if self._output_dir:
            file_path = os.path.join(self._output_dir, "coco_instances_results.json")
            self._logger.info(f"Saving results to {file_path}")
            with PathManager.open(file_path, "w") as f:
                f.write(json.dumps(coco_results))

        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return

        self._logger.info(f"Evaluating predictions with {self.backend} ...")
        for task in sorted(tasks):
            coco_eval = self._evaluate_task(coco_results, task, img_ids) if coco_results else None
            self._results[task] = self._derive_coco_results(
                coco_eval, task, class_names=self._metadata.get("thing_classes")
            )

    def _evaluate_task(self, coco_results: List[dict], task: str, img_ids):
        """Run one task's COCOeval (evaluate, accumulate, summarize) with the chosen backend."""
        if not self._use_faster_coco_eval:
            return _evaluate_predictions_on_coco(
                self._coco_api,
                coco_results,
                task,
                kpt_oks_sigmas=self._kpt_oks_sigmas,
                cocoeval_fn=COCOeval,
                img_ids=img_ids,
                max_dets_per_image=self._max_dets_per_image,
            )
        if self._faster_coco_api is None:
            # Shares the annotation dicts already loaded by pycocotools instead of re-reading json
            # (faster-coco-eval adds "ignore" and, for segm, a cached "rle" to them).
            self._faster_coco_api = FasterCOCO(self._coco_api.dataset)
        return evaluate_on_coco_fast(
            self._faster_coco_api,
            coco_results,
            task,
            kpt_oks_sigmas=self._kpt_oks_sigmas,
            img_ids=img_ids,
            max_dets_per_image=self._max_dets_per_image,
        )
