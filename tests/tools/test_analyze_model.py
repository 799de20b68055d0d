import pytest

# R-18 res4 (before its last unit): C = 256 channels, C' = 128; a 128 x 192 input gives an
# 8 x 12 map at stride 16, so N = M = 96 positions.
C, CI, N = 256, 128, 96


def test_overhead_is_exactly_the_blocks_cost(load_tool, nl_config, opts_for):
    tool = load_tool("analyze_model")
    results = tool.main(
        ["--tasks", "overhead", "--input-size", "128", "192", "--config-file", nl_config]
        + opts_for("")
    )
    (row,) = results["overhead"]
    # theta, phi, g and the output conv, q.k and the weighted sum of values over N x M pairs,
    # and the eval-mode BatchNorm after the output conv (fvcore: 2 per element)
    analytic = 4 * N * C * CI + N * N * (CI + CI) + 2 * N * C
    assert row["block_flops"] == analytic
    # same weights and identity blocks: same detections, so the models differ by the block only
    assert row["flops"] - row["stock_flops"] == pytest.approx(analytic, rel=1e-6)
    block_params = 4 * C * CI + 3 * CI + 2 * C  # 4 convs (the output conv without bias), BN
    assert row["params"] - row["stock_params"] == block_params
    assert row["blocks"] == "1 NonLocalBlock: res4.nonlocal1"


def test_stock_config_is_rejected(load_tool, nl_config, opts_for):
    tool = load_tool("analyze_model")
    with pytest.raises(ValueError, match=r"mask_rcnn_nl_R50.yaml has no non-local component"):
        tool.main(
            ["--tasks", "overhead", "--input-size", "64", "64", "--config-file", nl_config]
            + opts_for("")
            + ["MODEL.BACKBONE.NAME", "build_resnet_fpn_backbone"]
        )
