"""Evaluators: detectron2's COCO evaluation computed with faster-coco-eval."""

from .coco_evaluation import FastCOCOEvaluator, default_num_workers, evaluate_on_coco_fast

__all__ = ["FastCOCOEvaluator", "default_num_workers", "evaluate_on_coco_fast"]
