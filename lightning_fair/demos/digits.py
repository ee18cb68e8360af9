"""A ready LightningModule and DataModule on real data, for the demo, the CLI and tests.

``DigitsDataModule`` serves scikit-learn's handwritten digits (1797 real 8x8 images, 10
classes, bundled with scikit-learn, offline) split into train / validation (used for
calibration) / test. ``ImageClassifier`` wraps any :mod:`lightning_fair.demos.zoo` model and can
restore pruned checkpoints (it uses :class:`lightning_fair.FairPruningMixin`).

Example::

    import lightning as L
    from lightning_fair import FairPruneCallback
    from lightning_fair.demos.digits import DigitsDataModule, ImageClassifier

    trainer = L.Trainer(max_epochs=8, callbacks=[FairPruneCallback(tolerance=0.05, prune_at=5)])
    trainer.fit(ImageClassifier(), datamodule=DigitsDataModule())
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from ..lightning import FairPruningMixin
from . import zoo

__all__ = ["DigitsDataModule", "ImageClassifier", "digits_tensors"]


def digits_tensors(seed: int = 0):
    """sklearn digits as ``(x [N,1,8,8] in [0,1], y [N])``, shuffled with ``seed``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("the digits demo needs scikit-learn: pip install 'lightning-fair[dev]'") from error
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    return x[order], y[order]


class DigitsDataModule(L.LightningDataModule):
    """Digits split into train / val (calibration) / test.

    Args:
        batch_size: batch size of every loader.
        val_size: images for validation (and pruning calibration).
        test_size: held-out images, never used for scoring.
        seed: the shuffle before splitting.
    """

    def __init__(self, batch_size: int = 64, val_size: int = 300, test_size: int = 397, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str = None) -> None:
        x, y = digits_tensors(self.hparams.seed)
        n_test, n_val = self.hparams.test_size, self.hparams.val_size
        n_train = len(y) - n_test - n_val
        if n_train < 1:
            raise ValueError(f"val_size + test_size must leave training images (got {n_val} + {n_test} of {len(y)})")
        self.train_set = TensorDataset(x[:n_train], y[:n_train])
        self.val_set = TensorDataset(x[n_train : n_train + n_val], y[n_train : n_train + n_val])
        self.test_set = TensorDataset(x[n_train + n_val :], y[n_train + n_val :])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.hparams.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(self.hparams.seed),
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=self.hparams.batch_size)


class ImageClassifier(FairPruningMixin, L.LightningModule):
    """A :mod:`lightning_fair.demos.zoo` network trained with cross-entropy and Adam.

    Args:
        arch: a name from ``lightning_fair.demos.zoo.MODELS`` (``small_cnn``, ``vgg_bn``, ``resnet``...).
        width: the model's width (for architectures that take one).
        num_classes: output classes.
        lr: Adam learning rate.
    """

    def __init__(self, arch: str = "small_cnn", width: int = 16, num_classes: int = 10, lr: float = 3e-3):
        super().__init__()
        self.save_hyperparameters()
        if arch not in zoo.MODELS:
            raise ValueError(f"arch must be one of {sorted(zoo.MODELS)}, got {arch!r}")
        kwargs = {"num_classes": num_classes}
        if arch in ("small_cnn", "resnet", "grouped_cnn"):
            kwargs["width"] = width
        self.net = zoo.MODELS[arch](**kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch, name: str):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.log(f"{name}_loss", loss, prog_bar=name != "train")
        self.log(f"{name}_acc", (logits.argmax(1) == y).float().mean(), prog_bar=name != "train")
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, self.trainer.max_epochs or 10))
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
