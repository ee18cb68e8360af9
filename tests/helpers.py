"""Shared data and models for the tests.

Real data: sklearn's 8x8 digits as ``[N, 1, 8, 8]`` float tensors in ``[0, 1]``.
Everything is seeded and cached per test session, so the small CNN is trained once.
Models the package does not ship: :class:`GuardedCNN` (not fx-traceable) and :func:`resnet50`
(from examples/benchmarks/resnet50_memory.py).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
from pathlib import Path

import torch
from torch import nn

from lightning_fair import compute_scores
from lightning_fair.demos import zoo

#: examples/benchmarks, whose scripts define the larger models
BENCHMARKS = Path(__file__).resolve().parents[1] / "examples" / "benchmarks"

#: A calibration setting that keeps score computation fast on CPU.
FAST = dict(samples_per_class=16, num_projections=32)


@functools.lru_cache(maxsize=None)
def digits():
    """``(x_train, y_train, x_test, y_test)``: a seeded 1400 / 397 split of sklearn digits."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def calibration_loader(num: int = 400, batch_size: int = 100):
    """A list of labelled batches from the training split (a valid 'dataloader')."""
    x, y, _, _ = digits()
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, num, batch_size)]


def example_inputs(n: int = 2) -> torch.Tensor:
    return digits()[2][:n].clone()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    model.train(was_training)
    return acc


@contextlib.contextmanager
def single_thread():
    """torch on one intra-op thread inside the block, the previous count restored after.

    The models here are tiny: results do not depend on the machine's core count, and spinning
    OpenMP workers would only make the tests slower on a busy machine. conftest.py sets one thread
    for the whole suite; this keeps helpers that benchmarks and worker scripts import as exact.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train(model: nn.Module, epochs: int = 12, seed: int = 0, batch_size: int = 128) -> nn.Module:
    """Seeded AdamW + one-cycle schedule on the training split; returns the model in eval mode.

    Runs on one thread, so the trained weights do not depend on the machine's core count.
    """
    with single_thread():
        return _train(model, epochs, seed, batch_size)


def _train(model, epochs, seed, batch_size):
    x, y, _, _ = digits()
    steps_per_epoch = (len(y) + batch_size - 1) // batch_size
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=generator)
        for i in range(0, len(y), batch_size):
            idx = perm[i : i + batch_size]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
            schedule.step()
    return model.eval()


@functools.lru_cache(maxsize=None)
def _trained_state(width: int, seed: int, epochs: int):
    torch.manual_seed(seed)
    model = train(zoo.small_cnn(width=width), epochs=epochs, seed=seed)
    return {k: v.clone() for k, v in model.state_dict().items()}


def trained_small_cnn(width: int = 16, seed: int = 0, epochs: int = 12) -> nn.Module:
    """A fresh small_cnn (in eval mode) holding cached trained weights (trained once per setting)."""
    model = zoo.small_cnn(width=width)
    model.load_state_dict(_trained_state(width, seed, epochs))
    return model.eval()


@functools.lru_cache(maxsize=None)
def _trained_small_cnn_scores():
    return compute_scores(trained_small_cnn(), calibration_loader(), **FAST)


def trained_small_cnn_scores():
    """FAIR scores of the default :func:`trained_small_cnn` (computed once; a deep copy each call)."""
    return copy.deepcopy(_trained_small_cnn_scores())


def module_shapes(model: nn.Module) -> dict:
    """Every module's channel/feature sizes (what structural pruning changes)."""
    keys = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features")
    return {name: {k: getattr(m, k) for k in keys if hasattr(m, k)} for name, m in model.named_modules()}


def units(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


# --------------------------------------------------------------------------- models
def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    """3x3 conv (bias-free, 'same' padding) -> BN -> ReLU, as ``zoo``'s blocks."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class GuardedCNN(nn.Module):
    """Small residual CNN whose ``forward`` has Python control flow (not fx-traceable).

    It rejects inputs whose spatial size is not ``input_size`` x ``input_size``.
    Example: ``GuardedCNN(input_size=28)(torch.randn(2, 1, 28, 28)).shape == (2, 10)``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16, input_size: int = 8):
        super().__init__()
        self.input_size = input_size
        self.block1 = _conv_bn_relu(in_channels, width)
        self.block2 = _conv_bn_relu(width, width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"expected {self.input_size}x{self.input_size} input, got {tuple(x.shape[-2:])}")
        if x.dim() == 4 and x.shape[0] > 0:
            h = self.block1(x)
            h = self.block2(h) + h
        else:
            raise ValueError(f"expected a non-empty NCHW batch, got shape {tuple(x.shape)}")
        return self.classifier(self.flatten(self.pool(h)))


@functools.lru_cache(maxsize=None)
def benchmark(name: str):
    """examples/benchmarks/<name>.py, loaded as a module (under a private name, not on sys.path)."""
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resnet50(**kwargs) -> nn.Module:
    """ResNet-50 (ImageNet layout) as examples/benchmarks/resnet50_memory.py defines it."""
    return benchmark("resnet50_memory").resnet50(**kwargs)
