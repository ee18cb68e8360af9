"""Variant study: which FAIR pipeline configuration gives the best one-shot accuracy.

For every benchmark model and seed, at kept MACs 0.5 and 0.3, this prunes a copy of the trained
model with ``lightning_fair.prune(copy, calib, target_macs=t, **variant)`` for each variant
below and records the held-out top-1 accuracy one-shot (no training of any kind after pruning;
BatchNorm re-estimation, where a variant has it, uses the calibration images only).

Every variant changes one thing against the default pipeline (``preset="default"``), plus the
paper-exact pipeline (``preset="paper"``) and a few combinations. Scores are computed once per
(model, seed, observation point, reconstruction aggregation) and shared by the variants that
need them (``prune(..., scores=...)``), so the variants differ only where they say they do.

Run:  python examples/benchmarks/variants.py [--quick] [--models vgg_bn,resnet]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from lightning_fair import compute_scores, prune  # noqa: E402
from lightning_fair.config import PRESETS, PruneConfig

TARGETS = (0.5, 0.3)
SEEDS = (0, 1, 2)

#: key: (label, prune() options). Options not given come from the default preset.
VARIANTS: Dict[str, tuple] = {
    "default": ("default pipeline", {}),
    "paper": ('paper-exact (`preset="paper"`)', {"preset": "paper"}),
    "tod": ("ToD counts instead of the global U threshold", {"allocation": "tod"}),
    "standardised": ("standardised allocation (per-layer z-scores)", {"allocation": "standardised"}),
    "pairs_mean": ("U: mean over class pairs instead of the max", {"pairs": "mean"}),
    "observe_output": ("U observes the layer output", {"observe": "output"}),
    "observe_norm": ("U observes after the norm", {"observe": "norm"}),
    "no_recal": ("no BatchNorm re-estimation", {"recalibrate": False}),
    "no_comp": ("no mean-replacement compensation", {"compensate": False}),
    "neither": ("neither re-estimation nor compensation", {"recalibrate": False, "compensate": False}),
    "tod_sum_of_abs": ("ToD counts, R = Σ_samples |Σ dL/dz·z|", {"allocation": "tod", "reconstruction": "sum_of_abs"}),
    "tod_joint": ("ToD counts, coupled groups: joint ToD", {"allocation": "tod", "group_policy": "joint"}),
    "tod_no_comp": ("ToD counts, no compensation", {"allocation": "tod", "compensate": False}),
}


def scoring_key(options: dict) -> tuple:
    preset = PRESETS[options.get("preset", "default")]
    return (
        options.get("observe", preset["observe"]),
        options.get("reconstruction", preset["reconstruction"]),
        options.get("pairs", PruneConfig.pairs),
    )


def evaluate_seed(task: common.Task, seed: int, targets, variants) -> Dict[str, dict]:
    data = common.load_data(task.data)
    model = common.trained_model(task, seed)
    calib = common.loader(data.calib, batch_size=100)
    scores = {}
    for key in {scoring_key(options) for _, options in variants.values()}:
        observe, reconstruction, pairs = key
        scores[key] = compute_scores(
            model, calib, observe=observe, reconstruction=reconstruction, pairs=pairs, seed=seed
        )
    out: Dict[str, dict] = defaultdict(dict)
    for name, (_, options) in variants.items():
        for t in targets:
            try:
                result = prune(
                    common.clone(model), calib, target_macs=t, scores=scores[scoring_key(options)], seed=seed, **options
                )
            except ValueError as err:
                out[name][t] = {"status": "unreachable", "note": str(err)}
                continue
            out[name][t] = {
                "status": "ok",
                "kept": result.report.macs_ratio,
                "oneshot": common.accuracy(result.model.eval(), data.test),
            }
    return {"baseline": common.accuracy(model, data.test), "methods": dict(out)}


def run(quick: bool = False, seeds=None, targets=None, models=None, verbose: bool = True, threads: int = 1) -> dict:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        seeds = tuple(seeds) if seeds is not None else ((0,) if quick else SEEDS)
        targets = tuple(targets) if targets is not None else TARGETS
        tasks = common.tasks(quick)
        names = list(models) if models else list(tasks)
        variants = {k: VARIANTS[k] for k in (("default", "paper", "no_recal") if quick else VARIANTS)}
        results = {
            "settings": {"seeds": list(seeds), "targets": list(targets), "quick": quick},
            "variants": {k: v[0] for k, v in variants.items()},
            "models": {},
        }
        start = time.perf_counter()
        for name in names:
            task = tasks[name]
            per_seed = [evaluate_seed(task, seed, targets, variants) for seed in seeds]
            models_out = {"label": task.label, "baseline": [s["baseline"] for s in per_seed], "methods": {}}
            for variant in variants:
                rows = {}
                for t in targets:
                    recs = [s["methods"][variant][t] for s in per_seed]
                    if any(r["status"] != "ok" for r in recs):
                        rows[str(t)] = {
                            "status": "unreachable",
                            "note": next(r["note"] for r in recs if r["status"] != "ok"),
                        }
                    else:
                        rows[str(t)] = {
                            "status": "ok",
                            "kept": [r["kept"] for r in recs],
                            "oneshot": [r["oneshot"] for r in recs],
                        }
                models_out["methods"][variant] = rows
            results["models"][name] = models_out
            if verbose:
                print(f"  variants: {name} done ({time.perf_counter() - start:.0f}s)", flush=True)
        results["timing"] = {"total": time.perf_counter() - start}
        return results
    finally:
        torch.set_num_threads(previous)


def _cell(row) -> str:
    if row is None:
        return "–"
    if row["status"] != "ok":
        return "unreachable"
    mean, std = common.mean_std(row["oneshot"])
    kept = common.mean_std(row["kept"])[0]
    text = f"{mean:.1f} ± {std:.1f}" if len(row["oneshot"]) > 1 else f"{mean:.1f}"
    return f"{text} <sub>({kept:.2f})</sub>"


def mean_of(row):
    return common.mean_std(row["oneshot"])[0] if row and row.get("status") == "ok" else None


def to_markdown(results: dict, extra_rows=None) -> str:
    """One table per target: variants (rows) x models (columns), one-shot held-out top-1 %.

    ``extra_rows``: ``{target: [(label, {model: cell text})]}`` appended below the variants
    (e.g. the best torch-pruning baseline from the quality benchmark); an entry ``"mean"`` fills
    the mean column."""
    models, targets = results["models"], results["settings"]["targets"]
    lines = []
    for t in targets:
        lines += [
            f"#### Kept MACs {t}: one-shot held-out top-1 % (mean ± std over the seeds; <sub>(kept MACs)</sub>)",
            "",
            "| variant | " + " | ".join(m["label"] for m in models.values()) + " | mean |",
            "|---|" + "---:|" * (len(models) + 1),
        ]
        for variant, label in results["variants"].items():
            rows = [m["methods"][variant].get(str(t)) for m in models.values()]
            means = [mean_of(r) for r in rows]
            avg = f"{sum(means) / len(means):.1f}" if all(v is not None for v in means) else "–"
            label = label.replace("|", "\\|")  # a pipe inside a table cell must be escaped
            name = f"**{label}**" if variant == "default" else label
            lines.append(f"| {name} | " + " | ".join(_cell(r) for r in rows) + f" | {avg} |")
        for label, cells in (extra_rows or {}).get(t, []):
            lines.append(
                f"| {label} | "
                + " | ".join(cells.get(k, "–").replace("|", "\\|") for k in models)
                + f" | {cells.get('mean', '')} |"
            )
        lines.append("")
    return "\n".join(lines)


#: The options the study varies, for :func:`reading`: (option, the variant it is compared
#: against, what that variant has, {variant: what it has instead}). Reconstruction aggregation
#: and group policy only act through ToD counts (the global threshold uses U alone and always
#: the smallest member count), so they are varied, and compared, under ``allocation="tod"``.
OPTIONS = (
    (
        "allocation",
        "default",
        "global U threshold",
        {"tod": "ToD counts", "standardised": "standardised threshold (per-layer z-scores)"},
    ),
    ("U over class pairs", "default", "max (the paper's)", {"pairs_mean": "mean"}),
    (
        "U observes",
        "default",
        "after the nonlinearity",
        {"observe_output": "the layer output", "observe_norm": "after the norm"},
    ),
    ("mean-replacement compensation", "default", "on", {"no_comp": "off"}),
    ("mean-replacement compensation under ToD counts", "tod", "on", {"tod_no_comp": "off"}),
    ("BatchNorm re-estimation", "default", "on", {"no_recal": "off"}),
    ("re-estimation and compensation", "default", "both", {"neither": "neither"}),
    (
        "reconstruction aggregation (ToD counts)",
        "tod",
        "abs of the sum, |Σ_samples Σ dL/dz·z|",
        {"tod_sum_of_abs": "sum of abs, Σ_samples |Σ dL/dz·z|"},
    ),
    ("coupled-group policy (ToD counts)", "tod", "smallest member count", {"tod_joint": "joint ToD"}),
    ("all together", "default", "default pipeline", {"paper": "paper-exact"}),
)


def cell_means(results: dict, variant: str) -> Dict[tuple, float]:
    """``{(model, target): mean one-shot accuracy}`` over the cells where ``variant`` reached the target."""
    out = {}
    for name, m in results["models"].items():
        for t in results["settings"]["targets"]:
            value = mean_of(m["methods"].get(variant, {}).get(str(t)))
            if value is not None:
                out[(name, t)] = value
    return out


def option_effects(results: dict):
    """Per option of :data:`OPTIONS` present in ``results``: ``(option, reference variant, its
    setting, reference mean, [(variant, setting, mean, mean difference, cells better, cells
    changed, cells, lowest difference, highest difference)])`` over the (model, target) cells
    both reached; means over models and targets."""
    effects = []
    for option, ref, ref_label, alternatives in OPTIONS:
        alts = [a for a in alternatives if a in results["variants"]]
        if ref not in results["variants"] or not alts:
            continue
        base = cell_means(results, ref)
        rows = []
        for alt in alts:
            other = cell_means(results, alt)
            cells = [c for c in base if c in other]
            if not cells:
                continue
            diffs = [other[c] - base[c] for c in cells]
            rows.append(
                (
                    alt,
                    alternatives[alt],
                    sum(other[c] for c in cells) / len(cells),
                    sum(diffs) / len(diffs),
                    sum(d > 0 for d in diffs),
                    sum(abs(d) > 1e-9 for d in diffs),
                    len(cells),
                    min(diffs),
                    max(diffs),
                )
            )
        if rows:
            cells = [c for c in base if all(c in cell_means(results, r[0]) for r in rows)]
            effects.append((option, ref, ref_label, sum(base[c] for c in cells) / len(cells), rows))
    return effects


def reading(results: dict) -> str:
    """Per option: each alternative minus the variant it departs from (mean over models and
    targets, in accuracy points), and which setting has the highest mean."""
    label = results["variants"]
    lines = []
    for option, ref, ref_label, ref_mean, rows in option_effects(results):
        parts = []
        for alt, alt_label, mean, diff, better, changed, n, low, high in rows:
            text = f"{alt_label}: {diff:+.1f} points (better in {better} of {n} cells"
            if changed < n:
                text += f", identical in {n - changed}"
            text += f"; {low:+.1f} to {high:+.1f})" if n > 1 else ")"
            parts.append(text)
        best = max([(ref_mean, ref_label)] + [(r[2], r[1]) for r in rows], key=lambda x: x[0])
        where = "the default" if ref == "default" else f'in "{label[ref]}"'
        verdict = f"Best: **{best[1]}**" + (" (the default's)" if best[1] == ref_label and ref == "default" else "")
        lines.append(f"* **{option}**: {ref_label} ({where}): {ref_mean:.1f}%; " + "; ".join(parts) + f". {verdict}.")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default=None)
    parser.add_argument("--seeds", default=None)
    args = parser.parse_args(argv)
    results = run(
        args.quick,
        seeds=[int(s) for s in args.seeds.split(",")] if args.seeds else None,
        models=args.models.split(",") if args.models else None,
    )
    print(to_markdown(results))
    print(reading(results))
    print(f"total {results['timing']['total']:.0f}s")


if __name__ == "__main__":
    main()
