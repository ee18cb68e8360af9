"""The least-squares refit (``refit=True``) on the transformers the benchmark prunes: the timm-style
ViT of vit.py and the Hugging Face tiny BERT of bert.py, each trained with seeds 0, 1, 2 (their
scripts' recipes, cached), pruned by FAIR's pipeline without and with the refit to kept MACs 0.5
and 0.3 (same scores, same counts: the refit changes weights, not shapes), one-shot and after each
script's own fine-tune (ViT: Adam, one epoch over 1000 training images, lr 5e-4 cosine; BERT: AdamW,
one epoch over the training split, cosine). Units: attention heads and MLP / feed-forward neurons;
the refitted consumers are the attention output projections and the MLP output layers.

Run:  python examples/benchmarks/refit_transformers.py [--models vit,bert] [--seeds 0,1,2] [--quick]
Prints a markdown table (docs/benchmarks.md, "Least-squares refit").
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bert  # noqa: E402
import common  # noqa: E402
import heads  # noqa: E402
import vit  # noqa: E402

import lightning_fair  # noqa: E402

VARIANTS = {"fair": {"refit": False}, "fair_refit": {"refit": True}}
LABEL = {"fair": "FAIR, refit off", "fair_refit": "FAIR + refit"}


def vit_setup(quick: bool, seed: int):
    run = vit.Run(vit.task(quick), quick, seed)
    return run.model, run.calib, run.accuracy, run.finetune, run.kept


def bert_setup(quick: bool, seed: int):
    data = common.load_data("digits")
    model = bert.trained(quick, data, seed)
    calib = bert.batches(data.calib, 100)
    example = calib[0]["input_ids"][:1]
    base = lightning_fair.units.cost.measure(model, example)[0]

    def finetune(pruned):
        return bert.train(pruned, data.train, 1, bert.FINETUNE_LR, seed + 7919, "cosine")

    def kept(pruned):
        return lightning_fair.units.cost.measure(pruned, example)[0] / base

    return model, calib, lambda m: bert.accuracy(m, data.test), finetune, kept


SETUPS = {"vit": vit_setup, "bert": bert_setup}
TITLES = {"vit": "ViT (vit.py)", "bert": "tiny BERT (bert.py)"}


def measure(name: str, seed: int, quick: bool) -> dict:
    model, calib, accuracy, finetune, kept = SETUPS[name](quick, seed)
    start = time.perf_counter()
    scores = lightning_fair.compute_scores(model, calib, seed=seed)
    out = {"unpruned": accuracy(model), "scores_s": time.perf_counter() - start}
    for key, options in VARIANTS.items():
        for t in heads.TARGETS:
            start = time.perf_counter()
            result = lightning_fair.prune(
                copy.deepcopy(model), calib, target_macs=t, scores=scores, seed=seed, **options
            )
            seconds = time.perf_counter() - start
            pruned = result.model.eval()
            row = {"kept": kept(pruned), "oneshot": accuracy(pruned), "seconds": seconds}
            row["refitted"] = len(result.report.refitted)
            row["ft"] = accuracy(finetune(pruned))
            out[key, t] = row
    return out


def table(results: dict) -> str:
    lines = [
        "| model | kept MACs | seeds | unpruned | "
        + " | ".join(f"{LABEL[k]} one-shot" for k in VARIANTS)
        + " | "
        + " | ".join(f"{LABEL[k]} fine-tuned" for k in VARIANTS)
        + " | refit − off, one-shot per seed | layers refitted | prune s, off / refit |",
        "|---|---:|---:|---:|" + "---:|" * (2 * len(VARIANTS)) + "---|---:|---:|",
    ]

    def ms(values):
        return (
            f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{values[0]:.1f}"
        )

    for name, runs in results.items():
        for t in heads.TARGETS:
            rows = {k: [r[k, t] for r in runs] for k in VARIANTS}
            diffs = [b["oneshot"] - a["oneshot"] for a, b in zip(rows["fair"], rows["fair_refit"])]
            lines.append(
                f"| {TITLES[name]} | {t} | {len(runs)} | {ms([r['unpruned'] for r in runs])} | "
                + " | ".join(ms([x["oneshot"] for x in rows[k]]) for k in VARIANTS)
                + " | "
                + " | ".join(ms([x["ft"] for x in rows[k]]) for k in VARIANTS)
                + f" | {', '.join(f'{d:+.1f}' for d in diffs)} | {rows['fair_refit'][0]['refitted']} | "
                f"{statistics.mean(x['seconds'] for x in rows['fair']):.1f} / "
                f"{statistics.mean(x['seconds'] for x in rows['fair_refit']):.1f} |"
            )
    return "\n".join(lines)


def run(quick: bool = False, seeds=(0, 1, 2), models=("vit", "bert"), threads: int = 1) -> dict:
    """Both variants on every (model, seed); returns the table and the time."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    start = time.perf_counter()
    results = {}
    try:
        for name in models:
            results[name] = [measure(name, seed, quick) for seed in (seeds[:1] if quick else seeds)]
    finally:
        torch.set_num_threads(previous)
    return {"table": table(results), "seconds": time.perf_counter() - start, "quick": quick}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="vit,bert")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--quick", action="store_true", help="the scripts' tiny models (smoke test)")
    args = parser.parse_args(argv)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    print(run(args.quick, seeds, tuple(args.models.split(",")))["table"])


if __name__ == "__main__":
    main()
