"""Related methods: unstructured screening (``prune_connections``) and on-the-fly pruning.

Two studies, on the trained models and splits of :mod:`common`:

* **Unstructured screening** on LeNet-300-100 / MNIST (the setting of the screening paper,
  arXiv 2502.07189): ``lightning_fair.prune_connections(copy, scores=..., sparsity=s,
  allocation=..., screening_weight=w)`` at ``s`` in :data:`SPARSITIES`, with the screening weight
  0.5 (the default) and 0 (layer-normalised magnitude alone), global and per-layer allocation,
  against torch's global L1 magnitude (``torch.nn.utils.prune.global_unstructured`` with
  ``L1Unstructured``, what Lightning's ``ModelPruning("l1_unstructured")`` applies) on the same
  layers (every Linear, the output layer included, as ``prune_connections`` does). The scores
  are computed once per seed with ``compute_scores(..., criterion="screening")``. Held-out one-shot
  accuracy (no fine-tuning) and the fraction of zero weights in the pruned layers.
* **On-the-fly pruning** (our reconstruction of arXiv 2212.12651, ``lightning_fair.methods.onthefly``):
  the model trained from scratch with exactly :func:`common.train_epochs`'s schedule (seed,
  data order, Adam, one-cycle), but hyperspherical (:func:`make_hyperspherical`, before the
  optimizer is built) and with the polarising penalty's gradient added before every optimizer
  step (:func:`add_polarization_grad`, penalty 1e-2, beta 0.2: the callback's defaults); then
  :func:`prune_on_the_fly` at the ratio it was trained for, with each recovery. Against it: the
  same model trained plainly (:func:`common.train_epochs`, i.e. the configuration of the cached
  :func:`common.trained_model`), pruned by the same per-layer zeroing of the smallest
  ``|w|/||w_filter||`` (``prune_on_the_fly(..., layers=...)`` on the plain layers), with and
  without channel-mean recovery. The two trainings of a seed run back to back in one process,
  timed with ``time.perf_counter`` (order alternating between seeds, after an untimed warm-up): the
  training-cost ratio is on-the-fly over plain.

Run:  python examples/benchmarks/related.py [--quick]     (run_all.py writes the docs page)
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from lightning_fair import compute_scores, prune_connections  # noqa: E402
from lightning_fair.methods.onthefly import (
    add_polarization_grad,
    make_hyperspherical,
    prune_on_the_fly,
)

SEEDS = (0, 1, 2)
SPARSITIES = (0.5, 0.8, 0.9, 0.95)
QUICK_SPARSITIES = (0.5, 0.9)
#: unstructured rows: key -> (label, screening_weight or None for torch's magnitude, allocation, output layer pruned)
UNSTRUCTURED = {
    "screening_global": ("screening, w=0.5, global (default: output layer dense)", 0.5, "global", False),
    "screening_global_out": ("screening, w=0.5, global, output layer pruned too", 0.5, "global", True),
    "screening_layer": ("screening, w=0.5, per layer", 0.5, "layer", False),
    "magnitude_global": ("prune_connections w=0 (magnitude), global", 0.0, "global", False),
    "magnitude_layer": ("prune_connections w=0 (magnitude), per layer", 0.0, "layer", False),
    "torch_l1": ("torch global L1 magnitude, output layer dense", None, "global", False),
    "torch_l1_out": ("torch global L1 magnitude, every layer (ModelPruning's l1_unstructured)", None, "global", True),
}
PENALTY, BETA = 1e-2, 0.2  # OnTheFlyPruning's defaults
#: on-the-fly: task -> ratios (each ratio is its own on-the-fly training: the penalty targets it)
ONTHEFLY = {"small_cnn": (0.5,), "lenet": (0.5, 0.8)}
RECOVERY_LABELS = {"channel": "channel mean", "layer": "layer mean", None: "zeroed"}


# ------------------------------------------------------------------------- unstructured
def torch_l1(model: nn.Module, sparsity: float, include_output: bool = True) -> nn.Module:
    """Global L1 unstructured magnitude over every Conv/Linear weight (the output layer's too, or not), permanent."""
    import torch.nn.utils.prune as tprune

    params = [
        (m, "weight")
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and (include_output or m is not model.classifier)
    ]
    tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=sparsity)
    for m, name in params:
        tprune.remove(m, name)
    return model.eval()


def zero_fraction(model: nn.Module) -> float:
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def unstructured(quick: bool, seeds, timing) -> dict:
    task = common.tasks(quick)["lenet"]
    data = common.load_data(task.data)
    calib = common.loader(data.calib, batch_size=100)
    sparsities = QUICK_SPARSITIES if quick else SPARSITIES
    out = {"label": task.label, "sparsities": list(sparsities), "baseline": [], "rows": {}}
    reference = task.build()
    out["weights"] = sum(m.weight.numel() for m in reference.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    out["out_weights"] = reference.classifier.weight.numel()
    for seed in seeds:
        model = common.trained_model(task, seed)
        out["baseline"].append(common.accuracy(model, data.test))
        start = time.perf_counter()
        scores = compute_scores(model, calib, seed=seed, criterion="screening")
        timing["unstructured_scores"] += time.perf_counter() - start
        for key, (_, weight, allocation, with_output) in UNSTRUCTURED.items():
            for s in sparsities:
                start = time.perf_counter()
                if weight is None:
                    pruned = torch_l1(common.clone(model), s, include_output=with_output)
                else:
                    pruned = prune_connections(
                        model,
                        scores=scores,
                        sparsity=s,
                        allocation=allocation,
                        screening_weight=weight,
                        inplace=False,
                        include_output=with_output,
                        example_inputs=data.calib.x[:1],
                    ).model.eval()
                timing["unstructured_prune"] += time.perf_counter() - start
                row = out["rows"].setdefault(key, {}).setdefault(str(s), {"accuracy": [], "zeros": [], "out_zeros": []})
                row["accuracy"].append(common.accuracy(pruned, data.test))
                row["zeros"].append(zero_fraction(pruned))
                row["out_zeros"].append(float((pruned.classifier.weight == 0).float().mean()))
    return out


# ------------------------------------------------------------------------- on-the-fly
def train_onthefly(
    model: nn.Module,
    split,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    ratio: float,
    limit=None,
    penalty: float = PENALTY,
    beta: float = BETA,
):
    """:func:`common.train_epochs` (one-cycle Adam, same seed and data order) on the hyperspherical
    model with the polarising penalty's gradient added before each step. Returns the layer names."""
    common.set_seed(seed)
    layers = make_hyperspherical(model)  # before the optimizer: the radii are trained too
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(split) if limit is None else min(limit, len(split))
    steps = epochs * ((n + batch_size - 1) // batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.15)
    model.train()
    for epoch in range(epochs):
        for x, y in common.loader(split, batch_size, shuffle=True, seed=seed * 1000 + epoch, limit=limit):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            add_polarization_grad(model, ratio, penalty, beta)
            optimizer.step()
            scheduler.step()
    model.eval()
    return layers


def onthefly(quick: bool, seeds, timing) -> dict:
    all_tasks = common.tasks(quick)
    out = {}
    for name, ratios in ONTHEFLY.items():
        task = all_tasks[name]
        data = common.load_data(task.data)
        res = {
            "label": task.label,
            "epochs": task.epochs,
            "ratios": list(ratios),
            "plain": [],
            "plain_seconds": [],
            "onthefly": {str(r): {"trained": [], "seconds": [], "cost": [], "pruned": {}} for r in ratios},
            "plain_pruned": {str(r): {} for r in ratios},
        }
        # warm-up (first-call allocations), untimed: one short epoch of each
        common.train_epochs(task.build(), data.train, 1, task.lr, task.batch_size, 0, limit=256)
        train_onthefly(task.build(), data.train, 1, task.lr, task.batch_size, 0, ratios[0], limit=256)
        for i, seed in enumerate(seeds):
            # plain training and each on-the-fly training back to back (cost ratio per pair); the order
            # alternates between seeds so that neither side always runs first
            trained = {}
            for which in ["plain", *ratios] if i % 2 == 0 else [*ratios, "plain"]:
                common.set_seed(seed)
                model = task.build()
                start = time.perf_counter()
                if which == "plain":
                    common.train_epochs(
                        model, data.train, task.epochs, task.lr, task.batch_size, seed, limit=task.train_limit
                    )
                    layers = None
                else:
                    layers = train_onthefly(
                        model, data.train, task.epochs, task.lr, task.batch_size, seed, which, limit=task.train_limit
                    )
                trained[which] = (model, layers, time.perf_counter() - start)
            plain, _, plain_s = trained["plain"]
            timing["onthefly_plain_train"] += plain_s
            res["plain"].append(common.accuracy(plain, data.test))
            res["plain_seconds"].append(plain_s)
            for ratio in ratios:
                model, layers, seconds = trained[ratio]
                timing["onthefly_train"] += seconds
                rec = res["onthefly"][str(ratio)]
                rec["trained"].append(common.accuracy(model, data.test))  # still hyperspherical: same function
                rec["seconds"].append(seconds)
                rec["cost"].append(seconds / plain_s)
                for recovery in ("channel", "layer", None):
                    pruned = copy.deepcopy(model)
                    prune_on_the_fly(pruned, ratio, recovery)
                    rec["pruned"].setdefault(str(recovery), []).append(common.accuracy(pruned.eval(), data.test))
                for recovery in ("channel", None):
                    pruned = copy.deepcopy(plain)
                    prune_on_the_fly(pruned, ratio, recovery, layers=layers)
                    res["plain_pruned"][str(ratio)].setdefault(str(recovery), []).append(
                        common.accuracy(pruned.eval(), data.test)
                    )
        out[name] = res
    return out


# ------------------------------------------------------------------------- all
def run(quick: bool = False, seeds=None, threads: int = 1) -> dict:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        seeds = list(seeds) if seeds is not None else ([0] if quick else list(SEEDS))
        timing = {
            k: 0.0 for k in ("unstructured_scores", "unstructured_prune", "onthefly_plain_train", "onthefly_train")
        }
        start = time.perf_counter()
        results = {
            "settings": {"quick": quick, "seeds": seeds, "threads": threads, "penalty": PENALTY, "beta": BETA},
            "unstructured": unstructured(quick, seeds, timing),
        }
        results["onthefly"] = onthefly(quick, seeds, timing)
        timing["total"] = time.perf_counter() - start
        results["timing"] = timing
        return results
    finally:
        torch.set_num_threads(previous)


# ------------------------------------------------------------------------- report
def _fmt(values, digits: int = 1) -> str:
    mean, std = common.mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def _mean(values) -> float:
    return common.mean_std(values)[0]


def unstructured_markdown(u: dict, n: int) -> str:
    sp = u["sparsities"]
    lines = [
        f"**Unstructured, {u['label']}** (trained model: {_fmt(u['baseline'])}%). Held-out top-1 %, one-shot "
        "(no fine-tuning), mean ± std over the seeds; <sub>fraction of zero weights over all the Linear weights, the output layer's included (so below the sparsity where it stays dense)</sub>. "
        "Columns: the fraction of connections removed.",
        "",
        "| method | " + " | ".join(f"sparsity {s}" for s in sp) + " |",
        "|---|" + "---:|" * len(sp),
    ]
    for key, (label, _, _, _) in UNSTRUCTURED.items():
        rows = u["rows"].get(key, {})
        cells = [
            f"{_fmt(rows[str(s)]['accuracy'])} <sub>{_mean(rows[str(s)]['zeros']):.3f}</sub>" if str(s) in rows else "–"
            for s in sp
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    # reading
    acc = {k: {s: _mean(u["rows"][k][str(s)]["accuracy"]) for s in sp} for k in UNSTRUCTURED if k in u["rows"]}
    per_seed = {k: {s: u["rows"][k][str(s)]["accuracy"] for s in sp} for k in acc}
    text = []
    if "screening_global" in acc and "torch_l1" in acc:
        d = {s: acc["screening_global"][s] - acc["torch_l1"][s] for s in sp}
        wins = [s for s in sp if d[s] > 0]
        text.append(
            "Screening (default: w=0.5, global) minus torch's global L1 magnitude: "
            + ", ".join(f"{d[s]:+.1f} at {s}" for s in sp)
            + f" points (ahead at {len(wins)} of {len(sp)} sparsities)."
        )
    if "screening_global" in acc and "magnitude_global" in acc:
        d = {s: acc["screening_global"][s] - acc["magnitude_global"][s] for s in sp}
        both = {
            s: sum(a > b for a, b in zip(per_seed["screening_global"][s], per_seed["magnitude_global"][s])) for s in sp
        }
        text.append(
            "What the F term adds (w=0.5 minus w=0, both global, same layer normalisation): "
            + ", ".join(f"{d[s]:+.1f} at {s} (ahead in {both[s]} of {n} seeds)" for s in sp)
            + "."
        )
    if "screening_global" in acc and "screening_layer" in acc:
        d = {s: acc["screening_global"][s] - acc["screening_layer"][s] for s in sp}
        text.append(
            "Global minus per-layer allocation (screening, w=0.5): "
            + ", ".join(f"{d[s]:+.1f} at {s}" for s in sp)
            + "."
        )
    if "magnitude_global" in acc and "torch_l1" in acc:
        d = {s: acc["magnitude_global"][s] - acc["torch_l1"][s] for s in sp}
        text.append(
            "Layer-normalised magnitude (w=0, global) minus raw global magnitude (torch): "
            + ", ".join(f"{d[s]:+.1f} at {s}" for s in sp)
            + "."
        )
    s_hi = sp[-2] if len(sp) > 2 else sp[-1]
    outz = {
        k: _mean(u["rows"][k][str(s_hi)]["out_zeros"])
        for k in ("screening_global_out", "torch_l1_out")
        if k in u["rows"]
    }
    if len(outz) == 2 and "screening_global" in acc and "torch_l1" in acc:
        text.append(
            f"The output layer (its {u['out_weights']} weights are {u['out_weights'] / u['weights']:.1%} of "
            f"all): pruned too, at sparsity {s_hi} it loses {outz['screening_global_out']:.0%} of its weights "
            f"under screening's layer-normalised scores and {outz['torch_l1_out']:.0%} under torch's raw "
            f"magnitude, and accuracy goes from {acc['screening_global'][s_hi]:.1f}% (kept dense, the "
            f"default) to {acc['screening_global_out'][s_hi]:.1f}% for screening, from "
            f"{acc['torch_l1'][s_hi]:.1f}% to {acc['torch_l1_out'][s_hi]:.1f}% for torch's magnitude."
        )
    lines += [" ".join(text), ""]
    return "\n".join(lines)


def onthefly_markdown(o: dict, n: int) -> str:
    lines = [
        '**On-the-fly pruning.** Held-out top-1 %, mean ± std over the seeds. "trained": before '
        "pruning; the next columns: after pruning the given fraction of every layer's weights but the "
        "output layer's (per layer, smallest `|w| / ||filter||`), **no fine-tuning**; the pruned entries "
        "zeroed, or tied to the mean of the pruned values per output channel / per layer (with a tied "
        "mean they are not zero). Training cost: wall time of the on-the-fly training over that of the "
        "plain training of the same seed, run back to back (mean, min-max over the seeds).",
        "",
        "| model | ratio | training | trained | zeroed | layer mean | channel mean | training cost |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    reading, costs = [], {}
    for name, r in o.items():
        short = r["label"].split(" /")[0]
        for ratio in r["ratios"]:
            rec, pp = r["onthefly"][str(ratio)], r["plain_pruned"][str(ratio)]
            lines.append(
                f"| {short} | {ratio} | plain (`common.train_epochs`, {r['epochs']} epochs; "
                f"{_mean(r['plain_seconds']):.1f} s) | {_fmt(r['plain'])} | {_fmt(pp['None'])} | – | "
                f"{_fmt(pp['channel'])} | 1 |"
            )
            cost = rec["cost"]
            costs.setdefault(short, []).extend(cost)
            lines.append(
                f"| {short} | {ratio} | on-the-fly (hyperspherical + penalty {PENALTY:g}; "
                f"{_mean(rec['seconds']):.1f} s) | {_fmt(rec['trained'])} | {_fmt(rec['pruned']['None'])} | "
                f"{_fmt(rec['pruned']['layer'])} | {_fmt(rec['pruned']['channel'])} | "
                f"**{_mean(cost):.2f}×** ({min(cost):.2f}-{max(cost):.2f}) |"
            )
            best_otf = max(("None", "layer", "channel"), key=lambda k: _mean(rec["pruned"][k]))
            best_plain = max(("None", "channel"), key=lambda k: _mean(pp[k]))
            gain = _mean(rec["pruned"][best_otf]) - _mean(pp[best_plain])
            reading.append(
                f"{short} at ratio {ratio}: on-the-fly training ends {_mean(rec['trained']) - _mean(r['plain']):+.1f} "
                f"points from plain training before pruning; after pruning its best recovery "
                f"({RECOVERY_LABELS[None if best_otf == 'None' else best_otf]}, {_mean(rec['pruned'][best_otf]):.1f}%) "
                f"is {gain:+.1f} points from the plain model's best ({RECOVERY_LABELS[None if best_plain == 'None' else best_plain]}, "
                f"{_mean(pp[best_plain]):.1f}%); pruning changes it by "
                f"{_mean(rec['pruned'][best_otf]) - _mean(rec['trained']):+.1f} points, the plain model by "
                f"{_mean(pp[best_plain]) - _mean(r['plain']):+.1f}."
            )
    lines.append("")
    if costs:
        reading.append(
            "Training cost: the on-the-fly machinery (parametrised forward, penalty gradient and a "
            "top-k per layer at every step) takes "
            + "; ".join(
                f"{statistics.median(c):.2f}× the plain training's wall time on {k} (median of {len(c)} "
                f"runs, {min(c):.2f}-{max(c):.2f})"
                for k, c in costs.items()
            )
            + "."
        )
    lines += [" ".join(reading), ""]
    return "\n".join(lines)


def to_markdown(results: dict) -> str:
    n = len(results["settings"]["seeds"])
    return unstructured_markdown(results["unstructured"], n) + "\n" + onthefly_markdown(results["onthefly"], n)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 seed, quick models, 2 sparsities")
    args = parser.parse_args(argv)
    results = run(args.quick)
    print(to_markdown(results))
    print(", ".join(f"{k} {v:.1f}s" for k, v in results["timing"].items()))


if __name__ == "__main__":
    main()
