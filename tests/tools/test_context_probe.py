"""tools/context_probe.py: the probe's pieces and a few training steps."""

import numpy as np
import pytest
import torch

from nl_detectron.data import context


@pytest.fixture(scope="module")
def probe(load_tool):
    return load_tool("context_probe")


def test_cell_index_follows_the_stride(probe):
    assert probe.cell_index((0, 0), 128) == 0
    assert probe.cell_index((17.5, 3), 128) == 1
    assert probe.cell_index((3, 17.5), 128) == 8
    assert probe.cell_index((127.9, 127.9), 128) == 63


def test_batch_reads_the_rule_at_the_drawn_cells(probe):
    spec = context.ContextSpec("bind", 6, seed=3)
    x, target_cells, labels, partner_cells, cues = probe.batch(
        spec, range(6), np.random.default_rng(0)
    )
    assert x.shape == (6, 3, 128, 128)
    assert torch.equal(labels, cues)  # a target's category is its partner's cue
    for i in range(6):
        pairs = context.draw_image(spec, i)[1]
        cells = {
            (
                probe.cell_index(probe._centre(p["target"]), 128),
                probe.cell_index(probe._centre(p["partner"]), 128),
                context.CUES.index(p["cue"]),
            )
            for p in pairs
        }
        assert (int(target_cells[i]), int(partner_cells[i]), int(labels[i])) in cells


def test_position_layer_norm_uses_no_other_position(probe):
    torch.manual_seed(0)
    norm = probe.PositionLayerNorm(8)
    x = torch.randn(1, 8, 4, 4)
    y = x.clone()
    y[0, :, 3, 3] += 100.0  # a far-away position changes
    assert torch.allclose(norm(x)[..., :3, :3], norm(y)[..., :3, :3])
    group = probe.conv_norm_relu(8, 16, 1, "gn")[1]
    assert not torch.allclose(
        group(x.repeat(1, 2, 1, 1))[..., 0, 0], group(y.repeat(1, 2, 1, 1))[..., 0, 0]
    )


@pytest.mark.parametrize("model", ["local", "mean", "gc", "nl", "nl_gaussian", "dnl"])
def test_a_few_steps_train_and_report(probe, model, capsys):
    accuracy = probe.main(
        ["--rung", "pair", "--model", model, "--steps", "2", "--batch", "2", "--val-images", "4",
         "--eval-period", "1", "--cue-loss"]
    )  # fmt: skip
    assert model in probe.MODELS
    assert 0.0 <= accuracy <= 1.0
    out = capsys.readouterr().out
    assert out.count("val target accuracy") == 2
    if model != "local":
        assert "gate" in out


def test_bad_arguments_are_named(probe):
    with pytest.raises(ValueError, match="--steps 0"):
        probe.main(["--steps", "0"])
