"""A model family added as one adapter (issue 20): a toy block whose units are groups of hidden
features, registered with :func:`lightning_fair.units.families.registered`, is scored, allocated,
removed, reported, estimated and replayed from a checkpoint with no change anywhere else in the package.
Everything the family needs is written in this file, the way a new family would live in ``units/``."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ClassVar, Dict, List, Tuple

import helpers
import torch
from torch import nn

from lightning_fair import estimate_memory, load_pruned, prune, save_pruned
from lightning_fair.units.families import FAMILIES, UnitFamily, find_units, registered, unit_count


class GroupedBlock(nn.Module):
    """``fc_out(relu(fc_in(x)))`` whose hidden features come in ``groups`` blocks of ``size``: a unit is
    one block (as an expert, or a key-value group, is several rows that go together)."""

    def __init__(self, dim: int, groups: int, size: int):
        super().__init__()
        self.groups, self.size = groups, size
        self.fc_in, self.fc_out = nn.Linear(dim, groups * size), nn.Linear(groups * size, dim)

    def forward(self, x):
        return self.fc_out(torch.relu(self.fc_in(x)))


class ToyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(64, 32)
        self.block = GroupedBlock(32, groups=8, size=4)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        h = torch.relu(self.stem(x.flatten(1)))
        return self.head(torch.relu(h + self.block(h)))


@dataclass
class GroupUnits:
    """The family's :class:`lightning_fair.units.families.Units`: one GroupedBlock's blocks."""

    name: str
    module: GroupedBlock
    blocked: str = ""
    unit_noun: ClassVar[str] = "feature groups"
    fixed_embedding: ClassVar[bool] = False

    @property
    def inputs(self) -> Tuple[nn.Module, ...]:
        return (self.module.fc_in,)

    @property
    def output(self) -> nn.Linear:
        return self.module.fc_out

    @property
    def output_name(self) -> str:
        return self.name + ".fc_out"

    @property
    def num_units(self) -> int:
        return self.module.groups

    @property
    def weight(self) -> torch.Tensor:
        return self.module.fc_in.weight.detach().reshape(self.num_units, -1)

    def projections(self, prune_embedding: bool = False) -> List[str]:
        return [self.name + ".fc_in", self.output_name]

    def units_view(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.reshape(tensor.shape[0], self.num_units, -1)

    def output_columns(self) -> torch.Tensor:
        weight = self.output.weight.detach().double()
        return weight.reshape(weight.shape[0], self.num_units, -1).pow(2).sum((0, 2)).sqrt()

    def remove(self, units: List[int]) -> Dict[str, Dict[str, torch.Tensor]]:
        block, size = self.module, self.module.size
        keep = torch.tensor([g for g in range(block.groups) if g not in set(units)])
        rows = (keep[:, None] * size + torch.arange(size)).flatten()
        fc_in, fc_out = block.fc_in, block.fc_out
        fc_in.weight = nn.Parameter(fc_in.weight.detach()[rows].clone())
        fc_in.bias = nn.Parameter(fc_in.bias.detach()[rows].clone())
        fc_in.out_features = fc_out.in_features = int(rows.numel())
        fc_out.weight = nn.Parameter(fc_out.weight.detach()[:, rows].clone())
        block.groups = int(keep.numel())
        return {self.name + ".fc_in": {"out": rows}, self.output_name: {"in": rows}}


def find_groups(model: nn.Module, ignored=None) -> Dict[str, GroupUnits]:
    return {
        name: GroupUnits(name, module)
        for name, module in model.named_modules()
        if isinstance(module, GroupedBlock) and module not in (ignored or set())
    }


GROUPS = UnitFamily(
    "feature groups",
    find_groups,
    lambda m: m.groups if isinstance(m, GroupedBlock) else None,
    lambda model: contextlib.nullcontext(),
    "<groups>",
)


def trained_toy() -> ToyNet:
    torch.manual_seed(0)
    return helpers.train(ToyNet(), epochs=8)


def test_a_registered_family_is_pruned_reported_estimated_and_replayed(tmp_path):
    model = trained_toy()
    x_test, y_test = helpers.digits()[2:]
    with registered(GROUPS):
        assert list(find_units(model)) == ["block"] and unit_count(model.block) == 8
        estimate = estimate_memory(model, helpers.example_inputs(1), num_classes=10, samples_per_class=16)
        assert "block" in estimate.layers  # the estimate sees the family's units
        result = prune(model, helpers.calibration_loader(), target_macs=0.6, inplace=False, **helpers.FAST)
        pruned = result.model
        assert pruned.block.groups < 8 and pruned.block.fc_in.out_features == 4 * pruned.block.groups
        row = {r.name: r for r in result.report.layers}["block"]
        assert (row.before, row.after) == (8, pruned.block.groups)  # the report counts groups, not features
        assert helpers.accuracy(pruned, x_test, y_test) > 0.5
        save_pruned(pruned, tmp_path / "toy.pt")
        restored = load_pruned(ToyNet(), tmp_path / "toy.pt")  # the "<groups>" history row replays
        assert restored.block.groups == pruned.block.groups
        torch.testing.assert_close(restored(x_test[:4]), pruned(x_test[:4]))
    assert GROUPS not in FAMILIES  # unregistered after the block
    fresh = trained_toy().eval()
    with torch.no_grad():
        assert torch.equal(model.eval()(x_test[:4]), fresh(x_test[:4]))  # inplace=False left it alone


def test_without_the_family_its_hidden_features_are_plain_channels():
    result = prune(trained_toy(), helpers.calibration_loader(), target_macs=0.6, **helpers.FAST)
    assert result.model.block.groups == 8  # nobody knows the attribute: features go one by one
    assert result.model.block.fc_in.out_features < 32
