"""Pruned models at rest: Lightning checkpoints (FairPruningMixin) and save_pruned / load_pruned."""

from __future__ import annotations

import copy
import math

import helpers
import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning_helpers import (
    FAST,
    FairPruneCallback,
    assert_same_state,
    classifier,
    datamodule,
    seeded_fit,
    shapes,
    trainer,
)

from lightning_fair import load_pruned, prune, save_pruned
from lightning_fair.demos import zoo
from lightning_fair.demos.digits import ImageClassifier
from lightning_fair.removal.history import (
    CHECKPOINT_KEY,
    pruning_state,
    replay_pruning,
)

PRUNE_FAST = {k: v for k, v in FAST.items() if k in ("samples_per_class", "num_projections")}


pytestmark = pytest.mark.usefixtures("seeded")


def outputs(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


# ------------------------------------------------------------------ Lightning checkpoints
@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory):
    """fit 2 epochs, pruning at the end of epoch 1; ModelCheckpoint(save_last=True) writes afterwards."""
    tmp_path = tmp_path_factory.mktemp("pruned_run")
    callback = FairPruneCallback(prune_at=1, tolerance=0.1, **FAST)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=-1)
    fit, model, dm = seeded_fit(tmp_path, [callback, checkpoint], max_epochs=2, enable_checkpointing=True)
    assert [e["epoch"] for e in callback.events] == [1]
    return {
        "model": model,
        "dm": dm,
        "callback": callback,
        "trainer": fit,
        "dir": tmp_path / "ckpt",
        "tmp": tmp_path,
    }


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
    assert "_lightning_fair_pending_load" not in restored.__dict__  # the undo went with the load

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
            seen["state"] = {
                i: {k: v.clone() for k, v in optimizer.state[p].items()}
                for i, p in enumerate(params)
                if p in optimizer.state
            }
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
    assert "_lightning_fair_pending_load" not in fresh.__dict__
    # optimizer state restored: same entries, same values as in the checkpoint
    assert seen["state"].keys() == saved_state.keys() and seen["state"]
    for index, state in saved_state.items():
        for key, value in state.items():
            assert torch.equal(seen["state"][index][key], value), (index, key)
    # training went on (epochs 2 and 3), with finite loss, and nothing was pruned again
    assert len(seen["losses"]) == 2 and all(math.isfinite(v) for v in seen["losses"])
    assert callback.events == pruned_run["callback"].events
    assert fit.lr_scheduler_configs[0].scheduler.last_epoch == 4
    assert all(
        fresh.get_parameter(n).shape == torch.Size(s)
        for n, s in pruned_shapes.items()
        if n in dict(fresh.named_parameters())
    )


def test_residual_network_checkpoint_round_trip(tmp_path):
    """Coupled channels (residual adds, shortcut convs) through the Lightning save/load path."""
    model, dm = classifier(arch="resnet"), datamodule()
    callback = FairPruneCallback(prune_at=0, tolerance=0.3, **FAST)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(
        tmp_path,
        [callback, checkpoint],
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=2,
        enable_checkpointing=True,
    ).fit(model, datamodule=dm)
    assert callback.events and shapes(model) != shapes(classifier(arch="resnet"))
    restored = ImageClassifier.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    x = next(iter(dm.val_dataloader()))[0]
    assert torch.equal(outputs(restored, x), outputs(model, x))


# ------------------------------------------------------------------ Lightning checkpoints that do not fit
def _widened(data):  # the stem conv saved one channel wider than its history gives
    key = "net.features.0.0.weight"
    data["state_dict"][key] = torch.cat([data["state_dict"][key], data["state_dict"][key][:1]])


def _unknown_layer_ckpt(data):
    data[CHECKPOINT_KEY]["history"][0][0] = "net.no_such_layer"


def _out_of_range_ckpt(data):
    data[CHECKPOINT_KEY]["history"][-1][2] = [999]


def _string_index_ckpt(data):
    data[CHECKPOINT_KEY]["history"][0][2] = ["1"]


def _missing_weight(data):
    del data["state_dict"]["net.head.0.bias"]


def _callback_state_edited(data):
    (key,) = [k for k in data["callbacks"] if k.startswith("FairPruneCallback")]
    data["callbacks"][key]["events"][0]["epoch"] = "one"


CKPT_CASES = {
    "weights_wider_than_history": (
        _widened,
        r"saved weights do not fit .*'net.features.0.0.weight' is \[\d+, 1, 3, 3\] in the checkpoint "
        r"but \[\d+, 1, 3, 3\] in the model",
    ),
    "unknown_layer": (_unknown_layer_ckpt, r"row 0 names the layer 'net.no_such_layer'"),
    "index_out_of_range": (_out_of_range_ckpt, r"row \d+ \('net[\w.]+'\): removes \w+ channel 999 .*out of range"),
    "string_index": (_string_index_ckpt, r"row 0 .*indices must be integers, got '1'"),
    # in a Trainer: a malformed callback state is refused before the module is reshaped too
    "callback_state_edited": (_callback_state_edited, r"events\[0\]\['epoch'\] must be an integer >= 0, got 'one'"),
    # Lightning's own strict-loading error, after the replay: the replay is undone
    "missing_weight": (_missing_weight, r"Missing key\(s\) in state_dict: \"net.head.0.bias\""),
}


def _edited_checkpoint(source, tmp_path, edit):
    data = torch.load(source, weights_only=True)
    edit(data)
    path = tmp_path / "edited.ckpt"
    torch.save(data, path)
    return path


def _module_record(model):
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "shapes": shapes(model),
        "params": dict(model.named_parameters()),
        "buffers": dict(model.named_buffers()),
        "training": {n: m.training for n, m in model.named_modules()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
    }


def assert_module_untouched(model, record):
    assert shapes(model) == record["shapes"]
    assert_same_state(model.state_dict(), record["state"])
    assert all(model.get_parameter(n) is p for n, p in record["params"].items())
    assert dict(model.named_parameters()).keys() == record["params"].keys()
    assert all(model.get_buffer(n) is b for n, b in record["buffers"].items())
    assert {n: m.training for n, m in model.named_modules()} == record["training"]
    assert {n: p.requires_grad for n, p in model.named_parameters()} == record["requires_grad"]
    assert pruning_state(model) is None


@pytest.mark.parametrize("case", ["weights_wider_than_history", "unknown_layer", "index_out_of_range", "string_index"])
def test_load_from_checkpoint_refuses_a_checkpoint_that_does_not_fit(pruned_run, tmp_path, case):
    edit, message = CKPT_CASES[case]
    path = _edited_checkpoint(pruned_run["dir"] / "last.ckpt", tmp_path, edit)
    with pytest.raises(ValueError, match=message):  # not Lightning's size-mismatch RuntimeError
        ImageClassifier.load_from_checkpoint(path)


def test_load_from_checkpoint_strict_false_still_allows_missing_keys(pruned_run, tmp_path):
    path = _edited_checkpoint(pruned_run["dir"] / "last.ckpt", tmp_path, _missing_weight)
    restored = ImageClassifier.load_from_checkpoint(path, strict=False)
    assert shapes(restored) == shapes(pruned_run["model"])
    with pytest.raises(RuntimeError, match="Missing key"):  # strict (the default): Lightning says so
        ImageClassifier.load_from_checkpoint(path)


@pytest.mark.parametrize("case", sorted(CKPT_CASES))
def test_fit_from_a_checkpoint_that_does_not_fit_leaves_the_module_alone(pruned_run, tmp_path, case):
    edit, message = CKPT_CASES[case]
    path = _edited_checkpoint(pruned_run["dir"] / "last.ckpt", tmp_path, edit)
    model = classifier(seed=1)
    model.net.features[0][0].weight.requires_grad_(False)
    record = _module_record(model)
    callback = FairPruneCallback(prune_at=1, tolerance=0.1, **FAST)  # the state_key of the one that saved
    fit = trainer(tmp_path, [callback], max_epochs=3)
    with pytest.raises(RuntimeError if case == "missing_weight" else ValueError, match=message):
        fit.fit(model, datamodule=pruned_run["dm"], ckpt_path=str(path))
    assert_module_untouched(model, record)
    assert callback.events == []
    assert fit.global_step == 0


def test_a_failing_load_state_dict_undoes_the_replay(pruned_run):
    """load_from_checkpoint's order (hook, then load_state_dict) by hand, with a key missing."""
    data = torch.load(pruned_run["dir"] / "last.ckpt", weights_only=True)
    _missing_weight(data)
    model = classifier(seed=1)
    record = _module_record(model)
    model.on_load_checkpoint(data)
    assert shapes(model) == shapes(pruned_run["model"])  # replayed, waiting for the weights
    with pytest.raises(RuntimeError, match="Missing key"):
        model.load_state_dict(data["state_dict"])
    assert_module_untouched(model, record)
    # non-strict: loads, and the pending undo is gone (a later failing load does not roll back)
    model.on_load_checkpoint(data)
    model.load_state_dict(data["state_dict"], strict=False)
    pruned = _module_record(model)
    with pytest.raises(RuntimeError, match="Missing key"):
        model.load_state_dict(data["state_dict"])
    assert shapes(model) == pruned["shapes"]
    assert all(model.get_parameter(n) is p for n, p in pruned["params"].items())


def test_on_load_checkpoint_outside_a_trainer_is_atomic(pruned_run, tmp_path):
    """The hook alone (as lightning-fair prune uses it): replayed, then refused, and undone."""
    data = torch.load(pruned_run["dir"] / "last.ckpt", weights_only=True)
    _widened(data)
    model = classifier(seed=1)
    record = _module_record(model)
    with pytest.raises(ValueError, match="saved weights do not fit"):
        model.on_load_checkpoint(data)
    assert_module_untouched(model, record)


# ------------------------------------------------------------------ plain nn.Module
def resnet(seed: int = 0):
    torch.manual_seed(seed)
    return zoo.resnet(width=8).eval()


@pytest.fixture(scope="module")
def twice_pruned(tmp_path_factory):
    with helpers.single_thread():
        model = resnet()
        loader = helpers.calibration_loader(num=200, batch_size=100)
        first = prune(model, loader, tolerance=0.3, **PRUNE_FAST)
        rows_first = len(pruning_state(model)["history"])
        second = prune(model, loader, tolerance=0.3, **PRUNE_FAST)
        path = tmp_path_factory.mktemp("plain") / "pruned.pt"
        save_pruned(model, path)
    return {"model": model, "first": first, "second": second, "rows_first": rows_first, "path": path}


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


def _fresh_with_record(seed: int = 2):
    """A fresh resnet and a record of everything about it, by identity and by value."""
    fresh = resnet(seed=seed)
    fresh.layer_frozen = None  # an attribute that must survive
    fresh.features[0][0].weight.requires_grad_(False)  # a frozen parameter stays frozen
    record = {
        "state": {k: v.clone() for k, v in fresh.state_dict().items()},
        "shapes": shapes(fresh),
        "params": dict(fresh.named_parameters()),
        "buffers": dict(fresh.named_buffers()),
        "training": {n: m.training for n, m in fresh.named_modules()},
        "requires_grad": {n: p.requires_grad for n, p in fresh.named_parameters()},
        "pruning": pruning_state(fresh),
    }
    return fresh, record


def assert_untouched(model, record):
    assert shapes(model) == record["shapes"]
    assert_same_state(model.state_dict(), record["state"])
    assert dict(model.named_parameters()).keys() == record["params"].keys()
    assert all(model.get_parameter(n) is p for n, p in record["params"].items())
    assert all(model.get_buffer(n) is b for n, b in record["buffers"].items())
    assert {n: m.training for n, m in model.named_modules()} == record["training"]
    assert {n: p.requires_grad for n, p in model.named_parameters()} == record["requires_grad"]
    assert pruning_state(model) == record["pruning"]
    assert "layer_frozen" in model.__dict__
    assert outputs(model, helpers.example_inputs(2)).shape == (2, 10)


@pytest.mark.parametrize(
    "edit, replay_fails, message",
    [
        (_unknown_layer, True, r"row 0 names the layer 'net.no_such_layer', which this model does not have"),
        (_out_of_range, True, r"row \d+ \('[\w.]+'\): removes \w+ channel 999 .*out of range"),
        (_too_many, True, r"row \d+ \('[\w.]+'\): removes \w+ channel 63 .*out of range"),
        (_last_row_lost, False, r"weights do not fit .* is \[\d+(, \d+)*\] in the checkpoint but"),
    ],
    ids=["unknown_layer", "index_out_of_range", "too_many_indices", "weights_do_not_fit"],
)
def test_a_history_that_does_not_fit_leaves_the_model_alone(twice_pruned, tmp_path, edit, replay_fails, message):
    path = _rewritten(twice_pruned["path"], tmp_path, edit)
    loaders = [lambda m: load_pruned(m, path)]
    if replay_fails:
        loaders.append(lambda m: replay_pruning(m, torch.load(path, weights_only=True)[CHECKPOINT_KEY]))
    for load in loaders:
        fresh, record = _fresh_with_record()
        with pytest.raises(ValueError, match=message):
            load(fresh)
        assert_untouched(fresh, record)


# hand-edited or damaged pruning states: refused before the model is touched, naming what is wrong
def _set_row(index, value):
    def edit(state):
        state["history"][index] = value

    return edit


def _set_indices(value):
    def edit(state):
        state["history"][-1][2] = value

    return edit


def _set(path, value):
    def edit(state):
        target = state
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edit


def _delete(key):
    def edit(state):
        del state[key]

    return edit


MALFORMED = {
    "negative_index": (_set_indices([3, -1]), r"row \d+ .*indices must be >= 0, got -1"),
    "duplicate_indices": (_set_indices([2, 5, 2]), r"row \d+ .*indices repeat: \[2\]"),
    "string_index": (_set_indices(["1"]), r"row \d+ .*indices must be integers, got '1' \(str\)"),
    "float_index": (_set_indices([1.0]), r"row \d+ .*indices must be integers, got 1.0 \(float\)"),
    "bool_index": (_set_indices([True]), r"row \d+ .*indices must be integers, got True \(bool\)"),
    "nested_junk": (_set_indices([[1, 2], {"a": 1}]), r"row \d+ .*indices must be integers, got \[1, 2\] \(list\)"),
    "empty_indices": (_set_indices([]), r"row \d+ .*non-empty list"),
    "indices_not_a_list": (_set_indices(3), r"row \d+ .*non-empty list"),
    "row_not_a_list": (_set_row(0, "features.0.0"), r"row 0 'features.0.0': a row must be \[layer name, is_out"),
    "row_too_short": (_set_row(1, ["features.0.0", True]), r"row 1 .*a row must be \[layer name"),
    "row_too_long": (_set_row(1, ["features.0.0", True, [0], 1]), r"row 1 .*a row must be \[layer name"),
    "name_not_a_string": (_set_row(0, [7, True, [0]]), r"row 0 .*layer name must be a string, got int"),
    "is_out_not_a_bool": (_set_row(0, ["features.0.0", "yes", [0]]), r"row 0 .*is_out must be True or False"),
    "is_out_an_int": (_set_row(0, ["features.0.0", 1, [0]]), r"row 0 .*is_out must be True or False, got 1"),
    "wrong_format": (_set(["format"], "lightning_fair.pruning/2"), r"expected format 'lightning_fair.pruning/1'"),
    "no_format": (_delete("format"), r"format"),
    "no_history": (_delete("history"), r"lacks the key\(s\) \['history'\]"),
    "no_example_input": (_delete("example_input"), r"lacks the key\(s\) \['example_input'\]"),
    "history_not_a_list": (_set(["history"], "rows"), r"history must be a list of \[layer, is_out, indices\] rows"),
    "shape_entry_a_string": (_set(["example_input", "shape"], [1, "8", 8]), r"example_input shape must be a list"),
    "shape_entry_a_float": (_set(["example_input", "shape"], [1, 8.0, 8]), r"example_input shape must be a list"),
    "shape_not_a_list": (_set(["example_input", "shape"], "1x8x8"), r"example_input shape must be a list"),
    "shape_huge": (_set(["example_input", "shape"], [3, 100000, 100000]), r"implausibly large"),
    "example_input_not_a_dict": (_set(["example_input"], [1, 8, 8]), r"example_input shape"),
    "dtype_not_a_dtype": (_set(["example_input", "dtype"], "load"), r"dtype must name a torch dtype.*'load'"),
    "no_dtype": (_set(["example_input", "dtype"], None), r"dtype must name a torch dtype"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_pruning_state_is_refused_before_anything_changes(twice_pruned, tmp_path, case):
    edit, message = MALFORMED[case]
    data = torch.load(twice_pruned["path"], weights_only=True)
    edit(data[CHECKPOINT_KEY])
    path = tmp_path / "edited.pt"
    torch.save(data, path)
    for load in (
        lambda m: load_pruned(m, path),
        lambda m: replay_pruning(m, torch.load(path, weights_only=True)[CHECKPOINT_KEY]),
    ):
        fresh, record = _fresh_with_record()
        with pytest.raises(ValueError, match=message) as error:
            load(fresh)
        assert "edited by hand" in str(error.value)  # and what to do about it
        assert_untouched(fresh, record)


@pytest.mark.parametrize("state", [None, [], "lightning_fair.pruning/1", {"history": []}])
def test_something_that_is_not_a_state_is_refused(state):
    fresh, record = _fresh_with_record()
    with pytest.raises(ValueError, match="not a lightning_fair pruning state"):
        replay_pruning(fresh, state)
    assert_untouched(fresh, record)


def test_removing_every_channel_of_a_layer_is_refused(twice_pruned):
    state = torch.load(twice_pruned["path"], weights_only=True)[CHECKPOINT_KEY]
    fresh, record = _fresh_with_record()
    width = fresh.features[0][0].out_channels
    state["history"] = [["features.0.0", True, list(range(width))]]
    with pytest.raises(
        ValueError, match=f"row 0 \\('features.0.0'\\): removes {width} output channels but the layer has only {width}"
    ):
        replay_pruning(fresh, state)
    assert_untouched(fresh, record)


def test_a_model_pruned_differently_is_refused(twice_pruned):
    state = torch.load(twice_pruned["path"], weights_only=True)[CHECKPOINT_KEY]
    first = {**state, "history": state["history"][:1]}
    fresh = resnet(seed=2)
    replay_pruning(fresh, first)
    assert pruning_state(fresh)["history"] == state["history"][:1]
    record = {
        "state": {k: v.clone() for k, v in fresh.state_dict().items()},
        "shapes": shapes(fresh),
        "params": dict(fresh.named_parameters()),
    }
    other = copy.deepcopy(state)
    other["history"][0][2] = [i for i in range(8) if i not in state["history"][0][2]][:1]
    for bad in (other, {**state, "history": []}):  # different first row; shorter than what was applied
        with pytest.raises(ValueError, match="already carries a pruning history"):
            replay_pruning(fresh, bad)
        assert shapes(fresh) == record["shapes"]
        assert_same_state(fresh.state_dict(), record["state"])
        assert all(fresh.get_parameter(n) is p for n, p in record["params"].items())
        assert pruning_state(fresh)["history"] == state["history"][:1]
    replay_pruning(fresh, state)  # the rest of the same history still applies
    assert shapes(fresh) == shapes(twice_pruned["model"])


def test_a_file_that_is_not_from_save_pruned_is_refused(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(resnet().state_dict(), path)
    fresh, record = _fresh_with_record()
    with pytest.raises(ValueError, match="not a file written by lightning_fair.save_pruned"):
        load_pruned(fresh, path)
    assert_untouched(fresh, record)


def test_a_file_that_is_not_a_pruning_state_is_refused(tmp_path):
    path = tmp_path / "bad.pt"
    torch.save({CHECKPOINT_KEY: {"format": "something else", "history": []}, "state_dict": {}}, path)
    with pytest.raises(ValueError, match="format"):
        load_pruned(resnet(), path)


def test_save_pruned_refuses_an_unpruned_model(tmp_path):
    with pytest.raises(ValueError, match="pruning history"):
        save_pruned(resnet(), tmp_path / "unpruned.pt")
    assert not (tmp_path / "unpruned.pt").exists()
