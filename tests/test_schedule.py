"""Gradual pruning: one ``FairPruneCallback`` with a list of epochs (real Trainer, sklearn digits, CPU)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning_helpers import (
    FAST,
    FairPruneCallback,
    assert_optimizer_matches_model,
    classifier,
    datamodule,
    seeded_fit,
    shapes,
    trainer,
)

import lightning_fair.lightning.callback
from lightning_fair.demos.digits import ImageClassifier
from lightning_fair.removal.history import CHECKPOINT_KEY, pruning_state
from lightning_fair.units.cost import measure

STEPS, TARGET = [0, 1, 2], 0.5
#: the linear schedule in the removed fraction: kept after step i of n = 1 - (1 - target) * i / n
SCHEDULE = [1 - (1 - TARGET) * i / len(STEPS) for i in range(1, len(STEPS) + 1)]


pytestmark = pytest.mark.usefixtures("seeded")


class AfterEpoch(L.Callback):
    """The parameters at the end of every training epoch (after a pruning callback listed before it)."""

    def __init__(self):
        self.values = {}

    def on_train_epoch_end(self, trainer, pl_module):
        self.values[trainer.current_epoch] = {n: p.detach().clone() for n, p in pl_module.named_parameters()}


def outputs(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


def example_input(dm):
    dm.setup("fit")
    return dm.val_set.tensors[0][:1]


def kept_of_original(callback) -> list:
    original = callback.events[0]["report"]["macs_before"]
    return [event["report"]["macs_after"] / original for event in callback.events]


@pytest.fixture(scope="module")
def gradual(tmp_path_factory):
    """fit 4 epochs pruning at the end of epochs 0, 1 and 2 to 50% of the MACs; a checkpoint at the end."""
    tmp_path = tmp_path_factory.mktemp("gradual")
    callback, recorder = FairPruneCallback(prune_at=STEPS, target_macs=TARGET, **FAST), AfterEpoch()
    fit, model, dm = seeded_fit(
        tmp_path,
        [callback, recorder],
        model=lambda: classifier(width=32),  # width 32: one channel is a small share of the MACs
        max_epochs=4,
        limit_train_batches=4,
    )
    path = tmp_path / "end.ckpt"
    fit.save_checkpoint(path)
    return {
        "model": model,
        "dm": dm,
        "callback": callback,
        "recorder": recorder,
        "trainer": fit,
        "path": path,
        "tmp": tmp_path,
    }


def test_three_steps_follow_the_linear_schedule(gradual):
    model, callback, dm = gradual["model"], gradual["callback"], gradual["dm"]
    assert [(e["stage"], e["epoch"]) for e in callback.events] == [("fit", 0), ("fit", 1), ("fit", 2)]
    events = callback.events
    for before, after in zip(events, events[1:]):  # each step starts from the model the previous one left
        assert after["report"]["macs_before"] == before["report"]["macs_after"]
    kept = kept_of_original(callback)
    # the search keeps at most the step's target, short of it by about one unit's MACs
    for value, scheduled in zip(kept, SCHEDULE):
        assert scheduled - 0.03 <= value <= scheduled + 1e-9, (kept, SCHEDULE)
    assert TARGET - 0.02 <= kept[-1] <= TARGET + 1e-9, kept
    # the model itself, measured now, is at that fraction of the original
    macs, _ = measure(model, example_input(dm))
    assert macs == events[-1]["report"]["macs_after"]
    # the events say it too
    assert [e["macs_of_original"] for e in events] == pytest.approx(kept)
    assert [e["step"] for e in events] == [1, 2, 3]
    assert [e["scheduled"] for e in events] == pytest.approx(SCHEDULE)


def test_optimizer_follows_and_training_goes_on_after_the_last_step(gradual):
    model, fit, recorder = gradual["model"], gradual["trainer"], gradual["recorder"]
    assert_optimizer_matches_model(fit.optimizers[0], model)
    after_last_step, final = recorder.values[2], recorder.values[3]
    assert {n: v.shape for n, v in after_last_step.items()} == {n: v.shape for n, v in final.items()}
    changed = [n for n in final if not torch.equal(final[n], after_last_step[n])]
    assert changed, "the pruned model was not trained in the last epoch"


def test_checkpoint_of_three_steps_reloads_and_resumes(gradual):
    model, callback, dm, path = gradual["model"], gradual["callback"], gradual["dm"], gradual["path"]
    data = torch.load(path, weights_only=True)
    assert data[CHECKPOINT_KEY]["history"] == pruning_state(model)["history"]
    (key,) = [k for k in data["callbacks"] if k.startswith("FairPruneCallback")]
    assert key == callback.state_key and data["callbacks"][key]["events"] == callback.events

    restored = ImageClassifier.load_from_checkpoint(path)
    assert shapes(restored) == shapes(model)
    x = torch.rand(16, 1, 8, 8)
    assert torch.equal(outputs(restored, x), outputs(model, x))

    # resume: the events come back, no step runs again, the pruned model trains one more epoch
    fresh = classifier(width=32)
    resumed = FairPruneCallback(prune_at=tuple(STEPS), target_macs=TARGET, **FAST)  # a tuple: the same state_key
    assert resumed.state_key == callback.state_key
    fit = trainer(gradual["tmp"], [resumed], max_epochs=5, limit_train_batches=4)
    fit.fit(fresh, datamodule=dm, ckpt_path=path)
    assert resumed.events == callback.events and resumed.last_result is None
    assert shapes(fresh) == shapes(model) and fit.current_epoch == 5
    assert not torch.equal(outputs(fresh, x), outputs(model, x))  # trained on
    assert_optimizer_matches_model(fit.optimizers[0], fresh)


@pytest.mark.parametrize("prune_at", [[2, 1], [1, 1], [-1, 2], [], [1, 1.5], [0, True], ["1", 2], [[1]], (3, 0)])
def test_bad_lists_raise_at_construction(prune_at):
    with pytest.raises(ValueError, match=r"prune_at.*strictly increasing"):
        FairPruneCallback(prune_at=prune_at)


def test_lists_and_tuples_construct_with_one_state_key():
    a, b = FairPruneCallback(prune_at=[1, 3]), FairPruneCallback(prune_at=(1, 3))
    assert a.prune_at == b.prune_at == (1, 3) and a.state_key == b.state_key
    assert a.state_key != FairPruneCallback(prune_at=[1, 4]).state_key != FairPruneCallback(prune_at=1).state_key
    hash(a.state_key)


def test_tolerance_with_a_list_compounds(tmp_path):
    model, dm = classifier(), datamodule()
    callback = FairPruneCallback(prune_at=[0, 1], tolerance=0.1, **FAST)
    trainer(tmp_path, [callback], max_epochs=2, limit_train_batches=2).fit(model, datamodule=dm)
    first, second = callback.events
    assert first["tolerance"] == second["tolerance"] == 0.1  # the same tolerance, on the current model
    assert second["report"]["macs_before"] == first["report"]["macs_after"]
    assert second["report"]["macs_after"] < first["report"]["macs_after"]
    assert second["macs_of_original"] == pytest.approx(first["macs_ratio"] * second["macs_ratio"])
    assert "scheduled" not in second


def test_a_step_already_reached_is_skipped(tmp_path, monkeypatch, recwarn):
    """Another callback pruned past step 2's target in between: step 2 is skipped with a note."""
    notes = []  # recorded at the source: other tests may stop Lightning's logger from propagating to caplog
    monkeypatch.setattr(lightning_fair.lightning.callback, "rank_zero_info", notes.append)
    model, dm = classifier(), datamodule()
    gradual = FairPruneCallback(prune_at=[0, 1], target_macs=0.5, **FAST)  # steps: 75%, then 50% of the original
    deeper = FairPruneCallback(prune_at=0, target_macs=0.4, **FAST)  # 40% of what it sees (75%): 30%
    trainer(tmp_path, [gradual, deeper], max_epochs=2, limit_train_batches=2).fit(model, datamodule=dm)
    assert [e["epoch"] for e in gradual.events] == [0] and [e["epoch"] for e in deeper.events] == [0]
    assert any("step 2 of 2 (epoch 1) skipped" in note for note in notes), notes
    assert not [w for w in recwarn if "did not prune" in str(w.message)]  # reached, not missed


def test_steps_never_reached_warn(tmp_path):
    callback = FairPruneCallback(prune_at=[0, 3, 5], target_macs=0.5, **FAST)
    with pytest.warns(UserWarning, match=r"cannot prune at epoch\(s\) \[3, 5\].*stops short of its target"):
        trainer(tmp_path, [callback], max_epochs=1, limit_train_batches=2).fit(classifier(), datamodule=datamodule())
    assert [e["epoch"] for e in callback.events] == [0]
    assert callback.events[0]["scheduled"] == pytest.approx(1 - 0.5 / 3)
