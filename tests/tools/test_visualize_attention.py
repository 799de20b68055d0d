import cv2
import numpy as np
import pytest
import torch

from detectron2.modeling import build_model

from nl_detectron.analysis import KEY_COLOR, QUERY_COLOR, capture_inputs

STRIDE = 16  # res4 of a ResNet; test images are not resized, padded to a multiple of 32
BLOCK = "backbone.bottom_up.res4.nonlocal1.block"


@pytest.fixture
def peaked_checkpoint(tiny_cfg, tmp_path):
    """A tiny NL model whose embeddings are scaled up so that the attention is peaked."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg).eval()
    block = dict(model.named_modules())[BLOCK]
    with torch.no_grad():
        block.theta.weight.mul_(60)
        block.phi.weight.mul_(60)
    path = str(tmp_path / "peaked.pth")
    torch.save({"model": model.state_dict()}, path)
    return model, block, path


def block_input(model, block, image_rgb):
    """The block's input for an unresized image, computed here without the analysis helpers."""
    bgr = torch.as_tensor(np.ascontiguousarray(image_rgb[:, :, ::-1].transpose(2, 0, 1))).float()
    with torch.no_grad(), capture_inputs({"nl": block}) as captured:
        model.backbone(model.preprocess_image([{"image": bgr}]).tensor)
    return captured["nl"]


def test_highlighted_keys_are_the_blocks_strongest(
    load_tool, nl_config, opts_for, peaked_checkpoint, synthetic_image, tmp_path
):
    model, block, weights = peaked_checkpoint
    path, image = synthetic_image
    tool = load_tool("visualize_attention")
    qx, qy = 150, 90
    out = tool.main(
        ["--config-file", nl_config, "--input", path, "--queries", f"{qx},{qy}"]
        + ["--top-k", "5", "--output", str(tmp_path / "out"), "--opts"]
        + opts_for(weights)
    )
    assert len(out) == 1
    picture = cv2.imread(out[0])[:, :, ::-1]
    assert picture.shape == image.shape  # [200, 300, 3]

    x = block_input(model, block, image)
    h, w = x.shape[2:]
    assert (h, w) == (224 // STRIDE, 320 // STRIDE)
    query = (qy // STRIDE) * w + qx // STRIDE
    weights = block.attention_weights(x, torch.tensor([query]))[0, 0]
    assert weights.max() > 5 / weights.numel()  # peaked, so the top 5 are well defined
    top = weights.topk(5).indices
    centers = [((j % w + 0.5) * STRIDE, (j // w + 0.5) * STRIDE) for j in top.tolist()]
    query_center = ((qx // STRIDE + 0.5) * STRIDE, (qy // STRIDE + 0.5) * STRIDE)
    assert tuple(picture[int(query_center[1]), int(query_center[0])]) == QUERY_COLOR
    checked = 0
    for cx, cy in centers:
        if cy >= image.shape[0] or np.hypot(cx - query_center[0], cy - query_center[1]) < 8:
            continue  # in the padding, or under the query marker
        assert tuple(picture[int(cy), int(cx)]) == KEY_COLOR, (cx, cy)
        checked += 1
    assert checked >= 1
    # a key position outside the top 5 and away from every arrow carries no marker
    green = np.all(picture == KEY_COLOR, axis=-1)
    assert green.sum() < 0.05 * green.size


def test_strongest_queries_and_overview(
    load_tool, nl_config, opts_for, peaked_checkpoint, synthetic_image, tmp_path
):
    _, _, weights = peaked_checkpoint
    path, image = synthetic_image
    tool = load_tool("visualize_attention")
    out = tool.main(
        ["--config-file", nl_config, "--input", path, "--num-queries", "2", "--overview"]
        + ["--overview-width", "150", "--output", str(tmp_path / "out"), "--opts"]
        + opts_for(weights)
    )
    assert [p.rsplit("_", 1)[-1] for p in out] == ["q0.png", "q1.png", "overview.png"]
    for p in out[:2]:
        assert cv2.imread(p).shape == image.shape
    # one row (one block) of two 150-pixel panels with a 4-pixel gap
    assert cv2.imread(out[2]).shape == (100, 304, 3)


def test_bad_inputs(load_tool, nl_config, opts_for, synthetic_image, tmp_path):
    path, _ = synthetic_image
    tool = load_tool("visualize_attention")
    base = ["--config-file", nl_config, "--output", str(tmp_path / "out")]
    missing = str(tmp_path / "nope.jpg")
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        tool.main(base + ["--input", missing, "--opts"] + opts_for(""))
    with pytest.raises(ValueError, match=r"x=400, y=10.*outside the 300x200 image"):
        tool.main(base + ["--input", path, "--queries", "400,10", "--opts"] + opts_for(""))
    with pytest.raises(ValueError, match="not of the form X,Y"):
        tool.main(base + ["--input", path, "--queries", "12", "--opts"] + opts_for(""))
    stock = ["MODEL.BACKBONE.NAME", "build_resnet_fpn_backbone"]
    with pytest.raises(ValueError, match=r"mask_rcnn_nl_R50.yaml.*without context blocks"):
        tool.main(base + ["--input", path, "--opts"] + opts_for("") + stock)
