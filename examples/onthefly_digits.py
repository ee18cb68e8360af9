"""On-the-fly pruning on real digits: the table in docs/method.md ("On-the-fly pruning").

Trains ``ImageClassifier(width=8)`` (small CNN with BatchNorm) with Lightning, plainly and with
``OnTheFlyPruning`` at several penalty strengths, then prunes ``--ratio`` of each layer's
weights (all Conv/Linear but the classifier) with no fine-tuning: zeroed, tied to one mean per
layer, tied to one mean per output channel. Prints held-out test accuracy (mean, min-max over
seeds).

    python examples/onthefly_digits.py                # 20 epochs, 3 seeds: about 2 minutes on 1 CPU core
    python examples/onthefly_digits.py --epochs 3 --seeds 1
"""

import argparse
import copy
import statistics

import lightning as L
import torch

from lightning_fair import OnTheFlyPruning
from lightning_fair.demos.digits import DigitsDataModule, ImageClassifier
from lightning_fair.methods.onthefly import prune_on_the_fly
from lightning_fair.pipeline.evaluation import evaluate

LAYERS = ["net.features.0.0", "net.features.1.0", "net.features.3.0", "net.head.0"]


class Measure(L.Callback):
    """Before OnTheFlyPruning prunes (on_fit_end), test every recovery on copies of the trained model."""

    def __init__(self, datamodule, ratio):
        self.datamodule, self.ratio, self.accuracy = datamodule, ratio, {}

    def on_train_end(self, trainer, pl_module):
        pl_module.eval()
        loader = self.datamodule.test_dataloader()
        self.accuracy["trained"] = evaluate(pl_module, loader)["accuracy"]
        for recovery in (None, "layer", "channel"):
            pruned = copy.deepcopy(pl_module)
            prune_on_the_fly(pruned, self.ratio, recovery, layers=LAYERS)
            self.accuracy[str(recovery)] = evaluate(pruned, loader)["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--ratio", type=float, default=0.5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    datamodule = DigitsDataModule(batch_size=64)
    datamodule.setup("fit")
    configs = [
        ("plain (no penalty, not hyperspherical)", None),
        ("hyperspherical, penalty 0", 0.0),
        ("penalty 1e-3", 1e-3),
        ("penalty 1e-2 (default)", 1e-2),
    ]
    print("| training | trained | zeroed | layer mean | channel mean |\n|---|---|---|---|---|")
    for label, penalty in configs:
        runs = []
        for seed in range(args.seeds):
            L.seed_everything(seed, verbose=False)
            measure = Measure(datamodule, args.ratio)
            callbacks = (
                [measure]
                if penalty is None
                else [OnTheFlyPruning(ratio=args.ratio, penalty=penalty, verbose=False), measure]
            )
            trainer = L.Trainer(
                max_epochs=args.epochs,
                callbacks=callbacks,
                logger=False,
                accelerator="cpu",
                devices=1,
                enable_progress_bar=False,
                enable_model_summary=False,
                enable_checkpointing=False,
                num_sanity_val_steps=0,
            )
            trainer.fit(ImageClassifier(width=8), datamodule=datamodule)
            runs.append(measure.accuracy)
        cells = []
        for key in ("trained", "None", "layer", "channel"):
            values = [100 * run[key] for run in runs]
            cells.append(f"{statistics.mean(values):.1f} ({min(values):.1f}-{max(values):.1f})")
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
