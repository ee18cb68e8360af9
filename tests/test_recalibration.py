"""recalibrate_bn: exact pooled running statistics, nothing else touched, atomic, real effect."""

import copy

import pytest
import torch
from torch import nn

from lightning_fair import recalibrate_bn
from lightning_fair.demos import zoo


def _conv_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 5, 3),
        nn.BatchNorm2d(5),
        nn.ReLU(),
    ).eval()


def _mixed_net():
    """Conv-BN2d, dropout, Linear-BN1d: every BN in the forward path."""
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Conv2d(6, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(1),
        nn.Linear(16, 8),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Linear(8, 3),
    ).eval()


def _norms(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._NormBase)]


def _snapshot(model):
    return {
        "state": {k: v.clone() for k, v in model.state_dict(keep_vars=True).items()},
        "training": {n: m.training for n, m in model.named_modules()},
        "momentum": {n: m.momentum for n, m in _norms(model)},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grad": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
    }


def _assert_unchanged(model, snap, skip=()):
    state = model.state_dict(keep_vars=True)
    assert state.keys() == snap["state"].keys()
    for k, v in snap["state"].items():
        if k in skip:
            continue
        assert state[k].dtype == v.dtype and torch.equal(state[k], v), k
    assert {n: m.training for n, m in model.named_modules()} == snap["training"]
    assert {n: m.momentum for n, m in _norms(model)} == snap["momentum"]
    assert {n: p.requires_grad for n, p in model.named_parameters()} == snap["requires_grad"]
    for n, p in model.named_parameters():
        g = snap["grad"][n]
        assert (p.grad is None) == (g is None), n
        if g is not None:
            assert torch.equal(p.grad, g), n


def _unbiased(x, dims):
    x = x.double()
    return x.mean(dims), x.var(dims, unbiased=True)


# 1. pooled statistics over unequal batches ------------------------------------------------------


@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_first_norm_gets_pooled_mean_and_unbiased_var(offset):
    model = _conv_net()
    g = torch.Generator().manual_seed(2)
    batches = [torch.randn(n, 3, 6, 6, generator=g) * 2 + offset for n in (7, 5, 3)]
    with torch.no_grad():
        out = torch.cat([model[0](b) for b in batches])
    mean, var = _unbiased(out, (0, 2, 3))
    names = recalibrate_bn(model, batches)
    assert names == ["1", "4"]
    torch.testing.assert_close(model[1].running_mean.double(), mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model[1].running_var.double(), var, rtol=1e-5, atol=1e-8)
    # Pooled over elements, not the average of per-batch statistics (those differ here).
    per_batch = torch.stack([_unbiased(model[0](b), (0, 2, 3))[1] for b in batches]).mean(0)
    assert not torch.allclose(per_batch, var, rtol=1e-3)


def test_large_offset_directly_at_the_norm_input():
    """A float32 E[x^2] - E[x]^2 gives garbage here; the variance must stay exact."""
    bn = nn.BatchNorm2d(3).eval()
    g = torch.Generator().manual_seed(3)
    batches = [torch.randn(n, 3, 4, 4, generator=g) * 0.1 + 1000.0 for n in (9, 4, 6)]
    recalibrate_bn(bn, batches)
    mean, var = _unbiased(torch.cat(batches), (0, 2, 3))
    torch.testing.assert_close(bn.running_mean.double(), mean, rtol=1e-6, atol=0)
    torch.testing.assert_close(bn.running_var.double(), var, rtol=1e-4, atol=0)


# 2. every layer, whole data as one batch ---------------------------------------------------------


def test_all_layers_match_train_mode_batch_statistics():
    model = _mixed_net()
    x = torch.randn(16, 2, 5, 5, generator=torch.Generator().manual_seed(4)) + 3
    reference = copy.deepcopy(model).train()
    reference[3].eval()  # dropout off, as during recalibration
    seen = {}

    def capture(name):
        def hook(module, args):
            dims = (0,) if args[0].dim() == 2 else (0, 2, 3)
            seen[name] = _unbiased(args[0], dims)

        return hook

    for name, m in _norms(reference):
        m.register_forward_pre_hook(capture(name))
    with torch.no_grad():
        reference(x)
    names = recalibrate_bn(model, [x])
    assert names == ["1", "5", "10"] == list(seen)
    for name, m in _norms(model):
        torch.testing.assert_close(m.running_mean.double(), seen[name][0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(m.running_var.double(), seen[name][1], rtol=1e-5, atol=1e-7)


def test_batchnorm3d_and_tracked_instancenorm_pooled():
    g = torch.Generator().manual_seed(5)
    cases = [
        (nn.BatchNorm3d(2), [torch.randn(n, 2, 3, 4, 4, generator=g) + 7 for n in (3, 2)], (0, 2, 3, 4)),
        (
            nn.InstanceNorm2d(6, track_running_stats=True),
            [torch.randn(n, 6, 4, 4, generator=g) - 7 for n in (3, 2)],
            (0, 2, 3),
        ),
        (nn.SyncBatchNorm(3), [torch.randn(n, 3, 4, 4, generator=g) * 3 + 1 for n in (4, 2)], (0, 2, 3)),
        # unbatched (C, L) input: channels in dim 0
        (nn.InstanceNorm1d(4, track_running_stats=True), [torch.randn(4, n, generator=g) for n in (5, 5, 5)], (1,)),
    ]
    for norm, batches, dims in cases:
        assert recalibrate_bn(norm.eval(), batches) == [""]
        mean, var = _unbiased(torch.cat(batches, dim=dims[-1] if len(dims) == 1 else 0), dims)
        torch.testing.assert_close(norm.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(norm.running_var.double(), var, rtol=1e-5, atol=1e-6)


# 3. nothing else changes -------------------------------------------------------------------------


def test_nothing_but_running_stats_changes():
    model = _mixed_net()
    model[1].momentum = None
    model[5].momentum = 0.3
    model[1].num_batches_tracked.fill_(5)
    model.append(nn.BatchNorm1d(3, track_running_stats=False))  # not tracked: left alone
    model.train()
    model[5].eval()  # a BN in eval mode
    model[3].eval()  # dropout in eval mode
    model[0].weight.requires_grad_(False)
    x = torch.randn(8, 2, 5, 5)
    model(x).sum().backward()  # existing .grad (and one BN's stats moved by this train step)
    model[9].weight.grad = None
    snap = _snapshot(model)
    buffers = {n: (m.running_mean, m.running_var) for n, m in _norms(model) if m.running_mean is not None}

    names = recalibrate_bn(model, [x + 1, x * 2])
    assert names == ["1", "5", "10"]
    stats = {f"{n}.running_mean" for n in names} | {f"{n}.running_var" for n in names}
    _assert_unchanged(model, snap, skip=stats)
    for n, m in _norms(model):
        if n in names:  # same tensor objects, new values, same dtype
            assert m.running_mean is buffers[n][0] and m.running_var is buffers[n][1]
            assert not torch.equal(m.running_mean, snap["state"][f"{n}.running_mean"])
            assert not torch.equal(m.running_var, snap["state"][f"{n}.running_var"])
    assert model[1].momentum is None and model[5].momentum == 0.3
    assert int(model[1].num_batches_tracked) == 6  # 5 + the train step above, not more


def test_non_finite_batches_do_not_leak_into_other_state():
    """momentum=0 still multiplies batch stats by 0 (inf * 0 = nan): the snapshot must win."""
    bn = nn.BatchNorm1d(2).eval()
    snap = _snapshot(bn)
    x = torch.randn(6, 2)
    x[0, 0] = float("inf")
    recalibrate_bn(bn, [x])
    _assert_unchanged(bn, snap, skip={"running_mean", "running_var"})
    # channel 1 is finite and exact; channel 0 honestly reports the non-finite input
    mean, var = _unbiased(x[:, 1], (0,))
    torch.testing.assert_close(bn.running_mean[1].double(), mean)
    torch.testing.assert_close(bn.running_var[1].double(), var)


def test_norm_that_never_runs_warns_and_is_kept():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.BatchNorm1d(3)
            self.unused = nn.BatchNorm1d(3)

        def forward(self, x):
            return self.used(x)

    model = Net().eval()
    snap = _snapshot(model)
    with pytest.warns(UserWarning, match="unused"):
        assert recalibrate_bn(model, [torch.randn(4, 3)]) == ["used"]
    _assert_unchanged(model, snap, skip={"used.running_mean", "used.running_var"})


# 4. atomic --------------------------------------------------------------------------------------


def _assert_atomic(model, loader, error):
    model[1].momentum = None
    model.train()
    model[4].eval()
    snap = _snapshot(model)
    with pytest.raises(error):
        recalibrate_bn(model, loader)
    _assert_unchanged(model, snap)


def test_bad_batch_leaves_model_untouched():
    model = _conv_net()
    first = torch.randn(4, 3, 6, 6)
    first[0, 0, 0, 0] = float("inf")  # with momentum=0 BatchNorm writes 0 * inf = nan into its buffers
    _assert_atomic(model, [first, torch.randn(4, 2, 6, 6)], RuntimeError)


def test_model_error_mid_pass_leaves_model_untouched():
    class Boom(nn.Module):
        calls = 0

        def forward(self, x):
            Boom.calls += 1
            if Boom.calls == 2:
                raise KeyError("boom")
            return x

    model = _conv_net()
    model.append(Boom())
    _assert_atomic(model, [torch.randn(4, 3, 6, 6) for _ in range(3)], KeyError)


def test_loader_error_mid_pass_leaves_model_untouched():
    def loader():
        yield torch.randn(4, 3, 6, 6)
        raise OSError("disk gone")

    _assert_atomic(_conv_net(), loader(), OSError)


# 5. inference mode -------------------------------------------------------------------------------


def test_inside_inference_mode_with_inference_batches():
    model = _mixed_net()
    outside = copy.deepcopy(model)
    data = [torch.randn(n, 2, 5, 5) for n in (6, 3)]
    recalibrate_bn(outside, data)
    with torch.inference_mode():
        batches = [(x.clone(), torch.zeros(len(x))) for x in data]
        assert all(x.is_inference() for x, _ in batches)
        names = recalibrate_bn(model, batches)
    assert names == ["1", "5", "10"]
    for (n, m), (_, ref) in zip(_norms(model), _norms(outside)):
        assert not m.running_mean.is_inference() and not m.running_var.is_inference()
        assert torch.equal(m.running_mean, ref.running_mean), n
        assert torch.equal(m.running_var, ref.running_var), n


# 6. arguments ------------------------------------------------------------------------------------


def test_no_norm_layers_returns_empty_without_iterating():
    def loader():
        raise AssertionError("the dataloader must not be iterated")
        yield

    model = nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2), nn.BatchNorm1d(2, track_running_stats=False))
    assert recalibrate_bn(model, loader()) == []


def test_empty_dataloader_raises_before_changing_anything():
    model = _conv_net()
    snap = _snapshot(model)
    with pytest.raises(ValueError, match="dataloader"):
        recalibrate_bn(model, [])
    _assert_unchanged(model, snap)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_max_batches(bad):
    with pytest.raises(ValueError, match="max_batches"):
        recalibrate_bn(_conv_net(), [torch.randn(2, 3, 6, 6)], max_batches=bad)


def test_max_batches_uses_only_the_first_batches():
    data = [torch.randn(n, 3, 6, 6) + i for i, n in enumerate((4, 3, 5))]

    def loader():
        yield data[0]
        yield data[1]
        raise AssertionError("a third batch was requested")

    model, reference = _conv_net(), _conv_net()
    assert recalibrate_bn(model, loader(), max_batches=2) == ["1", "4"]
    recalibrate_bn(reference, data[:2])
    for m, ref in zip(model[1::3], reference[1::3]):
        assert torch.equal(m.running_mean, ref.running_mean)
        assert torch.equal(m.running_var, ref.running_var)
    everything = _conv_net()
    recalibrate_bn(everything, data, max_batches=3)
    assert not torch.allclose(everything[1].running_mean, model[1].running_mean)


# 8. batch forms ----------------------------------------------------------------------------------


def test_batch_forms():
    data = [torch.randn(n, 3, 6, 6) for n in (4, 3)]
    labels = [torch.zeros(len(x), dtype=torch.long) for x in data]
    forms = {
        "tensor": data,
        "pair": [(x, y) for x, y in zip(data, labels)],
        "list": [[x, y, "extra"] for x, y in zip(data, labels)],
        "single": [(x,) for x in data],
        "dict": [{"x": x, "y": y} for x, y in zip(data, labels)],
        "custom": [{"pixels": x} for x in data],
    }
    results = {}
    for form, batches in forms.items():
        model = _conv_net()
        unpack = (lambda b: (b["pixels"], None)) if form == "custom" else None
        assert recalibrate_bn(model, batches, unpack=unpack) == ["1", "4"]
        results[form] = torch.cat([model[1].running_mean, model[1].running_var, model[4].running_var])
    for form, r in results.items():
        assert torch.equal(r, results["tensor"]), form
    with pytest.raises(TypeError, match="unpack"):
        recalibrate_bn(_conv_net(), [{"pixels": data[0]}])


# 7. real effect -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recalibration_recovers_accuracy_after_channel_removal(digits, seed):
    x, y = digits
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    train, test = perm[:1200], perm[1200:]
    model = zoo.small_cnn(width=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(150):
        idx = train[torch.randint(0, len(train), (64,), generator=g)]
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()

    def accuracy():
        with torch.no_grad():
            return (model(x[test]).argmax(1) == y[test]).float().mean().item()

    trained = accuracy()
    with torch.no_grad():
        model.features[1][0].weight[:, :4] = 0  # conv 2 loses half its input channels
    pruned = accuracy()
    recalibrate_bn(model, [x[train[i : i + 128]] for i in range(0, len(train), 128)])
    recalibrated = accuracy()
    # Over 30 seeds: trained 0.74-0.96, pruned 0.15-0.45, recalibrated 0.53-0.78, gain >= 0.21.
    assert trained > 0.7
    assert recalibrated > pruned + 0.12, (trained, pruned, recalibrated)
