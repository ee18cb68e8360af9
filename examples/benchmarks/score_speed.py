"""Score-collection speed: lightning_fair vs the authors' `network-pruner` vs one plain pass.

For each model, on the same weights and the same calibration batches, in one process,
interleaved, this times

* ``plain``: one forward + backward of the loss over every calibration batch (the floor);
* ``ours``: :func:`lightning_fair.compute_scores` (U and R for every layer);
* ``reference``: ``Network_Pruner.FAIR_Pruner.get_metrics`` (if ``network-pruner`` is installed:
  ``pip install --no-deps network-pruner``);

and prints medians over repeats and the ratios ours/plain and reference/ours.
Absolute times on shared machines are noisy; the ratios, measured side by side, are the claim.

Run:  python examples/benchmarks/score_speed.py            (about a minute on 2 CPU cores)
      python examples/benchmarks/score_speed.py --quick    (smoke test)
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_fair import compute_scores, zoo


def digits_loader(image_size: int, num_images: int, batch_size: int) -> DataLoader:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images[:num_images], dtype=torch.float32).unsqueeze(1) / 16.0
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    y = torch.tensor(digits.target[:num_images], dtype=torch.long)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def plain_pass(model: torch.nn.Module, loader: DataLoader) -> None:
    model.eval()
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
    model.zero_grad(set_to_none=True)


def reference_metrics(model: torch.nn.Module, loader: DataLoader, samples_per_class: int) -> None:
    from Network_Pruner import FAIR_Pruner as fp

    with tempfile.TemporaryDirectory() as tmp, open(os.devnull, "w") as devnull:
        stdout, sys.stdout = sys.stdout, devnull  # the reference prints progress
        try:
            fp.get_metrics(
                model, loader, device=torch.device("cpu"),
                the_samplesize_for_compute_distance=samples_per_class,
                results_save_path=os.path.join(tmp, "results.pkl"),
            )
        finally:
            sys.stdout = stdout


def have_reference() -> bool:
    try:
        from Network_Pruner import FAIR_Pruner  # noqa: F401
    except Exception:
        return False
    return True


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="small_cnn,vgg_bn,resnet", help="from lightning_fair.zoo.MODELS, e.g. add mobilenet_v2 (the reference takes minutes there)")
    parser.add_argument("--image-size", type=int, default=16, help="digits are resized to this (8 = native)")
    parser.add_argument("--images", type=int, default=640, help="calibration images")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samples-per-class", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-reference", action="store_true", help="skip network-pruner even if installed")
    parser.add_argument("--quick", action="store_true", help="tiny run: one model, 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.images, args.repeats, args.image_size = "small_cnn", 320, 1, 8

    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    loader = digits_loader(args.image_size, args.images, args.batch_size)
    use_reference = have_reference() and not args.no_reference
    print(f"calibration: {args.images} sklearn digits at {args.image_size}x{args.image_size}, batch {args.batch_size}, "
          f"{args.samples_per_class} samples/class; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"reference {'network-pruner' if use_reference else 'not installed (pip install --no-deps network-pruner)'}")
    header = f"{'model':<14}{'plain s':>9}{'ours s':>9}{'ref s':>9}{'ours/plain':>12}{'ref/ours':>10}"
    print(header)
    print("-" * len(header))
    for name in args.models.split(","):
        model = zoo.MODELS[name]()
        times = {"plain": [], "ours": [], "reference": []}
        for _ in range(args.repeats):  # interleaved, so drift hits every method alike
            times["plain"].append(timed(lambda: plain_pass(copy.deepcopy(model), loader)))
            times["ours"].append(timed(lambda: compute_scores(model, loader, samples_per_class=args.samples_per_class)))
            if use_reference:
                times["reference"].append(
                    timed(lambda: reference_metrics(copy.deepcopy(model), loader, args.samples_per_class))
                )
        med = {k: statistics.median(v) if v else float("nan") for k, v in times.items()}
        print(f"{name:<14}{med['plain']:>9.3f}{med['ours']:>9.3f}{med['reference']:>9.3f}"
              f"{med['ours'] / med['plain']:>12.2f}{med['reference'] / med['ours']:>10.1f}")


if __name__ == "__main__":
    main()
