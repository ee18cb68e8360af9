"""Tests for FAIR's scores (method.md §1.1-1.2): W1 distances, U, R, and scoring side effects.

U and R are checked against independent brute-force computations: scipy's 1-D Wasserstein
distance in explicit Python loops for U, and autograd on the layer *parameters* for R
(``Σ w·dL/dw + b·dL/db``, which equals ``Σ dL/dz·z`` because z is linear in them).
"""

import copy
import gc
import itertools
import zlib
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import wasserstein_distance
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_fair import FairScores, compute_scores
from lightning_fair.collect import projections
from lightning_fair.collect.collector import StatisticsCollector
from lightning_fair.scoring import distances

MLP_LAYERS = ("features.1", "features.3")  # zoo.mlp's hidden Linears, each followed by ReLU(inplace=True)
CNN_CONVS = {
    "features.0.0": "features.0.1",
    "features.1.0": "features.1.1",
    "features.3.0": "features.3.1",
}  # conv -> BN


# ----------------------------------------------------------------------------- helpers
def loader(x, y, batch_size):
    """Deterministic loader (shuffle=False)."""
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def first_per_class(y, n):
    """``{class: indices of its first n samples, in order}`` for the classes present in ``y``."""
    return {int(k): (y == k).nonzero().flatten()[:n] for k in torch.unique(y)}


def capture(model, module, x, transform=lambda t: t, batch_size=97):
    """The outputs of ``module`` for all of ``x`` (cloned in the hook, before any in-place op)."""
    outs = []
    handle = module.register_forward_hook(lambda m, a, o: outs.append(transform(o.detach().clone())))
    try:
        with torch.no_grad():
            model.eval()
            for i in range(0, len(x), batch_size):
                model(x[i : i + batch_size])
    finally:
        handle.remove()
    return torch.cat(outs)


def brute_max_pairwise(per_class, pairs="max"):
    """``per_class``: ``{k: [n_k, C, D]}`` float64 arrays -> ``[C]``: max (``pairs="mean"``: mean) over
    the unordered class pairs of the mean over D of scipy W1."""
    classes = sorted(per_class)
    channels, dims = next(iter(per_class.values())).shape[1:]
    result = np.zeros(channels)
    for c in range(channels):
        distances = []
        for k1, k2 in itertools.combinations(classes, 2):
            a, b = per_class[k1], per_class[k2]
            distances.append(np.mean([wasserstein_distance(a[:, c, p], b[:, c, p]) for p in range(dims)]))
        result[c] = (max if pairs == "max" else np.mean)(distances) if distances else 0.0
    return result


def brute_taylor(model, batches, layer_names, with_bias=True):
    """``{layer: Σ_batches Σ_unit params w·dL/dw (+ b·dL/db)}`` by autograd on the parameters, in eval mode."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(True)
    modules = dict(ref.named_modules())
    params = {
        n: [p for p in (modules[n].weight, modules[n].bias if with_bias else None) if p is not None]
        for n in layer_names
    }
    total = {n: 0.0 for n in layer_names}
    for xb, yb in batches:
        loss = F.cross_entropy(ref(xb), yb)
        flat = [p for n in layer_names for p in params[n]]
        grads = dict(zip(map(id, flat), torch.autograd.grad(loss, flat)))
        for n in layer_names:
            contribution = 0.0
            for p in params[n]:
                contribution = contribution + (p.detach() * grads[id(p)]).reshape(p.shape[0], -1).sum(1)
            total[n] = total[n] + contribution
    return total


def digits_subset(digits, caps, seed=0):
    """Digits in a fixed shuffled order, keeping at most ``caps[k]`` samples of class k."""
    x, y = digits
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    keep = torch.ones(len(y), dtype=torch.bool)
    for k, cap in caps.items():
        idx = (y == k).nonzero().flatten()
        keep[idx[cap:]] = False
    return x[keep], y[keep]


def live_tensor_count():
    gc.collect()
    return sum(1 for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor))


# ------------------------------------------------------------------------ 1. 1-D W1
SIZES = [(5, 5), (32, 32), (5, 7), (7, 5), (32, 17), (1, 4), (4, 1), (1, 1), (3, 6), (10, 15)]


@pytest.mark.parametrize("n,m", SIZES)
def test_wasserstein_1d_matches_scipy(n, m):
    rng = np.random.default_rng(1000 * n + m)
    x = rng.normal(size=n)
    y = rng.normal(loc=0.3, scale=2.0, size=m)
    got = distances.wasserstein_1d(torch.from_numpy(x), torch.from_numpy(y))
    assert got.dtype == torch.float64 and got.shape == ()
    assert abs(float(got) - wasserstein_distance(x, y)) < 1e-9


@pytest.mark.parametrize("n,m", [(5, 7), (32, 17), (6, 6)])
def test_wasserstein_1d_columns_and_ties(n, m):
    rng = np.random.default_rng(n + m)
    x = rng.integers(0, 4, size=(n, 3, 2)).astype(np.float64)  # many ties
    y = rng.integers(1, 6, size=(m, 3, 2)).astype(np.float64)
    got = distances.wasserstein_1d(torch.from_numpy(x), torch.from_numpy(y))
    assert got.shape == (3, 2)
    for i in range(3):
        for j in range(2):
            assert abs(float(got[i, j]) - wasserstein_distance(x[:, i, j], y[:, i, j])) < 1e-9


@pytest.mark.parametrize("sizes", [(5, 5, 5), (5, 7), (32, 17, 1, 4), (1, 4), (8, 3, 8, 12, 1)])
@pytest.mark.parametrize("max_elements", [2**25, 1, 50])
def test_max_pairwise_w1_matches_scipy(sizes, max_elements):
    rng = np.random.default_rng(sum(sizes))
    channels, dims = 4, 3
    samples = [rng.normal(loc=rng.normal(), scale=rng.uniform(0.5, 2), size=(s, channels, dims)) for s in sizes]
    got = distances.max_pairwise_w1([torch.from_numpy(s) for s in samples], max_elements=max_elements)
    expected = brute_max_pairwise(dict(enumerate(samples)))
    assert got.shape == (channels,)
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("sizes", [(5, 5, 5), (5, 7), (32, 17, 1, 4), (8, 3, 8, 12, 1)])
@pytest.mark.parametrize("max_elements", [2**25, 1])
def test_mean_over_class_pairs_matches_scipy(sizes, max_elements):
    """``pairs="mean"``: the mean of the same distances over all unordered class pairs; never above the max."""
    rng = np.random.default_rng(sum(sizes) + 1)
    channels, dims = 4, 3
    samples = [rng.normal(loc=rng.normal(), scale=rng.uniform(0.5, 2), size=(s, channels, dims)) for s in sizes]
    tensors = [torch.from_numpy(s) for s in samples]
    got = distances.class_pair_w1(tensors, pairs="mean", max_elements=max_elements)
    np.testing.assert_allclose(got.numpy(), brute_max_pairwise(dict(enumerate(samples)), "mean"), rtol=0, atol=1e-9)
    assert bool((got <= distances.class_pair_w1(tensors, pairs="max") + 1e-12).all())
    with pytest.raises(ValueError, match="pairs must be one of"):
        distances.class_pair_w1(tensors, pairs="median")


def test_max_pairwise_w1_needs_two_classes():
    assert torch.equal(distances.max_pairwise_w1([torch.randn(4, 3, 1)]), torch.zeros(3))


def test_random_projections_seeded_unit_columns():
    a = projections.random_projections(20, 5, seed=7)
    assert a.shape == (20, 5) and a.dtype == torch.float32
    assert torch.allclose(a.norm(dim=0), torch.ones(5))
    assert torch.equal(a, projections.random_projections(20, 5, seed=7))
    assert not torch.allclose(a, projections.random_projections(20, 5, seed=8))


# --------------------------------------------------- 2. Linear utilization vs brute force
@pytest.mark.parametrize("observe,pairs", [("activation", "max"), ("output", "max"), ("activation", "mean")])
def test_linear_utilization_matches_brute_force(trained_mlp, digits, observe, pairs):
    # class 3 has 5 samples, class 7 one, class 9 none; the others more than n.
    n = 12
    x, y = digits_subset(digits, {3: 5, 7: 1, 9: 0})
    x, y = x[:400], y[:400]
    modules = dict(trained_mlp.named_modules())
    picks = first_per_class(y, n)
    assert len(picks[3]) == 5 and len(picks[7]) == 1 and 9 not in picks
    expected = {}
    for name in MLP_LAYERS:
        act = (lambda t: t.clamp(min=0)) if observe == "activation" else (lambda t: t)
        z = capture(trained_mlp, modules[name], x, act).double()  # [N, C]
        per_class = {k: z[idx].unsqueeze(-1).numpy() for k, idx in picks.items()}
        expected[name] = brute_max_pairwise(per_class, pairs)
        assert expected[name].max() > 0
    # the first batch holds more than n of a class (200) / many batches are needed (13)
    for batch_size in (200, 13):
        scores = compute_scores(
            trained_mlp, loader(x, y, batch_size), samples_per_class=n, observe=observe, pairs=pairs
        )
        assert scores.config["pairs"] == pairs
        assert scores.layers == list(MLP_LAYERS)
        assert scores.output_layer == "classifier"
        assert scores.class_counts == [min(n, int((y == k).sum())) for k in range(10)]
        for name in MLP_LAYERS:
            assert scores.observed[name] == observe
            np.testing.assert_allclose(scores.utilization[name].double().numpy(), expected[name], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------ 3. Conv sliced W1 vs brute force
@pytest.mark.parametrize("observe", ["activation", "output"])
def test_conv_sliced_utilization_matches_brute_force(trained_cnn, digits, observe):
    n, num_proj, seed = 8, 6, 3
    x, y = digits_subset(digits, {2: 3}, seed=1)
    x, y = x[:400], y[:400]
    picks = first_per_class(y, n)
    assert len(picks[2]) == 3 and len(picks) == 10
    modules = dict(trained_cnn.named_modules())
    scores = compute_scores(
        trained_cnn, loader(x, y, 64), samples_per_class=n, num_projections=num_proj, observe=observe, seed=seed
    )
    assert scores.layers == [*CNN_CONVS, "head.0"]
    for conv, bn in CNN_CONVS.items():
        if observe == "activation":  # conv -> BN -> ReLU: observe relu(bn(conv(x)))
            maps = capture(trained_cnn, modules[bn], x, lambda t: t.clamp(min=0))
        else:
            maps = capture(trained_cnn, modules[conv], x)
        maps = maps.double().flatten(2).numpy()  # [N, C, HW]
        hw = maps.shape[2]
        theta = projections.random_projections(hw, num_proj, seed=zlib.crc32(conv.encode()) ^ seed).double().numpy()
        classes = sorted(picks)
        expected = np.zeros(maps.shape[1])
        for c in range(maps.shape[1]):
            for k1, k2 in itertools.combinations(classes, 2):
                w1 = []
                for p in range(num_proj):
                    a = [float(maps[i, c] @ theta[:, p]) for i in picks[k1].tolist()]
                    b = [float(maps[i, c] @ theta[:, p]) for i in picks[k2].tolist()]
                    w1.append(wasserstein_distance(a, b))
                expected[c] = max(expected[c], sum(w1) / num_proj)
        assert expected.min() > 0
        assert scores.observed[conv] == observe
        np.testing.assert_allclose(scores.utilization[conv].double().numpy(), expected, rtol=1e-4, atol=1e-6)
    # the Linear hidden layer (scalar units, no projection)
    act = (lambda t: t.clamp(min=0)) if observe == "activation" else (lambda t: t)
    z = capture(trained_cnn, modules["head.0"], x, act).double()
    expected = brute_max_pairwise({k: z[idx].unsqueeze(-1).numpy() for k, idx in picks.items()})
    np.testing.assert_allclose(scores.utilization["head.0"].double().numpy(), expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------- 4. reconstruction score R
def _check_reconstruction(model, batches, scores, rtol, atol_frac):
    expected = brute_taylor(model, batches, scores.layers)
    for name in scores.layers:
        exp = expected[name].double()
        assert exp.abs().max() > 0
        atol = atol_frac * float(exp.abs().max())
        torch.testing.assert_close(scores.taylor_sum[name].double(), exp, rtol=rtol, atol=atol)
        torch.testing.assert_close(scores.reconstruction[name].double(), exp.abs(), rtol=max(rtol, 1e-6), atol=atol)
        assert torch.equal(scores.reconstruction[name], scores.taylor_sum[name].abs().float())
        assert scores.reconstruction[name].shape == (exp.numel(),)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_reconstruction_matches_parameter_autograd_float64(trained_mlp, trained_cnn, digits, arch):
    model = (trained_mlp if arch == "mlp" else trained_cnn).double()
    x, y = digits
    batches = list(loader(x[:300].double(), y[:300], 64))  # 5 batches, the last one short
    scores = compute_scores(model, batches, samples_per_class=4, num_projections=4)
    assert scores.config["num_batches"] == 5
    if arch == "cnn":
        assert scores.layers == [*CNN_CONVS, "head.0"]
        assert all(dict(model.named_modules())[c].bias is None for c in CNN_CONVS)  # conv: weight term only
    _check_reconstruction(model, batches, scores, rtol=1e-9, atol_frac=1e-12)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_reconstruction_matches_parameter_autograd_float32(trained_mlp, trained_cnn, digits, arch):
    model = trained_mlp if arch == "mlp" else trained_cnn
    x, y = digits
    batches = list(loader(x[:300], y[:300], 64))
    scores = compute_scores(model, batches, samples_per_class=4, num_projections=4)
    _check_reconstruction(model, batches, scores, rtol=1e-3, atol_frac=1e-4)


def test_reconstruction_linear_with_bias_counts_bias_term(digits):
    # With a large bias, dropping the b*dL/db term would change R visibly.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)).double()
    with torch.no_grad():
        model[1].bias.add_(1.0)
    x, y = digits
    batches = list(loader(x[:200].double(), y[:200], 50))
    scores = compute_scores(model, batches, samples_per_class=3)
    _check_reconstruction(model, batches, scores, rtol=1e-9, atol_frac=1e-12)
    weight_only = brute_taylor(model, batches, ["1"], with_bias=False)["1"]
    assert not torch.allclose(scores.taylor_sum["1"], weight_only)  # sanity: bias term matters here


# --------------------------------------------------- 5. the model is left exactly as it was
def _snapshot(model):
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": {n: m.training for n, m in model.named_modules()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grad": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "params": [id(p) for p in model.parameters()],
        "hooks": sum(
            len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
        ),
    }


def _assert_same(model, before):
    after = _snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    for k, v in before["state"].items():
        w = after["state"][k]
        assert w.dtype == v.dtype and w.shape == v.shape
        assert torch.equal(
            w.view(torch.uint8) if w.is_floating_point() else w, v.view(torch.uint8) if v.is_floating_point() else v
        ), k  # bitwise
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["params"] == before["params"]
    assert after["hooks"] == before["hooks"]
    for n, g in before["grad"].items():
        if g is None:
            assert after["grad"][n] is None, n
        else:
            assert torch.equal(after["grad"][n], g), n


def test_model_left_exactly_as_it_was(trained_cnn, digits):
    model = trained_cnn
    model.train()
    model.features[1].eval()  # a mix of train and eval submodules
    model.features[0][0].weight.requires_grad_(False)
    model.head[0].bias.requires_grad_(False)
    model.classifier.weight.grad = torch.randn_like(model.classifier.weight)
    model.features[3][0].weight.grad = torch.full_like(model.features[3][0].weight, 0.5)
    before = _snapshot(model)
    x, y = digits
    scores = compute_scores(model, loader(x[:256], y[:256], 64), samples_per_class=4, num_projections=4)
    assert all(r.abs().sum() > 0 for r in scores.reconstruction.values())
    _assert_same(model, before)
    assert model.training and not model.features[1].training and model.features[1][1].training is False
    # sanity: a plain forward in this (train) mode would have changed the BN running stats
    running = model.features[0][1].running_mean.clone()
    with torch.no_grad():
        model(x[:64])
    assert not torch.equal(running, model.features[0][1].running_mean)


def test_model_restored_after_an_error(trained_mlp, digits):
    model = trained_mlp
    model.train()
    before = _snapshot(model)
    x, y = digits
    bad = [(x[:32], y[:32]), (x[32:64], torch.full((32,), 12))]  # second batch: labels out of range
    with pytest.raises((ValueError, IndexError)):
        compute_scores(model, bad, samples_per_class=4)
    _assert_same(model, before)


# ------------------------------------------------------------------- 6. frozen models
def test_frozen_model_gives_nonzero_reconstruction(trained_cnn, digits):
    x, y = digits
    batches = list(loader(x[:256], y[:256], 64))
    reference = compute_scores(trained_cnn, batches, samples_per_class=4, num_projections=4)
    for p in trained_cnn.parameters():
        p.requires_grad_(False)
    frozen = compute_scores(trained_cnn, batches, samples_per_class=4, num_projections=4)
    assert all(not p.requires_grad for p in trained_cnn.parameters())
    assert frozen.layers == reference.layers
    for name in reference.layers:
        assert frozen.reconstruction[name].abs().sum() > 0
        torch.testing.assert_close(frozen.reconstruction[name], reference.reconstruction[name])
        assert torch.equal(frozen.utilization[name], reference.utilization[name])


def test_frozen_model_under_no_grad_and_inference_batches(trained_mlp, digits):
    x, y = digits
    for p in trained_mlp.parameters():
        p.requires_grad_(False)
    with torch.inference_mode():
        batches = [(x[:100].clone(), y[:100].clone()), (x[100:200].clone(), y[100:200].clone())]
    with torch.no_grad():
        scores = compute_scores(trained_mlp, batches, samples_per_class=4)
    assert all(r.sum() > 0 for r in scores.reconstruction.values())
    with torch.inference_mode():  # e.g. called from a Lightning validation hook
        again = compute_scores(trained_mlp, batches, samples_per_class=4)
    for name in scores.layers:
        assert torch.equal(again.reconstruction[name], scores.reconstruction[name])
        assert torch.equal(again.utilization[name], scores.utilization[name])


# --------------------------------------------------- 7. one forward + one backward per batch
def test_one_forward_and_one_backward_per_batch(trained_cnn, digits):
    x, y = digits
    data = loader(x[: 7 * 40], y[: 7 * 40], 40)
    calls = []
    handle = trained_cnn.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        with (
            mock.patch("lightning_fair.collect.collector.torch.autograd.grad", wraps=torch.autograd.grad) as grad,
            mock.patch("torch.autograd.backward", wraps=torch.autograd.backward) as backward,
        ):
            scores = compute_scores(trained_cnn, data, samples_per_class=4, num_projections=4)
        assert len(calls) == 7
        assert grad.call_count + backward.call_count == 7
        assert scores.config["num_batches"] == 7
        calls.clear()
        compute_scores(trained_cnn, data, samples_per_class=4, num_projections=4, max_batches=3)
        assert len(calls) == 3
    finally:
        handle.remove()


# ------------------------------------------------------- 8. memory independent of #batches
def test_memory_does_not_grow_with_batches(trained_cnn, digits):
    x, y = digits
    batches = list(loader(x[: 20 * 16], y[: 20 * 16], 16))
    short, long = batches[:2], batches

    def held(collector):
        samples = {name: tuple(b.shape) for name, b in collector.class_samples.buffers.items()}
        return samples, {name: tuple(t.shape) for name, t in collector.taylor.signed.items()}

    def tensors_in(obj, seen=None):
        seen = set() if seen is None else seen
        if id(obj) in seen:
            return 0
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            return 1
        if isinstance(obj, nn.Module):
            return 0  # the model itself
        if isinstance(obj, dict):
            return sum(tensors_in(v, seen) for v in obj.values())
        if isinstance(obj, (list, tuple, set)):
            return sum(tensors_in(v, seen) for v in obj)
        if hasattr(obj, "__dict__"):
            return tensors_in(vars(obj), seen)
        return 0

    StatisticsCollector(trained_cnn, samples_per_class=4, num_projections=4).run(short)  # warm-up
    results = []
    for data in (short, long):
        baseline = live_tensor_count()
        collector = StatisticsCollector(trained_cnn, samples_per_class=4, num_projections=4).run(data)
        results.append((held(collector), tensors_in(collector), live_tensor_count() - baseline, collector.num_batches))
        del collector
    (shapes2, owned2, live2, nb2), (shapes20, owned20, live20, nb20) = results
    assert (nb2, nb20) == (2, 20)
    assert shapes2 == shapes20
    assert all(shape[:2] == (10, 4) for shape in shapes2[0].values())
    assert owned2 == owned20
    assert live2 == live20


# ------------------------------------------------------------------ 9. observation point
def test_observed_stage_per_layer(trained_cnn, trained_mlp, digits):
    x, y = digits
    data = list(loader(x[:128], y[:128], 64))
    kw = dict(samples_per_class=4, num_projections=4)
    for model in (trained_cnn, trained_mlp):
        out = compute_scores(model, data, observe="output", **kw)
        assert out.observed and set(out.observed.values()) == {"output"}
        assert out.config["observe"] == "output"
    act = compute_scores(trained_cnn, data, observe="activation", **kw)
    assert act.observed == {**{c: "activation" for c in CNN_CONVS}, "head.0": "activation"}
    norm = compute_scores(trained_cnn, data, observe="norm", **kw)
    assert norm.observed == {**{c: "norm" for c in CNN_CONVS}, "head.0": "output"}
    assert compute_scores(trained_mlp, data, **kw).observed == {n: "activation" for n in MLP_LAYERS}
    # the observed tensor matters: the three observation points give different U
    out = compute_scores(trained_cnn, data, observe="output", **kw)
    for conv in CNN_CONVS:
        assert not torch.allclose(out.utilization[conv], act.utilization[conv])
        assert not torch.allclose(norm.utilization[conv], act.utilization[conv])


class _InplaceNet(nn.Module):
    """Linear -> in-place nonlinearity (no norm) -> Linear; ``act`` is a module or a plain function."""

    def __init__(self, act):
        super().__init__()
        self.fc1 = nn.Linear(64, 24)
        self.act = act
        self.fc2 = nn.Linear(24, 10)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x.flatten(1))))


# (activation, what U sees after it; functions too: followed through the calibration forward since 0.2)
INPLACE = {
    "relu": (lambda: nn.ReLU(inplace=True), lambda t: t.clamp(min=0)),
    # not positively homogeneous (f(z) != f'(z) z): a corrupted z changes R
    "hardtanh": (lambda: nn.Hardtanh(inplace=True), lambda t: t.clamp(-1, 1)),
    "relu6": (lambda: nn.ReLU6(inplace=True), lambda t: t.clamp(0, 6)),
    "elu": (lambda: nn.ELU(inplace=True), F.elu),
    "functional_relu": (lambda: lambda t: F.relu(t, inplace=True), lambda t: t.clamp(min=0)),
    "functional_hardtanh": (lambda: lambda t: F.hardtanh(t, inplace=True), lambda t: t.clamp(-1, 1)),
}


@pytest.mark.parametrize("act", sorted(INPLACE))
def test_inplace_activation_after_linear(act, digits):
    make, post = INPLACE[act]
    torch.manual_seed(0)
    model = _InplaceNet(make()).double()
    with torch.no_grad():  # wide spread of pre-activations: negative, inside and beyond the clamps
        model.fc1.weight.mul_(24.0 if act == "relu6" else 3.0)
        model.fc1.bias.sub_(0.5)
    x, y = digits
    x, y = x[:300].double(), y[:300]
    batches = list(loader(x, y, 50))
    n = 6
    picks = first_per_class(y, n)
    z = capture(model, model.fc1, x)
    assert (z < 0).double().mean() > 0.2 and (z > (6 if act == "relu6" else 1)).double().mean() > 0.05
    for observe in ("output", "activation"):
        scores = compute_scores(model, batches, samples_per_class=n, observe=observe)
        assert scores.layers == ["fc1"]
        _check_reconstruction(model, batches, scores, rtol=1e-9, atol_frac=1e-12)  # R on the pre-activation z
        after = observe == "activation" and post is not None
        assert scores.observed["fc1"] == ("activation" if after else "output")
        seen = post(z) if after else z
        expected = brute_max_pairwise({k: seen[idx].unsqueeze(-1).numpy() for k, idx in picks.items()})
        np.testing.assert_allclose(scores.utilization["fc1"].double().numpy(), expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------- 10. determinism and seeds
def test_seeding(trained_cnn, digits):
    x, y = digits
    data = list(loader(x[:256], y[:256], 64))
    kw = dict(samples_per_class=6, num_projections=5)
    a = compute_scores(trained_cnn, data, seed=0, **kw)
    b = compute_scores(trained_cnn, data, seed=0, **kw)
    c = compute_scores(trained_cnn, data, seed=1, **kw)
    assert a.config["seed"] == 0 and c.config["seed"] == 1
    for name in a.layers:
        assert torch.equal(a.utilization[name], b.utilization[name])
        assert torch.equal(a.reconstruction[name], b.reconstruction[name])
        assert torch.equal(a.reconstruction[name], c.reconstruction[name])
        assert torch.equal(a.taylor_sum[name], c.taylor_sum[name])
    for conv in CNN_CONVS:
        assert not torch.allclose(a.utilization[conv], c.utilization[conv])
    assert torch.equal(a.utilization["head.0"], c.utilization["head.0"])
    # the global RNG plays no part
    torch.manual_seed(123)
    d = compute_scores(trained_cnn, data, seed=0, **kw)
    assert all(torch.equal(a.utilization[n], d.utilization[n]) for n in a.layers)


# --------------------------------------------------------------------------- 11. save/load
def test_save_and_load_round_trip(trained_cnn, digits, tmp_path):
    x, y = digits
    scores = compute_scores(trained_cnn, list(loader(x[:128], y[:128], 64)), samples_per_class=4, num_projections=4)
    path = tmp_path / "scores.pt"
    scores.save(path)
    raw = torch.load(path, weights_only=True)
    assert raw["layers"] == scores.layers
    loaded = FairScores.load(path)
    assert loaded.layers == scores.layers
    for field in ("utilization", "reconstruction", "taylor_sum"):
        mine, theirs = getattr(scores, field), getattr(loaded, field)
        assert list(mine) == list(theirs)
        for name in mine:
            assert theirs[name].dtype == mine[name].dtype
            assert torch.equal(theirs[name], mine[name]), (field, name)
    assert loaded.observed == scores.observed
    assert loaded.output_layer == scores.output_layer == "classifier"
    assert loaded.class_counts == scores.class_counts
    assert loaded.config == scores.config
    assert loaded.input_means.keys() == scores.input_means.keys() and scores.input_means
    assert all(torch.equal(loaded.input_means[n], m) for n, m in scores.input_means.items())
    assert repr(loaded) == repr(scores)
    with pytest.raises(ValueError):
        FairScores.from_state_dict({"format": "something else"})


# ------------------------------------------------------------------------- 12. clear errors
def test_one_class_is_an_error(trained_mlp, digits):
    x, y = digits
    one = y == 4
    with pytest.raises(ValueError, match="two"):
        compute_scores(trained_mlp, loader(x[one], y[one], 32), samples_per_class=4)


def test_empty_dataloader_is_an_error(trained_mlp):
    with pytest.raises(ValueError, match="no batches"):
        compute_scores(trained_mlp, [], samples_per_class=4)
    empty = loader(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long), 8)
    with pytest.raises(ValueError):
        compute_scores(trained_mlp, empty, samples_per_class=4)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"observe": "relu"},
        {"observe": "Output"},
        {"samples_per_class": 0},
        {"samples_per_class": -3},
        {"num_projections": 0},
    ],
)
def test_bad_arguments(trained_mlp, digits, kwargs):
    x, y = digits
    with pytest.raises(ValueError):
        compute_scores(trained_mlp, loader(x[:64], y[:64], 32), **kwargs)
