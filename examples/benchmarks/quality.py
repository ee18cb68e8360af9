"""Accuracy after pruning: FAIR vs uniform baselines vs the authors' code vs Lightning's ModelPruning.

For every model of :func:`common.tasks` and every seed (the training seed is also the pruning
seed), at each kept-MACs target, this records the held-out top-1 accuracy one-shot (no
fine-tuning) and after one epoch of fine-tuning on the train split, for

* ``fair``: ``lightning_fair.prune(copy, calib, target_macs=t, scores=s)``; the scores are
  computed once per model and seed (``compute_scores``, post-activation, the default) and reused
  for every target;
* ``fair_output``: the same with ``observe="output"`` (U observes the raw layer output);
* ``fair_l1``: FAIR's per-layer ToD counts, but the smallest-L1 units are removed (``ranking="l1"``);
* ``l1`` / ``taylor`` / ``random``: torch-pruning ``MetaPruner`` with the same ``pruning_ratio``
  for every layer (output layer ignored) and ``MagnitudeImportance(p=1)`` / ``TaylorImportance()``
  (gradients of the calibration loss) / ``RandomImportance()``; the ratio that hits each target is
  found by bisection, measuring MACs with ``lightning_fair.report.measure``;
* ``reference``: the authors' ``network-pruner`` (if installed): ``get_metrics`` once, then a sweep
  of ``ToD_level``; each target reports the sweep point whose kept MACs are nearest to it;
* ``modelpruning``: Lightning's ``ModelPruning("l1_unstructured")`` (global, its default) on every
  Conv/Linear weight but the output layer, at the nominal ratio ``1 - t``: weights are zeroed, the
  shapes and so the MACs do not change (one-shot only).

A target a method cannot reach is recorded as unreachable, with what it can reach.

Run:  python examples/benchmarks/quality.py [--quick]     (run_all.py writes the docs page)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import lightning_fair  # noqa: E402
from lightning_fair import compute_scores  # noqa: E402
from lightning_fair.report import measure  # noqa: E402

TARGETS = (0.8, 0.6, 0.5, 0.4, 0.3)
QUICK_TARGETS = (0.5, 0.3)
SEEDS = (0, 1, 2)
REFERENCE_TOD = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.85, 1.0)

METHODS = {  # key: (label, fine-tuned?)
    "fair": ("FAIR (ours)", True),
    "fair_output": ("FAIR, observe=output", True),
    "fair_l1": ("FAIR counts + L1 ranking", True),
    "l1": ("uniform L1 magnitude", True),
    "taylor": ("uniform Taylor", True),
    "random": ("uniform random", True),
    "reference": ("network-pruner 2.16 (authors)", True),
    "modelpruning": ("Lightning ModelPruning (unstructured)", False),
}


# ------------------------------------------------------------------------- helpers
def have_reference() -> bool:
    try:
        from Network_Pruner import FAIR_Pruner  # noqa: F401
    except Exception:
        return False
    return True


def kept_macs(model: nn.Module, example, base_macs: int) -> float:
    return measure(model, example)[0] / base_macs


def nonzero_fraction(model: nn.Module, original: nn.Module) -> float:
    """Nonzero Conv/Linear weights of ``model`` over all Conv/Linear weights of ``original``."""
    def weights(m):
        return [mod.weight for mod in m.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    total = sum(w.numel() for w in weights(original))
    return sum(int((w != 0).sum()) for w in weights(model)) / total


# ------------------------------------------------------------------------- methods
def tp_uniform(model: nn.Module, example, importance, ratio: float,
               calib_loader=None) -> nn.Module:
    """Prune ``model`` in place with torch-pruning, the same ratio in every layer, output layer kept."""
    import torch_pruning as tp

    if isinstance(importance, tp.importance.TaylorImportance):
        model.eval()
        model.zero_grad(set_to_none=True)
        for x, y in calib_loader:
            F.cross_entropy(model(x), y).backward()
    pruner = tp.pruner.MetaPruner(
        model, example, importance=importance, pruning_ratio=ratio, ignored_layers=[model.classifier],
        in_channel_groups={}, out_channel_groups={}, num_heads={}, channel_groups={},  # fresh dicts
    )
    pruner.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


def uniform_ratios(model: nn.Module, example, targets, base_macs: int, grid: int = 25, iterations: int = 8):
    """``{target: ratio or None}``: the smallest uniform ratio whose pruned model keeps at most the
    target fraction of the MACs, and ``{target: reachable}`` for targets no ratio reaches.

    A grid of ratios, then bisection between the last grid point above the target and the first
    at or below it. (torch-pruning skips a layer whose ratio would leave it no channel, so kept
    MACs are not monotone at ratios near 1: the first grid point that reaches the target is used.)
    The per-layer counts of uniform pruning depend only on the ratio, not on the importance, so
    one search per architecture serves L1, Taylor and random.
    """
    import torch_pruning as tp

    def kept(ratio):
        return kept_macs(tp_uniform(common.clone(model), example, tp.importance.MagnitudeImportance(p=1), ratio),
                         example, base_macs)

    points = [(i / grid, kept(i / grid)) for i in range(grid)]  # 0 .. 0.96
    ratios, unreachable = {}, {}
    for t in targets:
        first = next((i for i, (_, k) in enumerate(points) if k <= t + 1e-9), None)
        if first is None:
            ratios[t], unreachable[t] = None, min(k for _, k in points)
            continue
        lo, hi = points[first - 1][0] if first else 0.0, points[first][0]
        for _ in range(iterations if first else 0):
            mid = (lo + hi) / 2
            if kept(mid) <= t + 1e-9:
                hi = mid
            else:
                lo = mid
        ratios[t] = hi
    return ratios, unreachable


def modelpruning(model: nn.Module, amount: float) -> nn.Module:
    """Lightning's ModelPruning callback, applied directly (no Trainer), made permanent."""
    from lightning.pytorch.callbacks import ModelPruning

    params = [(m, "weight") for name, m in model.named_modules()
              if isinstance(m, (nn.Conv2d, nn.Linear)) and m is not model.classifier]
    callback = ModelPruning("l1_unstructured", parameters_to_prune=params, amount=amount,
                            use_lottery_ticket_hypothesis=False, verbose=0)
    callback.setup(None, model, "fit")
    callback.apply_pruning(amount)
    callback.make_pruning_permanent(model)
    return model.eval()


class Reference:
    """The authors' network-pruner: metrics once, ToD sweep, nearest point per target."""

    def __init__(self, model: nn.Module, calib_loader, example, seed: int):
        from Network_Pruner import FAIR_Pruner as fp

        self.fp, self.model, self.example = fp, model, example
        import random

        import numpy as np

        torch.manual_seed(seed)  # its projection directions and class samples are drawn unseeded
        np.random.seed(seed)
        random.seed(seed)
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
            self.results = fp.get_metrics(copy.deepcopy(model), calib_loader, device=torch.device("cpu"),
                                          the_samplesize_for_compute_distance=32,
                                          results_save_path=os.path.join(tmp, "results.pkl"))

    def prune(self, tod: float) -> nn.Module:
        fp = self.fp
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
            ratios = fp.get_ratios(self.model, self.results, ToD_level=tod)
            skeleton = fp.get_skeleton(copy.deepcopy(self.model), ratios, self.example)
            pruned, _ = fp.prune(skeleton, copy.deepcopy(self.model), self.results, ratios,
                                 example_inputs=self.example, pruned_model_save_path=os.path.join(tmp, "p.pth"))
        return pruned.eval()


# ------------------------------------------------------------------------- one model, one seed
def evaluate_seed(task: common.Task, seed: int, targets, quick: bool, use_reference: bool,
                  ratios: Dict[float, Optional[float]], unreachable: Dict[float, float], timing: Dict[str, float],
                  keep: Optional[dict] = None) -> Dict[str, dict]:
    """``{method: {target: record}}`` for one trained model; record keys: status, kept, oneshot, finetuned, note."""
    import torch_pruning as tp

    data = common.load_data(task.data)
    model = common.trained_model(task, seed)
    example = data.calib.x[:1]
    calib = common.loader(data.calib, batch_size=100)
    base_macs = measure(model, example)[0]
    ft_limit = 500 if quick else None
    out: Dict[str, dict] = defaultdict(dict)

    batchnorm = common.has_batchnorm(model)

    def record(method, target, pruned, kept, note="", finetune=True, nonzero=None):
        rec = {"status": "ok", "kept": kept, "oneshot": common.accuracy(pruned, data.test), "note": note}
        # one-shot + BatchNorm statistics re-estimated on the calibration images (no-op without BN)
        rec["recal"] = (common.accuracy(common.recalibrate_batchnorm(pruned, data.calib), data.test)
                        if batchnorm else rec["oneshot"])
        if nonzero is not None:
            rec["nonzero"] = nonzero
        if finetune:
            start = time.perf_counter()
            common.finetune(pruned, data.train, seed, limit=ft_limit)
            timing["finetune"] += time.perf_counter() - start
            rec["finetuned"] = common.accuracy(pruned, data.test)
        out[method][target] = rec

    # FAIR, three variants; scores once per model and seed
    scores = {}
    for observe in ("activation", "output"):
        start = time.perf_counter()
        scores[observe] = compute_scores(model, calib, observe=observe, seed=seed)
        timing["fair_scores"] += time.perf_counter() - start
    for method, observe, ranking in (("fair", "activation", "utilization"), ("fair_output", "output", "utilization"),
                                     ("fair_l1", "activation", "l1")):
        for t in targets:
            start = time.perf_counter()
            try:
                result = lightning_fair.prune(common.clone(model), calib, target_macs=t, scores=scores[observe],
                                              ranking=ranking, seed=seed)
            except ValueError as err:
                timing[method] += time.perf_counter() - start
                match = re.search(r">=\s*([0-9.]+)", str(err))
                out[method][t] = {"status": "unreachable", "reachable": float(match.group(1)) if match else None,
                                  "note": str(err)}
                continue
            timing[method] += time.perf_counter() - start
            pruned = result.model.eval()
            if keep is not None and method == "fair" and t == 0.5 and "fair" not in keep:
                keep["fair"] = copy.deepcopy(pruned)
            record(method, t, pruned, result.report.macs_after / result.report.macs_before,
                   note=f"tolerance {result.tolerance:.3g}")

    # uniform torch-pruning baselines
    for method, make in (("l1", lambda: tp.importance.MagnitudeImportance(p=1)),
                         ("taylor", lambda: tp.importance.TaylorImportance()),
                         ("random", lambda: tp.importance.RandomImportance())):
        for t in targets:
            ratio = ratios[t]
            if ratio is None:
                out[method][t] = {"status": "unreachable", "reachable": unreachable[t],
                                  "note": "no uniform ratio reaches it"}
                continue
            start = time.perf_counter()
            torch.manual_seed(seed)
            pruned = tp_uniform(common.clone(model), example, make(), ratio, calib)
            timing[method] += time.perf_counter() - start
            record(method, t, pruned, kept_macs(pruned, example, base_macs), note=f"ratio {ratio:.3f}")

    # the authors' code: sweep, then the nearest sweep point per target
    if use_reference:
        start = time.perf_counter()
        try:
            ref = Reference(model, calib, example, seed)
            sweep = []
            for tod in REFERENCE_TOD:
                pruned = ref.prune(tod)
                sweep.append((tod, kept_macs(pruned, example, base_macs)))
            timing["reference"] += time.perf_counter() - start
            for t in targets:
                tod, kept = min(sweep, key=lambda p: (abs(p[1] - t), p[0]))
                start = time.perf_counter()
                pruned = ref.prune(tod)
                timing["reference"] += time.perf_counter() - start
                record("reference", t, pruned, kept, note=f"ToD_level {tod:g}")
            out["reference"]["sweep"] = sweep
        except Exception as err:  # record and go on: the comparison says it failed
            timing["reference"] += time.perf_counter() - start
            text = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            for t in targets:
                out["reference"][t] = {"status": "error", "note": text}

    # Lightning ModelPruning: zeros, same shapes
    for t in targets:
        start = time.perf_counter()
        pruned = modelpruning(common.clone(model), 1.0 - t)
        timing["modelpruning"] += time.perf_counter() - start
        if keep is not None and t == 0.5 and "modelpruning" not in keep:
            keep["modelpruning"] = copy.deepcopy(pruned)
        record("modelpruning", t, pruned, kept_macs(pruned, example, base_macs), finetune=False,
               nonzero=nonzero_fraction(pruned, model))
    if keep is not None and "original" not in keep:
        keep.update(original=copy.deepcopy(model), example=example, example64=data.calib.x[:64].clone(),
                    calib=calib, data=task.data)
    return {"baseline": common.accuracy(model, data.test), "macs": base_macs, "batchnorm": batchnorm,
            "params": measure(model, example)[1], "methods": dict(out)}


# ------------------------------------------------------------------------- all
def run(quick: bool = False, seeds=None, targets=None, models=None, keep_models: bool = False,
        verbose: bool = True, reference: Optional[bool] = None, threads: int = 1) -> dict:
    """Run the quality benchmark; returns plain data (and, with ``keep_models``, ``"_models"``:
    per model the seed-0 original, its FAIR and ModelPruning versions at kept MACs 0.5, example
    inputs and the calibration loader).

    ``reference``: run network-pruner (default: when installed, and not in quick mode).
    ``threads``: torch threads while it runs (1: on a shared 2-core machine two OpenMP threads
    stall for seconds whenever another process takes a core).
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run(quick, seeds, targets, models, keep_models, verbose, reference, threads)
    finally:
        torch.set_num_threads(previous_threads)


def _run(quick, seeds, targets, models, keep_models, verbose, reference, threads) -> dict:
    seeds = tuple(seeds) if seeds is not None else ((0,) if quick else SEEDS)
    targets = tuple(targets) if targets is not None else (QUICK_TARGETS if quick else TARGETS)
    all_tasks = common.tasks(quick)
    names = list(models) if models else list(all_tasks)
    use_reference = have_reference() and (not quick if reference is None else reference)
    timing: Dict[str, float] = defaultdict(float)
    results = {"settings": {"quick": quick, "seeds": list(seeds), "targets": list(targets),
                            "reference": use_reference, "reference_installed": have_reference(),
                            "threads": threads, "finetune_lr": common.FINETUNE_LR, "finetune_images": 500 if quick else None},
               "models": {}, "_models": {}}
    start_all = time.perf_counter()
    for name in names:
        task = all_tasks[name]
        data = common.load_data(task.data)
        start = time.perf_counter()
        model0 = common.trained_model(task, seeds[0], verbose=verbose)
        timing["train"] += time.perf_counter() - start
        example = data.calib.x[:1]
        base = measure(model0, example)[0]
        start = time.perf_counter()
        ratios, unreachable = uniform_ratios(model0, example, targets, base)
        timing["uniform_search"] += time.perf_counter() - start
        per_seed = []
        keep = {} if keep_models else None
        for seed in seeds:
            start = time.perf_counter()
            common.trained_model(task, seed, verbose=verbose)
            timing["train"] += time.perf_counter() - start
            per_seed.append(evaluate_seed(task, seed, targets, quick, use_reference, ratios, unreachable, timing, keep))
            if verbose:
                print(f"  {name} seed {seed} done ({time.perf_counter() - start_all:.0f}s)", flush=True)
        results["models"][name] = aggregate(task, data, per_seed, targets)
        results["models"][name]["uniform_ratios"] = {str(t): r for t, r in ratios.items()}
        if keep_models:
            results["_models"][name] = keep
    results["timing"] = dict(timing)
    results["timing"]["total"] = time.perf_counter() - start_all
    return results


def aggregate(task, data, per_seed: List[dict], targets) -> dict:
    summary = {
        "label": task.label, "data": data.describe(), "epochs": task.epochs,
        "baseline": [s["baseline"] for s in per_seed], "macs": per_seed[0]["macs"],
        "params": per_seed[0]["params"], "batchnorm": per_seed[0]["batchnorm"], "methods": {},
    }
    for method in METHODS:
        if not any(method in s["methods"] for s in per_seed):
            continue
        rows = {}
        for t in targets:
            recs = [s["methods"][method].get(t) for s in per_seed if method in s["methods"]]
            recs = [r for r in recs if r is not None]
            statuses = {r["status"] for r in recs}
            if statuses != {"ok"}:
                bad = next(r for r in recs if r["status"] != "ok")
                reach = [r.get("reachable") for r in recs if r.get("reachable") is not None]
                rows[str(t)] = {"status": bad["status"], "note": bad["note"],
                                "reachable": max(reach) if reach else None}
                continue
            row = {"status": "ok", "notes": [r["note"] for r in recs]}
            for key in ("kept", "oneshot", "recal", "finetuned", "nonzero"):
                if key in recs[0]:
                    row[key] = [r[key] for r in recs]
            rows[str(t)] = row
        summary["methods"][method] = rows
        sweeps = [s["methods"][method].get("sweep") for s in per_seed if method in s["methods"]]
        if any(sweeps):
            summary["reference_sweep"] = sweeps
    return summary


# ------------------------------------------------------------------------- report
def _fmt(values, digits=1) -> str:
    mean, std = common.mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def cell(row: dict, key: str) -> str:
    if row is None:
        return "–"
    if row["status"] == "unreachable":
        return f"unreachable (≥ {row['reachable']:.2f})" if row.get("reachable") else "unreachable"
    if row["status"] == "error":
        return "failed"
    if key not in row:
        return "–"
    kept = common.mean_std(row["kept"])[0]
    text = _fmt(row[key])
    if "nonzero" in row:
        return f"{text} <sub>MACs {kept:.2f}</sub>"
    return f"{text} <sub>({kept:.2f})</sub>"


KEYS = {  # what each accuracy key means, for table titles and plots
    "oneshot": "one-shot (no fine-tuning)",
    "recal": "one-shot + BatchNorm statistics re-estimated on the calibration images",
    "finetuned": "after one epoch of fine-tuning",
}


def _methods_present(models: dict):
    return [(method, label, tuned) for method, (label, tuned) in METHODS.items()
            if any(method in m["methods"] for m in models.values())]


def to_markdown(results: dict, headline_targets=(0.5, 0.3)) -> str:
    settings = results["settings"]
    targets = settings["targets"]
    n = len(settings["seeds"])
    models = results["models"]
    present = _methods_present(models)
    lines = []
    heads = [t for t in headline_targets if t in targets]
    for t in heads:
        lines += [f"### One-shot accuracy at kept MACs {t} (no fine-tuning)", "",
                  "Held-out top-1 %, mean ± std over the seeds; <sub>(kept MACs reached)</sub>.", "",
                  "| method | " + " | ".join(m["label"] for m in models.values()) + " |",
                  "|---|" + "---:|" * len(models)]
        lines.append("| trained model (100% MACs) | " + " | ".join(_fmt(m["baseline"]) for m in models.values()) + " |")
        for method, label, _ in present:
            cells = [cell(m["methods"].get(method, {}).get(str(t)), "oneshot") for m in models.values()]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    bn_models = {k: m for k, m in models.items() if m.get("batchnorm")}
    if heads and bn_models:
        cols = [(m, t) for m in bn_models.values() for t in heads]
        lines += ["### The same with BatchNorm statistics re-estimated (still no training)", "",
                  "Every pruned model's BatchNorm running mean/variance re-estimated by forward passes over the "
                  "500 (digits: 300) calibration images; no labels, no weight update.", "",
                  "| method | " + " | ".join(f"{m['label'].split(' /')[0]}, {t}" for m, t in cols) + " |",
                  "|---|" + "---:|" * len(cols)]
        for method, label, _ in present:
            cells = [cell(m["methods"].get(method, {}).get(str(t)), "recal") for m, t in cols]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    for name, m in models.items():
        base = _fmt(m["baseline"])
        lines += [f"### {m['label']}", "",
                  f"{m['data']}; trained {m['epochs']} epochs; {m['macs'] / 1e6:.2f} M MACs, "
                  f"{m['params'] / 1e3:.1f} k parameters; held-out accuracy before pruning **{base}%**"
                  f" (mean ± std over {n} seed{'s' if n > 1 else ''})"
                  + ("." if m.get("batchnorm") else "; no BatchNorm."), ""]
        for key, title in KEYS.items():
            if key == "recal" and not m.get("batchnorm"):
                continue
            lines += [f"Top-1 % {title}; columns: target kept MACs; <sub>(kept MACs reached)</sub>", "",
                      "| method | " + " | ".join(str(t) for t in targets) + " |",
                      "|---|" + "---:|" * len(targets)]
            for method, label, tuned in present:
                if method not in m["methods"] or (key == "finetuned" and not tuned):
                    continue
                rows = m["methods"][method]
                lines.append(f"| {label} | " + " | ".join(cell(rows.get(str(t)), key) for t in targets) + " |")
            lines.append("")
        errors = {r["note"] for rows in m["methods"].values() for r in rows.values()
                  if isinstance(r, dict) and r.get("status") == "error"}
        for e in sorted(errors):
            lines += [f"network-pruner failed on this model: `{e}`", ""]
    return "\n".join(lines)


METHOD_STYLE = {
    "fair": dict(color="C3", marker="o", linewidth=2.2),
    "fair_output": dict(color="C1", marker="s", linestyle="--"),
    "fair_l1": dict(color="C5", marker="^", linestyle="--"),
    "l1": dict(color="C0", marker="v"),
    "taylor": dict(color="C2", marker="D"),
    "random": dict(color="C7", marker="x"),
    "reference": dict(color="C4", marker="P", linestyle=":"),
    "modelpruning": dict(color="k", marker=".", linestyle=":"),
}


def plot(results: dict, img_dir) -> List[str]:
    """One PNG per model: accuracy vs kept MACs, one-shot and fine-tuned side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img_dir = Path(img_dir)
    img_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, m in results["models"].items():
        panels = [("oneshot", "one-shot (no fine-tuning)")]
        if m.get("batchnorm"):
            panels.append(("recal", "one-shot + BatchNorm re-estimated"))
        panels.append(("finetuned", "after 1 epoch of fine-tuning"))
        fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels) + 0.5, 4.4))
        for ax, (key, title) in zip(axes, panels):
            for method, (label, tuned) in METHODS.items():
                rows = m["methods"].get(method)
                if not rows or (key == "finetuned" and not tuned):
                    continue
                pts = []
                for t, row in rows.items():
                    if not isinstance(row, dict) or row.get("status") != "ok" or key not in row:
                        continue
                    x = common.mean_std(row["nonzero"] if "nonzero" in row else row["kept"])[0]
                    y, s = common.mean_std(row[key])
                    pts.append((x, y, s))
                if not pts:
                    continue
                pts.sort()
                xs, ys, ss = zip(*pts)
                if method == "modelpruning":
                    label = label + " (x = nonzero weights; its MACs stay 1.0)"
                ax.errorbar(xs, ys, yerr=ss, label=label, capsize=2, markersize=5, **METHOD_STYLE[method])
            base, _ = common.mean_std(m["baseline"])
            ax.axhline(base, color="grey", linewidth=0.8, linestyle="-.", label="trained (100% MACs)")
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("kept MACs (fraction)")
            ax.invert_xaxis()
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("held-out top-1 accuracy (%)")
        low = min(ax.get_ylim()[0] for ax in axes[:-1])  # one-shot panels share a scale; fine-tuned zooms in
        for ax in axes[:-1]:
            ax.set_ylim(max(0, low), 100)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
        n = len(results["settings"]["seeds"])
        fig.suptitle(f"{m['label']}: mean ± std over {n} seed{'s' if n > 1 else ''}", fontsize=11)
        fig.tight_layout(rect=(0, 0.14, 1, 1))
        path = img_dir / f"quality_{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    return written


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 targets, LeNet and small CNN, tiny training")
    parser.add_argument("--models", default=None, help="comma-separated subset of the tasks")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds")
    args = parser.parse_args(argv)
    results = run(args.quick, seeds=[int(s) for s in args.seeds.split(",")] if args.seeds else None,
                  models=args.models.split(",") if args.models else None)
    results.pop("_models", None)
    print(to_markdown(results))
    print(f"\ntotal {results['timing']['total']:.0f}s; " +
          ", ".join(f"{k} {v:.1f}s" for k, v in results["timing"].items() if k != "total"))


if __name__ == "__main__":
    main()
