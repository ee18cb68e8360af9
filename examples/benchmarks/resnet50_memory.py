"""Statistics memory of a ResNet-50 at 224x224 with 1000 classes: estimate vs measured, on CPU.

Generated model and data (no download): :func:`resnet50` below (25.6 M parameters,
random weights) and random 224x224 images with random labels. Prints the estimate for the
default settings (32 samples per class, 128 projections: hundreds of GiB in one pass, so many
passes under the 4 GiB default budget), then runs ``compute_scores`` for real with a small number
of samples under a budget and reports the process's peak resident memory next to the estimate.

Run:  python examples/benchmarks/resnet50_memory.py [--images 32] [--samples 2] [--projections 16] [--budget 1GiB]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from lightning_fair import compute_scores, zoo
from lightning_fair.memory import estimate_memory, parse_bytes


def resnet50(num_classes: int = 1000, in_channels: int = 3) -> torch.nn.Module:
    """ResNet-50 (ImageNet layout: 7x7/2 stem, max-pool, bottleneck stages 3-4-6-3 of width
    64-512, 25.6 M parameters at 1000 classes) for 224x224 inputs, from ``zoo.resnet``."""
    return zoo.resnet(in_channels, num_classes, block="bottleneck", layers=(3, 4, 6, 3), width=64, stem="imagenet")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--projections", type=int, default=16)
    parser.add_argument("--budget", default="1GiB")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = resnet50().eval()
    example = torch.randn(1, 3, 224, 224)
    default = estimate_memory(model, example)
    print("default settings:", default.describe(parse_bytes("4GiB")))
    small = estimate_memory(model, example, samples_per_class=args.samples, num_projections=args.projections)
    budget = parse_bytes(args.budget)
    print(f"this run ({args.samples} samples/class, {args.projections} projections):", small.describe(budget))
    x = torch.randn(args.images, 3, 224, 224)
    y = torch.randint(0, 1000, (args.images,))
    batches = [(x[i:i + args.batch], y[i:i + args.batch]) for i in range(0, args.images, args.batch)]
    before = peak_rss_mib()
    start = time.perf_counter()
    scores = compute_scores(model, batches, samples_per_class=args.samples, num_projections=args.projections,
                            memory_budget=budget)
    seconds = time.perf_counter() - start
    after = peak_rss_mib()
    print(f"measured: {scores.config['passes']} pass(es) over {args.images} images in {seconds:.0f} s; "
          f"peak resident memory of the process {before:,.0f} MiB before scoring, {after:,.0f} MiB after "
          f"(includes the model, its activations and gradients for a batch of {args.batch}); "
          f"estimated statistics peak per pass <= {min(budget, small.total_bytes) / 2**20:,.0f} MiB")


if __name__ == "__main__":
    main()
