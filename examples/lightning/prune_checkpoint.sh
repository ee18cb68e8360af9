#!/usr/bin/env bash
# Post-training FAIR pruning of a saved checkpoint with `lightning-fair prune`, then test and fine-tune.
#
#   bash examples/lightning/prune_checkpoint.sh [OUT]        (from the repository root; OUT: lightning_logs/prune_checkpoint)
#
# Needs `pip install -e '.[dev]'` (the `lightning-fair` command and scikit-learn for the digits).
set -euo pipefail
OUT=${1:-lightning_logs/prune_checkpoint}
LF=${LIGHTNING_FAIR:-lightning-fair}
# model and data classes; a checkpoint's own hyperparameters (arch, width, ...) override --model's defaults
COMMON=(--model=lightning_fair.demos.digits.ImageClassifier --data=lightning_fair.demos.digits.DigitsDataModule
        --seed_everything=0 --trainer.enable_progress_bar=false --trainer.enable_model_summary=false)

# 1. train without pruning (a stand-in for any trained checkpoint)
#    (a ModelCheckpoint with save_last: checkpoints/last.ckpt, whatever the data size)
$LF fit "${COMMON[@]}" --model.width=16 --trainer.max_epochs=10 --trainer.logger=false \
    --trainer.default_root_dir="$OUT/train" \
    --trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint --trainer.callbacks.save_last=true
CKPT="$OUT/train/checkpoints/last.ckpt"

# 2. prune it one-shot on the validation split: keep at most half of the MACs
$LF prune "${COMMON[@]}" --ckpt_path="$CKPT" --target_macs=0.5 --output_dir="$OUT/pruned"
#    -> $OUT/pruned/pruned.ckpt, report.txt, report.json (the report is printed too)

# 3. test the pruned model as it is (no fine-tuning); Lightning restores the pruned shapes from the checkpoint
$LF test "${COMMON[@]}" --ckpt_path="$OUT/pruned/pruned.ckpt" --trainer.logger=false \
    --trainer.default_root_dir="$OUT/test_pruned"

# 4. fine-tune it: fit resumes from the pruned checkpoint at epoch 0 with a fresh optimizer
$LF fit "${COMMON[@]}" --ckpt_path="$OUT/pruned/pruned.ckpt" --trainer.max_epochs=3 --trainer.logger=false \
    --trainer.default_root_dir="$OUT/finetune"
TUNED=$(ls -t "$OUT"/finetune/checkpoints/*.ckpt | head -n 1)
$LF test "${COMMON[@]}" --ckpt_path="$TUNED" --trainer.logger=false --trainer.default_root_dir="$OUT/test_finetuned"
