"""Shared fixtures: sklearn digits as [N, 1, 8, 8] images in [0, 1] and two quick-trained zoo models.

The whole suite runs on one torch thread (set here, once, before any test module is imported): the
models are tiny, so results then do not depend on the machine's core count, and spinning OpenMP
workers would only stall on a busy machine. Subprocesses (DDP workers, the CLI) set their own.
"""

import copy
import sys

import lightning as L
import pytest
import torch
from helpers import single_thread

from lightning_fair.demos import zoo

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits():
    """``(X, y)``: the 1797 sklearn digits, ``X`` float32 ``[N, 1, 8, 8]`` in [0, 1], ``y`` int64."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    return x, y


def _quick_train(model, x, y, steps, batch_size=128, lr=1e-2, seed=0):
    with single_thread():  # tiny model: threads only add overhead (and stall on a busy machine)
        return _train_steps(model, x, y, steps, batch_size, lr, seed)


def _train_steps(model, x, y, steps, batch_size, lr, seed):
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch_size,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model


@pytest.fixture(scope="session")
def _trained_mlp(digits):
    torch.manual_seed(0)
    return _quick_train(zoo.mlp(in_features=64), *digits, steps=40)


@pytest.fixture(scope="session")
def _trained_cnn(digits):
    torch.manual_seed(0)
    return _quick_train(zoo.small_cnn(width=8), *digits, steps=40)


@pytest.fixture
def trained_mlp(_trained_mlp):
    """A fresh copy (tests may mutate it) of zoo.mlp trained briefly on digits, in eval mode."""
    return copy.deepcopy(_trained_mlp)


@pytest.fixture
def trained_cnn(_trained_cnn):
    """A fresh copy of zoo.small_cnn(width=8) trained briefly on digits, in eval mode."""
    return copy.deepcopy(_trained_cnn)


@pytest.fixture
def seeded():
    """``L.seed_everything(0)`` (torch, numpy, random) before the test; a module opts in with
    ``pytestmark = pytest.mark.usefixtures("seeded")``."""
    L.seed_everything(0, verbose=False)


@pytest.fixture
def quiet_cli(monkeypatch):
    """No pytest arguments in sys.argv (LightningCLI warns when args and sys.argv are both given)."""
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    yield
