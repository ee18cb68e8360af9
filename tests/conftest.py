"""Shared fixtures: sklearn digits as [N, 1, 8, 8] images in [0, 1] and two quick-trained zoo models."""

import copy
import sys

import pytest
import torch

from lightning_fair.demos import zoo


@pytest.fixture(scope="session")
def digits():
    """``(X, y)``: the 1797 sklearn digits, ``X`` float32 ``[N, 1, 8, 8]`` in [0, 1], ``y`` int64."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    return x, y


def _quick_train(model, x, y, steps, batch_size=128, lr=1e-2, seed=0):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: threads only add overhead (and stall on a busy machine)
    try:
        return _train_steps(model, x, y, steps, batch_size, lr, seed)
    finally:
        torch.set_num_threads(threads)


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
def one_thread():
    """torch on one thread for the test (results independent of the core count), restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def quiet_cli(one_thread, monkeypatch):
    """One thread, and no pytest arguments in sys.argv (LightningCLI warns when args and sys.argv are both given)."""
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    yield
