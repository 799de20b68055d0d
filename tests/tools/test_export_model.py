"""tools/export_model.py: the quick NL model exported to TorchScript and ONNX gives PyTorch's
outputs, on the traced image and on an image of another size."""

import numpy as np
import onnxruntime
import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from nl_detectron import model_zoo

QUICK_CONFIG = "quick_schedules/mask_rcnn_nl_R18_kp_quick.yaml"
NO_KEYPOINTS = ["MODEL.KEYPOINT_ON", "False"]


def quick_model(opts=()):
    cfg = model_zoo.get_config(QUICK_CONFIG)
    cfg.merge_from_list(list(opts))
    return cfg, build_model(cfg).eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Random weights whose NL block is not the identity (ZERO_INIT off), so that an export that
    dropped or mangled the block would change the outputs."""
    torch.manual_seed(0)
    _, model = quick_model(["MODEL.NONLOCAL.ZERO_INIT", "False"])
    block = model.backbone.bottom_up.res4.nonlocal1
    x = torch.randn(1, block.block.in_channels, 6, 5)
    assert not torch.allclose(block(x), x, atol=1e-3)
    folder = tmp_path_factory.mktemp("weights")
    DetectionCheckpointer(model, save_dir=str(folder)).save("model")
    return str(folder / "model.pth")


def pytorch_cases(tool, opts, checkpoint, image_path):
    """(image, PyTorch's flat outputs) for the traced sample image and for one of another size,
    from the tool's traceable adapter around the model with the exported weights."""
    cfg, model = quick_model(opts)
    DetectionCheckpointer(model).load(checkpoint)
    sample = tool.sample_image(cfg, image_path)
    reference = tool.traceable_model(model, sample)
    with torch.no_grad():
        return [(image, reference(image)) for image in (sample, torch.rand(3, 192, 144) * 255)]


def export(tool, export_format, image_path, output, opts):
    return tool.main(
        ["--config-file", model_zoo.get_config_file(QUICK_CONFIG), "--format", export_format]
        + ["--sample-image", image_path, "--output", str(output), "--opts"]
        + list(opts)
    )


def assert_outputs_match(exported, expected, tolerance):
    assert len(exported) == len(expected)
    assert expected[0].shape[0] > 0, "no detections: nothing would be compared"
    for got, want in zip(exported, expected):
        got = torch.as_tensor(np.asarray(got))
        torch.testing.assert_close(got.to(want.dtype), want, rtol=tolerance, atol=tolerance)


def test_torchscript_matches_pytorch(load_tool, synthetic_image, checkpoint, tmp_path):
    tool = load_tool("export_model")
    opts = ["MODEL.WEIGHTS", checkpoint]
    path = export(tool, "torchscript", synthetic_image[0], tmp_path, opts)
    assert path == str(tmp_path / "model.ts")
    traced = torch.jit.load(path)

    for image, expected in pytorch_cases(tool, opts, checkpoint, synthetic_image[0]):
        assert len(expected) == 7  # boxes, classes, heatmaps, keypoints, masks, scores, size
        with torch.no_grad():
            assert_outputs_match(traced(image), expected, tolerance=1e-5)


def test_onnx_matches_pytorch(load_tool, synthetic_image, checkpoint, tmp_path):
    tool = load_tool("export_model")
    opts = ["MODEL.WEIGHTS", checkpoint] + NO_KEYPOINTS
    path = export(tool, "onnx", synthetic_image[0], tmp_path, opts)
    assert path == str(tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == [
        "pred_boxes",
        "pred_classes",
        "pred_masks",
        "scores",
        "image_size",
    ]

    for image, expected in pytorch_cases(tool, opts, checkpoint, synthetic_image[0]):
        exported = session.run(None, {"image": image.numpy()})
        assert_outputs_match(exported, expected, tolerance=1e-4)


def test_onnx_with_keypoints_is_refused(load_tool, synthetic_image, tmp_path):
    tool = load_tool("export_model")
    with pytest.raises(ValueError, match="MODEL.KEYPOINT_ON"):
        export(tool, "onnx", synthetic_image[0], tmp_path, ["MODEL.WEIGHTS", ""])
    assert not any(tmp_path.glob("*.onnx"))
