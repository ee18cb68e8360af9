"""``repoint_optimizer``: optimizers follow a pruned model, carrying state for the kept channels.

Small zoo models pruned with ``lightning_fair.prune`` on generated data; CPU only.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_fair import prune
from lightning_fair.demos import zoo
from lightning_fair.runtime.optim import repoint_optimizer, slice_like

FAST = dict(samples_per_class=8, num_projections=16)


def generated_batches(n_batches=2, batch_size=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(batch_size, 1, 8, 8, generator=generator),
            torch.randint(0, 10, (batch_size,), generator=generator),
        )
        for _ in range(n_batches)
    ]


def train_steps(model, optimizer, batches, steps=3):
    model.train()
    for step in range(steps):
        x, y = batches[step % len(batches)]
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    return float(loss.detach())


OPTIMIZERS = {
    "sgd_momentum": lambda groups: torch.optim.SGD(groups, lr=0.05, momentum=0.9),
    "adam": lambda groups: torch.optim.Adam(groups, lr=1e-3),
    "adam_amsgrad": lambda groups: torch.optim.Adam(groups, lr=1e-3, amsgrad=True),
}


def two_groups(model):
    """features in one param group, the rest in another (with its own lr)."""
    features = [p for n, p in model.named_parameters() if n.startswith("features.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("features.")]
    return [{"params": features}, {"params": rest, "lr": 1e-4}]


def snapshot(model, optimizer):
    params = dict(model.named_parameters())
    name_of = {id(p): n for n, p in params.items()}
    return {
        "params": params,
        "group_names": [[name_of[id(p)] for p in g["params"]] for g in optimizer.param_groups],
        "hyper": [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups],
        "state_objects": {name_of[id(p)]: s for p, s in optimizer.state.items()},
        "state": {name_of[id(p)]: {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()},
    }


def expected_slice(tensor, module, kind, sides):
    """The old state tensor cut to the kept channels: dim 0 = outputs, dim 1 = inputs (conv/linear weight)."""
    if "out" in sides:
        tensor = tensor.index_select(0, sides["out"])
    if kind == "weight" and isinstance(module, (nn.Conv2d, nn.Linear)) and "in" in sides:
        assert getattr(module, "groups", 1) == 1
        tensor = tensor.index_select(1, sides["in"])
    return tensor


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_state_follows_the_kept_channels(name):
    torch.manual_seed(0)
    model = zoo.small_cnn(width=8)
    batches = generated_batches()
    optimizer = OPTIMIZERS[name](two_groups(model))
    train_steps(model, optimizer, batches)
    before = snapshot(model, optimizer)
    assert len(before["state"]) == len(before["params"])  # every parameter has state

    result = prune(model, batches, tolerance=0.5, **FAST)
    kept = result.kept
    # the cases this test is about really happened
    assert {"in", "out"} <= kept["features.1.0"].keys()  # conv: both sides
    assert {"in", "out"} <= kept["head.0"].keys()  # linear: both sides
    assert kept["classifier"].keys() == {"in"}  # output layer: inputs only
    assert "out" in kept["features.1.1"]  # BatchNorm

    dropped = repoint_optimizer(optimizer, before["params"], model, kept)
    assert dropped == 0

    now = dict(model.named_parameters())
    modules = dict(model.named_modules())
    # same names in the same positions of the same groups, now the model's parameters
    for group, names in zip(optimizer.param_groups, before["group_names"]):
        assert [id(p) for p in group["params"]] == [id(now[n]) for n in names]
    assert [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups] == before["hyper"]
    assert {id(p) for p in optimizer.state} == {id(p) for p in now.values()}

    changed = 0
    for pname, param in now.items():
        module_name, _, kind = pname.rpartition(".")
        state, old = optimizer.state[param], before["state"][pname]
        assert state.keys() == old.keys()
        if param is before["params"][pname]:
            assert module_name not in kept or kind == "bias" and "out" not in kept[module_name]
            assert state is before["state_objects"][pname]  # untouched, same object
            continue
        changed += 1
        for key, value in state.items():
            if value.dim() == 0:  # Adam's step
                assert torch.equal(value, old[key])
                continue
            assert value.shape == param.shape, (pname, key)
            assert torch.equal(value, expected_slice(old[key], modules[module_name], kind, kept[module_name])), (
                pname,
                key,
            )
    assert changed >= 10
    # the output layer lost inputs only; the refit (default) gave it new weights and bias: new
    # parameters of the pruned shapes whose optimizer state carried over as sliced (loop above)
    assert "classifier" in result.report.refitted
    assert now["classifier.bias"] is not before["params"]["classifier.bias"]
    assert now["classifier.bias"].shape == before["params"]["classifier.bias"].shape

    # explicit spot checks, written out
    out, inp = kept["features.1.0"]["out"], kept["features.1.0"]["in"]
    key = "momentum_buffer" if name.startswith("sgd") else "exp_avg"
    old_conv = before["state"]["features.1.0.weight"][key]
    assert torch.equal(optimizer.state[now["features.1.0.weight"]][key], old_conv[out][:, inp])
    bn = before["state"]["features.1.1.bias"][key]
    assert torch.equal(optimizer.state[now["features.1.1.bias"]][key], bn[kept["features.1.1"]["out"]])
    lin = before["state"]["classifier.weight"][key]
    assert torch.equal(optimizer.state[now["classifier.weight"]][key], lin[:, kept["classifier"]["in"]])

    # and the optimizer keeps working
    loss = train_steps(model, optimizer, batches, steps=2)
    assert torch.isfinite(torch.tensor(loss))
    assert all(optimizer.state[p][key].shape == p.shape for p in model.parameters())


def test_parameters_without_state_are_swapped_and_stay_stateless():
    torch.manual_seed(0)
    model = zoo.small_cnn(width=8)
    for p in model.features[0].parameters():
        p.requires_grad_(False)  # in the optimizer, but never gets a gradient: no state
    batches = generated_batches()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train_steps(model, optimizer, batches)
    before = snapshot(model, optimizer)
    assert "features.0.0.weight" not in before["state"]
    result = prune(model, batches, tolerance=0.5, **FAST)
    assert "out" in result.kept["features.0.0"]
    assert repoint_optimizer(optimizer, before["params"], model, result.kept) == 0
    new = model.features[0][0].weight
    assert new is not before["params"]["features.0.0.weight"]
    assert any(p is new for p in optimizer.param_groups[0]["params"])
    assert new not in optimizer.state and not new.requires_grad
    now = dict(model.named_parameters())
    replaced = {id(p) for n, p in before["params"].items() if now[n] is not p}
    assert replaced and not replaced & {id(p) for p in optimizer.state}  # no stale keys left
    assert not replaced & {id(p) for g in optimizer.param_groups for p in g["params"]}


def test_grouped_conv_input_change_drops_only_that_state():
    torch.manual_seed(0)
    model = zoo.grouped_cnn(width=8, groups=2)
    batches = generated_batches()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train_steps(model, optimizer, batches)
    before = snapshot(model, optimizer)

    result = prune(model, batches, tolerance=0.5, **FAST)
    grouped = model.features[1][0]
    assert grouped.groups == 2 and "in" in result.kept["features.1.0"], "the grouped conv's inputs must change"

    dropped = repoint_optimizer(optimizer, before["params"], model, result.kept)
    assert dropped >= 1
    now = dict(model.named_parameters())
    params = [p for g in optimizer.param_groups for p in g["params"]]
    assert [id(p) for p in params] == [id(now[n]) for n in before["group_names"][0]]
    assert grouped.weight not in optimizer.state  # its state could not be mapped: fresh start
    # everything else carried, with the right shapes
    for pname, param in now.items():
        if pname == "features.1.0.weight":
            continue
        assert param in optimizer.state, pname
        assert optimizer.state[param]["exp_avg"].shape == param.shape
    bn_out = result.kept["features.1.1"]["out"]
    assert torch.equal(
        optimizer.state[now["features.1.1.weight"]]["exp_avg"],
        before["state"]["features.1.1.weight"]["exp_avg"][bn_out],
    )

    loss = train_steps(model, optimizer, batches, steps=2)  # the optimizer still steps
    assert torch.isfinite(torch.tensor(loss))
    state = optimizer.state[grouped.weight]
    assert state["exp_avg"].shape == grouped.weight.shape and int(state["step"]) == 2


def test_slice_like_rules():
    old, new = torch.zeros(4, 3), torch.zeros(2, 3)
    value = torch.arange(12.0).reshape(4, 3)
    kept = {"out": torch.tensor([1, 3])}
    assert torch.equal(slice_like(value, old, new, ["out", "in"], kept), value[[1, 3]])
    assert slice_like(value, old, new, ["out", "in"], {}) is None  # a changed side with no indices
    assert slice_like(torch.zeros(5), old, new, ["out"], kept) is None  # shaped unlike the parameter
    step = torch.tensor(7.0)
    assert slice_like(step, old, new, ["out"], kept) is step  # scalars pass through
    assert slice_like(3, old, new, ["out"], kept) == 3  # non-tensors too
