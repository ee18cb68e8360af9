"""Bad input gets a clear error that names the problem and the fix, before anything changes.

One test per case of issue 6; each checks the message and that the model is exactly as before
(same parameter objects, bitwise state, train/eval flags).
"""

from __future__ import annotations

import warnings

import helpers
import pytest
import torch
from helpers import FAST
from torch import nn

from lightning_fair import compute_scores, prune
from lightning_fair.demos import zoo


def fingerprint(model: nn.Module):
    return (
        {n: p for n, p in model.named_parameters()},
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        {n: m.training for n, m in model.named_modules()},
    )


def assert_untouched(model: nn.Module, before) -> None:
    params, state, flags = before
    assert all(p is params[n] for n, p in model.named_parameters())
    now = model.state_dict()
    assert now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)
    assert {n: m.training for n, m in model.named_modules()} == flags


@pytest.fixture
def model():
    net = helpers.trained_small_cnn()
    net.train()  # a model in train mode: flags must come back too
    return net


def data(n=200):
    return helpers.calibration_loader(n, 100)


def test_batches_without_labels(model):
    before = fingerprint(model)
    x = data()[0][0]
    with pytest.raises(TypeError, match="unpack="):
        prune(model, [x, x], tolerance=0.1, **FAST)
    with pytest.raises(TypeError, match="unpack="):
        prune(model, [{"pixels": x}], tolerance=0.1, **FAST)
    assert_untouched(model, before)


def test_labels_of_unknown_structure(model):
    before = fingerprint(model)
    x, y = data()[0]
    with pytest.raises(ValueError, match="one class index per sample"):
        prune(model, [(x, torch.nn.functional.one_hot(y, 10).float())], tolerance=0.1, **FAST)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        prune(model, [(x, y), (x, y + 10)], tolerance=0.1, **FAST)
    assert_untouched(model, before)


def test_only_one_class(model):
    before = fingerprint(model)
    x, y = data()[0]
    with pytest.raises(ValueError, match="at least two"):
        prune(model, [(x, torch.full_like(y, 3))], tolerance=0.1, **FAST)
    assert_untouched(model, before)


def test_classes_with_far_fewer_samples_than_asked_warn_and_go_on(model):
    x, y = data(300)[0]
    with pytest.warns(UserWarning, match="fewer than 4 calibration samples, a quarter of samples_per_class=16"):
        scores = compute_scores(model, [(x[:25], y[:25])], **FAST)
    assert max(scores.class_counts) < 16 and all(torch.isfinite(u).all() for u in scores.utilization.values())


def test_classes_a_little_short_of_samples_per_class_go_on_quietly(model):
    x, y = data(300)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        scores = compute_scores(model, [(x[:120], y[:120])], **FAST)  # ~12 of 16 per class
    assert min(scores.class_counts) < 16


@pytest.mark.parametrize("where", ["input", "activation", "gradient", "loss"])
def test_nan_or_inf_is_refused(model, where):
    before = fingerprint(model)
    x, y = data()[0]
    loss_fn = None
    handle = None
    if where == "input":
        x = x.clone()
        x[3, 0, 2, 2] = float("nan")
    elif where == "activation":
        handle = model.features[1][0].register_forward_hook(lambda m, a, out: out * float("inf"))
    elif where == "gradient":

        class InfGrad(torch.autograd.Function):
            @staticmethod
            def forward(ctx, t):
                return t.clone()

            @staticmethod
            def backward(ctx, g):
                return g * float("inf")

        handle = model.features[3][0].register_forward_hook(lambda m, a, out: InfGrad.apply(out))
    else:
        loss_fn = lambda logits, target: nn.functional.cross_entropy(logits, target) / 0.0  # noqa: E731
    try:
        with pytest.raises(FloatingPointError, match="not finite|calibration loss is"):
            prune(model, [(x, y)], tolerance=0.1, loss_fn=loss_fn, **FAST)
    finally:
        if handle is not None:
            handle.remove()
    assert_untouched(model, before)


def test_no_prunable_layer_or_all_ignored(model):
    before = fingerprint(model)
    with pytest.raises(ValueError, match="no prunable layer besides its output layer"):
        prune(model, data(), tolerance=0.1, ignored_layers=["features", "head"], **FAST)
    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(ValueError, match="no prunable layer"):
        prune(plain, data(), tolerance=0.1, **FAST)
    with pytest.raises(ValueError, match="no Conv or Linear layer ran"):
        prune(nn.Sequential(nn.Flatten(), nn.Identity()), data(), tolerance=0.1, **FAST)
    assert_untouched(model, before)


@pytest.mark.parametrize("tolerance", [-0.01, 1.5, float("nan")])
def test_tolerance_outside_0_1(model, tolerance):
    before = fingerprint(model)

    def never():
        raise AssertionError("the data was read")
        yield

    with pytest.raises(ValueError, match=r"tolerance must lie in \[0, 1\]"):
        prune(model, never(), tolerance=tolerance)
    assert_untouched(model, before)


def test_unreachable_target_says_what_is_reachable(model):
    before = fingerprint(model)
    scores = helpers.trained_small_cnn_scores()
    with pytest.raises(ValueError, match=r"cannot be reached.*ask for target_macs>=0\.\d+") as error:
        prune(
            model,
            scores=scores,
            example_inputs=helpers.example_inputs(),
            target_macs=0.001,
            allocation="tod",
            recalibrate=False,
            refit=False,
        )
    assert "target_macs=0.001" in str(error.value)
    with pytest.raises(ValueError, match=r"target_macs is the fraction to keep, in \(0, 1\]"):
        prune(model, scores=scores, example_inputs=helpers.example_inputs(), target_macs=1.5, refit=False)
    assert_untouched(model, before)


@pytest.mark.parametrize("shape", [(1, 3, 8, 8), (1, 2, 8, 8), (1, 64)])
def test_example_input_of_the_wrong_shape(model, shape):
    before = fingerprint(model)
    with pytest.raises(ValueError, match=r"example_inputs \(.*\) do not run through the model.*x\[:1\]"):
        prune(
            model,
            scores=helpers.trained_small_cnn_scores(),
            example_inputs=torch.randn(*shape),
            tolerance=0.1,
            refit=False,
        )
    assert_untouched(model, before)


def test_empty_dataloader(model):
    before = fingerprint(model)
    with pytest.raises(ValueError, match="yielded no batches; pass a non-empty dataloader"):
        prune(model, [], tolerance=0.1, **FAST)
    with pytest.raises(ValueError, match="yielded no batches"):
        compute_scores(
            model, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(0, 1, 8, 8))), **FAST
        )
    assert_untouched(model, before)


class Embedder(nn.Module):
    """Outputs a feature map, not logits."""

    def __init__(self):
        super().__init__()
        self.net = zoo.small_cnn(width=4).features

    def forward(self, x):
        return self.net(x)


class DictOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = zoo.small_cnn(width=4)

    def forward(self, x):
        return {"scores": self.net(x)}  # (a "logits" entry is picked by itself, as Hugging Face outputs)


@pytest.mark.parametrize("build", [Embedder, DictOutput])
def test_model_output_not_class_logits(build):
    torch.manual_seed(0)
    net = build()
    before = fingerprint(net)
    with pytest.raises(ValueError, match=r"class logits of shape \[batch, num_classes\].*logits="):
        prune(net, data(), tolerance=0.1, **FAST)
    assert_untouched(net, before)


def test_a_single_output_is_not_classification():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 1))
    before = fingerprint(net)
    x, _ = data()[0]
    with pytest.raises(ValueError, match="classification logits"):
        compute_scores(net, [(x, torch.zeros(len(x), dtype=torch.long))], loss_fn=lambda o, t: o.mean(), **FAST)
    assert_untouched(net, before)


def test_bad_options_name_the_argument(model):
    before = fingerprint(model)
    for kwargs, match in [
        (dict(samples_per_class=0), "samples_per_class must be a positive integer"),
        (dict(num_projections=2.5), "num_projections must be a positive integer"),
        (dict(observe="logits"), "observe must be one of"),
        (dict(ranking="l3"), "ranking must be one of"),
        (dict(group_policy="max"), "group_policy must be one of"),
        (dict(target_macs=0.5, target_params=0.5), "not both"),
        (dict(memory_budget="lots"), "memory_budget"),
        (dict(ignored_layers=["features.9"]), "not a submodule"),
    ]:
        with pytest.raises(ValueError, match=match):
            prune(model, data(), **kwargs)
    assert_untouched(model, before)
