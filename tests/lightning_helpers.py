"""Shared pieces for the Lightning tests (test_callback.py, test_checkpoint.py).

Real data (sklearn digits through ``lightning_fair.demos.digits.DigitsDataModule``), a tiny
``ImageClassifier`` (width 8), CPU only, quiet Trainers.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Callable, Dict, List, Optional

import lightning as L
import torch
from helpers import single_thread
from torch import nn

from lightning_fair.demos.digits import DigitsDataModule, ImageClassifier
from lightning_fair.lightning.callback import FairPruneCallback

#: calibration settings that keep the statistics pass fast
FAST = dict(samples_per_class=8, num_projections=16, progress=False, verbose=False)

#: the channel-bearing layers of ``ImageClassifier(arch="small_cnn")``
CONVS = ("net.features.0.0", "net.features.1.0", "net.features.3.0")


def datamodule(**kwargs) -> DigitsDataModule:
    return DigitsDataModule(**{"batch_size": 64, **kwargs})


def classifier(seed: int = 0, **kwargs) -> ImageClassifier:
    torch.manual_seed(seed)
    return ImageClassifier(**{"width": 8, **kwargs})


def trainer(tmp_path, callbacks=(), max_epochs: int = 2, logger=False, **kwargs) -> L.Trainer:
    options = dict(
        max_epochs=max_epochs,
        callbacks=list(callbacks),
        logger=logger,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    options.update(kwargs)
    return L.Trainer(**options)


def seeded_fit(
    tmp_path,
    callbacks=(),
    model: Callable[[], L.LightningModule] = classifier,
    seed: Optional[int] = 0,
    ckpt_path=None,
    **trainer_options,
):
    """The tests' standard run, on one thread (restored after): ``L.seed_everything(seed)`` (skipped
    when ``seed`` is None), then ``model()`` and ``datamodule()``, then :func:`trainer` with
    ``callbacks`` and ``trainer_options`` fits the model. Returns ``(trainer, model, datamodule)``.
    """
    with single_thread():
        if seed is not None:
            L.seed_everything(seed, verbose=False)
        module, dm = model(), datamodule()
        run = trainer(tmp_path, callbacks, **trainer_options)
        run.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return run, module, dm


def shapes(model: nn.Module) -> Dict[str, tuple]:
    """name -> shape of every parameter and buffer."""
    return {name: tuple(t.shape) for name, t in list(model.named_parameters()) + list(model.named_buffers())}


def state_copy(model: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].shape == b[key].shape, key
        assert torch.equal(a[key], b[key]), key


def optimizer_copy(optimizer: torch.optim.Optimizer):
    """Everything about an optimizer that pruning may touch, by identity and by value."""
    return {
        "groups": [list(g["params"]) for g in optimizer.param_groups],
        "hyper": [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups],
        "state_objects": {id(p): s for p, s in optimizer.state.items()},
        "state": {
            id(p): {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in s.items()}
            for p, s in optimizer.state.items()
        },
    }


def assert_same_optimizer(optimizer: torch.optim.Optimizer, before) -> None:
    groups = [list(g["params"]) for g in optimizer.param_groups]
    assert len(groups) == len(before["groups"])
    for now, then in zip(groups, before["groups"]):
        assert [id(p) for p in now] == [id(p) for p in then]
    assert [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups] == before["hyper"]
    assert {id(p) for p in optimizer.state} == set(before["state"])
    for param, state in optimizer.state.items():
        assert state is before["state_objects"][id(param)]
        old = before["state"][id(param)]
        assert state.keys() == old.keys()
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, old[key]), key
            else:
                assert value == old[key], key


def assert_optimizer_matches_model(optimizer, model) -> None:
    """The optimizer holds exactly the model's current trainable parameters (none lost, none stale)."""
    model_params = {id(p) for p in model.parameters()}
    in_optimizer = [p for g in optimizer.param_groups for p in g["params"]]
    assert all(id(p) in model_params for p in in_optimizer), "the optimizer holds a parameter the model lost"
    listed = {id(p) for p in in_optimizer}
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in listed]
    assert not missing, f"parameters not optimized: {missing}"
    assert all(id(p) in model_params for p in optimizer.state), "optimizer state keyed by a stale parameter"


def read_metrics(log_dir) -> List[dict]:
    with open(Path(log_dir) / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def finite(value) -> bool:
    return value not in (None, "") and math.isfinite(float(value))


__all__ = [
    "CONVS",
    "FAST",
    "FairPruneCallback",
    "assert_optimizer_matches_model",
    "assert_same_optimizer",
    "assert_same_state",
    "classifier",
    "datamodule",
    "finite",
    "optimizer_copy",
    "read_metrics",
    "seeded_fit",
    "shapes",
    "state_copy",
    "trainer",
]


def trainer_args(root, epochs=1):
    """``--trainer.*`` flags of a quiet, seeded CLI run writing under ``root`` (the CLI tests)."""
    return [
        f"--trainer.max_epochs={epochs}",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={root}",
        "--seed_everything=0",
    ]


def cli_callback(tmp_path, *flags: str) -> FairPruneCallback:
    """The FairPruneCallback that ``FairCLI`` (not run) builds for the digits demo with ``flags``
    (``--prune.*``) after ``--prune.target_macs=0.6``; a bad flag is the parser's SystemExit."""
    from lightning_fair.lightning.cli import FairCLI

    args = [
        "--model=lightning_fair.demos.digits.ImageClassifier",
        "--model.width=8",
        "--data=lightning_fair.demos.digits.DigitsDataModule",
        "--trainer.logger=false",
        f"--trainer.default_root_dir={tmp_path}",
        "--prune.target_macs=0.6",
    ]
    cli = FairCLI(args=[*args, *flags], run=False)
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, FairPruneCallback)]
    return callback
