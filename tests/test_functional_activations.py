"""Activations called as functions (``F.relu``) are observed like activation modules (issue 13)."""

import helpers
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_fair import compute_scores, prune


class ModuleNet(nn.Module):
    def __init__(self, act: str = "relu"):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 10)
        self.act = {"relu": nn.ReLU(), "relu_inplace": nn.ReLU(inplace=True), "gelu": nn.GELU()}[act]

    def forward(self, x):
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv2(x))).mean((2, 3))
        return self.fc2(self.act(self.fc1(x)))


class FunctionalNet(ModuleNet):
    """The same layers, written the way many users write them."""

    def __init__(self, act: str = "relu"):
        super().__init__()
        self.style = act

    def forward(self, x):
        if self.style == "relu":
            x = F.relu(self.bn1(self.conv1(x)))
            x = torch.relu(self.bn2(self.conv2(x))).mean((2, 3))
            return self.fc2(self.fc1(x).relu())
        if self.style == "relu_inplace":
            x = F.relu(self.bn1(self.conv1(x)), inplace=True)
            x = self.bn2(self.conv2(x)).relu_().mean((2, 3))
            return self.fc2(F.relu(self.fc1(x), inplace=True))
        x = F.gelu(self.bn1(self.conv1(x)))
        x = F.gelu(self.bn2(self.conv2(x))).mean((2, 3))
        return self.fc2(F.gelu(self.fc1(x)))


@pytest.mark.parametrize("act", ["relu", "relu_inplace", "gelu"])
def test_functional_activations_are_observed_like_modules(act):
    torch.manual_seed(0)
    modules = ModuleNet(act)
    functional = FunctionalNet(act)
    functional.load_state_dict(modules.state_dict(), strict=False)
    calib = helpers.calibration_loader(num=200)
    a = compute_scores(modules, calib, **helpers.FAST)
    b = compute_scores(functional, calib, **helpers.FAST)
    assert b.observed == a.observed == {"conv1": "activation", "conv2": "activation", "fc1": "activation"}
    for name in a.layers:
        assert torch.equal(a.utilization[name], b.utilization[name]), name
        assert torch.equal(a.reconstruction[name], b.reconstruction[name]), name


def test_functional_relu_model_prunes_with_the_report_saying_activation():
    torch.manual_seed(0)
    model = FunctionalNet("relu")
    result = prune(model, helpers.calibration_loader(num=200), target_macs=0.6, **helpers.FAST)
    assert {row.name: row.observed for row in result.report.layers}["conv1"] == "activation"
    assert result.report.macs_ratio <= 0.6
