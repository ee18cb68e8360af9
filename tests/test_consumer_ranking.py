"""ranking="utilization_x_consumers": the removal score times how strongly the consumers read each unit
(issue 11). Checked by hand on a tiny model with a residual add, a depthwise conv, a grouped conv and
a Linear after flatten; counts equal to ranking="utilization"; accepted by prune, PruneConfig, the
callback and the command line."""

from __future__ import annotations

import sys

import pytest
import torch
from helpers import (
    FAST,
    calibration_loader,
    example_inputs,
    module_shapes,
    trained_small_cnn,
)
from torch import nn

from lightning_fair import PruneConfig, compute_scores, prune
from lightning_fair.allocation.order import removal_order
from lightning_fair.config import RANKINGS
from lightning_fair.removal.planner import DependencyPlanner
from lightning_fair.scoring.criterion import CriterionScores, layer_normalised

NEW = "utilization_x_consumers"


class Tiny(nn.Module):
    """stem -> residual block (c1, c2, identity add) -> expand 1x1 -> depthwise -> grouped 1x1 (2 groups)
    -> 2x2 average pool -> flatten -> fc (4 channels x 4 positions = 16 input columns)."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c1, self.bn1 = nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.c2, self.bn2 = nn.Conv2d(6, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.expand, self.bn3 = nn.Conv2d(4, 8, 1), nn.BatchNorm2d(8)
        self.dw, self.bn4 = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8)
        self.grouped, self.bn5 = nn.Conv2d(8, 4, 1, groups=2), nn.BatchNorm2d(4)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(2), nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        x = torch.relu(x + self.bn2(self.c2(torch.relu(self.bn1(self.c1(x))))))
        x = torch.relu(self.bn4(self.dw(torch.relu(self.bn3(self.expand(x))))))
        x = torch.relu(self.bn5(self.grouped(x)))
        return self.fc(self.pool(x).flatten(1))


def column(weight: torch.Tensor, c: int) -> float:
    """L2 norm of input channel c's weights, entry by entry (float64)."""
    return float(sum(float(v) ** 2 for v in weight[:, c].flatten().tolist()) ** 0.5)


def tiny_setup():
    torch.manual_seed(0)
    model = Tiny().eval()
    with torch.no_grad():  # distinct column norms: no ties to break
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(torch.rand(m.weight.shape[1]).add(0.2).view(1, -1, *([1] * (m.weight.dim() - 2))))
    scores = compute_scores(model, calibration_loader(), **FAST)
    layers = [n for n in scores.layers if n != scores.output_layer]
    planner = DependencyPlanner(model, example_inputs(1), layers, {scores.output_layer})
    return model, scores, planner


def test_consumer_reading_and_order_by_hand():
    model, scores, planner = tiny_setup()
    groups = {g.root: g for g in planner.groups}
    # the residual stream (stem + c2) is read by c1 and expand; the expanded channels pass through the
    # depthwise conv (no consumer) to the grouped conv; the grouped conv's channels reach fc after flatten
    assert set(groups) == {"stem", "c1", "expand", "grouped"}
    assert set(groups["stem"].members) == {"stem", "c2"} and set(groups["stem"].consumers) == {"c1", "expand"}
    assert set(groups["expand"].members) == {"expand", "dw"} and groups["expand"].channel_groups == 2
    assert set(groups["grouped"].consumers) == {"fc"} and not groups["expand"].blocked

    c1, c2, expand, grouped, fc = (
        model.c1.weight,
        model.c2.weight,
        model.expand.weight,
        model.grouped.weight,
        model.fc.weight,
    )
    reading = {
        "stem": [(column(c1, c) + column(expand, c)) / 2 for c in range(4)],  # mean over the two readers
        "c1": [column(c2, c) for c in range(6)],
        # grouped conv, 2 groups of 4 inputs: channel c is read by its own group's 2 filters, at c % 4
        "expand": [column(grouped[2 * (c // 4) : 2 * (c // 4) + 2], c % 4) for c in range(8)],
        # fc after a 2x2 pool and flatten: channel c is columns 4c..4c+3, their norms summed
        "grouped": [sum(column(fc, 4 * c + s) for s in range(4)) for c in range(4)],
    }
    for root, expected in reading.items():
        total, readers = planner.consumer_reading(groups[root])
        assert torch.allclose(total / readers, torch.tensor(expected, dtype=torch.float64), rtol=1e-6), root

    # the score: U (for the residual stream: its consumers' input U, each normalised by its mean,
    # averaged) times the reading; lowest removed first, the same count as ranking="utilization"
    u = {name: scores.utilization[name].double() for name in ("c1", "expand", "grouped")}
    # (c1 reads the stem's own observed activation, torch.relu followed: only expand's input is separate)
    assert "expand" in scores.input_utilization and "c1" not in scores.input_utilization
    u["stem"] = layer_normalised(scores.input_utilization["expand"].double())
    counts = {"stem": 2, "c2": 2, "c1": 3, "expand": 4, "dw": 4, "grouped": 2}
    plan = planner.plan(scores, counts, ranking=NEW)
    base = planner.plan(scores, counts, ranking="utilization")
    for root in reading:
        score = u[root] * torch.tensor(reading[root], dtype=torch.float64)
        k, g, n = counts[root], groups[root].channel_groups, groups[root].num_channels
        if g > 1:  # grouped conv: positions ranked by their mean over the channel groups, removed in every group
            positions = torch.sort(score.reshape(g, n // g).mean(0), stable=True).indices[: k // g]
            expected = torch.cat([positions + j * (n // g) for j in range(g)]).sort().values
        else:
            expected = torch.sort(torch.sort(score, stable=True).indices[:k]).values
        assert plan[root].tolist() == expected.tolist(), root
        assert len(plan[root]) == len(base[root]) == k, root
    # the order did change somewhere (at some count of some group)
    differs = False
    for root in ("c1", "grouped"):
        for k in range(1, groups[root].num_channels):
            one = {name: (k if name == root else 0) for name in counts}
            new, old = planner.plan(scores, one, ranking=NEW), planner.plan(scores, one, ranking="utilization")
            differs |= new.get(root, torch.zeros(0)).tolist() != old.get(root, torch.zeros(0)).tolist()
    assert differs


def test_group_without_a_consumer_keeps_its_score():
    """Where no Conv/Linear reads a group's channels, the ranking is the removal score alone."""
    model, scores, planner = tiny_setup()
    (group,) = [g for g in planner.groups if g.root == "c1"]
    group.consumers.clear()  # as if nothing prunable read c1's channels
    assert planner.consumer_reading(group) is None
    counts = {"stem": 0, "c2": 0, "c1": 3, "expand": 0, "dw": 0, "grouped": 0}
    assert (
        planner.plan(scores, counts, ranking=NEW)["c1"].tolist()
        == planner.plan(scores, counts, ranking="utilization")["c1"].tolist()
    )


def test_removal_order_alone_refuses_it():
    assert NEW in RANKINGS
    with pytest.raises(ValueError, match="DependencyPlanner"):
        removal_order(NEW, torch.rand(4))


def test_prune_and_config_accept_it_same_counts_on_real_data():
    """Trained CNN on sklearn digits: the same counts, level and shapes as ranking="utilization";
    other channels removed; through prune(**options) and through a PruneConfig."""
    model = trained_small_cnn()
    scores = compute_scores(model, calibration_loader(), **FAST)
    base = prune(model, calibration_loader(), target_macs=0.5, scores=scores, inplace=False, ranking="utilization")
    ours = prune(model, calibration_loader(), target_macs=0.5, scores=scores, inplace=False, ranking=NEW)
    via_config = prune(
        model, calibration_loader(), PruneConfig(target_macs=0.5, ranking=NEW), scores=scores, inplace=False
    )
    assert ours.config.ranking == via_config.config.ranking == NEW and base.config.ranking == "utilization"
    assert ours.report.options["ranking"] == NEW
    assert ours.counts == base.counts and ours.level == base.level
    assert module_shapes(ours.model) == module_shapes(base.model)
    assert {r: len(i) for r, i in ours.removed.items()} == {r: len(i) for r, i in base.removed.items()}
    assert ours.removed != base.removed
    assert ours.removed == via_config.removed
    x = example_inputs(4)
    with torch.no_grad():
        assert torch.equal(ours.model(x), via_config.model(x))
    with pytest.raises(ValueError, match="ranking must be one of"):
        PruneConfig(ranking="consumers")


def test_callback_accepts_it(tmp_path):
    pytest.importorskip("lightning")
    from lightning_helpers import FAST as CALLBACK_FAST
    from lightning_helpers import classifier, datamodule, trainer

    from lightning_fair import FairPruneCallback

    callback = FairPruneCallback(prune_at=0, target_macs=0.6, ranking=NEW, **CALLBACK_FAST)
    assert callback.config.ranking == NEW
    trainer(tmp_path, [callback], max_epochs=1, limit_train_batches=4, limit_val_batches=2).fit(
        classifier(), datamodule()
    )
    result = callback.last_result
    assert result.config.ranking == NEW and result.report.options["ranking"] == NEW
    assert result.report.macs_ratio <= 0.6 + 1e-9


def test_cli_flag(tmp_path, monkeypatch, capsys):
    """--prune.ranking takes the new value (from PruneConfig's Literal type: the help lists it); a wrong
    one is refused by the parser."""
    pytest.importorskip("jsonargparse")
    from lightning_helpers import cli_callback

    from lightning_fair.lightning.cli import FairCLI

    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    assert cli_callback(tmp_path, f"--prune.ranking={NEW}").config.ranking == NEW
    with pytest.raises(SystemExit):
        cli_callback(tmp_path, "--prune.ranking=consumers")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        FairCLI(args=["fit", "--prune.help", "FairPruneCallback"])
    printed = capsys.readouterr().out  # the type of --prune.ranking: Optional[Literal[...]], None the preset's
    assert "--prune.ranking" in printed and "'utilization_x_consumers'" in printed


def test_ranking_of_screening_scores_too():
    """The product uses whatever the removal score is (here: the screening criterion's)."""
    model, scores, planner = tiny_setup()
    ranking = CriterionScores(
        removal={
            n: torch.rand(v.numel(), generator=torch.Generator().manual_seed(1)) for n, v in scores.utilization.items()
        },
        protection=dict(scores.reconstruction),
        criterion="screening",
    )
    (group,) = [g for g in planner.groups if g.root == "c1"]
    total, readers = planner.consumer_reading(group)
    plan = planner.plan(ranking, {"c1": 2, "stem": 0, "c2": 0, "expand": 0, "dw": 0, "grouped": 0}, ranking=NEW)
    expected = torch.sort(ranking.removal["c1"].double() * total / readers, stable=True).indices[:2]
    assert list(plan) == ["c1"] and plan["c1"].tolist() == expected.sort().values.tolist()


def test_member_writing_by_hand_and_the_group_ranking_multiplies_it_in():
    """ranking="utilization_x_group": the residual stream (stem + c2 add) is written by stem and c2,
    each through its BatchNorm; per root channel the mean of their layer-normalised filter norms
    times |gamma| / sqrt(var + eps); the order is U x reading x writing."""
    model, scores, planner = tiny_setup()
    with torch.no_grad():  # distinct BatchNorm scales
        for bn in (model.bn0, model.bn2):
            bn.weight.copy_(torch.tensor([0.5, -2.0, 1.0, 1.5]))
            bn.running_var.copy_(torch.tensor([1.0, 4.0, 0.25, 2.0]))
    stream = next(g for g in planner.groups if {"stem", "c2"} <= set(g.members))
    writing = planner.member_writing(stream)

    def member(conv, bn):
        norms = torch.tensor(
            [float(conv.weight.detach()[c].double().pow(2).sum().sqrt()) for c in range(4)], dtype=torch.float64
        )
        norms = norms * bn.weight.detach().double().abs() / (bn.running_var.double() + bn.eps).sqrt()
        return layer_normalised(norms)

    expected = torch.zeros(4, dtype=torch.float64)
    for name, (idxs, roots) in stream.members.items():
        conv, bn = (model.stem, model.bn0) if name == "stem" else (model.c2, model.bn2)
        expected[roots] += member(conv, bn)[idxs] / len(stream.members)
    torch.testing.assert_close(writing, expected)
    ranked = as_ranked(scores)
    plan_x = planner.plan(ranked, {n: 2 for n in ranked.removal}, ranking="utilization_x_consumers")
    plan_g = planner.plan(ranked, {n: 2 for n in ranked.removal}, ranking="utilization_x_group")
    assert {r: len(i) for r, i in plan_x.items()} == {r: len(i) for r, i in plan_g.items()}


def as_ranked(scores):
    from lightning_fair.scoring.compute import criterion_for

    return criterion_for("fair").rank(scores, PruneConfig().resolved())


def test_group_ranking_through_prune_same_counts():
    model = trained_small_cnn()
    scores = compute_scores(model, calibration_loader(), **FAST)
    base = prune(model, calibration_loader(), target_macs=0.5, scores=scores, inplace=False)
    ours = prune(
        model, calibration_loader(), target_macs=0.5, scores=scores, inplace=False, ranking="utilization_x_group"
    )
    assert ours.counts == base.counts and module_shapes(ours.model) == module_shapes(base.model)
    assert "their layers write them" in str(ours.report)
