"""FairPruneCallback prunes a small vision transformer LightningModule mid-fit (issue 14, item 5):
heads and MLP neurons go at the end of epoch 1, training continues on the pruned model with the
optimizer following it, and the checkpoint restores the pruned shapes (history replay)."""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F
from lightning_helpers import FAST, assert_optimizer_matches_model, datamodule, trainer
from transformer_helpers import TinyViT

from lightning_fair.lightning.callback import FairPruneCallback
from lightning_fair.lightning.mixin import FairPruningMixin
from lightning_fair.units.attention import head_count


class ViTClassifier(FairPruningMixin, L.LightningModule):
    def __init__(self, lr: float = 3e-3):
        super().__init__()
        self.save_hyperparameters()
        self.net = TinyViT(image=8, patch=2, channels=1, dim=32, depth=2, num_heads=4, num_classes=10)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        loss = F.cross_entropy(self(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class Losses(L.Callback):
    def __init__(self):
        self.losses = {}

    def on_train_epoch_end(self, trainer, pl_module):
        self.losses[trainer.current_epoch] = float(trainer.callback_metrics["train_loss"])


def test_callback_prunes_a_transformer_mid_fit_and_training_continues(tmp_path):
    L.seed_everything(0, verbose=False)
    model = ViTClassifier()
    callback, losses = FairPruneCallback(prune_at=1, tolerance=0.3, **FAST), Losses()
    fit = trainer(
        tmp_path,
        [callback, losses],
        max_epochs=3,
        limit_train_batches=6,
        limit_val_batches=3,
        enable_checkpointing=True,
    )
    fit.fit(model, datamodule=datamodule())
    heads = {f"net.blocks.{i}.attn": head_count(model.net.blocks[i].attn) for i in range(2)}
    hidden = [block.mlp.fc1.out_features for block in model.net.blocks]
    assert sum(heads.values()) < 8 and sum(hidden) < 128, (heads, hidden)  # measured: 3 + 3 heads, 36 + 30
    for block in model.net.blocks:  # attributes and projections agree: the model runs
        attn = block.attn
        assert attn.qkv.out_features == 3 * attn.attn_dim == 3 * attn.num_heads * attn.head_dim
        assert attn.proj.in_features == attn.attn_dim and block.mlp.fc2.in_features == block.mlp.fc1.out_features
    assert set(losses.losses) == {0, 1, 2} and math.isfinite(losses.losses[2])
    assert_optimizer_matches_model(fit.optimizers[0], model)
    assert all(p in fit.optimizers[0].state for p in model.parameters())  # stepped since pruning

    path = fit.checkpoint_callback.best_model_path or fit.checkpoint_callback.last_model_path
    restored = ViTClassifier.load_from_checkpoint(path).eval()
    x = torch.randn(3, 1, 8, 8)
    assert {f"net.blocks.{i}.attn": head_count(restored.net.blocks[i].attn) for i in range(2)} == heads
    assert torch.allclose(restored(x), model.eval()(x), atol=1e-5)
