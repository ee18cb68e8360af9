"""The ranking stage: FAIR's U and the screening score reach allocation under their own names."""

import torch

from lightning_fair import PruneConfig, compute_scores
from lightning_fair.allocation.budgets import global_counts
from lightning_fair.demos import zoo
from lightning_fair.pipeline.oneshot import rank
from lightning_fair.scoring.criterion import CriterionScores
from lightning_fair.scoring.screening import screening_scores


def batches():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 1, 12, 12, generator=g)
    y = torch.arange(120) % 10
    return [(x[i : i + 40] + y[i : i + 40].view(-1, 1, 1, 1) * 0.1, y[i : i + 40]) for i in range(0, 120, 40)]


def test_fair_and_screening_rankings_name_what_they_hold():
    torch.manual_seed(0)
    model = zoo.resnet(width=8)
    scores = compute_scores(model, batches(), criterion="screening", samples_per_class=4, num_projections=8)
    fair = rank(scores, PruneConfig())
    assert isinstance(fair, CriterionScores) and fair.criterion == "fair" and fair.layers == scores.layers
    assert all(torch.equal(fair.removal[n], scores.utilization[n]) for n in scores.layers)
    assert all(torch.equal(fair.protection[n], scores.reconstruction[n]) for n in scores.layers)
    assert fair.consumers.keys() == scores.input_utilization.keys() and fair.consumers  # residual streams
    screening = rank(scores, PruneConfig(criterion="screening", screening_weight=0.3))
    expected = screening_scores(scores, 0.3)
    assert screening.criterion == "screening" and not screening.consumers
    assert all(torch.equal(screening.removal[n], expected[n]) for n in scores.layers)
    # the scores themselves are untouched: U is still U
    assert all(not torch.equal(scores.utilization[n], expected[n]) for n in scores.layers)
    # allocation reads the ranking it is given; FairScores still mean FAIR's ranking
    assert global_counts(scores, 0.8) == global_counts(fair, 0.8)
    assert global_counts(screening, 0.8) != global_counts(fair, 0.8)
