#!/usr/bin/env python
"""
Run a trained config on images and write its predictions drawn over them.

Boxes, class names and scores, masks and keypoints are drawn by detectron2's ``Visualizer``, with
the class names of ``cfg.DATASETS.TEST[0]`` (or TRAIN[0]) when that dataset is registered.
One output image per input, same size, same file name, in ``--output``.

Example:

    python tools/demo.py --config-file CONFIG --input photos/ --output predictions/ \\
        --opts MODEL.WEIGHTS output/model_final.pth
"""

import logging
import os

import cv2
import tqdm

from detectron2.data import MetadataCatalog, detection_utils
from detectron2.engine import DefaultPredictor
from detectron2.utils.visualizer import ColorMode, Visualizer

from nl_detectron.analysis import (
    expand_image_paths,
    image_tool_argument_parser,
    load_tool_config,
    parse_tool_args,
)

logger = logging.getLogger("nl_detectron.demo")


def setup(args):
    cfg = load_tool_config(args.config_file, args.opts)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = args.confidence_threshold
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = args.confidence_threshold
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = args.confidence_threshold
    cfg.freeze()
    return cfg


def dataset_metadata(cfg):
    """Metadata (class names, keypoint names) of the first registered test or train dataset."""
    names = list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN)
    for name in names:
        metadata = MetadataCatalog.get(name)
        if metadata.get("thing_classes") is not None:
            return metadata
    logger.warning(f"none of the datasets {names} has class names; drawing class indices")
    return MetadataCatalog.get("__nl_detectron_demo_unnamed")


def run(args):
    """Writes one picture per input image; returns their paths."""
    if not 0 <= args.confidence_threshold <= 1:
        raise ValueError(f"--confidence-threshold={args.confidence_threshold} must lie in [0, 1]")
    paths = expand_image_paths(args.input)
    cfg = setup(args)
    predictor = DefaultPredictor(cfg)
    metadata = dataset_metadata(cfg)
    os.makedirs(args.output, exist_ok=True)
    written = []
    for path in tqdm.tqdm(paths, desc="demo", unit="image", disable=len(paths) < 2):
        image = detection_utils.read_image(path, format="BGR")  # what DefaultPredictor expects
        instances = predictor(image)["instances"].to("cpu")
        visualizer = Visualizer(image[:, :, ::-1], metadata, instance_mode=ColorMode.IMAGE)
        picture = visualizer.draw_instance_predictions(instances).get_image()  # RGB
        out = os.path.join(args.output, os.path.basename(path))
        cv2.imwrite(out, picture[:, :, ::-1])
        written.append(out)
        logger.info(f"{path}: {len(instances)} instances -> {out}")
    return written


def argument_parser():
    parser = image_tool_argument_parser(__doc__, "folder for the pictures")
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        help="minimum score of drawn instances",
    )
    return parser


def main(argv=None):
    return run(parse_tool_args(argument_parser(), argv))


if __name__ == "__main__":
    main()
