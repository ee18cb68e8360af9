"""Pruned models at rest: Lightning checkpoints (FairPruningMixin) and save_pruned / load_pruned."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_fair import load_pruned, prune, save_pruned, zoo
from lightning_fair.checkpoint import CHECKPOINT_KEY, pruning_state, replay_pruning
from lightning_fair.demo import ImageClassifier

import helpers
from lightning_helpers import FAST, FairPruneCallback, assert_same_state, classifier, datamodule, shapes, trainer

PRUNE_FAST = {k: v for k, v in FAST.items() if k in ("samples_per_class", "num_projections")}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    yield
    torch.set_num_threads(threads)


def outputs(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


# ------------------------------------------------------------------ Lightning checkpoints
@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory):
    """fit 2 epochs, pruning at the end of epoch 1; ModelCheckpoint(save_last=True) writes afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        L.seed_everything(0, verbose=False)
        tmp_path = tmp_path_factory.mktemp("pruned_run")
        model, dm = classifier(), datamodule()
        callback = FairPruneCallback(prune_at=1, tolerance=0.1, **FAST)
        checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=-1)
        fit = trainer(tmp_path, [callback, checkpoint], max_epochs=2, enable_checkpointing=True)
        fit.fit(model, datamodule=dm)
        assert [e["epoch"] for e in callback.events] == [1]
        return {"model": model, "dm": dm, "callback": callback, "trainer": fit, "dir": tmp_path / "ckpt",
                "tmp": tmp_path}
    finally:
        torch.set_num_threads(threads)


def test_checkpoint_after_pruning_restores_the_pruned_model(pruned_run):
    model, directory = pruned_run["model"], pruned_run["dir"]
    last = directory / "last.ckpt"
    assert last.exists()
    data = torch.load(last, weights_only=True)  # plain data only
    assert data["epoch"] == 1
    assert data[CHECKPOINT_KEY]["history"] == pruning_state(model)["history"]
    assert data["state_dict"]["net.features.0.0.weight"].shape == model.net.features[0][0].weight.shape

    restored = ImageClassifier.load_from_checkpoint(last)
    assert shapes(restored) == shapes(model)
    assert_same_state(restored.state_dict(), model.state_dict())
    x = next(iter(pruned_run["dm"].val_dataloader()))[0]
    assert torch.equal(outputs(restored, x), outputs(model, x))
    assert shapes(restored) != shapes(classifier())
    # the restored model carries the history: it can be saved and restored again
    assert pruning_state(restored)["history"] == pruning_state(model)["history"]

    # the epoch-1 checkpoint was written after pruning too (ModelCheckpoint runs after the callback)
    (epoch1,) = directory.glob("epoch=1-*.ckpt")
    assert torch.equal(outputs(ImageClassifier.load_from_checkpoint(epoch1), x), outputs(model, x))
    # the epoch-0 checkpoint holds the full model and no history
    (epoch0,) = directory.glob("epoch=0-*.ckpt")
    assert CHECKPOINT_KEY not in torch.load(epoch0, weights_only=True)
    assert shapes(ImageClassifier.load_from_checkpoint(epoch0)) == shapes(classifier())


def test_fit_resumes_from_a_pruned_checkpoint(pruned_run, tmp_path):
    last = pruned_run["dir"] / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    saved_state = saved["optimizer_states"][0]["state"]
    assert saved_state, "the checkpoint should hold Adam state"
    pruned_shapes = shapes(pruned_run["model"])

    seen = {}

    class Inspect(L.Callback):
        def on_train_start(self, trainer, pl_module):
            optimizer = trainer.optimizers[0]
            params = [p for g in optimizer.param_groups for p in g["params"]]
            seen["shapes"] = shapes(pl_module)
            seen["state"] = {i: {k: v.clone() for k, v in optimizer.state[p].items()}
                             for i, p in enumerate(params) if p in optimizer.state}
            seen["ids"] = {id(p) for p in params} == {id(p) for p in pl_module.parameters()}
            seen["epoch"] = trainer.current_epoch

        def on_train_epoch_end(self, trainer, pl_module):
            seen.setdefault("losses", []).append(float(trainer.callback_metrics["train_loss"]))

    fresh = classifier(seed=1)
    callback = FairPruneCallback(prune_at=1, tolerance=0.1, **FAST)
    fit = trainer(tmp_path, [callback, Inspect()], max_epochs=4)
    fit.fit(fresh, datamodule=pruned_run["dm"], ckpt_path=str(last))

    assert seen["epoch"] == 2
    assert seen["shapes"] == pruned_shapes and shapes(fresh) == pruned_shapes
    assert seen["ids"]
    # optimizer state restored: same entries, same values as in the checkpoint
    assert seen["state"].keys() == saved_state.keys() and seen["state"]
    for index, state in saved_state.items():
        for key, value in state.items():
            assert torch.equal(seen["state"][index][key], value), (index, key)
    # training went on (epochs 2 and 3), with finite loss, and nothing was pruned again
    assert len(seen["losses"]) == 2 and all(math.isfinite(v) for v in seen["losses"])
    assert callback.events == pruned_run["callback"].events
    assert fit.lr_scheduler_configs[0].scheduler.last_epoch == 4
    assert all(fresh.get_parameter(n).shape == torch.Size(s) for n, s in pruned_shapes.items()
               if n in dict(fresh.named_parameters()))


def test_residual_network_checkpoint_round_trip(tmp_path):
    """Coupled channels (residual adds, shortcut convs) through the Lightning save/load path."""
    model, dm = classifier(arch="resnet"), datamodule()
    callback = FairPruneCallback(prune_at=0, tolerance=0.3, **FAST)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, [callback, checkpoint], max_epochs=1, limit_train_batches=3, limit_val_batches=2,
            enable_checkpointing=True).fit(model, datamodule=dm)
    assert callback.events and shapes(model) != shapes(classifier(arch="resnet"))
    restored = ImageClassifier.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    x = next(iter(dm.val_dataloader()))[0]
    assert torch.equal(outputs(restored, x), outputs(model, x))


# ------------------------------------------------------------------ plain nn.Module
def resnet(seed: int = 0):
    torch.manual_seed(seed)
    return zoo.resnet(width=8).eval()


@pytest.fixture(scope="module")
def twice_pruned(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = resnet()
        loader = helpers.calibration_loader(num=200, batch_size=100)
        first = prune(model, loader, tolerance=0.3, **PRUNE_FAST)
        rows_first = len(pruning_state(model)["history"])
        second = prune(model, loader, tolerance=0.3, **PRUNE_FAST)
        path = tmp_path_factory.mktemp("plain") / "pruned.pt"
        save_pruned(model, path)
        return {"model": model, "first": first, "second": second, "rows_first": rows_first, "path": path}
    finally:
        torch.set_num_threads(threads)


def test_two_rounds_save_and_load_into_a_fresh_model(twice_pruned):
    model, path = twice_pruned["model"], twice_pruned["path"]
    assert twice_pruned["first"].report.macs_after < twice_pruned["first"].report.macs_before
    assert twice_pruned["second"].report.macs_after < twice_pruned["second"].report.macs_before
    history = pruning_state(model)["history"]
    assert len(history) > twice_pruned["rows_first"] > 0  # the second round appended its rows

    data = torch.load(path, weights_only=True)
    assert data[CHECKPOINT_KEY]["history"] == history

    fresh = resnet(seed=1)
    assert load_pruned(fresh, path) is fresh
    assert shapes(fresh) == shapes(model)
    assert_same_state(fresh.state_dict(), model.state_dict())
    x = helpers.example_inputs(8)
    assert torch.equal(outputs(fresh, x), outputs(model, x))
    # replaying the same state again is a no-op (rows already applied are skipped)
    replay_pruning(fresh, data[CHECKPOINT_KEY])
    assert shapes(fresh) == shapes(model)


def _rewritten(path, tmp_path, edit):
    data = torch.load(path, weights_only=True)
    edit(data[CHECKPOINT_KEY]["history"])
    out = tmp_path / "edited.pt"
    torch.save(data, out)
    return out


def _unknown_layer(history):
    history[0][0] = "net.no_such_layer"


def _out_of_range(history):
    history[-1][2] = [999]  # earlier rows apply fine; the last does not fit


def _too_many(history):
    history[-1][2] = list(range(64))  # more channels than the layer has


def _last_row_lost(history):
    del history[-1]  # the history fits the model, the saved weights do not


@pytest.mark.parametrize("edit, replay_fails", [
    (_unknown_layer, True), (_out_of_range, True), (_too_many, True), (_last_row_lost, False),
], ids=["unknown_layer", "index_out_of_range", "too_many_indices", "weights_do_not_fit"])
def test_a_history_that_does_not_fit_leaves_the_model_alone(twice_pruned, tmp_path, edit, replay_fails):
    path = _rewritten(twice_pruned["path"], tmp_path, edit)
    loaders = [lambda m: load_pruned(m, path)]
    if replay_fails:
        loaders.append(lambda m: replay_pruning(m, torch.load(path, weights_only=True)[CHECKPOINT_KEY]))
    for load in loaders:
        fresh = resnet(seed=2)
        before_state, before_shapes = {k: v.clone() for k, v in fresh.state_dict().items()}, shapes(fresh)
        before_params = dict(fresh.named_parameters())
        before_training = {n: m.training for n, m in fresh.named_modules()}
        fresh.layer_frozen = None  # an attribute that must survive
        with pytest.raises(ValueError):
            load(fresh)
        assert shapes(fresh) == before_shapes
        assert_same_state(fresh.state_dict(), before_state)
        assert all(fresh.get_parameter(n) is p for n, p in before_params.items())
        assert {n: m.training for n, m in fresh.named_modules()} == before_training
        assert all(p.requires_grad for p in fresh.parameters())
        assert pruning_state(fresh) is None
        assert outputs(fresh, helpers.example_inputs(2)).shape == (2, 10)


def test_a_file_that_is_not_a_pruning_state_is_refused(tmp_path):
    path = tmp_path / "bad.pt"
    torch.save({CHECKPOINT_KEY: {"format": "something else", "history": []}, "state_dict": {}}, path)
    with pytest.raises(ValueError, match="format"):
        load_pruned(resnet(), path)


def test_save_pruned_refuses_an_unpruned_model(tmp_path):
    with pytest.raises(ValueError, match="pruning history"):
        save_pruned(resnet(), tmp_path / "unpruned.pt")
    assert not (tmp_path / "unpruned.pt").exists()
