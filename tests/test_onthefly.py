"""On-the-fly pruning (arXiv 2212.12651, our reconstruction): ``lightning_fair.methods.onthefly`` and
``OnTheFlyPruning`` on real data (sklearn digits), CPU, one thread."""

from __future__ import annotations

import copy
import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning_helpers import classifier, read_metrics, seeded_fit
from torch import nn
from torch.nn.utils import parametrize

import lightning_fair
import lightning_fair.methods.onthefly as onthefly
from lightning_fair.demos import zoo
from lightning_fair.demos.digits import ImageClassifier, digits_tensors
from lightning_fair.lightning.callback import PruningError
from lightning_fair.methods.onthefly import (
    add_polarization_grad,
    hyperspherical_layers,
    make_hyperspherical,
    plain_state_dict,
    polarization_stats,
    prune_on_the_fly,
)

OnTheFlyPruning = lightning_fair.OnTheFlyPruning
#: the layers OnTheFlyPruning uses in ImageClassifier(arch="small_cnn") by default (all but net.classifier)
LAYERS = ("net.features.0.0", "net.features.1.0", "net.features.3.0", "net.head.0")


pytestmark = pytest.mark.usefixtures("seeded")


class Probe(L.Callback):
    """Keeps what the callback set up at fit start and the statistics before pruning."""

    def __init__(self, ratio=0.5):
        self.ratio = ratio

    def on_fit_start(self, trainer, pl_module):
        self.layers = hyperspherical_layers(pl_module)
        self.originals = {n: m.parametrizations.weight.original for n, m in self.layers.items()}
        self.values = {n: p.detach().clone() for n, p in self.originals.items()}
        self.radius_params = {n: onthefly.hypersphere_of(m).radius for n, m in self.layers.items()}
        self.radii = {n: r.detach().clone() for n, r in self.radius_params.items()}
        self.optimized = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}

    def on_train_end(self, trainer, pl_module):
        self.stats = polarization_stats(pl_module, self.ratio)
        self.radii_after = {n: onthefly.hypersphere_of(m).radius.detach().clone() for n, m in self.layers.items()}


def _fit(tmp_path, callbacks, epochs, model=None, **kwargs):
    """:func:`seeded_fit` of ``model`` (default a fresh ``classifier()``), not reseeded: the test or ``seeded`` did."""
    factory = classifier if model is None else (lambda: model)
    fit, fitted, _ = seeded_fit(tmp_path, callbacks, model=factory, seed=None, max_epochs=epochs, **kwargs)
    return fit, fitted


def _assert_tied(model, masks, recovery="channel"):
    """Every pruned entry holds its channel's shared value (or zero); the masks cover ratio of each layer."""
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        weight = modules[name].weight.detach().flatten(1)
        rows = mask.flatten(1)
        for o in range(weight.shape[0]):
            held = weight[o][rows[o]]
            if recovery is None:
                assert torch.all(held == 0), name
            elif held.numel():
                assert torch.all(held == held[0]), name


# ------------------------------------------------------------------ 1: the penalty polarises
def test_penalty_pushes_the_normalised_weights_apart(tmp_path):
    """Same seed, same 54 steps, hyperspherical both times: with the penalty the would-be-pruned
    half holds ~0.1% of the normalised weights' energy (10% without) and the kept entries are
    ~100x larger than the pruned ones (3x without)."""
    measured = {}
    for penalty in (1e-2, 0.0):
        L.seed_everything(0, verbose=False)
        probe = Probe()
        logger = CSVLogger(str(tmp_path), name=f"penalty{penalty}")
        _fit(tmp_path, [OnTheFlyPruning(ratio=0.5, penalty=penalty, verbose=False), probe], 3, logger=logger)
        measured[penalty] = probe
        # the optimizer trains the parametrized weights: V is the old weight object, radius is new
        assert set(probe.layers) == set(LAYERS)
        for name, original in probe.originals.items():
            assert id(original) in probe.optimized and id(probe.radius_params[name]) in probe.optimized
            assert not torch.equal(original.detach(), probe.values[name]), name
            assert not torch.equal(probe.radii_after[name], probe.radii[name]), name
        rows = read_metrics(logger.log_dir)
        assert any(r.get("onthefly/penalty") not in (None, "") for r in rows)
        assert any(r.get("onthefly/pruned_fraction") not in (None, "") for r in rows)
    on, off = measured[1e-2].stats, measured[0.0].stats
    assert float(on.pruned_energy) < 0.2 * float(off.pruned_energy), (on, off)
    assert float(on.separation) > 5 * float(off.separation), (on, off)


# ------------------------------------------------------------------ 2: mean recovery on a trained BN network
def _trained_cnn(seed, steps=300):
    x, y = digits_tensors(0)
    torch.manual_seed(seed)
    model = zoo.small_cnn(width=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, 1100, (64,), generator=generator)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), x[1400:], y[1400:]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_channel_mean_recovery_beats_zeroing_on_a_batchnorm_cnn(seed):
    """50% of each conv/hidden layer's weights pruned, no fine-tuning, held-out digits.
    Measured (seeds 0-9): zeroing 15-39%, channel means 45-88%, margin 0.23-0.62; one mean per
    layer stays near zeroing, so only the per-channel tie is asserted."""
    model, x, y = _trained_cnn(seed)
    layers = ["features.0.0", "features.1.0", "features.3.0", "head.0"]
    accuracy = {}
    for recovery in (None, "channel"):
        pruned = copy.deepcopy(model)
        report = prune_on_the_fly(pruned, 0.5, recovery, layers=layers)
        assert report.pruned == sum(round(0.5 * pruned.get_submodule(n).weight.numel()) for n in layers)
        with torch.no_grad():
            accuracy[recovery] = (pruned(x).argmax(1) == y).float().mean().item()
    assert accuracy["channel"] > accuracy[None] + 0.2, accuracy


# ------------------------------------------------------------------ 3: a plain model at the end; checkpoints
def test_fit_end_leaves_a_plain_pruned_model_and_checkpoints_load(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_top_k=-1, every_n_epochs=1)
    callback = OnTheFlyPruning(ratio=0.5, verbose=False)
    fit, model = _fit(tmp_path, [callback, checkpoint], 2, enable_checkpointing=True)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert set(model.state_dict()) == set(classifier().state_dict())
    assert not any(
        p for g in fit.optimizers[0].param_groups for p in g["params"] if all(p is not q for q in model.parameters())
    ), "the optimizer still holds a removed radius"
    # exactly half of each layer pruned; the pruned entries hold one value per channel
    assert set(callback.masks) == set(LAYERS)
    for name, mask in callback.masks.items():
        assert int(mask.sum()) == round(0.5 * mask.numel())
    _assert_tied(model, callback.masks)
    assert callback.last_report.zero_fraction < 0.01 and callback.last_report.recovery == "channel"

    # the final model: plain data, loads into a fresh plain model
    fit.save_checkpoint(str(tmp_path / "final.ckpt"))
    state = torch.load(str(tmp_path / "final.ckpt"), weights_only=True)
    fresh = classifier(seed=1).eval()
    fresh.load_state_dict(state["state_dict"])
    x = digits_tensors(0)[0][:32]
    model.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
        assert torch.equal(ImageClassifier.load_from_checkpoint(str(tmp_path / "final.ckpt")).eval()(x), model(x))

    # a checkpoint written during training holds the hyperspherical keys; plain_state_dict folds them
    mid = torch.load(str(tmp_path / "ckpt" / "epoch=0-step=18.ckpt"), weights_only=True)
    assert "net.features.0.0.parametrizations.weight.original" in mid["state_dict"]
    plain = classifier(seed=1)
    plain.load_state_dict(plain_state_dict(mid["state_dict"]))
    # ... and resuming from it with the callback continues the hyperspherical training, then prunes
    resumed_callback = OnTheFlyPruning(ratio=0.5, verbose=False)
    resumed = classifier(seed=2)
    _fit(tmp_path, [resumed_callback], 2, model=resumed, ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=18.ckpt"))
    assert resumed_callback.pruned and not any(parametrize.is_parametrized(m) for m in resumed.modules())
    _assert_tied(resumed, resumed_callback.masks)


# ------------------------------------------------------------------ 4: the gradient is the penalty's
def _brute_force(direction, ratio, penalty, beta):
    v = direction.detach().clone().requires_grad_(True)
    w_hat = v / v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
    magnitude = w_hat.abs().flatten()
    count = round(ratio * magnitude.numel())
    below = torch.zeros_like(magnitude, dtype=torch.bool)
    below[torch.argsort(magnitude)[:count]] = True  # |w_hat| < t, t the ratio-quantile
    value = penalty * (magnitude[below].sum() - beta * magnitude[~below].sum())
    value.backward()
    return value.detach(), v.grad


@pytest.mark.parametrize("ratio,penalty,beta", [(0.5, 1e-2, 0.2), (0.3, 0.7, 1.0), (0.8, 2.0, 0.0)])
def test_penalty_gradient_equals_autograd_of_the_formula(ratio, penalty, beta):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 6), nn.Linear(6, 2)).double()
    assert make_hyperspherical(model) == ["0", "2"]
    previous = {}
    for name, module in hyperspherical_layers(model).items():
        original = module.parametrizations.weight.original
        original.grad = torch.randn_like(original)  # a loss gradient already there
        previous[name] = original.grad.clone()
    stats = add_polarization_grad(model, ratio, penalty, beta)
    total = 0.0
    for name, module in hyperspherical_layers(model).items():
        original = module.parametrizations.weight.original
        value, grad = _brute_force(original, ratio, penalty, beta)
        total += float(value)
        torch.testing.assert_close(original.grad - previous[name], grad, rtol=1e-9, atol=1e-12)
    assert math.isclose(float(stats.value), total, rel_tol=1e-6)
    # radii and the output layer get nothing
    assert all(onthefly.hypersphere_of(m).radius.grad is None for m in hyperspherical_layers(model).values())
    assert model[3].weight.grad is None


# ------------------------------------------------------------------ 5: the loss Lightning sees is the model's
class _Recording(ImageClassifier):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.computed = []

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.computed.append(loss.detach().clone())
        return loss


class _Backward(L.Callback):
    def __init__(self):
        self.losses = []

    def on_before_backward(self, trainer, pl_module, loss):
        self.losses.append(loss.detach().clone())


def test_the_loss_lightning_logs_and_backpropagates_is_unchanged(tmp_path):
    runs = {}
    for with_callback in (True, False):
        L.seed_everything(0, verbose=False)
        torch.manual_seed(0)
        model, backward = _Recording(width=8), _Backward()
        logger = CSVLogger(str(tmp_path), name=f"cb{with_callback}")
        callbacks = [backward] + ([OnTheFlyPruning(penalty=1.0, verbose=False)] if with_callback else [])
        _fit(tmp_path, callbacks, 1, model=model, logger=logger)
        logged = [float(r["train_loss"]) for r in read_metrics(logger.log_dir) if r.get("train_loss")]
        runs[with_callback] = (model.computed, backward.losses, logged)
    computed, backpropagated, logged = runs[True]
    assert len(computed) == len(backpropagated) == len(logged) == 18
    for a, b, c in zip(computed, backpropagated, logged):
        assert float(a) == float(b) and math.isclose(float(a), c, rel_tol=1e-6)  # the cross-entropy, no penalty
    # registering changes nothing in the function: the first loss equals the plain model's
    assert math.isclose(float(computed[0]), float(runs[False][0][0]), rel_tol=1e-5)
    # the penalty did act (through the gradients): the runs part after the first step
    assert abs(float(computed[-1]) - float(runs[False][0][-1])) > 1e-4


# ------------------------------------------------------------------ prune at an epoch, keep training, resume
def test_prune_at_an_epoch_keeps_pruned_entries_tied_and_resumes(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_top_k=-1, every_n_epochs=1)
    callback = OnTheFlyPruning(ratio=0.6, recovery="channel", prune_at=0, verbose=False)
    fit, model = _fit(tmp_path, [callback, checkpoint], 2, enable_checkpointing=True)
    assert [e["epoch"] for e in callback.events] == [0]
    _assert_tied(model, callback.masks)  # after a further epoch of training
    optimizer = fit.optimizers[0]
    params = {id(p) for p in model.parameters()}
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == params
    assert all(id(p) in params for p in optimizer.state)
    # the checkpoint of epoch 0 was written after pruning: plain keys, masks in the callback state
    path = str(tmp_path / "ckpt" / "epoch=0-step=18.ckpt")
    state = torch.load(path, weights_only=True)
    assert "net.features.0.0.weight" in state["state_dict"]
    resumed_callback = OnTheFlyPruning(ratio=0.6, recovery="channel", prune_at=0, verbose=False)
    resumed = classifier(seed=3)
    _fit(tmp_path, [resumed_callback], 2, model=resumed, ckpt_path=path)
    assert not any(parametrize.is_parametrized(m) for m in resumed.modules())
    assert set(resumed_callback.masks) == set(LAYERS)
    _assert_tied(resumed, resumed_callback.masks)


def test_zeroing_keeps_zeros_through_further_training(tmp_path):
    callback = OnTheFlyPruning(ratio=0.5, recovery=None, prune_at=0, verbose=False)
    _, model = _fit(tmp_path, [callback], 2)
    _assert_tied(model, callback.masks, recovery=None)
    assert callback.last_report.zero_fraction >= 0.5


# ------------------------------------------------------------------ atomic
def test_failed_pruning_leaves_model_and_optimizer_as_they_were(monkeypatch):
    torch.manual_seed(0)
    model = zoo.mlp(in_features=64, hidden=(16, 8))
    make_hyperspherical(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = digits_tensors(0)
    F.cross_entropy(model(x[:64]), y[:64]).backward()
    optimizer.step()
    params = dict(model.named_parameters())
    values = {n: p.detach().clone() for n, p in params.items()}
    groups = [list(g["params"]) for g in optimizer.param_groups]
    state = {id(p): {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}

    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("injected")

    monkeypatch.setattr(onthefly, "drop_from_optimizer", failing)
    with pytest.raises(RuntimeError, match="injected"):
        prune_on_the_fly(model, 0.5, optimizers=[optimizer])
    assert calls
    assert set(hyperspherical_layers(model)) == {"features.1", "features.3"}
    assert dict(model.named_parameters()).keys() == params.keys()
    for name, param in model.named_parameters():
        assert param is params[name] and torch.equal(param, values[name]), name
    assert [list(g["params"]) for g in optimizer.param_groups] == groups
    assert {id(p) for p in optimizer.state} == set(state)
    monkeypatch.undo()
    prune_on_the_fly(model, 0.5, optimizers=[optimizer])  # and then it works
    assert not hyperspherical_layers(model)


def test_failure_inside_the_trainer_raises_pruning_error(tmp_path, monkeypatch):
    def failing(*args, **kwargs):
        raise RuntimeError("injected")

    monkeypatch.setattr(onthefly, "drop_from_optimizer", failing)
    callback = OnTheFlyPruning(ratio=0.5, verbose=False)
    model = classifier()
    with pytest.raises(PruningError, match="injected"):
        _fit(tmp_path, [callback], 1, model=model)
    assert set(hyperspherical_layers(model)) == set(LAYERS) and not callback.pruned


def test_pruning_a_copy_leaves_the_original_hyperspherical():
    model = zoo.mlp(in_features=64, hidden=(16,))
    make_hyperspherical(model)
    copy_ = copy.deepcopy(model)
    prune_on_the_fly(copy_, 0.5)
    assert set(hyperspherical_layers(model)) == {"features.1"}
    assert model.features[1].weight.shape == (16, 64)  # torch would otherwise delete it from the shared class


def test_a_plain_state_dict_loads_into_hyperspherical_layers_with_the_same_function():
    torch.manual_seed(0)
    plain = zoo.mlp(in_features=64, hidden=(16,))
    other = zoo.mlp(in_features=64, hidden=(16,))
    make_hyperspherical(other)
    other.load_state_dict(plain.state_dict())
    x = torch.randn(4, 64)
    torch.testing.assert_close(other(x), plain(x))
    assert torch.equal(plain_state_dict(other.state_dict())["features.1.weight"], plain.features[1].weight)


# ------------------------------------------------------------------ 6: bad options
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(ratio=0), "ratio"),
        (dict(ratio=1.0), "ratio"),
        (dict(ratio=True), "ratio"),
        (dict(ratio="0.5"), "ratio"),
        (dict(penalty=-1.0), "penalty"),
        (dict(penalty=float("nan")), "penalty"),
        (dict(beta=-0.5), "beta"),
        (dict(recovery="mean"), "recovery"),
        (dict(start_epoch=-1), "start_epoch"),
        (dict(start_epoch=1.5), "start_epoch"),
        (dict(prune_at="end"), "prune_at"),
        (dict(prune_at=-1), "prune_at"),
        (dict(prune_at=True), "prune_at"),
        (dict(prune_at=1, start_epoch=2), "before start_epoch"),
        (dict(layers="net.head.0"), "layers"),
        (dict(layers=["net.head.0"], ignored_layers=["net.classifier"]), "not both"),
    ],
)
def test_bad_options_are_refused_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OnTheFlyPruning(**kwargs)


def test_bad_layers_and_calls_are_refused():
    model = zoo.mlp(in_features=64, hidden=(16,))
    with pytest.raises(ValueError, match="layers names 'features.0'"):
        make_hyperspherical(model, layers=["features.0"])  # a Flatten
    with pytest.raises(ValueError, match="no hyperspherical layer"):
        prune_on_the_fly(model, 0.5)
    with pytest.raises(ValueError, match="recovery"):
        prune_on_the_fly(model, 0.5, recovery="mean", layers=["features.1"])
    with pytest.raises(ValueError, match="ratio"):
        prune_on_the_fly(model, 1.5, layers=["features.1"])
    with pytest.raises(ValueError, match="not a Conv1d/2d/3d or Linear"):
        OnTheFlyPruning(layers=["net.nothing"]).setup(None, classifier(), "fit")


# ------------------------------------------------------------------ glue details
class _NoRadius(ImageClassifier):
    def configure_optimizers(self):
        return torch.optim.SGD([p for n, p in self.named_parameters() if not n.endswith("radius")], lr=0.05)


def test_a_radius_outside_the_optimizer_is_reported_and_stays_fixed(tmp_path):
    torch.manual_seed(0)
    model, probe = _NoRadius(width=8), Probe()
    with pytest.warns(UserWarning, match="radius of 4 layer"):
        _fit(tmp_path, [OnTheFlyPruning(verbose=False), probe], 1, model=model)
    assert all(torch.equal(probe.radii_after[n], probe.radii[n]) for n in LAYERS)
    assert all(not torch.equal(probe.originals[n].detach(), probe.values[n]) for n in LAYERS)


def test_import_lightning_fair_does_not_import_lightning():
    import subprocess
    import sys

    code = (
        "import sys, lightning_fair, lightning_fair.methods.onthefly; print('lightning.pytorch' in sys.modules); "
        "lightning_fair.OnTheFlyPruning; print('lightning.pytorch' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.stdout.split() == ["False", "True"], run.stderr
