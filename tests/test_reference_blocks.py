"""Issue 14 item 2: no crash on coupled groups torch-pruning cannot cut. Hand-written equivalents of
the models that failed (tests/reference_blocks.py) prune under a tolerance and under a MACs target,
run, keep their output shape, lose MACs, say in the report which groups were left whole and why,
and reload from the pruning history."""

from __future__ import annotations

import helpers
import pytest
import reference_blocks as blocks
import torch

from lightning_fair import load_pruned, prune, save_pruned
from lightning_fair.demos import zoo
from lightning_fair.removal import graph
from lightning_fair.removal.planner import DependencyPlanner
from lightning_fair.runtime import guards
from lightning_fair.units.channels import PRUNABLE_TYPES

FAST = dict(samples_per_class=8, num_projections=16)

#: the note each model's report must carry (a group left whole and why), "" if none is expected
NOTES = {
    "shufflenet": "channel shuffle",  # E: torch-pruning's reshape mapping divides by zero
    "shufflenet_stage": "index mapping fails",  # E: torchvision's shufflenet_v2 stage: IndexError in the mapping
    "mixer": "another index space",  # C: the token-mixing fc2 (16 tokens) mapped onto the 32 channels
    "rexnet": "breaks the forward",  # B: the partial residual's cached size ``out[:, :cin]``
    "convnext": "",  # D1: layer-scale gamma, pruned and put back during the search
    "ghostnet": "",  # D2: ghost modules couple channel j with j + C/2 of the stem
    "poolformer": "breaks the forward",  # B: the layer scale's stored shape
    "swin": "did not end",  # F: the group search cycles through the attention (swin_t: unbounded memory)
}


@pytest.fixture(scope="module")
def loader():
    return helpers.calibration_loader(num=200, batch_size=100)


def build(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return blocks.MODELS[name]().eval()


def outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("budget", [dict(tolerance=0.3), dict(target_macs=0.5)], ids=["tolerance", "target"])
@pytest.mark.parametrize("name", sorted(blocks.MODELS))
def test_reference_block_prunes_runs_and_reloads(name, budget, loader, tmp_path):
    model = build(name)
    x = helpers.example_inputs(4)
    result = prune(model, loader, **budget, **FAST)
    report = result.report
    assert outputs(model, x).shape == (4, blocks.NUM_CLASSES)
    assert report.macs_after < report.macs_before
    if "target_macs" in budget:
        assert report.macs_ratio <= 0.5 + 1e-9
    notes = "\n".join(report.notes)
    assert NOTES[name] in notes, notes
    if not NOTES[name]:
        assert not any("left whole" in n or "breaks" in n for n in report.notes), notes
    save_pruned(model, tmp_path / "pruned.pt")
    fresh = load_pruned(build(name, seed=1), tmp_path / "pruned.pt")
    assert torch.equal(outputs(fresh, x), outputs(model, x))


def test_channel_shuffle_graph_builds_without_the_shuffle_mapping():
    """E: torch-pruning's update_reshape_index_mapping divides by zero on this net; the graph is
    built anyway, the shuffle's reshapes unmapped, and the groups through them are left whole."""
    model = build("shufflenet")
    dependency = graph.build_graph(model, helpers.example_inputs(1))
    assert graph.unmapped_reshapes(dependency)
    planner = _planner(model, dependency)
    blocked = {g.root: g.blocked for g in planner.groups if g.blocked}
    assert blocked and all("channel shuffle" in why for why in blocked.values())
    assert any(g.members and not g.blocked for g in planner.groups)  # the branches' own channels still go


def test_index_space_mismatch_is_left_whole_not_an_index_error():
    """C: the mixer's token-mixing fc2 (16 units) is given 32 channel indices of the embedding."""
    planner = _planner(build("mixer"))
    stem = next(g for g in planner.groups if g.root == "stem")
    assert "another index space" in stem.blocked and "index 31 of 16" in stem.blocked
    assert not any(g.blocked for g in planner.groups if g.root != "stem")


def test_restore_puts_the_graph_back_with_the_layer_scale_parameters():
    """D1: pruning gamma re-points torch-pruning's graph at the pruned copy; after restore the graph
    holds the model's parameters again, so a second trial removes the same channels."""
    model = build("convnext")
    planner = _planner(model)
    stem = next(g for g in planner.groups if g.root == "stem.0")
    assert not stem.blocked
    plan = {"stem.0": torch.arange(0, 8)}
    shapes = []
    for _ in range(2):
        planner.apply(plan, record_history=False)
        assert not planner.refused
        shapes.append(helpers.module_shapes(model))
        assert outputs(model, helpers.example_inputs(2)).shape == (2, blocks.NUM_CLASSES)
        planner.restore()
        parameters = {id(p) for p in model.parameters()}
        assert all(
            id(node.module) in parameters
            for key, node in planner.graph.module2node.items()
            if isinstance(key, torch.nn.Parameter)
        )
    assert shapes[0] == shapes[1] and model.blocks[0].gamma.numel() == 16


def test_a_refused_group_is_skipped_and_the_rest_removed():
    """D2: removing 14 of the ghost stem's 16 channels takes their partners j + 8 too: all 16;
    torch-pruning refuses; the group is skipped with a reason, the other groups are removed."""
    model = build("ghostnet")
    planner = _planner(model)
    other = next(g.root for g in planner.groups if g.root != "stem.0" and g.members and not g.blocked)
    planner.apply({"stem.0": torch.arange(14), other: torch.arange(2)})
    assert "refused" in planner.refused["stem.0"] and other not in planner.refused
    assert model.stem[0].out_channels == 16 and planner.modules[other].out_channels < 32


def test_a_plan_leaves_every_coupled_layer_a_channel():
    """D2: the ghost module's primary conv holds 8 of the stem group's 16 channels: a plan taking
    all 8 would be refused, so the plan skips the last of them."""
    planner = _planner(build("ghostnet"))
    group = next(g for g in planner.groups if g.root == "stem.0")
    order = torch.arange(16)
    assert graph.leaving_one(group.limits, order, 8, 16).tolist() != list(range(8))


def test_the_target_search_skips_levels_whose_model_fails(monkeypatch, loader):
    """D2: the most aggressive levels fail (a failure no single group explains): the search stays
    below them instead of raising, and the target is still met."""
    original, tried = DependencyPlanner.apply_checked, []

    def failing(self, plan, record_history=True):
        tried.append(sum(len(idxs) for idxs in plan.values()))
        if tried[-1] > 40:
            raise RuntimeError("this level's pruned model fails")
        return original(self, plan, record_history)

    monkeypatch.setattr(DependencyPlanner, "apply_checked", failing)
    torch.manual_seed(0)
    result = prune(zoo.small_cnn(width=8).eval(), loader, target_macs=0.9, **FAST)
    assert tried[0] > 40 and result.report.macs_ratio <= 0.9
    assert 0 < sum(len(idxs) for idxs in result.removed.values()) <= 40


def test_a_group_search_that_does_not_end_is_left_whole(monkeypatch, loader):
    """F: torch-pruning's group search is capped; over the cap the group is left whole, with a note."""
    monkeypatch.setattr(graph, "MAX_GROUP_ITEMS", 20)  # the residual stream needs 64
    result = prune(build("convnext"), loader, tolerance=0.3, **FAST)
    assert any("did not end" in note for note in result.report.notes)
    assert result.report.macs_after < result.report.macs_before  # the small groups still go


def test_rollback_raises_the_original_error_when_putting_back_fails_too(monkeypatch):
    """F: a failure in the rollback handler (MemoryError on swin_t) no longer hides the original error."""

    def restore(self):
        raise MemoryError("no memory left to restore")

    monkeypatch.setattr(guards.ModelSnapshot, "restore", restore)
    with pytest.raises(ValueError, match="the original") as raised:
        with guards.rollback(torch.nn.Linear(2, 2)):
            raise ValueError("the original")
    assert "putting the model back failed too (MemoryError" in "".join(
        getattr(raised.value, "__notes__", [])
    ) or not hasattr(raised.value, "add_note")


def test_graph_is_built_before_scoring(monkeypatch, loader):
    """E: a model torch-pruning cannot trace fails before the scoring pass, not after it."""

    def fail(model, example_inputs):
        raise RuntimeError("cannot trace")

    monkeypatch.setattr("lightning_fair.pipeline.oneshot.build_graph", fail)
    monkeypatch.setattr("lightning_fair.pipeline.oneshot.compute_scores", lambda *a, **k: pytest.fail("scored first"))
    with pytest.raises(RuntimeError, match="cannot trace"):
        prune(build("shufflenet"), loader, tolerance=0.3, **FAST)


def _planner(model, dependency=None):
    scored = [n for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES) and n != "classifier"]
    return DependencyPlanner(model, helpers.example_inputs(1), scored, {"classifier"}, graph=dependency)


def test_an_unreachable_target_names_the_groups_left_whole(loader):
    with pytest.raises(
        ValueError, match=r"cannot be reached.*1 coupled group\(s\) are left whole \(stem: torch-pruning"
    ):
        prune(build("mixer"), loader, target_macs=0.01, **FAST)
