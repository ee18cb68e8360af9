"""Accuracy after pruning: FAIR vs torch-pruning baselines vs the authors' code vs Lightning's ModelPruning.

For every model of :func:`common.tasks` and every seed (the training seed is also the pruning
seed), at each kept-MACs target, this records the held-out top-1 accuracy one-shot (no
fine-tuning), one-shot with the BatchNorm statistics re-estimated on the calibration split
(``common.recalibrate_batchnorm``, i.e. ``lightning_fair.recalibrate_bn``; BatchNorm models only),
and, at the targets of ``FINETUNE_TARGETS`` (0.5 and 0.3: fine-tuning is most of the run time),
after one epoch of fine-tuning on the train split, for

* ``fair``: the default pipeline, ``lightning_fair.prune(copy, calib, target_macs=t, scores=s)``
  (U after the nonlinearity, global U threshold under the target, mean-replacement compensation,
  BatchNorm re-estimation); the scores are computed once per model and seed and reused for every
  target. Its "one-shot" column is the same prune with ``recalibrate=False``, its "recal" column
  is the default pipeline itself;
* ``fair_tod``: the same with ``allocation="tod"`` (FAIR's per-layer ToD counts, tolerance searched);
* ``fair_paper``: ``preset="paper"``, the method exactly as published (U on the raw layer output,
  ToD counts, no compensation; its "recal" column adds BatchNorm re-estimation only)
* ``screening``: the same default pipeline with ``criterion="screening"`` (units ranked by
  ``0.5 * F / mean F + 0.5 * ||filter|| / mean ||filter||`` per layer, F the one-way ANOVA
  F-statistic across classes; global threshold, compensation, re-estimation as for ``fair``)
  (these four rows are :func:`fair_rows`; they share one ``compute_scores(..., criterion="screening")``
  per model and seed for the observation point after the nonlinearity -- the screening
  statistics leave U and R bitwise unchanged; the variant study is variants.py);
* ``l1`` / ``l2`` / ``taylor`` / ``random``: torch-pruning ``MetaPruner`` with the same
  ``pruning_ratio`` for every layer (output layer ignored) and ``MagnitudeImportance(p=1)`` /
  ``MagnitudeImportance(p=2)`` / ``TaylorImportance()`` (gradients of the calibration loss) /
  ``RandomImportance()``; the ratio that hits each target is found by grid + bisection, measuring
  MACs with ``lightning_fair.units.cost.measure`` (once per architecture: uniform counts depend only
  on the ratio);
* ``global_l1`` / ``global_l2`` / ``global_taylor`` / ``lamp``: ``MetaPruner(global_pruning=True)``
  with ``MagnitudeImportance(p=1)`` / ``(p=2)`` / ``TaylorImportance()`` (torch-pruning's default
  ``normalizer="mean"``: each layer's scores divided by their mean before the global ranking) /
  ``LAMPImportance(p=2)`` (``normalizer="lamp"``), no layer losing more than ``GLOBAL_MAX_RATIO``
  (0.9) of its channels (:func:`tp_global`); the per-layer counts depend on the scores, so the
  ratio is searched per model, seed and method (:func:`global_ratios`);
* ``reference``: the authors' ``network-pruner`` (if installed): ``get_metrics`` once, then a sweep
  of ``ToD_level``; each target reports the sweep point whose kept MACs are nearest to it;
* ``modelpruning``: Lightning's ``ModelPruning("l1_unstructured")`` (global, its default) on every
  Conv/Linear weight but the output layer, at the nominal ratio ``1 - t``: weights are zeroed, the
  shapes and so the MACs do not change (one-shot only).

``BASELINES`` are the torch-pruning rows FAIR is compared against ("best baseline"). A target a
method cannot reach is recorded as unreachable, with what it can reach.

Run:  python examples/benchmarks/quality.py [--quick] [--models vgg_bn]   (run_all.py writes the docs page)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import io
import math
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
from lightning_fair.units.cost import measure

TARGETS = (0.8, 0.6, 0.5, 0.4, 0.3)
QUICK_TARGETS = (0.5, 0.3)
SEEDS = (0, 1, 2)
REFERENCE_TOD = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.85, 1.0)

FINETUNE_TARGETS = (0.5, 0.3)  # fine-tuning (the dominant cost) at the headline targets only
GLOBAL_MAX_RATIO = 0.9  # global torch-pruning: no layer loses more than this fraction of its channels

METHODS = {  # key: (label, fine-tuned?)
    "fair": ("FAIR (ours, default pipeline)", True),
    "fair_tod": ('FAIR, ToD counts (allocation="tod")', True),
    "fair_paper": ('FAIR paper-exact (preset="paper")', True),
    "screening": ('screening criterion (criterion="screening")', True),
    "l1": ("uniform L1 magnitude", True),
    "l2": ("uniform L2 magnitude", True),
    "taylor": ("uniform Taylor", True),
    "global_l1": ("global L1 magnitude", True),
    "global_l2": ("global L2 magnitude", True),
    "global_taylor": ("global Taylor", True),
    "lamp": ("LAMP (global)", True),
    "random": ("uniform random", True),
    "reference": ("network-pruner 2.16 (authors)", True),
    "modelpruning": ("Lightning ModelPruning (unstructured)", False),
}
# the torch-pruning baselines FAIR is measured against ("best baseline"); random, network-pruner and
# ModelPruning stay in the tables but are not counted
BASELINES = ("l1", "l2", "taylor", "global_l1", "global_l2", "global_taylor", "lamp")


def _importance(name: str, **kwargs):
    def make():
        import torch_pruning as tp

        return getattr(tp.importance, name)(**kwargs)

    return make


UNIFORM = {  # torch-pruning importances (their defaults: group_reduction="mean", normalizer="mean")
    "l1": _importance("MagnitudeImportance", p=1),
    "l2": _importance("MagnitudeImportance", p=2),
    "taylor": _importance("TaylorImportance"),
    "random": _importance("RandomImportance"),
}
GLOBAL = {
    "global_l1": _importance("MagnitudeImportance", p=1),
    "global_l2": _importance("MagnitudeImportance", p=2),
    "global_taylor": _importance("TaylorImportance"),
    "lamp": _importance("LAMPImportance", p=2),  # normalizer="lamp"
}


# ------------------------------------------------------------------------- helpers
def have_reference() -> bool:
    try:
        importlib.import_module("Network_Pruner.FAIR_Pruner")
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
def taylor_gradients(model: nn.Module, calib_loader) -> nn.Module:
    """Accumulate into ``model``'s ``.grad`` the gradients of the summed calibration cross-entropy
    (eval mode), what ``TaylorImportance`` reads; returns the model."""
    model.eval()
    model.zero_grad(set_to_none=True)
    for x, y in calib_loader:
        F.cross_entropy(model(x), y).backward()
    return model


def clone_with_grads(model: nn.Module) -> nn.Module:
    """``common.clone`` that keeps the parameters' ``.grad`` (``deepcopy`` of a Parameter drops it)."""
    copied = common.clone(model)
    for p, q in zip(model.parameters(), copied.parameters()):
        q.grad = None if p.grad is None else p.grad.clone()
    return copied


def _tp_pruner(model: nn.Module, example, importance, ratio: float, global_pruning: bool):
    import torch_pruning as tp

    return tp.pruner.MetaPruner(
        model,
        example,
        importance=importance,
        pruning_ratio=ratio,
        global_pruning=global_pruning,
        max_pruning_ratio=GLOBAL_MAX_RATIO if global_pruning else 1.0,
        ignored_layers=[model.classifier],
        in_channel_groups={},
        out_channel_groups={},
        num_heads={},
        channel_groups={},  # fresh dicts
    )


def tp_uniform(model: nn.Module, example, importance, ratio: float, calib_loader=None) -> nn.Module:
    """Prune ``model`` in place with torch-pruning, the same ratio in every layer, output layer kept."""
    import torch_pruning as tp

    if isinstance(importance, tp.importance.TaylorImportance):
        taylor_gradients(model, calib_loader)
    _tp_pruner(model, example, importance, ratio, global_pruning=False).step()
    model.zero_grad(set_to_none=True)
    return model.eval()


class _Recorder:
    """Wraps a torch-pruning importance and keeps every group's full score vector, keyed by the
    group's root (module, pruning function): ``MetaPruner`` scores all groups before it prunes any."""

    def __init__(self, importance):
        self.importance, self.scores = importance, {}

    def __call__(self, group):
        imp = self.importance(group)
        if imp is not None:
            self.scores[(group[0].dep.target.module, group[0].dep.handler)] = imp.detach().cpu()
        return imp


def tp_global(model: nn.Module, example, importance, ratio: float) -> int:
    """Prune ``model`` in place with torch-pruning's global ranking (``global_pruning=True``, one
    step, output layer kept), no layer losing more than ``GLOBAL_MAX_RATIO`` of its channels.

    ``MetaPruner(max_pruning_ratio=...)`` only excludes layers already below the limit when a step
    *starts* (torch-pruning 1.6.1), so within a single step the global threshold can remove up to
    every channel of a layer, and a group that would lose all of them is skipped altogether (the
    layer stays whole). The cap is therefore applied here, on the groups the pruner yields: where
    the threshold takes more than the cap allows, the layer keeps its highest-scored channels (its
    scores as the pruner computed them, before anything was removed). For Taylor, ``model`` must
    carry the calibration gradients (:func:`taylor_gradients`). Returns how many layers were capped.
    """
    recorder = _Recorder(importance)
    pruner = _tp_pruner(model, example, recorder, ratio, global_pruning=True)
    dg = pruner.DG
    dg.check_pruning_group = lambda group: True  # let groups that lose every channel through: capped below
    capped = 0
    for group in pruner.step(interactive=True):
        dep, idxs = group[0].dep, list(group[0].idxs)
        module, fn = dep.target.module, dep.handler
        n = dg.get_out_channels(module) if dg.is_out_channel_pruning_fn(fn) else dg.get_in_channels(module)
        keep = max(1, math.ceil(n * (1.0 - GLOBAL_MAX_RATIO) - 1e-9))
        if n - len(idxs) < keep:
            capped += 1
            scores = recorder.scores[(module, fn)]
            idxs = torch.argsort(scores)[: n - keep].tolist()
        if idxs:
            group.prune(idxs=idxs)
    model.zero_grad(set_to_none=True)
    model.eval()
    return capped


def search_ratios(kept, targets, grid: int = 25, iterations: int = 8):
    """``({target: ratio or None}, {target: lowest reachable kept MACs})`` for ``kept(ratio)``, the
    kept-MACs fraction a method reaches with ``pruning_ratio=ratio``: per target, the smallest ratio
    whose pruned model keeps at most the target fraction of the MACs.

    A grid of ratios 0 .. 0.96, then bisection between the last grid point above the target and
    the first at or below it. (Kept MACs need not be monotone at ratios near 1 -- uniform
    torch-pruning skips a layer whose ratio would leave it no channel -- so the first grid point
    that reaches the target is used.) ``kept`` values are cached.
    """
    cache = {}

    def k(ratio):
        if ratio not in cache:
            cache[ratio] = kept(ratio)
        return cache[ratio]

    points = [(i / grid, k(i / grid)) for i in range(grid)]
    ratios, unreachable = {}, {}
    for t in targets:
        first = next((i for i, (_, kk) in enumerate(points) if kk <= t + 1e-9), None)
        if first is None:
            ratios[t], unreachable[t] = None, min(kk for _, kk in points)
            continue
        lo, hi = points[first - 1][0] if first else 0.0, points[first][0]
        for _ in range(iterations if first else 0):
            mid = (lo + hi) / 2
            if k(mid) <= t + 1e-9:
                hi = mid
            else:
                lo = mid
        ratios[t] = hi
    return ratios, unreachable


def uniform_ratios(model: nn.Module, example, targets, base_macs: int, grid: int = 25, iterations: int = 8):
    """:func:`search_ratios` for uniform pruning. The per-layer counts of uniform pruning depend
    only on the ratio, not on the importance, so one search per architecture (on the seed-0 model)
    serves L1, L2, Taylor and random."""
    import torch_pruning as tp

    def kept(ratio):
        return kept_macs(
            tp_uniform(common.clone(model), example, tp.importance.MagnitudeImportance(p=1), ratio), example, base_macs
        )

    return search_ratios(kept, targets, grid, iterations)


def global_ratios(
    model: nn.Module,
    example,
    targets,
    base_macs: int,
    make_importance,
    calib_loader=None,
    grid: int = 13,
    iterations: int = 7,
):
    """:func:`search_ratios` for one global method on one trained model (the per-layer counts of
    global pruning depend on the scores, hence on the weights: one search per model, seed and
    method). Grid step 1/13, then 7 bisection steps: the ratio is resolved to about 0.001. For
    Taylor the calibration gradients are computed once and copied into every candidate."""
    import torch_pruning as tp

    source = model
    if isinstance(make_importance(), tp.importance.TaylorImportance):
        source = taylor_gradients(common.clone(model), calib_loader)

    def kept(ratio):
        candidate = clone_with_grads(source)
        tp_global(candidate, example, make_importance(), ratio)
        return kept_macs(candidate, example, base_macs)

    return search_ratios(kept, targets, grid, iterations), source


def modelpruning(model: nn.Module, amount: float) -> nn.Module:
    """Lightning's ModelPruning callback, applied directly (no Trainer), made permanent."""
    from lightning.pytorch.callbacks import ModelPruning

    params = [
        (m, "weight")
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m is not model.classifier
    ]
    callback = ModelPruning(
        "l1_unstructured", parameters_to_prune=params, amount=amount, use_lottery_ticket_hypothesis=False, verbose=0
    )
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
            self.results = fp.get_metrics(
                copy.deepcopy(model),
                calib_loader,
                device=torch.device("cpu"),
                the_samplesize_for_compute_distance=32,
                results_save_path=os.path.join(tmp, "results.pkl"),
            )

    def prune(self, tod: float) -> nn.Module:
        fp = self.fp
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
            ratios = fp.get_ratios(self.model, self.results, ToD_level=tod)
            skeleton = fp.get_skeleton(copy.deepcopy(self.model), ratios, self.example)
            pruned, _ = fp.prune(
                skeleton,
                copy.deepcopy(self.model),
                self.results,
                ratios,
                example_inputs=self.example,
                pruned_model_save_path=os.path.join(tmp, "p.pth"),
            )
        return pruned.eval()


# ------------------------------------------------------------------------- one model, one seed
class SeedRun:
    """One trained model (one task, one seed) under evaluation: its data and loaders, and
    :meth:`record`, which measures a pruned model and files it in ``out[method][target]``."""

    def __init__(
        self,
        task: common.Task,
        seed: int,
        targets,
        quick: bool,
        timing: Dict[str, float],
        keep: Optional[dict] = None,
        finetune_targets=None,
    ):
        self.task, self.seed, self.targets, self.quick, self.timing, self.keep = (
            task,
            seed,
            targets,
            quick,
            timing,
            keep,
        )
        self.finetune_targets = tuple(FINETUNE_TARGETS if finetune_targets is None else finetune_targets)
        self.data = common.load_data(task.data)
        self.model = common.trained_model(task, seed)
        self.example = self.data.calib.x[:1]
        self.calib = common.loader(self.data.calib, batch_size=100)
        self.base_macs = measure(self.model, self.example)[0]
        self.batchnorm = common.has_batchnorm(self.model)
        self.ft_limit = 500 if quick else None
        self.out: Dict[str, dict] = defaultdict(dict)

    def record(self, method, target, pruned, kept, note="", finetune=True, nonzero=None):
        """Record keys: status, kept, oneshot, recal, finetuned (at ``finetune_targets`` only), note."""
        data = self.data
        rec = {"status": "ok", "kept": kept, "oneshot": common.accuracy(pruned, data.test), "note": note}
        # one-shot + BatchNorm statistics re-estimated on the calibration images (no-op without BN)
        if self.batchnorm:
            start = time.perf_counter()
            rec["recal"] = common.accuracy(common.recalibrate_batchnorm(pruned, data.calib), data.test)
            self.timing["recal"] += time.perf_counter() - start
        else:
            rec["recal"] = rec["oneshot"]
        if nonzero is not None:
            rec["nonzero"] = nonzero
        if finetune and target in self.finetune_targets:
            start = time.perf_counter()
            common.finetune(pruned, data.train, self.seed, limit=self.ft_limit)
            self.timing["finetune"] += time.perf_counter() - start
            rec["finetuned"] = common.accuracy(pruned, data.test)
        self.out[method][target] = rec


#: FAIR rows: (scores' observation point, prune() options). Every row is pruned with
#: ``recalibrate=False`` and recorded one-shot; the record's "recal" column then re-estimates
#: BatchNorm with ``lightning_fair.recalibrate_bn``, which is exactly what ``prune``'s own
#: ``recalibrate=True`` (the default preset) does (tests/test_pipeline.py checks the equality).
FAIR_ROWS = {
    "fair": ("activation", {}),
    "fair_tod": ("activation", {"allocation": "tod"}),
    "fair_paper": ("output", {"preset": "paper"}),
    "screening": ("activation", {"criterion": "screening"}),
}


def fair_rows(run: SeedRun) -> None:
    """The FAIR rows: scores once per model, seed and observation point, then ``prune`` per target."""
    model, calib, seed, timing, out, keep = run.model, run.calib, run.seed, run.timing, run.out, run.keep
    scores = {}
    for observe in sorted({o for o, _ in FAIR_ROWS.values()}):
        start = time.perf_counter()
        # criterion="screening" adds the F-statistics to the same pass; U and R are bitwise what they are without
        needs = any(o == observe and opts.get("criterion") == "screening" for o, opts in FAIR_ROWS.values())
        scores[observe] = compute_scores(
            model, calib, observe=observe, seed=seed, criterion="screening" if needs else "fair"
        )
        timing["fair_scores"] += time.perf_counter() - start
    for method, (observe, options) in FAIR_ROWS.items():
        for t in run.targets:
            start = time.perf_counter()
            try:
                result = lightning_fair.prune(
                    common.clone(model),
                    calib,
                    target_macs=t,
                    scores=scores[observe],
                    seed=seed,
                    **{**options, "recalibrate": False},
                )
            except ValueError as err:
                timing[method] += time.perf_counter() - start
                match = re.search(r">=\s*([0-9.]+)", str(err))
                out[method][t] = {
                    "status": "unreachable",
                    "reachable": float(match.group(1)) if match else None,
                    "note": str(err),
                }
                continue
            timing[method] += time.perf_counter() - start
            pruned = result.model.eval()
            if keep is not None and method == "fair" and t == 0.5 and "fair" not in keep:
                keep["fair"] = common.recalibrate_batchnorm(pruned, run.data.calib)  # the default pipeline
            level = f"{'global ' if result.level_name == 'threshold' else ''}{result.level_name} {result.level:.3g}"
            run.record(method, t, pruned, result.report.macs_after / result.report.macs_before, note=level)


def uniform_rows(run: SeedRun, ratios: Dict[float, Optional[float]], unreachable: Dict[float, float]) -> None:
    """torch-pruning, one ``pruning_ratio`` for every layer (searched once per architecture)."""
    model, example = run.model, run.example
    for method, make in UNIFORM.items():
        for t in run.targets:
            ratio = ratios[t]
            if ratio is None:
                run.out[method][t] = {
                    "status": "unreachable",
                    "reachable": unreachable[t],
                    "note": "no uniform ratio reaches it",
                }
                continue
            start = time.perf_counter()
            torch.manual_seed(run.seed)
            pruned = tp_uniform(common.clone(model), example, make(), ratio, run.calib)
            run.timing[method] += time.perf_counter() - start
            run.record(method, t, pruned, kept_macs(pruned, example, run.base_macs), note=f"ratio {ratio:.3f}")


def global_rows(run: SeedRun) -> Dict[str, Dict[str, Optional[float]]]:
    """torch-pruning with ``global_pruning=True``; the ratio per target searched on this very model.
    Returns ``{method: {target: ratio}}``."""
    model, example = run.model, run.example
    found = {}
    for method, make in GLOBAL.items():
        start = time.perf_counter()
        (ratios, unreachable), source = global_ratios(model, example, run.targets, run.base_macs, make, run.calib)
        run.timing["global_search"] += time.perf_counter() - start
        found[method] = {str(t): r for t, r in ratios.items()}
        for t in run.targets:
            ratio = ratios[t]
            if ratio is None:
                run.out[method][t] = {
                    "status": "unreachable",
                    "reachable": unreachable[t],
                    "note": f"no global ratio reaches it (layers capped at {GLOBAL_MAX_RATIO:g} removed)",
                }
                continue
            start = time.perf_counter()
            pruned = clone_with_grads(source)
            capped = tp_global(pruned, example, make(), ratio)
            run.timing[method] += time.perf_counter() - start
            note = f"ratio {ratio:.3f}" + (f", {capped} layer(s) capped" if capped else "")
            run.record(method, t, pruned, kept_macs(pruned, example, run.base_macs), note=note)
    return found


def reference_rows(run: SeedRun) -> None:
    """The authors' code: sweep, then the nearest sweep point per target."""
    model, example, timing, out = run.model, run.example, run.timing, run.out
    start = time.perf_counter()
    try:
        ref = Reference(model, run.calib, example, run.seed)
        sweep = []
        for tod in REFERENCE_TOD:
            pruned = ref.prune(tod)
            sweep.append((tod, kept_macs(pruned, example, run.base_macs)))
        timing["reference"] += time.perf_counter() - start
        for t in run.targets:
            tod, kept = min(sweep, key=lambda p: (abs(p[1] - t), p[0]))
            start = time.perf_counter()
            pruned = ref.prune(tod)
            timing["reference"] += time.perf_counter() - start
            run.record("reference", t, pruned, kept, note=f"ToD_level {tod:g}")
        out["reference"]["sweep"] = sweep
    except Exception as err:  # record and go on: the comparison says it failed
        timing["reference"] += time.perf_counter() - start
        text = f"{type(err).__name__}: {err}".splitlines()[0][:300]
        for t in run.targets:
            out["reference"][t] = {"status": "error", "note": text}


def modelpruning_rows(run: SeedRun) -> None:
    """Lightning ModelPruning: zeros, same shapes (one-shot only)."""
    model, example = run.model, run.example
    for t in run.targets:
        start = time.perf_counter()
        pruned = modelpruning(common.clone(model), 1.0 - t)
        run.timing["modelpruning"] += time.perf_counter() - start
        if run.keep is not None and t == 0.5 and "modelpruning" not in run.keep:
            run.keep["modelpruning"] = copy.deepcopy(pruned)
        run.record(
            "modelpruning",
            t,
            pruned,
            kept_macs(pruned, example, run.base_macs),
            finetune=False,
            nonzero=nonzero_fraction(pruned, model),
        )


def evaluate_seed(
    task: common.Task,
    seed: int,
    targets,
    quick: bool,
    use_reference: bool,
    ratios: Dict[float, Optional[float]],
    unreachable: Dict[float, float],
    timing: Dict[str, float],
    keep: Optional[dict] = None,
    finetune_targets=None,
) -> Dict[str, dict]:
    """``{method: {target: record}}`` for one trained model; record keys: status, kept, oneshot,
    recal, finetuned, note."""
    run = SeedRun(task, seed, targets, quick, timing, keep, finetune_targets)
    fair_rows(run)
    uniform_rows(run, ratios, unreachable)
    global_ratio = global_rows(run)
    if use_reference:
        reference_rows(run)
    modelpruning_rows(run)
    if keep is not None and "original" not in keep:
        keep.update(
            original=copy.deepcopy(run.model),
            example=run.example,
            example64=run.data.calib.x[:64].clone(),
            calib=run.calib,
            data=task.data,
        )
    return {
        "baseline": common.accuracy(run.model, run.data.test),
        "macs": run.base_macs,
        "batchnorm": run.batchnorm,
        "params": measure(run.model, run.example)[1],
        "global_ratios": global_ratio,
        "methods": dict(run.out),
    }


# ------------------------------------------------------------------------- all
def run(
    quick: bool = False,
    seeds=None,
    targets=None,
    models=None,
    keep_models: bool = False,
    verbose: bool = True,
    reference: Optional[bool] = None,
    threads: int = 1,
) -> dict:
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
    results = {
        "settings": {
            "quick": quick,
            "seeds": list(seeds),
            "targets": list(targets),
            "reference": use_reference,
            "reference_installed": have_reference(),
            "threads": threads,
            "finetune_lr": common.FINETUNE_LR,
            "finetune_images": 500 if quick else None,
            "finetune_targets": [t for t in targets if t in FINETUNE_TARGETS],
            "global_max_ratio": GLOBAL_MAX_RATIO,
        },
        "models": {},
        "_models": {},
    }
    start_all = time.perf_counter()
    for name in names:
        start_model = time.perf_counter()
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
        results["models"][name]["global_ratios"] = [s["global_ratios"] for s in per_seed]
        results["models"][name]["seconds"] = time.perf_counter() - start_model
        if verbose:
            print(f"  {name}: {results['models'][name]['seconds']:.0f}s", flush=True)
        if keep_models:
            results["_models"][name] = keep
    results["timing"] = dict(timing)
    results["timing"]["total"] = time.perf_counter() - start_all
    return results


def aggregate(task, data, per_seed: List[dict], targets) -> dict:
    summary = {
        "label": task.label,
        "data": data.describe(),
        "epochs": task.epochs,
        "baseline": [s["baseline"] for s in per_seed],
        "macs": per_seed[0]["macs"],
        "params": per_seed[0]["params"],
        "batchnorm": per_seed[0]["batchnorm"],
        "methods": {},
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
                rows[str(t)] = {
                    "status": bad["status"],
                    "note": bad["note"],
                    "reachable": max(reach) if reach else None,
                }
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


def headline_key(m: dict) -> str:
    """The column FAIR is judged on: BatchNorm statistics re-estimated for BatchNorm models, one-shot otherwise."""
    return "recal" if m.get("batchnorm") else "oneshot"


def _mean(row: Optional[dict], key: str) -> Optional[float]:
    if not row or row.get("status") != "ok" or key not in row:
        return None
    return common.mean_std(row[key])[0]


def best_baseline(m: dict, target, key: str):
    """``(method, mean)`` of the best torch-pruning baseline (:data:`BASELINES`) at one cell, or None."""
    means = {meth: _mean(m["methods"].get(meth, {}).get(str(target)), key) for meth in BASELINES}
    means = {k: v for k, v in means.items() if v is not None}
    return max(means.items(), key=lambda kv: kv[1]) if means else None


def capped_count(results: dict):
    """``(pruned models where the per-layer cap of the global rows bound, global pruned models)``."""
    notes = [
        note
        for m in results["models"].values()
        for meth in GLOBAL
        for row in m["methods"].get(meth, {}).values()
        if isinstance(row, dict)
        for note in row.get("notes", [])
    ]
    return sum("capped" in note for note in notes), len(notes)


def _ft_targets(settings: dict) -> list:
    return settings.get("finetune_targets", settings["targets"])


def _methods_present(models: dict):
    return [
        (method, label, tuned)
        for method, (label, tuned) in METHODS.items()
        if any(method in m["methods"] for m in models.values())
    ]


def to_markdown(results: dict, headline_targets=(0.5, 0.3)) -> str:
    settings = results["settings"]
    targets = settings["targets"]
    n = len(settings["seeds"])
    models = results["models"]
    present = _methods_present(models)
    lines = []
    heads = [t for t in headline_targets if t in targets]
    baseline_labels = ", ".join(METHODS[b][0] for b in BASELINES)
    for t in heads:
        lines += [
            f"### FAIR vs the best torch-pruning baseline at kept MACs {t}",
            "",
            "No fine-tuning. FAIR: its default pipeline (`prune` with its defaults: global U threshold, "
            "mean-replacement compensation, BatchNorm re-estimation). Baselines: on the BatchNorm models "
            "with their BatchNorm statistics re-estimated by the same `recalibrate_bn`, on the others "
            "one-shot (re-estimation has nothing to do there). Best baseline: the highest mean of "
            + baseline_labels
            + " (uniform random, network-pruner and ModelPruning are not counted). Top-1 %, mean ± std over "
            "the seeds, <sub>(kept MACs reached)</sub>; difference in points, FAIR minus best baseline.",
            "",
            "| model | column | FAIR (ours) | best baseline | its accuracy | FAIR − best |",
            "|---|---|---:|---|---:|---:|",
        ]
        for m in models.values():
            key = headline_key(m)
            row = m["methods"].get("fair", {}).get(str(t))
            ours, best = _mean(row, key), best_baseline(m, t, key)
            brow = m["methods"][best[0]].get(str(t)) if best else None
            diff = f"**{ours - best[1]:+.1f}**" if ours is not None and best else "–"
            lines.append(
                f"| {m['label'].split(' /')[0]} | {'BN re-estimated' if key == 'recal' else 'one-shot'} | "
                f"{cell(row, key)} | {METHODS[best[0]][0] if best else 'none reached it'} | "
                f"{cell(brow, key) if best else '–'} | {diff} |"
            )
        lines.append("")
    for t in heads:
        lines += [
            f"### One-shot accuracy at kept MACs {t} (no fine-tuning)",
            "",
            "Held-out top-1 %, mean ± std over the seeds; <sub>(kept MACs reached)</sub>. No BatchNorm "
            "re-estimation for any row: the FAIR rows are pruned with `recalibrate=False` (for "
            f"{METHODS['fair'][0]}: the default pipeline minus re-estimation, mean replacement still on; "
            "on models without BatchNorm that is the default pipeline itself).",
            "",
            "| method | " + " | ".join(m["label"] for m in models.values()) + " |",
            "|---|" + "---:|" * len(models),
        ]
        lines.append("| trained model (100% MACs) | " + " | ".join(_fmt(m["baseline"]) for m in models.values()) + " |")
        for method, label, _ in present:
            cells = [cell(m["methods"].get(method, {}).get(str(t)), "oneshot") for m in models.values()]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    bn_models = {k: m for k, m in models.items() if m.get("batchnorm")}
    if heads and bn_models:
        cols = [(m, t) for m in bn_models.values() for t in heads]
        lines += [
            "### The same with BatchNorm statistics re-estimated (still no training)",
            "",
            "Every method's pruned model gets its BatchNorm running mean/variance re-estimated by "
            "`lightning_fair.recalibrate_bn` from forward passes over the 500 (digits: 300) calibration "
            f"images; no labels, no weight update. The {METHODS['fair'][0]} row here is the default "
            "pipeline exactly (`prune`'s own re-estimation does the same).",
            "",
            "| method | " + " | ".join(f"{m['label'].split(' /')[0]}, {t}" for m, t in cols) + " |",
            "|---|" + "---:|" * len(cols),
        ]
        for method, label, _ in present:
            cells = [cell(m["methods"].get(method, {}).get(str(t)), "recal") for m, t in cols]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    for name, m in models.items():
        base = _fmt(m["baseline"])
        lines += [
            f"### {m['label']}",
            "",
            f"{m['data']}; trained {m['epochs']} epochs; {m['macs'] / 1e6:.2f} M MACs, "
            f"{m['params'] / 1e3:.1f} k parameters; held-out accuracy before pruning **{base}%**"
            f" (mean ± std over {n} seed{'s' if n > 1 else ''})" + ("." if m.get("batchnorm") else "; no BatchNorm."),
            "",
        ]
        for key, title in KEYS.items():
            if key == "recal" and not m.get("batchnorm"):
                continue
            cols = targets
            if key == "oneshot" and m.get("batchnorm"):
                title = (
                    "one-shot (no fine-tuning, no BatchNorm re-estimation for any row; FAIR's default "
                    "pipeline is its row in the next table)"
                )
            if key == "finetuned":
                cols = [t for t in targets if t in _ft_targets(settings)]
                if not cols:
                    continue
                if len(cols) < len(targets):
                    title += f", at kept MACs {' and '.join(map(str, cols))} only (fine-tuning is most of the run time)"
            lines += [
                f"Top-1 % {title}; columns: target kept MACs; <sub>(kept MACs reached)</sub>",
                "",
                "| method | " + " | ".join(str(t) for t in cols) + " |",
                "|---|" + "---:|" * len(cols),
            ]
            for method, label, tuned in present:
                if method not in m["methods"] or (key == "finetuned" and not tuned):
                    continue
                rows = m["methods"][method]
                lines.append(f"| {label} | " + " | ".join(cell(rows.get(str(t)), key) for t in cols) + " |")
            lines.append("")
        errors = {
            r["note"]
            for rows in m["methods"].values()
            for r in rows.values()
            if isinstance(r, dict) and r.get("status") == "error"
        }
        for e in sorted(errors):
            lines += [f"network-pruner failed on this model: `{e}`", ""]
    return "\n".join(lines)


METHOD_STYLE = {
    "fair": dict(color="C3", marker="o", linewidth=2.2),
    "fair_tod": dict(color="C1", marker="s", linestyle="--"),
    "fair_paper": dict(color="C5", marker="^", linestyle="--"),
    "screening": dict(color="maroon", marker="h", linestyle=(0, (5, 1)), linewidth=1.6),
    "l1": dict(color="C0", marker="v"),
    "l2": dict(color="C9", marker="<"),
    "taylor": dict(color="C2", marker="D"),
    "global_l1": dict(color="navy", marker=">", linestyle="-."),
    "global_l2": dict(color="teal", marker="p", linestyle="-."),
    "global_taylor": dict(color="C8", marker="d", linestyle="-."),
    "lamp": dict(color="C6", marker="*", linestyle="-.", markersize=8),
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
        ft = [t for t in results["settings"]["targets"] if t in _ft_targets(results["settings"])]
        panels.append(
            (
                "finetuned",
                "after 1 epoch of fine-tuning"
                + (
                    f"\n(at kept MACs {' and '.join(map(str, ft))} only)"
                    if len(ft) < len(results["settings"]["targets"])
                    else ""
                ),
            )
        )
        fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels) + 0.5, 5.4))
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
                style = {"markersize": 5, **METHOD_STYLE.get(method, {})}
                ax.errorbar(xs, ys, yerr=ss, label=label, capsize=2, **style)
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
        fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
        n = len(results["settings"]["seeds"])
        fig.suptitle(f"{m['label']}: mean ± std over {n} seed{'s' if n > 1 else ''}", fontsize=11)
        fig.tight_layout(rect=(0, 0.2, 1, 1))
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
    results = run(
        args.quick,
        seeds=[int(s) for s in args.seeds.split(",")] if args.seeds else None,
        models=args.models.split(",") if args.models else None,
    )
    results.pop("_models", None)
    print(to_markdown(results))
    print(
        f"\ntotal {results['timing']['total']:.0f}s; "
        + ", ".join(f"{k} {v:.1f}s" for k, v in results["timing"].items() if k != "total")
    )


if __name__ == "__main__":
    main()
