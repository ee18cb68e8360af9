"""ResNet-50 at 224x224 with 1000 classes: the estimate, the passes, the wall time and the peak memory.

Generated model and data (no download): :func:`resnet50` below (25.6 M parameters, random
weights) and random 224x224 images whose labels cycle through the classes U compares (with the
class cap, the seeded 100 of :func:`lightning_fair.collect.classes.chosen_classes`: a few images per
compared class exercise every class pair; images of the other classes would only add to R). Prints the
estimate (memory, passes under the budget, class pairs, distance work) for the current defaults
(U compares ``max_classes=100`` of the classes, through ``num_projections="auto"``: 32 directions at
100 compared classes), for 128 projections (the default before "auto") and for the old path that compared
all 1000 (``--max-classes 0``: what lightning_fair did before the class cap), then runs ``compute_scores``
for real with the settings given and reports the passes, the wall time and the peak memory
(the process's resident memory on the CPU; the device's peak allocation on a GPU).

Run:  python examples/benchmarks/resnet50_memory.py [--images 32] [--samples 2] [--projections 16] [--budget 1GiB]
      python examples/benchmarks/resnet50_memory.py --images 128 --samples 2 --projections 128 --budget 4GiB
      python examples/benchmarks/resnet50_memory.py --device cuda --images 3200 --batch 64 --samples 32 --projections 128 --budget auto
      (the last: the defaults before "auto" projections on a GPU, every compared class filled: 61 GiB of
      statistics; ``--projections auto``: today's defaults, 16 GiB)
      (``--max-classes 0``: compare every class, the old path; ``--estimate-only``: no scoring run)
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from lightning_fair import compute_scores
from lightning_fair.collect.classes import chosen_classes
from lightning_fair.collect.memory import estimate_memory, resolve_budget
from lightning_fair.config import parse_bytes
from lightning_fair.demos import zoo


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
    parser.add_argument(
        "--projections",
        type=lambda v: v if v == "auto" else int(v),
        default=16,
        help="an integer, or auto (the library's default: 32 from 50 compared classes on, else 128)",
    )
    parser.add_argument("--budget", default="1GiB", help="bytes, e.g. 4GiB, or auto (the library's default)")
    parser.add_argument("--max-classes", type=int, default=100, help="0: every class (the path before the cap)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--estimate-only", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = resnet50().eval().to(device)
    example = torch.randn(1, 3, 224, 224, device=device)
    four = parse_bytes("4GiB")
    where = "cuda" if device.type == "cuda" else "cpu"
    for label, cap, projections in (
        ("defaults now (max_classes=100, num_projections='auto')", 100, "auto"),
        ("before 'auto' projections (max_classes=100)", 100, 128),
        ("before the class cap (all 1000 classes)", None, 128),
    ):
        estimate = estimate_memory(model, example, max_classes=cap, num_projections=projections)
        print(
            f"{label}, 32 samples/class, {estimate.num_projections} projections: "
            f"{estimate.describe(four, where, args.threads)}"
        )
    cap = args.max_classes or None
    budget = resolve_budget(args.budget, device)
    small = estimate_memory(
        model, example, samples_per_class=args.samples, num_projections=args.projections, max_classes=cap
    )
    print(
        f"this run ({args.samples} samples/class, {args.projections} projections, max_classes={cap}, "
        f"{args.images} images, batch {args.batch}, {where}): {small.describe(budget, where, args.threads)}"
    )
    if args.estimate_only:
        return
    x = torch.randn(args.images, 3, 224, 224)
    compared = chosen_classes(1000, cap, seed=0)
    y = compared[torch.arange(args.images) % compared.numel()]
    batches = [(x[i : i + args.batch], y[i : i + args.batch]) for i in range(0, args.images, args.batch)]
    before = peak_rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    start = time.perf_counter()
    scores = compute_scores(
        model,
        batches,
        samples_per_class=args.samples,
        num_projections=args.projections,
        memory_budget=budget,
        max_classes=cap,
    )
    seconds = time.perf_counter() - start
    after = peak_rss_mib()
    peak = (
        f"peak device memory {torch.cuda.max_memory_allocated() / 2**20:,.0f} MiB (model, a batch's activations "
        "and gradients, statistics)"
        if device.type == "cuda"
        else f"peak resident memory of the process {before:,.0f} MiB before scoring, {after:,.0f} MiB after "
        f"(includes the model, its activations and gradients for a batch of {args.batch})"
    )
    print(
        f"measured: {scores.config['passes']} pass(es) over {args.images} images in {seconds:.0f} s "
        f"({scores.config['classes_compared']} classes compared); {peak}; estimated statistics peak per pass "
        f"<= {min(budget, small.total_bytes) / 2**20:,.0f} MiB"
    )


if __name__ == "__main__":
    main()
