"""Standard architectures: FAIR vs torch-pruning on VGG-11-BN, ResNet-20/56 and MobileNetV2, with fine-tuning.

The quality benchmark (quality.py) uses small models; this one asks the same question on the
overparameterized architectures users have, at their usual widths (models.py), trained here on
the real MNIST images (``common.load_data("mnist")``) with SGD (momentum 0.9, Nesterov, weight
decay 5e-4, one-cycle learning rate, batch 64; cached like every benchmark model). For each model,
at kept MACs 0.5 and 0.3 (measured by ``lightning_fair.units.cost.measure``):

* ``fair``: the default pipeline, ``lightning_fair.prune(copy, calib, target_macs=t, scores=s)``,
  scores computed once per model with ``lightning_fair.compute_scores``;
* ``l2`` / ``taylor``: torch-pruning, one ratio for every layer (quality.py's :func:`tp_uniform`,
  ratio searched by :func:`uniform_ratios`), ``MagnitudeImportance(p=2)`` / ``TaylorImportance()``;
* ``global_l2`` / ``lamp``: torch-pruning with a global threshold (quality.py's :func:`tp_global`
  and :func:`global_ratios`), ``MagnitudeImportance(p=2)`` / ``LAMPImportance(p=2)``;

every baseline followed by BatchNorm re-estimation on the calibration split
(``common.recalibrate_batchnorm``; FAIR's default pipeline does it itself). Held-out accuracy
one-shot, then after each fine-tuning schedule of :data:`FINETUNES` (train mode while training,
eval mode for accuracy), and after that fine-tune with the BatchNorm statistics re-estimated on
training images (so running statistics that lag the weights show). Fine-tuned: FAIR, uniform L2
and the best baseline one-shot at that target (fine-tuning is most of the run time). An epoch of
fine-tuning is the first 1000 training images of the 3500 (schedule (b): 500; ``--ft-images``,
``--ft-b-images``), one seed only: the time budget.

Gradual vs one step, at kept MACs 0.3, for FAIR and uniform L2: three steps to kept
``1 - 0.7 * i / 3`` of the original MACs, each pruning the current model to ``step / kept now``
(FAIR: scores recomputed on the current model; L2: ratio searched on it), fine-tune (a) after
every step (the last one is the final fine-tune), against one step + (a) and one step + (b).

Cost: ``--estimate`` times a few batches of each model and prints the expected run time
(standard_estimate.py); on the 2-core development machine, shared with other jobs, it said about
7 min of training (cached after the first run) and 22 min of pruning, fine-tuning and evaluation,
MobileNetV2 nearly half of it.

Run:  python examples/benchmarks/standard.py [--quick] [--models resnet20] [--estimate]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import models  # noqa: E402
import quality  # noqa: E402

import lightning_fair  # noqa: E402
from lightning_fair import compute_scores  # noqa: E402
from lightning_fair.units.cost import measure

TARGETS = (0.5, 0.3)
SEEDS = (0,)
GRADUAL_TARGET, GRADUAL_STEPS = 0.3, 3
GRADUAL_METHODS = ("fair", "l2")

#: key: (optimizer, lr, schedule, epochs, the setting that says how many training images an epoch has)
FINETUNES = {
    "a": ("sgd", 0.01, "cosine", 1, "ft_images"),
    "b": ("sgd", 0.01, "cosine", 3, "ft_b_images"),
    "c": ("adam", 1e-3, "constant", 1, "ft_images"),
}
SCHEDULES = {"cosine": "cosine to 0", "constant": "constant"}
METHODS = {
    "fair": "FAIR (ours, default pipeline)",
    "l2": "uniform L2 magnitude",
    "taylor": "uniform Taylor",
    "global_l2": "global L2 magnitude",
    "lamp": "LAMP (global)",
}
BASELINES = ("l2", "taylor", "global_l2", "lamp")
ALWAYS_FINETUNED = ("fair", "l2")  # plus the best baseline one-shot at each target
EVAL_BATCH = 64  # batches of 500 run MobileNetV2 2.5 times slower per image on one CPU thread


@dataclass(frozen=True)
class StandardTask(common.Task):
    """A model of models.py on MNIST, trained with SGD (one-cycle learning rate peaking at ``lr``)."""

    optimizer: str = "sgd"

    def build(self) -> nn.Module:
        return models.MODELS[self.builder](**dict(self.kwargs))

    def train(self, model: nn.Module, split: common.Split, seed: int) -> nn.Module:
        return common.train_epochs(
            model,
            split,
            self.epochs,
            self.lr,
            self.batch_size,
            seed,
            limit=self.train_limit,
            optimizer=self.optimizer,
            schedule="one_cycle",
        )


def tasks(quick: bool = False) -> Dict[str, StandardTask]:
    """Full: the four standard models at their usual widths. Quick: tiny versions (smoke test)."""
    kw = common._kw
    if quick:  # the same families, tiny and shallow: a smoke test of every code path
        return {
            "vgg11_bn": StandardTask(
                "vgg11_bn",
                "vgg11_bn",
                "mnist",
                kw(cfg=(8, "M", 16, "M", 16, 16, "M", 32, 32)),
                epochs=3,
                lr=0.1,
                train_limit=1000,
                label="VGG-BN, 1/8 width, 7 layers",
            ),
            "resnet20": StandardTask(
                "resnet20",
                "resnet",
                "mnist",
                kw(width=4, layers=(1, 1, 1)),
                epochs=3,
                lr=0.1,
                train_limit=1000,
                label="ResNet-8, width 4",
            ),
            "mobilenet_v2": StandardTask(
                "mobilenet_v2",
                "mobilenet_v2",
                "mnist",
                kw(width_mult=0.25, setting=((1, 16, 1, 1), (6, 24, 2, 2)), last_channels=64),
                epochs=3,
                lr=0.1,
                train_limit=1000,
                label="MobileNetV2, width 0.25, 3 blocks",
            ),
        }
    # epochs and peak lr: the held-out accuracies of a few tries (seed 0) were VGG-11-BN 96.9 / 97.7% after 2 / 3
    # epochs at 0.05; ResNet-20 97.3% after 4 at 0.05 or 0.03, 96.4% at 0.2, 98.0% after 6 at 0.1; ResNet-56 96.3 /
    # 96.6 / 96.3 / 96.6% after 3 at 0.05 / 4 at 0.05 / 3 at 0.1 / 3 at 0.02; MobileNetV2 97.1% after 3 at 0.05
    return {
        "vgg11_bn": StandardTask("vgg11_bn", "vgg11_bn", "mnist", epochs=3, lr=0.05, label="VGG-11-BN"),
        "resnet20": StandardTask(
            "resnet20", "resnet", "mnist", kw(layers=(3, 3, 3)), epochs=4, lr=0.05, label="ResNet-20"
        ),
        "resnet56": StandardTask(
            "resnet56", "resnet", "mnist", kw(layers=(9, 9, 9)), epochs=3, lr=0.05, label="ResNet-56"
        ),
        "mobilenet_v2": StandardTask(
            "mobilenet_v2", "mobilenet_v2", "mnist", epochs=3, lr=0.05, label="MobileNetV2 (width 1.0)"
        ),
    }


def settings(quick: bool, ft_images: Optional[int] = None, ft_b_images: Optional[int] = None) -> dict:
    """Sizes: an epoch of fine-tuning is the first ``ft_images`` training images (schedules (a), (c)
    and the gradual steps) or ``ft_b_images`` (schedule (b)); ``bn_images`` training images
    re-estimate BatchNorm after fine-tuning; ``test_images`` held-out images are scored."""
    st = {
        "quick": quick,
        "targets": list(TARGETS),
        "seeds": list(SEEDS),
        "ft_images": ft_images or (256 if quick else 1000),
        "ft_b_images": ft_b_images or (128 if quick else 500),
        "bn_images": 200 if quick else 500,
        "test_images": 500 if quick else len(common.load_data("mnist").test),
        "gradual_target": GRADUAL_TARGET,
        "gradual_steps": GRADUAL_STEPS,
        "sgd_momentum": common.SGD_MOMENTUM,
        "sgd_weight_decay": common.SGD_WEIGHT_DECAY,
        "batch_size": 64,
    }
    st["finetunes"] = {}
    for key, (optimizer, lr, schedule, epochs, images) in FINETUNES.items():
        steps = epochs * -(-st[images] // st["batch_size"])
        st["finetunes"][key] = (
            f"{'SGD' if optimizer == 'sgd' else 'Adam'}, {epochs} epoch{'s' if epochs > 1 else ''} "
            f"over {st[images]} training images ({steps} steps), lr {lr:g} {SCHEDULES[schedule]}"
        )
    return st


def first(split: common.Split, n: int) -> common.Split:
    return common.Split(split.x[:n], split.y[:n])


# ------------------------------------------------------------------------- one model
class ModelRun:
    """One trained model under evaluation: pruning, fine-tuning and recording, with timings."""

    def __init__(self, task: StandardTask, seed: int, st: dict, timing: Dict[str, float]):
        self.task, self.seed, self.st, self.timing = task, seed, st, timing
        self.phase = ""  # prefix of the timing keys ("gradual_" while the gradual rows run)
        self.data = common.load_data(task.data)
        start = time.perf_counter()
        self.model = common.trained_model(task, seed)
        self.timing["train"] += time.perf_counter() - start
        self.example = self.data.calib.x[:1]
        self.calib = common.loader(self.data.calib, batch_size=100)
        self.base_macs, self.params = measure(self.model, self.example)

    def accuracy(self, model: nn.Module) -> float:
        """Held-out top-1 % on the test split (its first ``test_images`` in quick mode)."""
        return common.accuracy(model, first(self.data.test, self.st["test_images"]), batch_size=EVAL_BATCH)

    def kept(self, model: nn.Module) -> float:
        return quality.kept_macs(model, self.example, self.base_macs)

    def finetune(self, model: nn.Module, key: str) -> nn.Module:
        """Fine-tunes ``model`` in place with schedule ``key`` of :data:`FINETUNES`."""
        optimizer, lr, schedule, epochs, images = FINETUNES[key]
        start = time.perf_counter()
        common.train_epochs(
            model,
            self.data.train,
            epochs,
            lr,
            self.st["batch_size"],
            self.seed + 7919,
            limit=self.st[images],
            optimizer=optimizer,
            schedule=schedule,
        )
        self.timing[self.phase + f"finetune_{key}"] += time.perf_counter() - start
        return model

    def accuracies(self, model: nn.Module) -> tuple:
        """(held-out accuracy, the same after re-estimating BatchNorm on ``bn_images`` training images)."""
        start = time.perf_counter()
        acc = self.accuracy(model)
        bn = self.accuracy(common.recalibrate_batchnorm(model, first(self.data.train, self.st["bn_images"])))
        self.timing[self.phase + "evaluate"] += time.perf_counter() - start
        return acc, bn

    # -- pruning, each returns (pruned model in eval mode, note); BatchNorm re-estimated
    def fair(self, model: nn.Module, target: float, scores=None):
        if scores is None:  # the current model's own scores (gradual steps)
            start = time.perf_counter()
            scores = compute_scores(model, self.calib, seed=self.seed)
            self.timing[self.phase + "fair_scores"] += time.perf_counter() - start
        start = time.perf_counter()
        result = lightning_fair.prune(
            common.clone(model), self.calib, target_macs=target, scores=scores, seed=self.seed
        )
        self.timing[self.phase + "fair"] += time.perf_counter() - start
        return result.model.eval(), f"global threshold {result.level:.3g}"

    def uniform(self, model: nn.Module, method: str, target: float, ratio: Optional[float] = None):
        start = time.perf_counter()
        if ratio is None:  # searched on this very model (gradual steps)
            ratio = quality.uniform_ratios(
                model, self.example, [target], measure(model, self.example)[0], grid=13, iterations=6
            )[0][target]
            if ratio is None:
                raise ValueError(f"no uniform ratio reaches {target:.3f}")
        torch.manual_seed(self.seed)
        pruned = quality.tp_uniform(common.clone(model), self.example, quality.UNIFORM[method](), ratio, self.calib)
        pruned = common.recalibrate_batchnorm(pruned, self.data.calib)
        self.timing[self.phase + method] += time.perf_counter() - start
        return pruned, f"ratio {ratio:.3f}"


def oneshot(run: ModelRun) -> Dict[str, dict]:
    """``{method: {target: {"model", "kept", "oneshot", "note"}}}`` (or ``status`` unreachable)."""
    out: Dict[str, dict] = defaultdict(dict)

    def put(method, t, pruned, note):
        start = time.perf_counter()
        out[method][t] = {"model": pruned, "kept": run.kept(pruned), "note": note, "oneshot": run.accuracy(pruned)}
        run.timing["evaluate"] += time.perf_counter() - start

    start = time.perf_counter()
    scores = compute_scores(run.model, run.calib, seed=run.seed)
    run.timing["fair_scores"] += time.perf_counter() - start
    for t in TARGETS:
        try:
            put("fair", t, *run.fair(run.model, t, scores))
        except ValueError as err:
            out["fair"][t] = {"status": "unreachable", "note": str(err)}
    start = time.perf_counter()
    ratios, unreachable = quality.uniform_ratios(run.model, run.example, TARGETS, run.base_macs)
    run.timing["uniform_search"] += time.perf_counter() - start
    for method in ("l2", "taylor"):
        for t in TARGETS:
            if ratios[t] is None:
                out[method][t] = {"status": "unreachable", "note": f"uniform pruning reaches {unreachable[t]:.2f}"}
            else:
                put(method, t, *run.uniform(run.model, method, t, ratios[t]))
    for method in ("global_l2", "lamp"):
        make = quality.GLOBAL[method]
        start = time.perf_counter()
        (ratios_g, unreachable_g), source = quality.global_ratios(
            run.model, run.example, TARGETS, run.base_macs, make, run.calib
        )
        run.timing[f"{method}_search"] += time.perf_counter() - start
        for t in TARGETS:
            if ratios_g[t] is None:
                out[method][t] = {"status": "unreachable", "note": f"global pruning reaches {unreachable_g[t]:.2f}"}
                continue
            start = time.perf_counter()
            pruned = quality.clone_with_grads(source)
            capped = quality.tp_global(pruned, run.example, make(), ratios_g[t])
            pruned = common.recalibrate_batchnorm(pruned, run.data.calib)
            run.timing[method] += time.perf_counter() - start
            put(method, t, pruned, f"ratio {ratios_g[t]:.3f}" + (f", {capped} layer(s) capped" if capped else ""))
    return out


def best_oneshot_baseline(rows: Dict[str, dict], t: float) -> Optional[str]:
    scored = {m: rows[m][t]["oneshot"] for m in BASELINES if "oneshot" in rows.get(m, {}).get(t, {})}
    return max(scored, key=scored.get) if scored else None


def gradual(run: ModelRun, method: str) -> dict:
    """Three steps to :data:`GRADUAL_TARGET`, fine-tune (a) after each; the last is the final fine-tune."""
    current, steps = common.clone(run.model), []
    run.phase = "gradual_"
    for i in range(1, GRADUAL_STEPS + 1):
        step_target = 1.0 - (1.0 - GRADUAL_TARGET) * i / GRADUAL_STEPS
        relative = step_target / run.kept(current)
        if method == "fair":
            current, note = run.fair(current, relative)
        else:
            current, note = run.uniform(current, method, relative)
        pruned_acc = run.accuracy(current)
        run.finetune(current, "a")
        steps.append(
            {
                "target": step_target,
                "kept": run.kept(current),
                "oneshot": pruned_acc,
                "finetuned": run.accuracy(current),
                "note": note,
            }
        )
    acc, bn = run.accuracies(current)
    run.phase = ""
    return {"status": "ok", "kept": steps[-1]["kept"], "final": acc, "final_bn": bn, "steps": steps}


def evaluate_model(task: StandardTask, seed: int, st: dict, timing: Dict[str, float], verbose: bool = True) -> dict:
    run = ModelRun(task, seed, st, timing)
    start_model = time.perf_counter()
    rows = oneshot(run)
    methods = {
        m: {str(t): {k: v for k, v in rec.items() if k != "model"} for t, rec in rows[m].items()}
        for m in METHODS
        if m in rows
    }
    finetuned = {}
    for t in TARGETS:
        best = best_oneshot_baseline(rows, t)
        finetuned[str(t)] = [
            m for m in dict.fromkeys(ALWAYS_FINETUNED + ((best,) if best else ())) if "model" in rows[m].get(t, {})
        ]
        for m in finetuned[str(t)]:
            for key in FINETUNES:
                tuned = run.finetune(common.clone(rows[m][t]["model"]), key)
                methods[m][str(t)][f"ft_{key}"], methods[m][str(t)][f"ft_{key}_bn"] = run.accuracies(tuned)
        if verbose:
            print(
                f"    {task.name} at {t}: fine-tuned {', '.join(finetuned[str(t)])} "
                f"({time.perf_counter() - start_model:.0f}s)",
                flush=True,
            )
    grad = {}
    for m in GRADUAL_METHODS:
        try:
            grad[m] = gradual(run, m)
        except ValueError as err:
            run.phase = ""
            grad[m] = {"status": "unreachable", "note": str(err)}
    return {
        "label": task.label,
        "epochs": task.epochs,
        "lr": task.lr,
        "macs": run.base_macs,
        "params": run.params,
        "baseline": run.accuracy(run.model),
        "methods": methods,
        "finetuned": finetuned,
        "gradual": grad,
        "seconds": time.perf_counter() - start_model,
    }


def run(
    quick: bool = False,
    models=None,
    verbose: bool = True,
    threads: int = 1,
    ft_images: Optional[int] = None,
    ft_b_images: Optional[int] = None,
) -> dict:
    """The benchmark; returns plain data. ``threads``: torch threads while it runs (as quality.py);
    ``ft_images`` / ``ft_b_images``: see :func:`settings`."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        all_tasks = tasks(quick)
        st = {**settings(quick, ft_images, ft_b_images), "threads": threads}
        timing: Dict[str, float] = defaultdict(float)
        results = {"settings": st, "models": {}}
        start = time.perf_counter()
        for name in list(models) if models else list(all_tasks):
            task = all_tasks[name]
            results["models"][name] = evaluate_model(task, SEEDS[0], st, timing, verbose)
            if verbose:
                print(
                    f"  {name}: {results['models'][name]['seconds']:.0f}s after training "
                    f"({time.perf_counter() - start:.0f}s in all)",
                    flush=True,
                )
        results["timing"] = {**timing, "total": time.perf_counter() - start}
        return results
    finally:
        torch.set_num_threads(previous)


# ------------------------------------------------------------------------- report
COLUMNS = ("oneshot", "ft_a", "ft_a_bn", "ft_b", "ft_b_bn", "ft_c", "ft_c_bn")
COLUMN_TITLES = {
    "oneshot": "one-shot",
    "ft_a": "(a)",
    "ft_a_bn": "(a) + BN",
    "ft_b": "(b)",
    "ft_b_bn": "(b) + BN",
    "ft_c": "(c)",
    "ft_c_bn": "(c) + BN",
}
SHORT = {"l2": "L2", "taylor": "Taylor", "global_l2": "global L2", "lamp": "LAMP"}


def _value(m: dict, method: str, t, key: str) -> Optional[float]:
    return m["methods"].get(method, {}).get(str(t), {}).get(key)


def best_baseline(m: dict, t, key: str):
    """``(method, accuracy)`` of the best baseline in one column, among those that have it, or None."""
    values = {b: _value(m, b, t, key) for b in BASELINES}
    values = {b: v for b, v in values.items() if v is not None}
    return max(values.items(), key=lambda kv: kv[1]) if values else None


def differences(results: dict) -> dict:
    """``{(model, target, column): (FAIR minus best baseline, baseline)}`` where both are there."""
    out = {}
    for name, m in results["models"].items():
        for t in results["settings"]["targets"]:
            for key in COLUMNS:
                ours, best = _value(m, "fair", t, key), best_baseline(m, t, key)
                if ours is not None and best:
                    out[name, t, key] = (ours - best[1], best[0])
    return out


def lag_reading(results: dict) -> str:
    """How much of each fine-tune's result is BatchNorm running statistics that lag the weights:
    the mean change from re-estimating them after the fine-tune (no weight update), FAIR vs the
    fine-tuned baselines, and FAIR's largest deficit with and without re-estimation."""
    parts, worst = [], []
    for key in FINETUNES:
        ours, theirs = [], []
        for m in results["models"].values():
            for t in results["settings"]["targets"]:
                for method, bucket in [("fair", ours)] + [(b, theirs) for b in BASELINES]:
                    rec = m["methods"].get(method, {}).get(str(t), {})
                    if f"ft_{key}" in rec:
                        bucket.append(rec[f"ft_{key}_bn"] - rec[f"ft_{key}"])
        if ours and theirs:
            parts.append(
                f"({key}) {sum(ours) / len(ours):+.1f} for FAIR vs {sum(theirs) / len(theirs):+.1f} for the baselines"
            )
    diffs = differences(results)
    for key in FINETUNES:
        plain = [v[0] for (_, _, k), v in diffs.items() if k == f"ft_{key}"]
        fixed = [v[0] for (_, _, k), v in diffs.items() if k == f"ft_{key}_bn"]
        if plain and fixed:
            worst.append(f"({key}) {min(plain):+.1f} without, {min(fixed):+.1f} with")
    if not parts:
        return ""
    return (
        "Running statistics that lag the weights: re-estimating BatchNorm after the fine-tune (no weight "
        "update) changes the accuracy on average by " + "; ".join(parts) + ". FAIR's largest deficit against "
        "the best baseline: " + "; ".join(worst) + " re-estimation. `python examples/benchmarks/bn_lag.py "
        "MODEL TARGET` compares the lag layer by layer between FAIR's and the baselines' pruned models. `FairPruneCallback` re-estimates the "
        "statistics before every validation after a pruning (`recalibrate_each_epoch=True`, the default), "
        'so the "+ BN" columns are what its users get.'
    )


def _oneshot_cell(rec: Optional[dict]) -> str:
    if not rec:
        return "–"
    if "oneshot" not in rec:
        return rec.get("status", "–")
    return f"{rec['oneshot']:.1f} <sub>({rec['kept']:.2f})</sub>"


def _ft_cell(rec: Optional[dict], key: str) -> str:
    if not rec or f"ft_{key}" not in rec:
        return "–"
    return f"{rec[f'ft_{key}']:.1f} / {rec[f'ft_{key}_bn']:.1f}"


def to_markdown(results: dict) -> str:
    st, models_ = results["settings"], results["models"]
    targets = st["targets"]
    diffs = differences(results)
    lines = [
        "#### FAIR minus the best baseline",
        "",
        "Accuracy points, FAIR (default pipeline) minus the best of "
        + ", ".join(METHODS[b] for b in BASELINES)
        + " in the same column (which one in brackets); in the fine-tuning columns only the fine-tuned baselines "
        '(uniform L2 and the best one-shot) compete. "+ BN": after that fine-tune with the BatchNorm statistics '
        "re-estimated on training images.",
        "",
        "| model | kept MACs | " + " | ".join(COLUMN_TITLES[k] for k in COLUMNS) + " |",
        "|---|---:|" + "---:|" * len(COLUMNS),
    ]
    for name, m in models_.items():
        for t in targets:
            cells = [
                f"{diffs[name, t, k][0]:+.1f} ({SHORT[diffs[name, t, k][1]]})" if (name, t, k) in diffs else "–"
                for k in COLUMNS
            ]
            lines.append(f"| {m['label']} | {t} | " + " | ".join(cells) + " |")
    lines.append("")
    counts = []
    for k in COLUMNS:
        d = [v[0] for (_, _, key), v in diffs.items() if key == k]
        if d:
            counts.append(f"{COLUMN_TITLES[k]} {sum(x >= 0 for x in d)} of {len(d)} (mean {sum(d) / len(d):+.1f})")
    if counts:
        lines += [
            "FAIR at or above the best baseline, (model, target) cells per column: " + "; ".join(counts) + ".",
            "",
        ]
    reading = lag_reading(results)
    if reading:
        lines += [reading, ""]
    legend = "; ".join(f"({k}) {v}" for k, v in st["finetunes"].items())
    for name, m in models_.items():
        lines += [
            f"#### {m['label']}",
            "",
            f"{m['macs'] / 1e6:.1f} M MACs, {m['params'] / 1e6:.2f} M parameters; trained {m['epochs']} epochs "
            f"(SGD, one-cycle peak lr {m['lr']:g}); held-out accuracy before pruning **{m['baseline']:.1f}%**; "
            f"pruning, fine-tuning and evaluation took {m['seconds']:.0f} s.",
            "",
            f'Top-1 %: one-shot <sub>(kept MACs reached)</sub>; after fine-tuning "ft / ft + BN re-estimated". '
            f"Fine-tuning: {legend}.",
            "",
            "| method | "
            + " | ".join(f"one-shot {t}" for t in targets)
            + " | "
            + " | ".join(f"({k}) {t}" for k in FINETUNES for t in targets)
            + " |",
            "|---|" + "---:|" * (len(targets) * (1 + len(FINETUNES))),
        ]
        for method, label in METHODS.items():
            rows = m["methods"].get(method)
            if rows is None:
                continue
            cells = [_oneshot_cell(rows.get(str(t))) for t in targets]
            cells += [_ft_cell(rows.get(str(t)), k) for k in FINETUNES for t in targets]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    n_steps, final = st["gradual_steps"], st["gradual_target"]
    levels = ", ".join(f"{1 - (1 - final) * i / n_steps:.3g}" for i in range(1, n_steps + 1))
    lines += [
        f"#### Gradual vs one step (kept MACs {final})",
        "",
        f"{n_steps} steps to kept {levels} of the original MACs, each pruning the current model (FAIR: scores "
        "recomputed on it; L2: ratio searched on it) and followed by fine-tune (a), the last one being the final "
        f"fine-tune ({n_steps} times (a) in all); against one step + (a) and one step + (b) (schedules as above). "
        'Top-1 %, "ft / ft + BN re-estimated"; kept MACs reached in brackets.',
        "",
        "| model | method | one step + (a) | one step + (b) | three steps, (a) after each | per step: kept → "
        "pruned → after (a) |",
        "|---|---|---:|---:|---:|---|",
    ]
    for name, m in models_.items():
        for method, g in m["gradual"].items():
            rec = m["methods"].get(method, {}).get(str(st["gradual_target"]))
            kept = f" <sub>({rec['kept']:.2f})</sub>" if rec and "kept" in rec else ""
            if g.get("status") != "ok":
                three, trace = g.get("status", "–"), g.get("note", "")
            else:
                three = f"{g['final']:.1f} / {g['final_bn']:.1f} <sub>({g['kept']:.2f})</sub>"
                trace = "; ".join(f"{s['kept']:.2f} → {s['oneshot']:.1f} → {s['finetuned']:.1f}" for s in g["steps"])
            lines.append(
                f"| {m['label']} | {METHODS[method]} | {_ft_cell(rec, 'a')}{kept} | {_ft_cell(rec, 'b')} | "
                f"{three} | {trace} |"
            )
    return "\n".join(lines).rstrip() + "\n"


def setup_markdown(results: dict) -> str:
    """The section's setup paragraph, with the chosen numbers."""
    st, timing = results["settings"], results["timing"]
    epochs = "; ".join(
        f"{m['label']}: {m['epochs']} epochs, peak lr {m['lr']:g}, held-out {m['baseline']:.1f}%"
        for m in results["models"].values()
    )
    return "\n".join(
        [
            f"* Data: the MNIST splits above (train 3500 / calibration 500 / test 1000), **one seed** ({st['seeds'][0]}) "
            "for every model: each model is trained and pruned once, so differences of a point or two are within what "
            "another seed could change.",
            f"* Training (cached): SGD, momentum {st['sgd_momentum']:g}, Nesterov, weight decay {st['sgd_weight_decay']:g}, "
            f"batch {st['batch_size']}, one-cycle learning rate; {epochs}.",
            "* Pruning to kept MACs " + " and ".join(map(str, st["targets"])) + ": FAIR's default pipeline "
            "(`lightning_fair.prune(copy, calib, target_macs=t, scores=s)`, `s = compute_scores(model, calib)` once per "
            "model) against torch-pruning 1.6 uniform L2 / uniform Taylor (one ratio for every layer, searched to the "
            "target) and global L2 / LAMP (one threshold over all layers, no layer losing more than "
            f"{quality.GLOBAL_MAX_RATIO:g} of its channels), the functions of the quality benchmark, each followed by "
            "BatchNorm re-estimation on the calibration images (`recalibrate_bn`).",
            '* Fine-tuning, each schedule from the same pruned model, batch 64, model in train mode; an "epoch" is the '
            "first images of the train split only (a full epoch of 3500 for every schedule, method and model would not "
            "fit the section's time budget); SGD as in training (momentum, Nesterov, weight decay) or Adam: "
            + "; ".join(f"({k}) {v}" for k, v in st["finetunes"].items())
            + '. Fine-tuned at each target: FAIR, uniform L2 and the baseline best one-shot there. "+ BN": the '
            f"fine-tuned model with its BatchNorm statistics re-estimated on {st['bn_images']} training images (no "
            "weight update), to show running statistics that lag the weights.",
            f"* {st['threads']} torch thread(s); this section took {timing['total'] / 60:.1f} min"
            + (f", training {timing['train'] / 60:.1f} min of it" if timing.get("train", 0) > 1 else " (models cached)")
            + (
                " — **quick mode**: tiny models trained on 1000 images, 500 test images; the numbers are a smoke test "
                "only."
                if st["quick"]
                else "."
            ),
            "",
        ]
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny models and data (smoke test, well under a minute)")
    parser.add_argument("--models", default=None, help="comma-separated subset of " + ", ".join(tasks()))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--ft-images",
        type=int,
        default=None,
        help="training images per fine-tuning epoch of (a), (c) and the gradual steps (default 1000)",
    )
    parser.add_argument(
        "--ft-b-images", type=int, default=None, help="training images per epoch of fine-tuning (b) (default 500)"
    )
    parser.add_argument(
        "--estimate",
        action="store_true",
        help="only time a few batches of each model and print the extrapolated run time",
    )
    args = parser.parse_args(argv)
    models_ = args.models.split(",") if args.models else None
    sizes = {"ft_images": args.ft_images, "ft_b_images": args.ft_b_images}
    if args.estimate:
        import standard_estimate

        standard_estimate.estimate(args.quick, models_, args.threads, **sizes)
        return
    results = run(args.quick, models_, threads=args.threads, **sizes)
    print(setup_markdown(results))
    print(to_markdown(results))
    print(
        f"total {results['timing']['total']:.0f}s; "
        + ", ".join(f"{k} {v:.1f}s" for k, v in results["timing"].items() if k != "total")
    )


if __name__ == "__main__":
    main()
