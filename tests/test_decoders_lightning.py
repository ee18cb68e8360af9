"""A LightningModule around a Hugging Face causal language model, pruned by ``FairPruneCallback``
(issue 22): at ``trainer.validate`` and at the end of an epoch mid-fit, with dict batches
(``input_ids`` and ``labels``) as a Hugging Face collator gives them. Training continues on the
pruned model, the optimizer follows it, and the checkpoint restores the pruned shapes."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from decoder_helpers import decoder, lm_loss, token_batches
from lightning_helpers import FAST, assert_optimizer_matches_model, trainer
from torch.utils.data import DataLoader

from lightning_fair.lightning.callback import FairPruneCallback
from lightning_fair.lightning.mixin import FairPruningMixin

pytest.importorskip("transformers")


class CausalLM(FairPruningMixin, L.LightningModule):
    """What users write around ``AutoModelForCausalLM``: forward gives logits, the step uses the
    model's own loss on ``labels``."""

    def __init__(self, family: str = "llama", lr: float = 3e-3):
        super().__init__()
        self.save_hyperparameters()
        self.lm = decoder(family).train()

    def forward(self, input_ids):
        return self.lm(input_ids=input_ids).logits

    def training_step(self, batch, batch_idx):
        loss = self.lm(**batch).loss
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.lm(**batch).loss)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.9)}


def loader(n: int = 8, seed: int = 0) -> DataLoader:
    """Dict batches with ``labels`` equal to ``input_ids`` (the causal-LM collator's output)."""
    rows = [{"input_ids": ids, "labels": ids.clone()} for ids in torch.cat(token_batches(n, seed=seed))]
    return DataLoader(rows, batch_size=4)


def widths(model: CausalLM) -> list:
    return [(layer.self_attn.q_proj.out_features, layer.mlp.gate_proj.out_features) for layer in model.lm.model.layers]


def test_callback_prunes_a_causal_lm_mid_fit_and_the_checkpoint_reloads(tmp_path):
    L.seed_everything(0, verbose=False)
    model = CausalLM()
    before = widths(model)
    callback = FairPruneCallback(prune_at=1, tolerance=0.3, **FAST)
    fit = trainer(tmp_path, [callback], max_epochs=3, enable_checkpointing=True)
    fit.fit(model, train_dataloaders=loader(), val_dataloaders=loader(4, seed=1))
    after = widths(model)
    assert all(q <= bq and g <= bg for (q, g), (bq, bg) in zip(after, before)), after
    # measured: query heads 8 + 4 of 8 + 8, neurons 30 + 27 of 48 + 48
    assert sum(q for q, _ in after) < sum(q for q, _ in before) and sum(g for _, g in after) < 96, after
    assert all(q % model.lm.config.head_dim == 0 for q, _ in after)  # whole heads
    assert [e["epoch"] for e in callback.events] == [1]
    assert math.isfinite(float(fit.callback_metrics["train_loss"]))
    assert_optimizer_matches_model(fit.optimizers[0], model)
    assert all(p in fit.optimizers[0].state for p in model.parameters())  # stepped since pruning

    path = fit.checkpoint_callback.best_model_path or fit.checkpoint_callback.last_model_path
    restored = CausalLM.load_from_checkpoint(path).eval()
    assert widths(restored) == after
    ids = token_batches(1, seed=3)[0]
    assert torch.allclose(restored(ids), model.eval()(ids), atol=1e-4)


def test_callback_prunes_a_causal_lm_at_validate(tmp_path):
    L.seed_everything(0, verbose=False)
    model = CausalLM()
    data = loader()
    fit = trainer(tmp_path, max_epochs=1)
    fit.fit(model, train_dataloaders=data)
    model.eval()
    unpruned = lm_loss(model.lm, token_batches(4, seed=2))
    callback = FairPruneCallback(prune_at="validate", target_params=0.8, **FAST)
    check = trainer(tmp_path, [callback])
    check.validate(model, dataloaders=loader(4, seed=1))
    total = sum(p.numel() for p in model.parameters())
    assert callback.events and callback.events[-1]["params_ratio"] <= 0.8 + 1e-3
    assert total < sum(p.numel() for p in CausalLM().parameters())
    assert math.isfinite(lm_loss(model.lm, token_batches(4, seed=2))) and math.isfinite(unpruned)
