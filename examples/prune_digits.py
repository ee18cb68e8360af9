"""Demo: train a small CNN on real handwritten digits, prune it one-shot with FAIR, report.

sklearn's digits (1797 real 8x8 images, 10 classes, offline) are split into train /
calibration / held-out test. The calibration images score the units; the test images
are never used for scoring. No fine-tuning after pruning.

Run:  python examples/prune_digits.py [--tolerance 0.05 | --target-macs 0.5] [--preset paper]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import lightning_fair
from lightning_fair import PruneConfig
from lightning_fair.demos import zoo


def digits_splits(seed: int = 0):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    train, calib, test = slice(0, 1100), slice(1100, 1400), slice(1400, None)
    return (x[train], y[train]), (x[calib], y[calib]), (x[test], y[test])


def train(model: torch.nn.Module, data, epochs: int = 20, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    loader = DataLoader(TensorDataset(*data), batch_size=64, shuffle=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: torch.nn.Module, data) -> float:
    model.eval()
    x, y = data
    return (model(x).argmax(1) == y).float().mean().item()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tolerance", type=float, default=0.05, help="tolerance of difference (ignored with a target)")
    parser.add_argument("--target-macs", type=float, default=None, help="fraction of MACs to keep, e.g. 0.5")
    parser.add_argument(
        "--preset",
        choices=["default", "paper"],
        default="default",
        help="'paper': the method exactly as published (no compensation, no BatchNorm re-estimation)",
    )
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    train_data, calib_data, test_data = digits_splits(args.seed)
    torch.manual_seed(args.seed)
    model = train(zoo.small_cnn(width=args.width), train_data, seed=args.seed)
    before = accuracy(model, test_data)

    calibration = DataLoader(TensorDataset(*calib_data), batch_size=100)
    # every option in one PruneConfig (checked here, before any data is read); the same as keywords:
    # lightning_fair.prune(model, calibration, tolerance=..., target_macs=..., preset=..., seed=...)
    config = PruneConfig(tolerance=args.tolerance, target_macs=args.target_macs, preset=args.preset, seed=args.seed)
    result = lightning_fair.prune(model, calibration, config)
    after = accuracy(result.model, test_data)

    print(result.report)
    print()
    print(f"held-out accuracy: {before:.2%} before, {after:.2%} after one-shot pruning (no fine-tuning)")
    print(
        f"MACs kept {result.report.macs_ratio:.1%}, parameters kept {result.report.params_ratio:.1%}, "
        f"{result.level_name} {result.level:.4g}"
    )


if __name__ == "__main__":
    main()
