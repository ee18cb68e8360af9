"""Determinism: the same seed and data give bitwise identical scores and the same pruned model.

Checked on one process (twice in a row), across the projection seed (it moves the conv
utilization, never the reconstruction), and in a fresh interpreter (saved scores compared
with ``torch.equal``). Models: zoo.small_cnn (Conv-BN-ReLU) and a small zoo.resnet (residual
adds couple channels), both trained a few steps on sklearn digits.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import calibration_loader, digits, module_shapes, single_thread
from torch import nn

import lightning_fair
from lightning_fair import FairScores, compute_scores
from lightning_fair.demos import zoo

SCORING = dict(samples_per_class=8, num_projections=16)
ARCHITECTURES = {
    "small_cnn": lambda: zoo.small_cnn(width=8),
    "resnet": lambda: zoo.resnet(width=4, layers=(1, 1, 1)),
}


@functools.lru_cache(maxsize=None)
def _trained_state(arch: str):
    torch.manual_seed(0)
    model = ARCHITECTURES[arch]()
    x, y, _, _ = digits()
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    with single_thread():
        model.train()
        for _ in range(15):
            idx = torch.randint(0, len(y), (64,), generator=generator)
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


def trained(arch: str) -> nn.Module:
    model = ARCHITECTURES[arch]()
    model.load_state_dict(_trained_state(arch))
    return model.eval()


def _data():
    return calibration_loader(num=200, batch_size=100)


def assert_scores_equal(a: FairScores, b: FairScores) -> None:
    assert a.layers == b.layers
    for field in ("utilization", "reconstruction", "taylor_sum", "input_means"):
        left, right = getattr(a, field), getattr(b, field)
        assert list(left) == list(right), field
        for name in left:
            assert left[name].dtype == right[name].dtype, (field, name)
            assert torch.equal(left[name], right[name]), (field, name)
    assert a.observed == b.observed and a.output_layer == b.output_layer
    assert a.class_counts == b.class_counts and a.config == b.config


def _conv_layers(model: nn.Module, scores: FairScores):
    modules = dict(model.named_modules())
    return [n for n in scores.layers if isinstance(modules[n], nn.Conv2d)]


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_compute_scores_is_bitwise_repeatable(arch):
    model = trained(arch)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    first = compute_scores(model, _data(), **SCORING)
    second = compute_scores(model, _data(), **SCORING)
    assert_scores_equal(first, second)
    assert first.input_means  # mean-replacement statistics are part of the check
    # scoring leaves the model untouched, so a third run from a fresh copy agrees too
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert_scores_equal(first, compute_scores(trained(arch), _data(), **SCORING))


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_seed_moves_conv_utilization_but_not_reconstruction(arch):
    model = trained(arch)
    a = compute_scores(model, _data(), seed=0, **SCORING)
    b = compute_scores(model, _data(), seed=1, **SCORING)
    convs = _conv_layers(model, a)
    assert convs
    for name in a.layers:
        assert torch.equal(a.reconstruction[name], b.reconstruction[name]), name
        assert torch.equal(a.taylor_sum[name], b.taylor_sum[name]), name
        if name in convs:  # sliced W1 over seeded projections
            assert not torch.equal(a.utilization[name], b.utilization[name]), name
        else:  # Linear units: exact 1-D W1, no projection
            assert torch.equal(a.utilization[name], b.utilization[name]), name
    for name in a.input_means:
        assert torch.equal(a.input_means[name], b.input_means[name]), name


def _prune(arch: str, **kwargs):
    return lightning_fair.prune(trained(arch), _data(), **SCORING, **kwargs)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("how", [dict(tolerance=0.3), dict(target_macs=0.6)], ids=["tolerance", "target_macs"])
def test_prune_is_repeatable(arch, how):
    first, second = _prune(arch, **how), _prune(arch, **how)
    assert any(first.removed.values()), "the setting should actually prune something"
    assert first.tolerance == second.tolerance
    assert first.counts == second.counts
    assert first.removed == second.removed
    assert module_shapes(first.model) == module_shapes(second.model)
    assert first.kept.keys() == second.kept.keys()
    for name in first.kept:
        assert first.kept[name].keys() == second.kept[name].keys()
        for side in first.kept[name]:
            assert torch.equal(torch.as_tensor(first.kept[name][side]), torch.as_tensor(second.kept[name][side]))
    assert (first.report.macs_after, first.report.params_after) == (
        second.report.macs_after,
        second.report.params_after,
    )
    # weights, compensated biases and re-estimated BatchNorm statistics: bitwise
    s1, s2 = first.model.state_dict(), second.model.state_dict()
    assert s1.keys() == s2.keys()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert_scores_equal(first.scores, second.scores)


_CHILD = textwrap.dedent("""
    import torch
    torch.set_num_threads(1)
    from lightning_fair import compute_scores
    from lightning_fair.demos import zoo
    model = {factory}
    model.load_state_dict(torch.load({weights!r}, weights_only=True))
    model.eval()
    data = torch.load({data!r}, weights_only=True)
    compute_scores(model, data, **{scoring!r}).save({out!r})
""")


def test_fresh_process_gives_the_same_scores(tmp_path):
    arch = "small_cnn"
    weights, data_file = tmp_path / "weights.pt", tmp_path / "data.pt"
    here, there = tmp_path / "here.pt", tmp_path / "there.pt"
    torch.save(_trained_state(arch), weights)
    torch.save(_data(), data_file)
    compute_scores(trained(arch), torch.load(data_file, weights_only=True), **SCORING).save(here)
    code = _CHILD.format(
        factory="zoo.small_cnn(width=8)", weights=str(weights), data=str(data_file), scoring=SCORING, out=str(there)
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    mine, theirs = torch.load(here, weights_only=True), torch.load(there, weights_only=True)
    assert mine.keys() == theirs.keys()
    assert_scores_equal(FairScores.load(here), FairScores.load(there))
    for key in ("utilization", "reconstruction", "taylor_sum"):
        assert all(torch.equal(a, b) for a, b in zip(mine[key], theirs[key]))
