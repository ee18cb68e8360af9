"""The restructuring of 0.2 (PruneConfig, prune() as named stages) changed no pruned model.

``tests/data/pinned_pruning.pt`` was written by lightning_fair 0.1 (``prune(model, data, **options)``
before PruneConfig existed) for the cases below; the current pipeline must remove exactly the same
channels at the same level, and leave the same weights, BatchNorm statistics and compensated
biases. Checked bitwise on the machine that wrote the file during the change; asserted here with
exact indices and counts and weights to 1e-6 (another CPU may round float sums differently).
"""

import os

import pytest
import torch

from lightning_fair import PruneConfig, prune
from lightning_fair.demos import zoo

PINNED = os.path.join(os.path.dirname(__file__), "data", "pinned_pruning.pt")

MODELS = {"small_cnn": lambda: zoo.small_cnn(width=16), "resnet": lambda: zoo.resnet(width=8), "vgg_bn": zoo.vgg_bn}
# ranking="utilization", refit=False, massive=0: 0.1's default ranking and repair (the default preset ranks
# by U x consumers, refits the consumers and puts units with massive activations last since)
OLD = dict(ranking="utilization", refit=False, massive=0)
CASES = {
    "small_cnn/default/macs0.5": PruneConfig(target_macs=0.5, **OLD),
    "small_cnn/paper/tol0.1": PruneConfig.paper(tolerance=0.1),
    "resnet/default/macs0.5": PruneConfig.default(target_macs=0.5, **OLD),
    "resnet/paper/tol0.1": PruneConfig.paper(tolerance=0.1),
    "resnet/default/tol0.2": PruneConfig(tolerance=0.2, **OLD),
    "resnet/uniform/ratio0.3": PruneConfig(ratio=0.3, **OLD),
    "vgg_bn/screening/params0.6": PruneConfig(criterion="screening", target_params=0.6, **OLD),
    "small_cnn/joint/l1": PruneConfig(group_policy="joint", ranking="l1", target_macs=0.6, refit=False, massive=0),
}


def data(seed: int = 1, n: int = 200):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 16, 16, generator=g)
    y = torch.arange(n) % 10
    x = x + y.view(-1, 1, 1, 1).float() * 0.1
    return [(x[i : i + 50], y[i : i + 50]) for i in range(0, n, 50)]


@pytest.fixture(scope="module")
def pinned():
    return torch.load(PINNED, weights_only=True)


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_pruned_model_as_before_the_restructuring(case, pinned):
    torch.manual_seed(0)
    model = MODELS[case.split("/")[0]]()
    result = prune(model, data(), CASES[case], samples_per_class=8, num_projections=16)
    expected = pinned[case]
    assert result.removed == expected["removed"]
    assert result.counts == expected["counts"]
    # the level is a threshold on float32 scores: another CPU may round its sums in the 8th digit
    assert result.level == pytest.approx(expected["level"], rel=1e-5, abs=1e-9)
    state = result.model.state_dict()
    assert state.keys() == expected["state"].keys()
    for name, value in expected["state"].items():
        assert state[name].shape == value.shape, name
        assert torch.allclose(state[name], value, rtol=1e-5, atol=1e-6), name


def test_keyword_options_and_config_give_the_same_model():
    torch.manual_seed(0)
    by_config = prune(
        zoo.small_cnn(width=16), data(), PruneConfig.paper(tolerance=0.1, samples_per_class=8, num_projections=16)
    )
    torch.manual_seed(0)
    by_keywords = prune(
        zoo.small_cnn(width=16), data(), preset="paper", tolerance=0.1, samples_per_class=8, num_projections=16
    )
    assert by_config.removed == by_keywords.removed and by_config.config == by_keywords.config
    for (name, a), b in zip(by_config.model.state_dict().items(), by_keywords.model.state_dict().values()):
        assert torch.equal(a, b), name
