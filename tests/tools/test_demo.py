import os

import cv2
import pytest


def test_demo_on_a_real_photo(load_tool, nl_config, opts_for, photo, tmp_path):
    tool = load_tool("demo")
    out = tool.main(
        ["--config-file", nl_config, "--input", photo, "--output", str(tmp_path)]
        + ["--confidence-threshold", "0", "--opts"]
        + opts_for("")
    )
    assert out == [str(tmp_path / os.path.basename(photo))]
    original, drawn = cv2.imread(photo), cv2.imread(out[0])
    assert drawn.shape == original.shape
    # threshold 0 keeps TEST.DETECTIONS_PER_IMAGE (5) instances, so something was drawn
    assert (cv2.absdiff(drawn, original).max(axis=-1) > 40).mean() > 0.001


def test_demo_bad_inputs(load_tool, nl_config, opts_for, tmp_path):
    tool = load_tool("demo")
    base = ["--config-file", nl_config, "--output", str(tmp_path)]
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        tool.main(base + ["--input", str(tmp_path / "missing.jpg"), "--opts"] + opts_for(""))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no image"):
        tool.main(base + ["--input", str(empty), "--opts"] + opts_for(""))
    with pytest.raises(ValueError, match="confidence-threshold=1.5"):
        tool.main(base + ["--input", str(empty), "--confidence-threshold", "1.5"])
