"""Pruned Hugging Face models as users keep them (issue 23): ``save_pretrained`` and back, in a fresh
process, for every family the library prunes, under both shape policies. ``shapes="uniform"``
folders load with stock ``from_pretrained`` (the config holds the new counts); ``shapes="per_layer"``
folders load with ``lightning_fair.load_pretrained`` (the config carries the pruning history)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from decoder_helpers import DECODERS, MOE, decoder, moe_decoder
from decoder_helpers import token_batches as decoder_tokens
from transformer_helpers import hf_model, image_batches
from transformer_helpers import token_batches as encoder_tokens

from lightning_fair import prune
from lightning_fair.units.pretrained_config import CONFIG_KEY, layer_fields, pretrained_models

pytest.importorskip("transformers")

ENCODERS = ["bert", "distilbert", "vit"]
FAMILIES = ENCODERS + DECODERS + MOE
FAST = dict(samples_per_class=4, num_projections=8, max_classes=16)

#: the fresh process: loads every folder as a user would and writes its logits (and a few generated tokens)
LOADER = textwrap.dedent(
    """
    import json, sys, torch, transformers, lightning_fair
    cases = json.load(open(sys.argv[1]))
    out = {}
    for case in cases:
        folder, inputs = case["folder"], torch.load(case["inputs"])
        if case["shapes"] == "uniform":
            auto = getattr(transformers, case["auto"])
            model = auto.from_pretrained(folder).eval()
        else:
            model = lightning_fair.load_pretrained(folder)
            try:  # stock from_pretrained cannot describe layers of different widths
                getattr(transformers, case["auto"]).from_pretrained(folder)
                stock = "loaded"
            except Exception as error:
                stock = type(error).__name__
            case["stock"] = stock
        with torch.no_grad():
            logits = model(inputs).logits
        generated = None
        if case["decoder"]:
            generated = model.generate(inputs[:1, :6], max_new_tokens=3, do_sample=False).tolist()
        torch.save({"logits": logits, "generated": generated, "class": type(model).__name__,
                    "stock": case.get("stock")}, case["folder"] + "/reloaded.pt")
    """
)


def build(family: str):
    if family in ENCODERS:
        batches = image_batches() if family == "vit" else encoder_tokens(hf=True)
        first = batches[0]
        inputs = first[0][:3] if isinstance(first, (tuple, list)) else first["input_ids"][:3]
        auto = "AutoModelForImageClassification" if family == "vit" else "AutoModelForSequenceClassification"
        return hf_model(family).eval(), batches, inputs, auto, dict(target_macs=0.6)
    torch.manual_seed(0)
    model = moe_decoder(family) if family in MOE else decoder(family)
    return model, decoder_tokens(3), decoder_tokens(1, seed=9)[0], "AutoModelForCausalLM", dict(target_params=0.8)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Every family pruned under both policies, saved with ``save_pretrained``, then reloaded in one
    fresh process; ``{(family, shapes): (pruned model, expected logits, expected tokens, reloaded)}``."""
    root = tmp_path_factory.mktemp("pretrained")
    cases, kept = [], {}
    for family in FAMILIES:
        model, batches, inputs, auto, budget = build(family)
        for shapes in ("per_layer", "uniform"):
            torch.manual_seed(0)
            result = prune(copy.deepcopy(model), batches, shapes=shapes, **FAST, **budget)
            pruned = result.model.eval()
            folder = root / f"{family}-{shapes}"
            pruned.save_pretrained(folder)
            torch.save(inputs, folder / "inputs.pt")
            with torch.no_grad():
                logits = pruned(inputs).logits
            tokens = None
            if family not in ENCODERS:
                tokens = pruned.generate(inputs[:1, :6], max_new_tokens=3, do_sample=False).tolist()
            cases.append(
                {
                    "folder": str(folder),
                    "inputs": str(folder / "inputs.pt"),
                    "shapes": shapes,
                    "auto": auto,
                    "decoder": family not in ENCODERS,
                }
            )
            kept[(family, shapes)] = (pruned, logits, tokens, folder)
    (root / "cases.json").write_text(json.dumps(cases))
    (root / "loader.py").write_text(LOADER)
    run = subprocess.run(
        [sys.executable, str(root / "loader.py"), str(root / "cases.json")], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return {key: (*values[:3], torch.load(values[3] / "reloaded.pt")) for key, values in kept.items()}


@pytest.mark.parametrize("shapes", ["per_layer", "uniform"])
@pytest.mark.parametrize("family", FAMILIES)
def test_save_pretrained_round_trip(saved, family, shapes):
    pruned, logits, tokens, reloaded = saved[(family, shapes)]
    torch.testing.assert_close(reloaded["logits"], logits, rtol=1e-4, atol=1e-5)
    assert reloaded["class"] == type(pruned).__name__
    if tokens is not None:
        assert reloaded["generated"] == tokens
    (_, hf), *_ = pretrained_models(pruned)
    fields = {f: v for found in layer_fields(hf).values() for f, v in (found or {}).items()}
    if shapes == "uniform":
        # one count per field across the layers, written into the config
        assert all(getattr(pruned.config, f) == v for f, v in fields.items())
    assert hasattr(pruned.config, CONFIG_KEY)  # the history travels in the config either way
    if shapes == "per_layer":
        differs = any(getattr(pruned.config, f, v) != v for f, v in fields.items())
        if differs:  # layers that differ from the config's counts: stock from_pretrained refuses them
            assert reloaded["stock"] != "loaded"


@pytest.mark.parametrize("family", ["llama", "mixtral"])
def test_uniform_shapes_prune_every_layer_alike(saved, family):
    """Under shapes='uniform' every block keeps the same heads and MLP width (and experts); per layer
    they may differ."""
    pruned = saved[(family, "uniform")][0]
    (_, hf), *_ = pretrained_models(pruned)
    per_field: dict = {}
    for found in layer_fields(hf).values():
        for field, value in (found or {}).items():
            per_field.setdefault(field, set()).add(value)
    assert per_field and all(len(values) == 1 for values in per_field.values())
    original = decoder(family) if family in DECODERS else moe_decoder(family)
    before = {f: v for found in layer_fields(original).values() for f, v in (found or {}).items()}
    assert any(next(iter(values)) < before[f] for f, values in per_field.items())


def test_uniform_then_per_layer_prunings_reload_with_load_pretrained(tmp_path):
    """A model pruned with uniform shapes (config fields rewritten), then per layer: the history in
    the config starts from the counts before the first pruning, so load_pretrained rebuilds it."""
    from lightning_fair import load_pretrained

    torch.manual_seed(0)
    batches, inputs = decoder_tokens(3), decoder_tokens(1, seed=9)[0]
    model = prune(decoder("llama"), batches, target_params=0.9, shapes="uniform", **FAST).model
    model = prune(model, batches, target_params=0.85, **FAST).model.eval()
    model.save_pretrained(tmp_path / "twice")
    again = load_pretrained(tmp_path / "twice")
    with torch.no_grad():
        torch.testing.assert_close(again(inputs).logits, model(inputs).logits, rtol=1e-4, atol=1e-5)
    uniform_only = prune(decoder("llama"), batches, target_params=0.8, shapes="uniform", **FAST).model.eval()
    uniform_only.save_pretrained(tmp_path / "uniform")
    with torch.no_grad():  # a uniform folder loads with load_pretrained too
        torch.testing.assert_close(
            load_pretrained(tmp_path / "uniform")(inputs).logits, uniform_only(inputs).logits, rtol=1e-4, atol=1e-5
        )
