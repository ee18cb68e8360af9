"""Tests for the reference model zoo (``lightning_fair.demos.zoo``), and the models tests and benchmarks define."""

import helpers
import pytest
import torch
import torch.fx
from torch import nn

from lightning_fair.demos import zoo

B, NUM_CLASSES = 2, 10

# name -> (builder, kwargs) for every builder at 8x8 with default args.
DEFAULT_8x8 = {
    "mlp": (zoo.mlp, {"in_features": 64}),
    "small_cnn": (zoo.small_cnn, {}),
    "vgg_bn": (zoo.vgg_bn, {}),
    "resnet_basic": (zoo.resnet, {"block": "basic"}),
    "resnet_bottleneck": (zoo.resnet, {"block": "bottleneck"}),
    "mobilenet_v2": (zoo.mobilenet_v2, {}),
    "densenet": (zoo.densenet, {}),
    "grouped_cnn": (zoo.grouped_cnn, {}),
    "GuardedCNN": (helpers.GuardedCNN, {}),
}

LARGER_INPUTS = ["vgg_bn", "resnet_basic", "resnet_bottleneck", "mobilenet_v2", "densenet"]


def _check_logits(model: nn.Module, x: torch.Tensor) -> None:
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (x.shape[0], NUM_CLASSES)
    assert torch.isfinite(out).all()
    assert isinstance(model.classifier, nn.Linear)
    assert model.classifier.out_features == NUM_CLASSES


def test_models_registry_lists_every_builder():
    expected = {"mlp", "small_cnn", "vgg_bn", "resnet", "mobilenet_v2", "densenet", "grouped_cnn"}
    assert set(zoo.MODELS) == expected


@pytest.mark.parametrize("name", sorted(DEFAULT_8x8))
def test_forward_8x8(name):
    torch.manual_seed(0)
    builder, kwargs = DEFAULT_8x8[name]
    _check_logits(builder(**kwargs), torch.randn(B, 1, 8, 8))


@pytest.mark.parametrize("size", [28, 32])
@pytest.mark.parametrize("name", LARGER_INPUTS)
def test_forward_larger_inputs(name, size):
    torch.manual_seed(0)
    builder, kwargs = DEFAULT_8x8[name]
    _check_logits(builder(**kwargs), torch.randn(B, 1, size, size))


def test_mlp_flattens_any_shape():
    _check_logits(zoo.mlp(in_features=784), torch.randn(B, 1, 28, 28))
    _check_logits(zoo.mlp(in_features=64), torch.randn(B, 64))


def test_rgb_input():
    _check_logits(zoo.resnet(in_channels=3), torch.randn(B, 3, 32, 32))
    _check_logits(helpers.GuardedCNN(in_channels=3, input_size=32), torch.randn(B, 3, 32, 32))


def test_activations_are_modules():
    for name, (builder, kwargs) in DEFAULT_8x8.items():
        acts = [m for m in builder(**kwargs).modules() if isinstance(m, (nn.ReLU, nn.ReLU6))]
        assert acts, name
    assert any(isinstance(m, nn.ReLU6) for m in zoo.mobilenet_v2().modules())


def test_grouped_cnn_has_grouped_not_depthwise_conv():
    convs = [m for m in zoo.grouped_cnn(width=16, groups=4).modules() if isinstance(m, nn.Conv2d)]
    grouped = [c for c in convs if c.groups > 1]
    assert len(grouped) == 1
    assert grouped[0].groups == 4 and grouped[0].in_channels == 32


def test_mobilenet_has_depthwise_conv():
    convs = [m for m in zoo.mobilenet_v2().modules() if isinstance(m, nn.Conv2d)]
    assert any(c.groups > 1 and c.groups == c.in_channels == c.out_channels for c in convs)


def test_resnet_rejects_unknown_block():
    with pytest.raises(ValueError):
        zoo.resnet(block="wide")


def test_guarded_cnn_rejects_wrong_input_size():
    model = helpers.GuardedCNN(input_size=8)
    with pytest.raises(ValueError):
        model(torch.randn(B, 1, 28, 28))


def test_guarded_cnn_is_not_fx_traceable():
    with pytest.raises(Exception):
        torch.fx.symbolic_trace(helpers.GuardedCNN())


@pytest.mark.parametrize("block, calls", [("basic", 2), ("bottleneck", 3)])
def test_resnet_block_relu_is_shared(block, calls):
    model = zoo.resnet(block=block)
    blk = next(m for m in model.modules() if isinstance(m, (zoo.BasicBlock, zoo.Bottleneck)))
    count = []
    blk.relu.register_forward_hook(lambda *_: count.append(1))
    model(torch.randn(B, 1, 8, 8))
    assert len(count) >= 2
    assert len(count) == calls


@pytest.mark.parametrize("name", sorted(DEFAULT_8x8))
def test_dependency_graph_builds(name):
    tp = pytest.importorskip("torch_pruning")
    builder, kwargs = DEFAULT_8x8[name]
    model = builder(**kwargs).eval()
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(B, 1, 8, 8))
    assert dg is not None


def test_resnet50_has_the_imagenet_layout():
    model = helpers.resnet50()
    assert sum(p.numel() for p in model.parameters()) == 25_557_032  # torchvision's resnet50: 25,557,032
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
