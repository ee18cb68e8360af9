"""A model with a ``torch.compile``d inner module is pruned as its uncompiled self (issue 13 item 6):
plain layer names, hooks run eagerly (no recompilation per hook), the compiled wrapper kept."""

import helpers
import lightning_helpers as lh
import torch
from torch import nn

from lightning_fair import FairPruneCallback, load_pruned, prune, save_pruned
from lightning_fair.demos import zoo


class Wrapper(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.compile(zoo.small_cnn(width=8), backend="eager")

    def forward(self, x):
        return self.net(x)


def graphs() -> int:
    from torch._dynamo.utils import counters

    return sum(counters["stats"].values())


def test_prune_sees_the_uncompiled_module_and_keeps_the_wrapper(tmp_path):
    torch._dynamo.reset()
    model = Wrapper()
    before = graphs()
    result = prune(model, helpers.calibration_loader(num=200), target_macs=0.6, **helpers.FAST)
    assert graphs() == before  # nothing ran through dynamo while scoring, removing, re-estimating
    assert [row.name for row in result.report.layers] == [
        "net.features.0.0",
        "net.features.1.0",
        "net.features.3.0",
        "net.head.0",
    ]
    assert type(model.net).__name__ == "OptimizedModule" and result.report.macs_ratio <= 0.6
    x = helpers.example_inputs(4)
    expected = model.net._orig_mod(x)
    assert torch.allclose(model(x), expected, atol=1e-6)  # the wrapper runs the pruned module
    save_pruned(model, tmp_path / "pruned.pt")
    restored = load_pruned(Wrapper(), tmp_path / "pruned.pt")
    assert torch.allclose(restored(x), expected, atol=1e-6)


def test_callback_prunes_a_module_with_a_compiled_inner_net(tmp_path):
    torch._dynamo.reset()
    module = lh.classifier()
    module.net = torch.compile(module.net, backend="eager")
    callback = FairPruneCallback(prune_at="validate", target_macs=0.6, **lh.FAST)
    lh.trainer(tmp_path, [callback]).validate(module, datamodule=lh.datamodule())
    names = [row.name for row in callback.last_result.report.layers]
    assert names and not any("_orig_mod" in name for name in names)
    assert type(module.net).__name__ == "OptimizedModule" and callback.last_result.report.macs_ratio <= 0.6
