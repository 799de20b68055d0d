#!/usr/bin/env python
"""
Export a model with non-local blocks for deployment: detectron2's tracing export
(``detectron2.export.TracingAdapter``) to TorchScript or ONNX, with the ``MODEL.NONLOCAL`` config.

The exported model takes one image tensor [3, H, W] (float, channels in ``INPUT.FORMAT``, resized as
``DefaultPredictor`` does) and returns the prediction's fields as a flat tuple, in the order
logged as "outputs schema" (for R-CNN models: the sorted field names of ``Instances``, e.g.
``pred_boxes, pred_classes, pred_masks, scores``, then the image size). R-CNN outputs stop before
detectron2's final resize: boxes are in the input tensor's coordinates and masks are the
per-box 28 x 28 probabilities (``detectron2.modeling.postprocessing.detector_postprocess``
turns them into the original image's). H and W may differ from the sample's in both formats.

Output: ``--output``/model.ts (``torch.jit.load``) or ``--output``/model.onnx (opset
``--opset``, input named "image"). The keypoint head does not export to ONNX (detectron2's
keypoint decoding cannot be traced into ONNX): set ``MODEL.KEYPOINT_ON False`` for ONNX.
TorchScript scripting is not offered: the blocks choose their computation path in Python code
that TorchScript's compiler rejects (traced, they record one fused attention call; see
``nl_detectron.layers.attention_policy``).

Examples:

    python tools/export_model.py \\
        --config-file configs/quick_schedules/mask_rcnn_nl_R18_kp_quick.yaml --format torchscript \\
        --output output/export --opts MODEL.WEIGHTS output/main_job/model_final.pth
    python tools/export_model.py --config-file configs/mask_rcnn_nl_R50.yaml --format onnx \\
        --sample-image photo.jpg --output output/export_onnx --opts MODEL.WEIGHTS model_final.pth
"""

import argparse
import logging
import os

import torch

import detectron2.data.transforms as T
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import build_detection_test_loader, detection_utils
from detectron2.export import TracingAdapter
from detectron2.export.flatten import InstancesSchema
from detectron2.modeling import GeneralizedRCNN, build_model

from nl_detectron.analysis import load_tool_config, parse_tool_args
from nl_detectron.data import prepare_datasets

logger = logging.getLogger("nl_detectron.export_model")

FORMATS = ("torchscript", "onnx")
FILE_NAMES = {"torchscript": "model.ts", "onnx": "model.onnx"}


def setup(args):
    cfg = load_tool_config(args.config_file, args.opts)
    cfg.DATALOADER.NUM_WORKERS = 0  # one sample image; no worker processes
    if args.format == "onnx" and cfg.MODEL.KEYPOINT_ON:
        raise ValueError(
            "MODEL.KEYPOINT_ON=True cannot be exported with --format onnx (detectron2's keypoint "
            "decoding does not trace into ONNX); add MODEL.KEYPOINT_ON False to --opts, or use "
            "--format torchscript"
        )
    cfg.freeze()
    return cfg


def sample_image(cfg, path=None):
    """The image tensor [3, H, W] to trace with: ``path`` read and resized as DefaultPredictor does,
    else the first image of ``cfg.DATASETS.TEST[0]`` through the test loader."""
    if path is None:
        dataset = cfg.DATASETS.TEST[0]
        prepare_datasets([dataset])  # draws the built-in generated data on first use
        return next(iter(build_detection_test_loader(cfg, dataset)))[0]["image"]
    image = detection_utils.read_image(path, format=cfg.INPUT.FORMAT)
    resize = T.ResizeShortestEdge(
        [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
    )
    image = resize.get_transform(image).apply_image(image)
    return torch.as_tensor(image.astype("float32").transpose(2, 0, 1))


def _rcnn_inference(model, inputs):
    # R-CNN without detector_postprocess: the resize to the original image is left to the caller.
    return [{"instances": model.inference(inputs, do_postprocess=False)[0]}]


def traceable_model(model, image):
    """``model`` as a module of one image tensor that returns a flat tuple of tensors."""
    inference = _rcnn_inference if isinstance(model, GeneralizedRCNN) else None
    return TracingAdapter(model, [{"image": image}], inference)


def output_names(adapter):
    """Names of the flat outputs when they are one image's Instances (fields, then image_size),
    else None. Needs ``adapter.outputs_schema``, which the adapter's first call records."""
    (per_image,) = adapter.outputs_schema.schemas
    instances = per_image.schemas[0] if len(per_image.schemas) == 1 else None
    if isinstance(instances, InstancesSchema) and set(instances.sizes) == {1}:
        return [*instances.keys, "image_size"]
    return None


def export(adapter, image, export_format, output_dir, opset=17):
    """Writes ``adapter`` traced on ``image`` to ``output_dir``; returns the file's path."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, FILE_NAMES[export_format])
    if export_format == "torchscript":
        torch.jit.save(torch.jit.trace(adapter, (image,)), path)
    else:
        adapter(image)  # records adapter.outputs_schema, which names the outputs
        # dynamo=False: detectron2's export is built for the TorchScript-based ONNX exporter.
        torch.onnx.export(
            adapter,
            (image,),
            path,
            dynamo=False,
            opset_version=opset,
            input_names=["image"],
            output_names=output_names(adapter),
            dynamic_axes={"image": {1: "height", 2: "width"}},
        )
    return path


def run(args):
    cfg = setup(args)
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    else:
        logger.warning("MODEL.WEIGHTS is empty: exporting randomly initialised weights")
    image = sample_image(cfg, args.sample_image).to(cfg.MODEL.DEVICE)
    adapter = traceable_model(model, image)
    with torch.no_grad():
        path = export(adapter, image, args.format, args.output, args.opset)
    logger.info(f"wrote {path}")
    logger.info(f"inputs schema: {adapter.inputs_schema}")
    logger.info(f"outputs schema: {adapter.outputs_schema}")
    return path


def argument_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--format", choices=FORMATS, default="torchscript")
    parser.add_argument(
        "--sample-image",
        metavar="FILE",
        help="image to trace with (default: the first image of DATASETS.TEST[0])",
    )
    parser.add_argument("--output", required=True, help="folder for model.ts or model.onnx")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    return parser


def main(argv=None):
    return run(parse_tool_args(argument_parser(), argv))


if __name__ == "__main__":
    main()
