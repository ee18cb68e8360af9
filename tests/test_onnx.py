"""Pruned models export to ONNX and run in onnxruntime with the same outputs (issue 23): a ResNet
with residual adds and a Hugging Face BERT with its attention mask, each at a batch size and (BERT)
a sequence length other than the exported ones. A test extra: skipped without onnx, onnxscript
(torch's exporter) and onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformer_helpers import hf_model
from transformer_helpers import token_batches as encoder_tokens

from lightning_fair import prune
from lightning_fair.demos import zoo

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")


def run_onnx(path, feeds: dict) -> np.ndarray:
    return ort.InferenceSession(str(path)).run(None, {k: v.numpy() for k, v in feeds.items()})[0]


def test_pruned_resnet_exports_and_matches(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(96, 3, 16, 16)
    batches = [(x[i : i + 32], torch.arange(32) % 10) for i in range(0, 96, 32)]
    model = zoo.resnet(in_channels=3, num_classes=10).eval()
    before = sum(p.numel() for p in model.parameters())
    pruned = prune(model, batches, target_macs=0.5, samples_per_class=4, num_projections=8).model.eval()
    assert sum(p.numel() for p in pruned.parameters()) < before
    path = tmp_path / "resnet.onnx"
    torch.onnx.export(
        pruned, (x[:4],), str(path), input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "batch"}}
    )
    got = run_onnx(path, {"x": x[:9]})
    with torch.no_grad():
        expected = pruned(x[:9]).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_pruned_bert_exports_with_its_mask_and_matches(tmp_path):
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    batches = encoder_tokens(hf=True)
    pruned = prune(hf_model("bert").eval(), batches, target_macs=0.6, samples_per_class=4, num_projections=8).model
    pruned.eval()
    ids = batches[0]["input_ids"][:2]
    path = tmp_path / "bert.onnx"
    axes = {0: "batch", 1: "sequence"}
    torch.onnx.export(
        pruned,
        (ids, torch.ones_like(ids)),
        str(path),
        input_names=["input_ids", "attention_mask"],
        output_names=["logits"],
        dynamic_axes={"input_ids": axes, "attention_mask": axes},
    )
    ids = batches[1]["input_ids"][:5, :6]  # another batch size and sequence length
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0  # a padded row: the mask reaches the exported graph
    got = run_onnx(path, {"input_ids": ids, "attention_mask": mask})
    with torch.no_grad():
        expected = pruned(input_ids=ids, attention_mask=mask).logits.numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
