"""On a CUDA device: the same scores and the same pruned channels as on the CPU, no host round trip per
batch while collecting statistics, and the Lightning callback pruning mid-fit on a GPU.

Skipped without CUDA (CI is CPU only); ``examples/benchmarks/cuda_check.sh`` runs them on a GPU machine.
Only torch, lightning, torch-pruning and pytest are needed (generated data: no sklearn, no download).

Why the choices can be compared exactly: the models run in float64 and TF32 is switched off, so
activations, gradients and R agree with the CPU's to ~1e-12; U is computed from float32 projections
on both devices with the same seeded directions (drawn on the CPU), so it agrees to ~1e-6 relative.
Units whose scores are that close are ties that either device may order either way: the tests
compare the removed channels exactly and, if they differ, show that every difference is such a tie.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from lightning_fair import PruneConfig, compute_scores, prune
from lightning_fair.collect.collector import StatisticsCollector
from lightning_fair.demos import zoo

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")
FAST = dict(samples_per_class=8, num_projections=16)
MODELS = {
    "small_cnn": lambda: zoo.small_cnn(width=8),
    "resnet": lambda: zoo.resnet(width=8, layers=(1, 1, 1)),
}


@pytest.fixture(autouse=True)
def _exact_cuda_math():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def batches(device, n: int = 240, batch: int = 40, classes: int = 10, dtype=torch.float64, seed: int = 1):
    """Generated 16x16 images with a class-dependent mean, labels cycling through the classes."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(n, 1, 16, 16, generator=g) + 0.3 * y.view(-1, 1, 1, 1).float() / classes
    return [(x[i : i + batch].to(device=device, dtype=dtype), y[i : i + batch].to(device)) for i in range(0, n, batch)]


def model_on(name: str, device, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return MODELS[name]().to(device=device, dtype=dtype).eval()


def assert_close_scores(cpu, gpu, rtol=1e-4):
    assert cpu.layers == gpu.layers
    for name in cpu.layers:
        u_cpu, u_gpu = cpu.utilization[name], gpu.utilization[name].cpu()
        r_cpu, r_gpu = cpu.reconstruction[name], gpu.reconstruction[name].cpu()
        assert torch.allclose(u_cpu, u_gpu, rtol=rtol, atol=1e-6 * float(u_cpu.abs().max())), name
        assert torch.allclose(r_cpu, r_gpu, rtol=rtol, atol=1e-6 * float(r_cpu.abs().max())), name
    for name in cpu.input_utilization:
        assert torch.allclose(
            cpu.input_utilization[name],
            gpu.input_utilization[name].cpu(),
            rtol=rtol,
            atol=1e-6 * float(cpu.input_utilization[name].abs().max()),
        ), name


@pytest.mark.parametrize("name", sorted(MODELS))
def test_scores_on_cuda_match_the_cpu(name):
    cpu = compute_scores(model_on(name, "cpu"), batches("cpu"), **FAST)
    gpu = compute_scores(model_on(name, CUDA), batches(CUDA), **FAST)
    assert_close_scores(cpu, gpu)
    assert cpu.class_counts == gpu.class_counts and cpu.config["passes"] == gpu.config["passes"]


def test_many_classes_capped_on_cuda_match_the_cpu():
    """100 classes, U on a seeded subset of 20: the same classes and scores on both devices."""
    options = dict(FAST, max_classes=20)
    data = {d: batches(d, n=400, batch=100, classes=100) for d in ("cpu", CUDA)}
    torch.manual_seed(0)
    cpu = compute_scores(zoo.small_cnn(num_classes=100, width=8).double(), data["cpu"], **options)
    torch.manual_seed(0)
    gpu = compute_scores(zoo.small_cnn(num_classes=100, width=8).double().to(CUDA), data[CUDA], **options)
    assert gpu.config["classes_compared"] == 20
    assert_close_scores(cpu, gpu)


CASES = {
    "default/macs0.5": PruneConfig(target_macs=0.5),
    "paper/tol0.1": PruneConfig.paper(tolerance=0.1),
    "tod/tol0.2": PruneConfig(tolerance=0.2, allocation="tod"),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_pruning_on_cuda_removes_the_same_channels_as_on_the_cpu(name, case):
    results = {}
    for device in ("cpu", CUDA):
        model = model_on(name, device)
        results[device] = prune(model, batches(device), CASES[case], **FAST)
        assert next(results[device].model.parameters()).device.type == torch.device(device).type
    cpu, gpu = results["cpu"], results[CUDA]
    assert_close_scores(cpu.scores, gpu.scores)
    assert gpu.counts == cpu.counts
    if gpu.removed != cpu.removed:  # allowed only where the two devices' scores tie
        for root in set(cpu.removed) | set(gpu.removed):
            differ = set(cpu.removed.get(root, [])) ^ set(gpu.removed.get(root, []))
            u = cpu.scores.utilization.get(root)
            assert u is not None, (root, differ)
            values = u[sorted(differ)]
            assert float(values.max() - values.min()) <= 1e-4 * float(u.abs().max()), (root, differ)
    # the pruned models compute the same function
    x = batches("cpu")[0][0]
    out_cpu = cpu.model(x)
    out_gpu = gpu.model(x.to(CUDA)).cpu()
    if gpu.removed == cpu.removed:
        assert torch.allclose(out_cpu, out_gpu, rtol=1e-6, atol=1e-8)


def test_statistics_pass_has_no_host_round_trip_per_batch():
    """After the first batch (which sets up the buffers), a batch of a CPU data loader costs no
    synchronisation with the device: torch's sync debug mode reports every one."""
    model = model_on("resnet", CUDA, torch.float32)
    data = batches("cpu", n=400, dtype=torch.float32)
    collector = StatisticsCollector(model, **FAST)
    with torch.inference_mode(False), torch.enable_grad():
        model.eval()
        collector.update(data[0])
        torch.cuda.synchronize()
        previous = torch.cuda.get_sync_debug_mode()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for batch in data[1:]:
                    collector.update(batch)
            finally:
                torch.cuda.set_sync_debug_mode(previous)
    # torch's own notice that the debug mode is a prototype is not a synchronisation
    syncs = [
        f"{w.filename}:{w.lineno}: {w.message}"
        for w in caught
        if "synchroniz" in str(w.message).lower() and "debug mode is a prototype" not in str(w.message)
    ]
    assert not syncs, "\n".join(syncs)
    collector.settle()
    assert collector.num_batches == len(data) and collector.tallies.correct <= collector.tallies.seen == 400


def test_nan_on_cuda_is_reported_at_the_end_of_the_pass():
    model = model_on("small_cnn", CUDA)
    data = batches(CUDA)
    data[2] = (data[2][0].clone().fill_(float("nan")), data[2][1])
    with pytest.raises(FloatingPointError, match="batch 2"):
        compute_scores(model, data, **FAST)


def test_lightning_callback_prunes_mid_fit_on_a_gpu(tmp_path):
    L = pytest.importorskip("lightning")
    from lightning_fair import FairPruneCallback

    class Classifier(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = zoo.small_cnn(width=8)

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.cross_entropy(self(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", nn.functional.cross_entropy(self(x), y))

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    def loader():
        data = batches("cpu", n=320, dtype=torch.float32)
        x = torch.cat([b[0] for b in data])
        y = torch.cat([b[1] for b in data])
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=40)

    losses = []

    class Losses(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            device = next(pl_module.parameters()).device.type  # the pruned module trains on the GPU
            losses.append((trainer.current_epoch, float(outputs["loss"]), device))

    model = Classifier()
    widths = [m.out_channels for m in model.net.modules() if isinstance(m, nn.Conv2d)]
    callback = FairPruneCallback(prune_at=0, target_macs=0.6, progress=False, verbose=False, **FAST)
    trainer = L.Trainer(
        accelerator="gpu",
        devices=1,
        max_epochs=2,
        callbacks=[callback, Losses()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(model, loader(), loader())
    assert [e["epoch"] for e in callback.events] == [0]
    assert callback.events[0]["macs_ratio"] < 1.0
    pruned = [m.out_channels for m in model.net.modules() if isinstance(m, nn.Conv2d)]
    assert sum(pruned) < sum(widths)
    # (after fit, Lightning's teardown moves the module back to the CPU)
    after = [(loss, device) for epoch, loss, device in losses if epoch == 1]
    assert after and all(torch.isfinite(torch.tensor([loss for loss, _ in after])))
    assert {device for _, device in after} == {"cuda"}


def test_the_auto_budget_is_half_the_free_device_memory():
    from lightning_fair.collect.memory import resolve_budget

    free, total = torch.cuda.mem_get_info(CUDA)
    budget = resolve_budget("auto", CUDA)
    assert 0.4 * free <= budget <= 0.6 * free and budget < total
    scores = compute_scores(model_on("small_cnn", CUDA), batches(CUDA), **FAST)  # default budget: "auto"
    assert scores.config["passes"] == 1
