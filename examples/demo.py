"""Demo: train on real handwritten digits with Lightning, prune with FairPruneCallback, report.

1. train a small CNN on scikit-learn's digits (real 8x8 images, offline);
2. prune it one-shot with ``FairPruneCallback(prune_at="validate")`` during
   ``trainer.validate`` (statistics from the validation split; the test split is never used
   for scoring) and print the per-layer report;
3. fine-tune the pruned model for a couple of epochs;
and print held-out test accuracy after each step.

Run:  python examples/demo.py [--tolerance 0.05 | --target-macs 0.6] [--epochs 10]
"""

from __future__ import annotations

import argparse
import logging
import warnings

import lightning as L

from lightning_fair import FairPruneCallback
from lightning_fair.demos.digits import DigitsDataModule, ImageClassifier


def trainer(**kwargs) -> L.Trainer:
    return L.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir="lightning_logs/demo",
        **kwargs,
    )


def say(text: str) -> None:
    print(text, flush=True)


def test_accuracy(model: L.LightningModule, data: L.LightningDataModule) -> float:
    return trainer().test(model, datamodule=data, verbose=False)[0]["test_acc"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--target-macs", type=float, default=None, help="fraction of MACs to keep, e.g. 0.6")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--arch", default="small_cnn")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")

    L.seed_everything(args.seed, verbose=False)
    data = DigitsDataModule(seed=args.seed)
    model = ImageClassifier(arch=args.arch, width=args.width)
    say(f"1/3 training {args.arch} (width {args.width}) on scikit-learn digits for {args.epochs} epochs ...")
    trainer(max_epochs=args.epochs).fit(model, datamodule=data)
    trained = test_accuracy(model, data)
    say(f"    held-out test accuracy {trained:.2%}")
    say("2/3 pruning with FairPruneCallback(prune_at='validate'): scoring on the validation split, removing ...")

    callback = FairPruneCallback(
        prune_at="validate",
        tolerance=args.tolerance,
        target_macs=args.target_macs,
        seed=args.seed,
        progress=False,
        verbose=False,
    )
    trainer(callbacks=[callback]).validate(model, datamodule=data, verbose=False)
    result = callback.last_result
    one_shot = test_accuracy(model, data)
    say(
        f"    kept MACs {result.report.macs_ratio:.1%}, held-out test accuracy {one_shot:.2%}; pruned checkpoint "
        f"{callback.events[-1].get('checkpoint')}"
    )
    say(f"3/3 fine-tuning the pruned model for {args.finetune_epochs} epochs ...")
    trainer(max_epochs=args.finetune_epochs).fit(model, datamodule=data)
    finetuned = test_accuracy(model, data)
    say("")

    print(result.report)
    print()
    print(
        f"held-out test accuracy: trained {trained:.2%} | pruned one-shot {one_shot:.2%} | "
        f"after {args.finetune_epochs} fine-tuning epochs {finetuned:.2%}"
    )
    print(
        f"MACs kept {result.report.macs_ratio:.1%}, parameters kept {result.report.params_ratio:.1%}, "
        f"{result.level_name} {result.level:.4g}"
    )


if __name__ == "__main__":
    main()
