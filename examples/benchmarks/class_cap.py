"""How much the cheaper utilization settings change what FAIR prunes: agreement with the exact score.

U is the largest distance over all pairs of classes, so its cost grows with the classes K (memory
~ K, pairs ~ K²). ``max_classes`` compares a seeded random subset of the classes (the reference's
cap of 100); fewer ``num_projections`` cut memory and time per conv unit too. This compares each
cheaper setting with the exact computation (all classes, 128 projections) on the same model and
calibration batches:

* ``seed=1``: the exact setting with other random projections: how much U moves by chance alone
  (the sliced W1 is a Monte Carlo estimate), the yardstick for the rows below;
* ``spearman``: Spearman rank correlation of U per layer (mean and minimum over the layers);
* ``tod same``: layers whose ToD count at tolerance 0.05 (FAIR's per-layer counts from U and R)
  is identical, and the mean |count difference| as a fraction of the layer's units;
* ``one-shot``: held-out accuracy after ``prune(target_macs=0.5)`` (the default pipeline; 0.8 on
  the generated tasks, where 0.5 one-shot leaves chance accuracy) with these scores, next to the
  exact scores' accuracy.

Models: the benchmark suite's trained small models on real data (10 classes: a cap of 5 shows
what comparing half the classes does), and small CNNs trained here on generated 16x16 tasks with
25, 50, 100 and 1000 classes (class prototypes plus noise), where caps of 50/25/10 and 100 are tried
(and, at 25 and 50 classes, fewer projections alone: where ``num_projections="auto"`` switches to 32).
The exact setting pins ``num_projections=128`` (the ``"auto"`` default gives 32 from 50 compared classes on).

Run:  python examples/benchmarks/class_cap.py [--quick] [--parts real,25,50,100,1000]
"""

from __future__ import annotations

import argparse
import copy
import time

import common
import torch
import torch.nn.functional as F

from lightning_fair import compute_scores, prune
from lightning_fair.allocation.tolerance import tolerance_counts
from lightning_fair.demos import zoo

TOLERANCE = 0.05


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation (average ranks are not needed: ties are rare in float scores)."""
    ra = torch.argsort(torch.argsort(a.double())).double()
    rb = torch.argsort(torch.argsort(b.double())).double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.norm() * rb.norm()).item()
    return float((ra @ rb).item() / denom) if denom > 0 else float("nan")


def agreement(exact, other) -> dict:
    rhos = [
        spearman(exact.utilization[n], other.utilization[n]) for n in exact.layers if exact.utilization[n].numel() > 2
    ]
    rhos = [r for r in rhos if r == r]
    a, b = tolerance_counts(exact, TOLERANCE), tolerance_counts(other, TOLERANCE)
    diffs = [abs(a[n] - b[n]) / exact.utilization[n].numel() for n in a]
    return {
        "spearman_mean": sum(rhos) / len(rhos),
        "spearman_min": min(rhos),
        "tod_same": sum(a[n] == b[n] for n in a),
        "layers": len(a),
        "tod_diff": sum(diffs) / len(diffs),
    }


def one_shot(model, calib, test, scores, target: float) -> float:
    pruned = prune(copy.deepcopy(model), calib, target_macs=target, scores=scores).model
    return common.accuracy(pruned, test)


def compare(label: str, model, calib, test, settings: dict, base: dict, target: float = 0.5) -> list:
    """Scores with ``base`` options (exact) and with each of ``settings``; rows of agreement."""
    rows = []
    start = time.perf_counter()
    exact = compute_scores(model, calib, **base)
    exact_s = time.perf_counter() - start
    exact_acc = one_shot(model, calib, test, exact, target)
    rows.append({"model": label, "setting": "exact", "seconds": exact_s, "one_shot": exact_acc})
    print(_line(rows[-1]), flush=True)
    for name, options in settings.items():
        start = time.perf_counter()
        other = compute_scores(model, calib, **{**base, **options})
        seconds = time.perf_counter() - start
        rows.append(
            {
                "model": label,
                "setting": name,
                "seconds": seconds,
                "one_shot": one_shot(model, calib, test, other, target),
                **agreement(exact, other),
            }
        )
        print(_line(rows[-1]), flush=True)
    return rows


def _line(r: dict) -> str:
    if r["setting"] == "exact":
        return f"{r['model'][:25]:<26}{'exact':<18}{'':>14}{'':>12}{'':>10}{r['one_shot']:>9.2f}{r['seconds']:>8.1f}s"
    return (
        f"{r['model'][:25]:<26}{r['setting']:<18}{r['spearman_mean']:>7.3f}/{r['spearman_min']:.3f}"
        f"{r['tod_same']:>6}/{r['layers']:<5}{r['tod_diff']:>10.3f}{r['one_shot']:>9.2f}{r['seconds']:>8.1f}s"
    )


HEADER = f"{'model':<26}{'setting':<18}{'rho mean/min':>14}{'ToD same':>12}{'|dk|/n':>10}{'one-shot':>9}{'time':>9}"


# ------------------------------------------------------------------------------ generated tasks
def generated_task(num_classes: int, per_class: int, seed: int = 0):
    """16x16 images: a smooth random prototype per class plus noise; train / calibration / test."""
    g = torch.Generator().manual_seed(seed)
    protos = F.interpolate(
        torch.randn(num_classes, 1, 4, 4, generator=g), size=(16, 16), mode="bilinear", align_corners=False
    )

    def split(n):
        y = torch.arange(num_classes).repeat_interleave(n)
        x = protos[y] + 0.6 * torch.randn(len(y), 1, 16, 16, generator=g)
        order = torch.randperm(len(y), generator=g)
        return common.Split(x[order].contiguous(), y[order].contiguous())

    return split(per_class * 3), split(per_class), split(per_class)


def trained_generated(num_classes: int, per_class: int, epochs: int, width: int = 16):
    train, calib, test = generated_task(num_classes, per_class)
    torch.manual_seed(0)
    model = zoo.small_cnn(1, num_classes, width=width)
    common.train_epochs(model, train, epochs, 3e-3, 64, seed=0)
    return model, calib, test


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--parts", default="real,100,1000", help="real (benchmark models), 25, 50, 100, 1000 (generated)"
    )
    parser.add_argument("--quick", action="store_true", help="one real model, fewer samples")
    args = parser.parse_args(argv)
    parts = args.parts.split(",")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(HEADER)
    if "real" in parts:
        tasks = common.tasks()
        names = ["small_cnn"] if args.quick else ["small_cnn", "vgg_bn", "resnet", "lenet"]
        for name in names:
            task = tasks[name]
            data = common.load_data(task.data)
            model = common.trained_model(task, seed=0)
            calib = common.loader(data.calib, 100)
            compare(
                task.label,
                model,
                calib,
                data.test,
                {
                    "seed=1": {"seed": 1},
                    "max_classes=5": {"max_classes": 5},
                    "projections=64": {"num_projections": 64},
                    "projections=32": {"num_projections": 32},
                },
                {"max_classes": None, "num_projections": 128},
            )
    for classes in (int(part) for part in ("25", "50") if part in parts):  # where "auto" projections switch
        model, calib, test = trained_generated(classes, 16 if args.quick else 32, epochs=4)
        print(f"  (generated {classes} classes: test accuracy {common.accuracy(model, test):.2f}%)")
        compare(
            f"small CNN / {classes} classes",
            model,
            common.loader(calib, 200),
            test,
            {
                "seed=1": {"seed": 1},
                "projections=64": {"num_projections": 64},
                "projections=32": {"num_projections": 32},
            },
            {"max_classes": None, "samples_per_class": 16 if args.quick else 32, "num_projections": 128},
            target=0.8,
        )
    if "100" in parts:
        model, calib, test = trained_generated(100, 16 if args.quick else 32, epochs=4)
        print(f"  (generated 100 classes: test accuracy {common.accuracy(model, test):.2f}%)")
        compare(
            "small CNN / 100 classes",
            model,
            common.loader(calib, 200),
            test,
            {
                "seed=1": {"seed": 1},
                "max_classes=50": {"max_classes": 50},
                "max_classes=25": {"max_classes": 25},
                "max_classes=10": {"max_classes": 10},
                "projections=32": {"num_projections": 32},
                "max50,proj32": {"max_classes": 50, "num_projections": 32},
            },
            {"max_classes": None, "samples_per_class": 16 if args.quick else 32, "num_projections": 128},
            target=0.8,
        )
    if "1000" in parts:
        model, calib, test = trained_generated(1000, 8, epochs=6)
        print(f"  (generated 1000 classes: test accuracy {common.accuracy(model, test):.2f}%)")
        compare(
            "small CNN / 1000 classes",
            model,
            common.loader(calib, 500),
            test,
            {
                "seed=1": {"seed": 1},
                "max_classes=100": {"max_classes": 100},
                "max100,proj4": {"max_classes": 100, "num_projections": 4},
            },
            {"max_classes": None, "samples_per_class": 8, "num_projections": 16},
            target=0.8,
        )


if __name__ == "__main__":
    main()
