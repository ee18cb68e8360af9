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
      python examples/benchmarks/score_speed.py --device cuda --no-reference   (on a GPU)
      python examples/benchmarks/score_speed.py --no-reference --old 900901b   (and lightning_fair at that
          git revision, extracted with ``git archive``, timed side by side: "old")

Without scikit-learn the digits are replaced by generated 8x8 images (a class-dependent mean plus
noise), which times the same.

From Python: ``run(quick) -> dict`` and ``to_markdown(results) -> str`` (used by run_all.py).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_fair import compute_scores
from lightning_fair.demos import zoo


def digits_images(num_images: int):
    """sklearn's digits (``[N, 1, 8, 8]`` in [0, 1], labels), or generated ones without scikit-learn."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        g = torch.Generator().manual_seed(0)
        y = torch.arange(num_images) % 10
        x = (torch.rand(num_images, 1, 8, 8, generator=g) + y.view(-1, 1, 1, 1) / 10.0).clamp(0, 1)
        return x, y, "generated digit-sized images (scikit-learn not installed)"
    digits = load_digits()
    x = torch.tensor(digits.images[:num_images], dtype=torch.float32).unsqueeze(1) / 16.0
    return x, torch.tensor(digits.target[:num_images], dtype=torch.long), "sklearn digits"


def digits_loader(image_size: int, num_images: int, batch_size: int) -> DataLoader:
    x, y, _ = digits_images(num_images)
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def plain_pass(model: torch.nn.Module, loader: DataLoader) -> None:
    model.eval()
    device = next(model.parameters()).device
    for x, y in loader:
        loss = F.cross_entropy(model(x.to(device, non_blocking=True)), y.to(device, non_blocking=True))
        loss.backward()
    model.zero_grad(set_to_none=True)


def reference_metrics(model: torch.nn.Module, loader: DataLoader, samples_per_class: int) -> None:
    from Network_Pruner import FAIR_Pruner as fp

    with tempfile.TemporaryDirectory() as tmp, open(os.devnull, "w") as devnull:
        stdout, sys.stdout = sys.stdout, devnull  # the reference prints progress
        try:
            fp.get_metrics(
                model,
                loader,
                device=torch.device("cpu"),
                the_samplesize_for_compute_distance=samples_per_class,
                results_save_path=os.path.join(tmp, "results.pkl"),
            )
        finally:
            sys.stdout = stdout


def old_compute_scores(revision: str):
    """``compute_scores`` of lightning_fair at git ``revision`` of this repository, extracted with
    ``git archive`` into a temporary folder and imported as the package ``lightning_fair_old``."""
    root = Path(__file__).resolve().parents[2]
    folder = tempfile.mkdtemp(prefix="lightning_fair_old_")
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", revision, "lightning_fair"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    os.rename(os.path.join(folder, "lightning_fair"), os.path.join(folder, "lightning_fair_old"))
    sys.path.insert(0, folder)
    return importlib.import_module("lightning_fair_old").compute_scores


def have_reference() -> bool:
    try:
        from Network_Pruner import FAIR_Pruner
    except Exception:
        return False
    return FAIR_Pruner is not None


def timed(fn, device: str = "cpu") -> float:
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


DEFAULT_MODELS = ("small_cnn", "vgg_bn", "resnet")


def run(
    quick: bool = False,
    models=DEFAULT_MODELS,
    image_size: int = 16,
    images: int = 640,
    batch_size: int = 64,
    samples_per_class: int = 32,
    repeats: int = 3,
    reference: Optional[bool] = None,
    threads: Optional[int] = None,
    verbose: bool = False,
    device: str = "cpu",
    old: Optional[str] = None,
) -> dict:
    """Time plain / ours / reference per model; returns plain data (medians and every repeat).

    ``quick``: small_cnn only, 320 digits at 8x8, 1 repeat. ``reference``: time network-pruner
    (default: when installed). ``threads``: torch threads while timing (default: unchanged).
    ``device``: where the model runs (``"cuda"``: the calibration batches stay on the host and are
    moved per batch, as from a DataLoader; the reference is timed on the CPU only). ``old``: a git
    revision whose ``compute_scores`` is timed too (:func:`old_compute_scores`; NaN if it fails there).
    """
    if quick:
        models, images, repeats, image_size = ("small_cnn",), 320, 1, 8
    if isinstance(models, str):
        models = tuple(models.split(","))
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        loader = digits_loader(image_size, images, batch_size)
        use_reference = have_reference() if reference is None else (reference and have_reference())
        use_reference = use_reference and torch.device(device).type == "cpu"
        old_scores = old_compute_scores(old) if old else None
        rows = []
        for name in models:
            torch.manual_seed(0)
            model = zoo.MODELS[name]().to(device)
            times = {"plain": [], "ours": [], "reference": [], "old": []}
            plain_pass(copy.deepcopy(model), loader)  # warm-up, untimed: first calls allocate and pick kernels
            compute_scores(model, loader, samples_per_class=samples_per_class)
            old_error = None
            if old_scores is not None:
                try:
                    old_scores(model, loader, samples_per_class=samples_per_class)
                except Exception as error:  # e.g. the old path on a GPU
                    old_error = f"{type(error).__name__}: {error}"
                    print(f"  {name}: lightning_fair at {old} fails here: {old_error[:300]}", flush=True)
            for _ in range(repeats):  # interleaved, so drift hits every method alike
                times["plain"].append(timed(lambda: plain_pass(copy.deepcopy(model), loader), device))
                times["ours"].append(
                    timed(lambda: compute_scores(model, loader, samples_per_class=samples_per_class), device)
                )
                if old_scores is not None and old_error is None:
                    times["old"].append(
                        timed(lambda: old_scores(model, loader, samples_per_class=samples_per_class), device)
                    )
                if use_reference:
                    times["reference"].append(
                        timed(lambda: reference_metrics(copy.deepcopy(model), loader, samples_per_class))
                    )
            med = {k: statistics.median(v) if v else float("nan") for k, v in times.items()}
            row = {
                "model": name,
                "plain": med["plain"],
                "ours": med["ours"],
                "reference": med["reference"],
                "ours_over_plain": med["ours"] / med["plain"],
                "reference_over_ours": med["reference"] / med["ours"],
                "old": med["old"],
                "old_over_plain": med["old"] / med["plain"],
                "times": times,
            }
            rows.append(row)
            if verbose:
                print(_line(row), flush=True)
        return {
            "config": {
                "models": list(models),
                "image_size": image_size,
                "images": images,
                "batch_size": batch_size,
                "samples_per_class": samples_per_class,
                "repeats": repeats,
                "reference": use_reference,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "quick": quick,
                "device": str(device),
                "data": digits_images(1)[2],
            },
            "rows": rows,
        }
    finally:
        torch.set_num_threads(previous_threads)


HEADER = (
    f"{'model':<14}{'plain s':>9}{'ours s':>9}{'ref s':>9}{'ours/plain':>12}{'ref/ours':>10}"
    f"{'old s':>9}{'old/plain':>11}"
)


def _line(row: dict) -> str:
    return (
        f"{row['model']:<14}{row['plain']:>9.3f}{row['ours']:>9.3f}{row['reference']:>9.3f}"
        f"{row['ours_over_plain']:>12.2f}{row['reference_over_ours']:>10.1f}{row['old']:>9.3f}"
        f"{row['old_over_plain']:>11.2f}"
    )


def _num(value: float, fmt: str) -> str:
    return "–" if value != value else format(value, fmt)  # NaN: not measured


def to_markdown(results: dict) -> str:
    """A markdown table of the medians and ratios, with the settings it was measured with."""
    cfg = results["config"]
    lines = [
        f"{cfg['images']} sklearn digits resized to {cfg['image_size']}x{cfg['image_size']}, batch "
        f"{cfg['batch_size']}, {cfg['images'] // cfg['batch_size']} batches, {cfg['samples_per_class']} "
        f"samples/class, 128 projections; models from `lightning_fair.demos.zoo` at default widths, seeded "
        f"random init; torch {cfg['torch']}, {cfg['threads']} thread(s); medians of {cfg['repeats']} "
        f"interleaved repeat(s)"
        + ("." if cfg["reference"] else "; network-pruner not run (not installed or disabled)."),
        "",
        "| model | plain (s) | ours (s) | reference (s) | ours / plain | reference / ours |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['model']} | {r['plain']:.3f} | {r['ours']:.3f} | {_num(r['reference'], '.2f')} | "
            f"{r['ours_over_plain']:.2f} | {_num(r['reference_over_ours'], '.1f')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help="from lightning_fair.demos.zoo.MODELS, e.g. add mobilenet_v2 (the reference takes minutes there)",
    )
    parser.add_argument("--image-size", type=int, default=16, help="digits are resized to this (8 = native)")
    parser.add_argument("--images", type=int, default=640, help="calibration images")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samples-per-class", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--no-reference", action="store_true", help="skip network-pruner even if installed")
    parser.add_argument("--quick", action="store_true", help="tiny run: one model, 1 repeat")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the reference runs on the CPU only)")
    parser.add_argument("--old", default=None, help="a git revision of lightning_fair to time side by side")
    args = parser.parse_args(argv)
    quick = args.quick
    images, image_size, repeats = (320, 8, 1) if quick else (args.images, args.image_size, args.repeats)
    use_reference = have_reference() and not args.no_reference and args.device == "cpu"
    threads = args.threads or torch.get_num_threads()
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device: {device}; data: {digits_images(1)[2]}")
    print(
        f"calibration: {images} sklearn digits at {image_size}x{image_size}, batch {args.batch_size}, "
        f"{args.samples_per_class} samples/class; torch {torch.__version__}, {threads} threads; "
        f"reference {'network-pruner' if use_reference else 'not installed (pip install --no-deps network-pruner)'}"
    )
    print(HEADER)
    print("-" * len(HEADER))
    run(
        quick=quick,
        models=args.models,
        image_size=args.image_size,
        images=args.images,
        batch_size=args.batch_size,
        samples_per_class=args.samples_per_class,
        repeats=args.repeats,
        reference=use_reference,
        threads=args.threads,
        verbose=True,
        device=args.device,
        old=args.old,
    )


if __name__ == "__main__":
    main()
