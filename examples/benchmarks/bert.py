"""A tiny BERT classifier on a real sequence task: FAIR vs torch-pruning's head pruning.

No text data set is available offline here (no package bundles one), so the sequence task is
real data read as tokens: each sklearn digit (8x8 pixels, integer intensities 0..16) is a
sequence of 64 tokens (its pixels in reading order; vocabulary 0..16) after a ``[CLS]`` token,
classified by a Hugging Face ``BertForSequenceClassification`` from a tiny config (random init, no
download) trained here (cached, seed 0). Positions carry the image's layout, so the model has to
learn it from the position embeddings. Pruned to kept MACs 0.5 and 0.3 of its Linear MACs:

* FAIR's default pipeline on the Hugging Face batches as they are (``{"input_ids", "labels"}``
  dicts): attention heads (a head's query, key, value rows and its columns of the attention output
  dense layer) and feed-forward neurons (``intermediate.dense``) are units, the pooler's neurons
  too; the embedding dimension is kept.
* torch-pruning 1.6 ``MetaPruner`` with whole-head pruning as its Hugging Face BERT example does
  (``num_heads`` for query, key and value, ``prune_num_heads=True``, ``prune_head_dims=False``),
  the residual stream kept as for FAIR (the attention output and feed-forward output dense layers
  and the classifier in ``ignored_layers``): uniform L2 magnitude, uniform Taylor and global L2
  magnitude; the ratio is searched to each target.

Each pruned model is then fine-tuned (AdamW, one epoch over the training split, cosine to 0).
Held-out top-1 % on the 397 test digits.

Run:  python examples/benchmarks/bert.py            # prints the markdown section (docs/benchmarks.md)
      python examples/benchmarks/bert.py --quick    # fewer epochs, a smoke test of every code path
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import heads  # noqa: E402
import quality  # noqa: E402

import lightning_fair  # noqa: E402
from lightning_fair.units.cost import measure

CLS = 17  # pixel intensities are 0..16
CONFIG = dict(
    vocab_size=18,
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=128,
    max_position_embeddings=65,
    num_labels=10,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
QUICK_CONFIG = dict(CONFIG, num_hidden_layers=2)
#: (epochs, peak lr) of training; the fine-tune: one epoch, lr FINETUNE_LR cosine to 0
TRAINING, QUICK_TRAINING, FINETUNE_LR = (40, 2e-3), (3, 2e-3), 5e-4


def tokens(split: common.Split) -> torch.Tensor:
    """``[N, 65]`` token ids: ``[CLS]`` then the 64 pixel intensities (0..16) in reading order."""
    pixels = (split.x * 16).round().long().flatten(1)
    return torch.cat([torch.full((len(pixels), 1), CLS), pixels], dim=1)


def batches(split: common.Split, batch_size: int = 100, shuffle: bool = False, seed: int = 0):
    """Hugging Face batches: ``{"input_ids", "labels"}`` dicts."""
    ids = tokens(split)
    order = (
        torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(len(ids))
    )
    return [
        {"input_ids": ids[order[i : i + batch_size]], "labels": split.y[order[i : i + batch_size]]}
        for i in range(0, len(ids), batch_size)
    ]


def build(config: dict) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig(**config))


def train(model: nn.Module, split: common.Split, epochs: int, lr: float, seed: int, schedule: str) -> nn.Module:
    common.set_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * len(batches(split, 64))
    scheduler = (
        torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.15)
        if schedule == "one_cycle"
        else torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    )
    model.train()
    for epoch in range(epochs):
        for batch in batches(split, 64, shuffle=True, seed=seed * 1000 + epoch):
            loss = F.cross_entropy(model(input_ids=batch["input_ids"]).logits, batch["labels"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return model.eval()


def accuracy(model: nn.Module, split: common.Split) -> float:
    model.eval()
    with torch.no_grad():
        right = sum(
            int((model(input_ids=b["input_ids"]).logits.argmax(1) == b["labels"]).sum()) for b in batches(split, 200)
        )
    return 100.0 * right / len(split)


def trained(quick: bool, data: common.Data, seed: int = 0) -> nn.Module:
    config, (epochs, lr) = (QUICK_CONFIG, QUICK_TRAINING) if quick else (CONFIG, TRAINING)
    key = hashlib.sha1(json.dumps([config, epochs, lr, seed, common.SPLIT_SEED]).encode()).hexdigest()[:10]
    path = common.CACHE_DIR / f"bert{'_quick' if quick else ''}-seed{seed}-{key}.pt"
    common.set_seed(seed)
    model = build(config)
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    train(model, data.train, epochs, lr, seed, "one_cycle")
    common.CACHE_DIR.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)
    return model


def attentions(model: nn.Module):
    from transformers.models.bert.modeling_bert import BertSelfAttention

    return [m for m in model.modules() if isinstance(m, BertSelfAttention)]


def shape(model: nn.Module) -> str:
    heads = "/".join(str(a.num_attention_heads) for a in attentions(model))
    ffn = "/".join(str(layer.intermediate.dense.out_features) for layer in model.bert.encoder.layer)
    return f"heads {heads}; FFN {ffn}; pooler {model.bert.pooler.dense.out_features}"


def tp_heads(model: nn.Module, example, importance, ratio: float, global_pruning: bool) -> nn.Module:
    """torch-pruning with whole-head pruning, the residual stream kept; head counts updated."""
    import torch_pruning as tp

    ignored = [model.classifier]
    for layer in model.bert.encoder.layer:
        ignored += [layer.attention.output.dense, layer.output.dense]
    num_heads = {}
    for a in attentions(model):
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
        output_transform=lambda out: out.logits.sum(),
        in_channel_groups={},
        out_channel_groups={},
        channel_groups={},
    )
    pruner.step()
    for a in attentions(model):
        heads = pruner.num_heads[a.query]
        if heads < 1:  # torch-pruning 1.6.1 counts a group it refused (every head) as removed
            raise ValueError(f"torch-pruning left no head at ratio {ratio:.3f}")
        a.num_attention_heads, a.attention_head_size = heads, a.query.out_features // heads
        a.all_head_size = a.query.out_features
    model.zero_grad(set_to_none=True)
    return model.eval()


def taylor_gradients(model: nn.Module, calib) -> nn.Module:
    model.eval()
    model.zero_grad(set_to_none=True)
    for batch in calib:
        F.cross_entropy(model(input_ids=batch["input_ids"]).logits, batch["labels"]).backward()
    return model


def evaluate(quick: bool, verbose: bool = True, seed: int = 0) -> dict:
    import torch_pruning as tp

    data = common.load_data("digits")
    model = trained(quick, data, seed)
    calib = batches(data.calib, 100)
    example = calib[0]["input_ids"][:1]  # the model is called with one tensor: input_ids
    base_macs, params = measure(model, example)

    def kept(pruned):
        return measure(pruned, example)[0] / base_macs

    def record(pruned):
        row = {"kept": kept(pruned), "oneshot": accuracy(pruned, data.test), "shape": shape(pruned)}
        return dict(row, ft=accuracy(train(pruned, data.train, 1, FINETUNE_LR, seed + 7919, "cosine"), data.test))

    def fair_models():
        scores = lightning_fair.compute_scores(model, calib, seed=seed)
        for t in heads.TARGETS:
            result = lightning_fair.prune(copy.deepcopy(model), calib, target_macs=t, scores=scores, seed=seed)
            yield t, result.model.eval(), f"global threshold {result.level:.3g}"

    taylor_source = taylor_gradients(copy.deepcopy(model), calib)

    def pruned_at(method, ratio):
        importance = tp.importance.TaylorImportance() if method == "taylor" else tp.importance.MagnitudeImportance(p=2)
        candidate = quality.clone_with_grads(taylor_source) if method == "taylor" else copy.deepcopy(model)
        return tp_heads(candidate, example, importance, ratio, global_pruning=method == "global_l2")

    out = heads.compare(fair_models, pruned_at, kept, record, quick, verbose)
    return {
        "macs": base_macs,
        "params": params,
        "baseline": accuracy(model, data.test),
        "shape": shape(model),
        "config": QUICK_CONFIG if quick else CONFIG,
        "training": QUICK_TRAINING if quick else TRAINING,
        "test_images": len(data.test),
        "methods": out,
    }


def run(quick: bool = False, verbose: bool = True, threads: int = 1) -> dict:
    torch.set_num_threads(threads)
    start = time.perf_counter()
    results = evaluate(quick, verbose)
    results["seconds"] = time.perf_counter() - start
    return results


def to_markdown(results: dict) -> str:
    c, (epochs, lr) = results["config"], results["training"]
    lines = [
        f"BERT (`BertForSequenceClassification`), hidden {c['hidden_size']}, {c['num_hidden_layers']} layers, "
        f"{c['num_attention_heads']} heads, feed-forward {c['intermediate_size']}: {results['macs'] / 1e6:.2f} M MACs "
        f"(Linear), {results['params'] / 1e6:.2f} M parameters; trained {epochs} epochs (AdamW, one-cycle peak lr "
        f"{lr:g}) on the 1100 training digits as 65-token sequences; held-out accuracy before pruning "
        f"**{results['baseline']:.1f}%** ({results['test_images']} test digits); {results['seconds']:.0f} s in all, "
        f"1 thread. Fine-tune: AdamW, one epoch over the training digits, lr {FINETUNE_LR:g} cosine to 0. One "
        "trained model (seed 0).",
        "",
    ]
    return "\n".join(lines + heads.tables(results, "heads per layer; feed-forward neurons per layer; pooler")) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 2-layer BERT trained 3 epochs (smoke test)")
    args = parser.parse_args(argv)
    print(to_markdown(run(args.quick)))


if __name__ == "__main__":
    main()
