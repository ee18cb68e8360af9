"""Prune during training with ``FairPruneCallback`` in a plain Lightning ``Trainer``.

A small CNN is trained on scikit-learn's digits (real 8x8 images, offline). At the end of
epoch ``--prune-at`` (0-based) the callback scores every unit on the validation split,
removes channels (structured: the layers really shrink) and re-points Adam at the new
parameters; the remaining epochs fine-tune the pruned network. Several epochs
(``--prune-at 1 2 3``) prune gradually: with a target, step i of n keeps
``1 - (1 - target) * i / n`` of the original MACs. The held-out test split is never used for
scoring.

Run:  python examples/lightning/fit_with_callback.py [--tolerance 0.05 | --target-macs 0.5]
          [--prune-at 5 | --prune-at 2 4 6] [--baseline]
"""

from __future__ import annotations

import argparse

import lightning as L
import torch

from lightning_fair import FairPruneCallback
from lightning_fair.demos.digits import DigitsDataModule, ImageClassifier


def train(args, callbacks, root: str) -> tuple:
    L.seed_everything(args.seed, verbose=False)
    model = ImageClassifier(arch=args.arch, width=args.width)
    datamodule = DigitsDataModule(seed=args.seed)
    trainer = L.Trainer(
        max_epochs=args.epochs,
        callbacks=callbacks,
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )
    trainer.fit(model, datamodule=datamodule)
    test = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    return model, trainer, test


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tolerance", type=float, default=0.05, help="tolerance of difference (ignored with a target)")
    parser.add_argument("--target-macs", type=float, default=None, help="fraction of MACs to keep, e.g. 0.5")
    parser.add_argument(
        "--prune-at",
        type=int,
        nargs="+",
        default=[5],
        help="prune at the end of this (0-based) epoch; several: one step at the end of each",
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--arch", default="small_cnn")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default="lightning_logs/fit_with_callback", help="checkpoints go to ROOT/checkpoints")
    parser.add_argument("--baseline", action="store_true", help="also train without pruning, for comparison")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(4, torch.get_num_threads()))

    prune_at = args.prune_at[0] if len(args.prune_at) == 1 else args.prune_at
    callback = FairPruneCallback(
        tolerance=args.tolerance, target_macs=args.target_macs, prune_at=prune_at, progress=False, verbose=False
    )
    model, trainer, test = train(args, [callback], args.root)
    result = callback.last_result
    print(result.report)
    event = callback.events[-1]
    epochs = [e["epoch"] for e in callback.events]
    print(
        f"pruned at the end of epoch(s) {epochs}, then fine-tuned {args.epochs - event['epoch'] - 1} epoch(s); "
        f"MACs kept of the original model: {event['macs_of_original']:.1%}"
    )
    print(f"test accuracy (pruned + fine-tuned): {test['test_acc']:.2%}")

    # the checkpoint carries the pruning history: ImageClassifier (FairPruningMixin) restores the shapes
    path = trainer.checkpoint_callback.best_model_path
    restored = ImageClassifier.load_from_checkpoint(path)
    same = all(a.shape == b.shape for a, b in zip(restored.parameters(), model.parameters()))
    print(f"checkpoint {path}: restored with the pruned shapes: {same}")

    if args.baseline:
        _, _, base = train(args, [], args.root + "_baseline")
        print(f"test accuracy (unpruned, same epochs): {base['test_acc']:.2%}")


if __name__ == "__main__":
    main()
