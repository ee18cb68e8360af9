"""Units with massive activations (Sun et al. 2024) go last in their layer's removal order.

A token classifier written as users write them (``F.gelu``, a residual add, a LayerNorm, a dict
batch) whose feed-forward unit 7 fires only on the [CLS]-like token every sequence starts with, with a
value far above any other unit's: it separates no classes (U = 0), so U ranks it first for removal.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_fair import FairScores, PruneConfig, compute_scores, prune

VOCAB, WIDTH, HIDDEN, MASSIVE_UNIT = 20, 16, 32, 7


class TokenClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.fc1 = nn.Linear(WIDTH, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, WIDTH)
        self.norm = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, 3)

    def forward(self, input_ids):
        h = self.embed(input_ids)
        h = self.norm(h + self.fc2(F.gelu(self.fc1(h))))
        return self.head(h.mean(1))


def massive_model() -> TokenClassifier:
    torch.manual_seed(0)
    model = TokenClassifier().eval()
    with torch.no_grad():
        model.embed.weight[:, 0] = 0.0
        model.embed.weight[0] = 0.0
        model.embed.weight[0, 0] = 5.0  # token 0, the sequences' first token: its own direction
        model.fc1.weight[MASSIVE_UNIT] = 0.0
        model.fc1.weight[MASSIVE_UNIT, 0] = 20.0  # 99 on token 0, GELU(-1) elsewhere
        model.fc1.bias[MASSIVE_UNIT] = -1.0
    return model


def batches(count: int = 4, seed: int = 1) -> list:
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.randint(1, VOCAB, (32, 12), generator=generator)
        ids[:, 0] = 0
        out.append({"input_ids": ids, "labels": ids[:, 1] % 3})
    return out


FAST = dict(num_projections=8)


def test_the_massive_unit_is_found_and_its_score_alone_would_remove_it():
    model = massive_model()
    scores = compute_scores(model, batches(), **FAST)
    peaks = scores.peaks["fc1"]
    assert peaks.shape == (HIDDEN,)
    assert float(peaks[MASSIVE_UNIT]) == pytest.approx(99.0, rel=1e-4)  # 5 * 20 - 1
    others = torch.cat([peaks[:MASSIVE_UNIT], peaks[MASSIVE_UNIT + 1 :]])
    assert float(peaks[MASSIVE_UNIT]) > 6 * float(others.median())
    # constant on every sample: it separates no classes
    assert int(scores.utilization["fc1"].argmin()) == MASSIVE_UNIT
    # plain data at rest: the peaks come back from disk
    restored = FairScores.from_state_dict(copy.deepcopy(scores.state_dict()))
    torch.testing.assert_close(restored.peaks["fc1"], peaks)


@pytest.mark.parametrize(
    "options, kept",
    [
        ({}, True),
        ({"massive": 0}, False),
        ({"preset": "paper", "allocation": "uniform"}, False),
        ({"massive": 200.0}, False),
    ],
    ids=["default", "off", "paper", "above-its-ratio"],
)
def test_the_default_keeps_the_massive_unit(options, kept):
    model = massive_model()
    result = prune(copy.deepcopy(model), batches(), ratio=0.5, **FAST, **options)
    out = result.kept["fc1"]["out"].tolist()
    assert len(out) == HIDDEN // 2
    assert (MASSIVE_UNIT in out) is kept
    note = [n for n in result.report.notes if "massive activations" in n]
    assert bool(note) is kept
    if kept:
        assert "1 unit(s)" in note[0] and "1 layer(s)" in note[0]


def test_massive_is_validated_before_anything_runs():
    with pytest.raises(ValueError, match="massive is the ratio .* or 0 to turn it off"):
        PruneConfig(massive=0.5)
    with pytest.raises(ValueError, match="massive"):
        PruneConfig(massive=True)
    assert PruneConfig().resolved().massive == 6.0
    assert PruneConfig.paper().resolved().massive == 0
