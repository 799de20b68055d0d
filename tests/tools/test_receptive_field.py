"""The effective receptive radius on a network whose input gradient is known."""

from types import SimpleNamespace

import numpy as np
import pytest
from torch import nn

from nl_detectron.analysis.receptive_field import effective_receptive_radius


class OneConv(nn.Module):
    """'res4' is one 3x3 convolution with equal weights: the centre unit sees a 3x3 patch evenly."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Conv2d(3, 2, 3, padding=1, bias=False)
        nn.init.constant_(self.backbone.weight, 1.0)

    def preprocess_image(self, batched):
        return SimpleNamespace(tensor=batched[0]["image"][None])


class AsBackbone(nn.Module):
    def __init__(self, conv):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return {"res4": self.conv(x)}


def test_radius_of_a_single_convolution():
    model = OneConv()
    model.backbone = AsBackbone(model.backbone)
    images = [
        np.random.default_rng(i).integers(0, 255, (9, 9, 3), dtype=np.uint8) for i in range(2)
    ]
    # 9 pixels of equal gradient around the centre (4.5, 4.5): 1 at distance 0, 4 at 1, 4 at 1.41
    assert effective_receptive_radius(model, images, "res4", mass=0.5) == pytest.approx(1.0)
    assert effective_receptive_radius(model, images, "res4", mass=0.9) == pytest.approx(2**0.5)
    with pytest.raises(ValueError, match="'res5' is not an output; allowed: \\['res4'\\]"):
        effective_receptive_radius(model, images, "res5")
    with pytest.raises(ValueError, match="mass=1.5 must lie in"):
        effective_receptive_radius(model, images, "res4", mass=1.5)
