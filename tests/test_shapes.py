"""The shape options (issue 23): ``round_to`` keeps widths in multiples, ``shapes="uniform"`` gives
every layer of a kind the same count, on plain PyTorch models (Hugging Face models:
tests/test_pretrained_roundtrip.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_fair import PruneConfig, prune
from lightning_fair.demos import zoo

FAST = dict(samples_per_class=8, num_projections=8)


def digits_like(n: int = 4, features: int = 64, seed: int = 0) -> list:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(10, features, generator=generator)
    out = []
    for _ in range(n):
        y = torch.randint(0, 10, (80,), generator=generator)
        out.append((centres[y] + 0.5 * torch.randn(80, features, generator=generator), y))
    return out


def trained(model: nn.Module, batches: list, steps: int = 60) -> nn.Module:
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(steps):
        x, y = batches[step % len(batches)]
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


class Blocks(nn.Module):
    """Three residual MLP blocks of the same shape: ``blocks.{i}.fc1`` are one kind of layer."""

    def __init__(self, width: int = 32, hidden: int = 96):
        super().__init__()
        self.stem = nn.Linear(64, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, width)) for _ in range(3)
        )
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


@pytest.mark.parametrize("multiple", [8, 32])
def test_round_to_keeps_multiples_and_meets_the_target(multiple):
    torch.manual_seed(0)
    batches = digits_like()
    model = trained(zoo.mlp(hidden=(300, 100)), batches)
    result = prune(model, batches, target_macs=0.5, round_to=multiple, **FAST)
    widths = [m.out_features for m in result.model.modules() if isinstance(m, nn.Linear)][:-1]
    assert result.report.macs_ratio <= 0.5 + 1e-9
    assert all(w % multiple == 0 for w in widths), widths
    assert widths != [300, 100]


def test_uniform_shapes_give_every_block_the_same_width():
    torch.manual_seed(0)
    batches = digits_like()
    model = trained(Blocks(), batches)
    per_layer = prune(model, batches, target_macs=0.6, **FAST, inplace=False).model
    uniform = prune(model, batches, target_macs=0.6, shapes="uniform", **FAST, inplace=False).model
    widths = {name: [b[0].out_features for b in m.blocks] for name, m in (("per", per_layer), ("uniform", uniform))}
    assert len(set(widths["uniform"])) == 1 and widths["uniform"][0] < 96, widths
    assert len(set(widths["per"])) > 1, widths  # the allocation alone differs between blocks


@pytest.mark.parametrize("value", [1, True, 8.0, "8"])
def test_round_to_must_be_an_integer_of_at_least_two(value):
    with pytest.raises(ValueError, match="round_to"):
        PruneConfig(round_to=value)


def test_shapes_must_be_a_policy():
    with pytest.raises(ValueError, match="shapes must be one of"):
        PruneConfig(shapes="same")
