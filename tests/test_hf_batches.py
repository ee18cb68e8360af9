"""Batches as Hugging Face users have them (issue 23): every entry of a dict batch that the model's
forward names (``attention_mask``, ``token_type_ids``, ...) reaches the model in every pass, padded
positions stay out of the statistics of next-token prediction, and sequences of different lengths
across batches work."""

from __future__ import annotations

import copy

import pytest
import torch
from decoder_helpers import VOCAB, decoder, token_batches, train_briefly
from torch import nn

from lightning_fair import compute_scores, evaluate, prune
from lightning_fair.runtime.batches import default_unpack

FAST = dict(samples_per_class=16, num_projections=8, max_classes=8)


def padded(ids: torch.Tensor, lengths: list, pad: int, side: str, seed: int) -> dict:
    """``ids``' rows cut to ``lengths`` and padded back to ``pad`` tokens with random junk (``seed``)
    on ``side``: a batch as a tokenizer with padding gives it, labels -100 at the padding."""
    junk = torch.randint(0, VOCAB, (ids.shape[0], pad), generator=torch.Generator().manual_seed(seed))
    input_ids, mask = junk.clone(), torch.zeros(ids.shape[0], pad, dtype=torch.long)
    for row, length in enumerate(lengths):
        span = slice(0, length) if side == "right" else slice(pad - length, pad)
        input_ids[row, span], mask[row, span] = ids[row, :length], 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": input_ids.masked_fill(mask == 0, -100)}


@pytest.fixture(scope="module")
def llama():
    return train_briefly(decoder("llama"), token_batches(4, seed=1), steps=30)


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_does_not_enter_the_scores(llama, side):
    """The same sequences padded with different junk (and, on the right, to different lengths) give
    the same scores: padded positions are neither samples of U nor in the loss of R, and under left
    padding the attention mask keeps them from the real tokens."""
    ids = token_batches(3, length=20, seed=2)
    lengths = [[20, 14, 9, 17], [12, 20, 20, 6], [20, 11, 15, 18]]
    pads = (20, 20) if side == "left" else (20, 26)
    scores = [
        compute_scores(llama, [padded(x, n, pad, side, seed) for x, n in zip(ids, lengths)], **FAST)
        for seed, pad in enumerate(pads)
    ]
    assert scores[0].class_counts == scores[1].class_counts
    assert sorted(scores[0].utilization) == sorted(scores[1].utilization)
    for name in scores[0].utilization:
        torch.testing.assert_close(scores[0].utilization[name], scores[1].utilization[name], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(scores[0].reconstruction[name], scores[1].reconstruction[name], rtol=1e-3, atol=1e-6)
    assert sorted(scores[0].peaks) == sorted(scores[0].utilization)  # and the peaks that find massive activations
    for name in scores[0].peaks:
        torch.testing.assert_close(scores[0].peaks[name], scores[1].peaks[name], rtol=1e-4, atol=1e-6)
    # perplexity counts the real tokens only
    first, second = (
        evaluate(llama, [padded(x, n, pad, side, seed) for x, n in zip(ids, lengths)]) for seed, pad in enumerate(pads)
    )
    assert first["perplexity"] == pytest.approx(second["perplexity"], rel=1e-4)


def test_prune_passes_the_mask_and_takes_sequences_of_different_lengths(llama):
    batches = [padded(x, [24, 18, 10, 21], 24, "left", 0) for x in token_batches(2, seed=3)]
    batches += [{"input_ids": x, "labels": x} for x in token_batches(2, length=16, seed=4)]  # shorter, unpadded
    result = prune(copy.deepcopy(llama), batches, target_macs=0.6, **FAST)
    assert result.report.macs_ratio <= 0.6 + 1e-9
    heldout = [padded(x, [24, 12, 20, 16], 24, "left", 7) for x in token_batches(2, seed=5)]
    pruned = evaluate(result.model, heldout)
    assert torch.isfinite(torch.tensor(pruned["perplexity"]))
    # evaluate passes the mask: its loss is the model's own with the mask, over the real tokens that a
    # real token predicts (the first real token, predicted from a padded position, is not counted)
    with torch.no_grad():
        losses = []
        for batch in heldout:
            labels = batch["labels"].clone()
            labels[:, 1:][batch["attention_mask"][:, :-1] == 0] = -100
            losses.append(float(result.model(**{**batch, "labels": labels}).loss))
    assert pruned["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-4)


class TypedEncoder(nn.Module):
    """A classifier whose output depends on ``token_type_ids`` (as BERT's does), written as users do."""

    def __init__(self):
        super().__init__()
        self.tokens, self.types = nn.Embedding(VOCAB, 16), nn.Embedding(2, 16)
        self.hidden, self.head = nn.Linear(16, 32), nn.Linear(32, 3)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None):
        x = self.tokens(input_ids)
        if token_type_ids is not None:
            x = x + self.types(token_type_ids)
        weights = torch.ones_like(input_ids, dtype=x.dtype) if attention_mask is None else attention_mask.to(x.dtype)
        pooled = (torch.relu(self.hidden(x)) * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)
        return self.head(pooled)


class BatchForward(nn.Module):
    """A module written as ``forward(self, batch)`` over the whole dict (the batch reaches it as one)."""

    def __init__(self):
        super().__init__()
        self.inner = TypedEncoder()

    def forward(self, batch):
        return self.inner(batch["input_ids"], batch["token_type_ids"])


def typed_batches(n: int = 4, seed: int = 0) -> list:
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, VOCAB, (16, 10), generator=generator)
        types = torch.randint(0, 2, (16, 10), generator=generator)
        labels = (ids[:, 0] + 2 * types[:, 0]) % 3
        out.append(
            {"input_ids": ids, "token_type_ids": types, "attention_mask": torch.ones_like(ids), "labels": labels}
        )
    return out


def test_every_batch_entry_the_forward_names_reaches_it():
    torch.manual_seed(0)
    model, batches = TypedEncoder().eval(), typed_batches()
    inputs, labels = default_unpack({**batches[0], "special_tokens_mask": torch.zeros(16, 10)})
    assert sorted(inputs) == ["attention_mask", "input_ids", "special_tokens_mask", "token_type_ids"]
    with torch.no_grad():
        by_hand = sum(
            float(nn.functional.cross_entropy(model(b["input_ids"], b["token_type_ids"]), b["labels"])) for b in batches
        ) / len(batches)
        without_types = sum(
            float(nn.functional.cross_entropy(model(b["input_ids"]), b["labels"])) for b in batches
        ) / len(batches)
    assert abs(by_hand - without_types) > 1e-3  # the token types matter to this model
    # a collator's extra entry the forward does not name stays out
    extra = [{**b, "special_tokens_mask": torch.zeros(16, 10)} for b in batches]
    assert evaluate(model, extra)["loss"] == pytest.approx(by_hand, rel=1e-5)
    result = prune(copy.deepcopy(model), extra, target_macs=0.7, num_projections=8)
    assert result.report.macs_ratio <= 0.7 + 1e-9
    with torch.no_grad():
        expected = result.model(batches[0]["input_ids"], batches[0]["token_type_ids"])
    assert expected.shape == (16, 3)
    assert evaluate(result.model, extra)["loss"] == pytest.approx(
        sum(
            float(nn.functional.cross_entropy(result.model(b["input_ids"], b["token_type_ids"]), b["labels"]))
            for b in batches
        )
        / len(batches),
        rel=1e-5,
    )


def test_a_forward_over_the_whole_batch_dict_gets_the_dict():
    torch.manual_seed(0)
    model = BatchForward().eval()
    result = prune(copy.deepcopy(model), typed_batches(), target_macs=0.7, num_projections=8)
    assert result.report.macs_ratio <= 0.7 + 1e-9
    assert result.model(typed_batches(1)[0]).shape == (16, 3)


def test_unpack_may_return_a_dict_of_inputs():
    """A custom ``unpack`` returning ``(dict of inputs, labels)``, as Hugging Face users write it."""
    torch.manual_seed(0)
    model = TypedEncoder().eval()
    batches = [(b["input_ids"], b["token_type_ids"], b["labels"]) for b in typed_batches()]

    def unpack(batch):
        return {"input_ids": batch[0], "token_type_ids": batch[1]}, batch[2]

    result = prune(copy.deepcopy(model), batches, target_macs=0.7, num_projections=8, unpack=unpack)
    assert result.report.macs_ratio <= 0.7 + 1e-9
    loss = evaluate(result.model, batches, unpack=unpack)["loss"]
    with torch.no_grad():
        by_hand = sum(float(nn.functional.cross_entropy(result.model(i, t), y)) for i, t, y in batches) / len(batches)
    assert loss == pytest.approx(by_hand, rel=1e-5)


class TokenMLP(nn.Module):
    """Token-level layers before a masked mean: ``fc2`` reads ``fc1``'s units at every position."""

    def __init__(self):
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, 16)
        self.fc1, self.fc2, self.head = nn.Linear(16, 48), nn.Linear(48, 16), nn.Linear(16, 3)

    def forward(self, input_ids, attention_mask=None):
        x = self.fc2(torch.relu(self.fc1(self.tokens(input_ids))))
        weights = torch.ones_like(input_ids, dtype=x.dtype) if attention_mask is None else attention_mask.to(x.dtype)
        return self.head((x * weights[..., None]).sum(1) / weights.sum(1, keepdim=True))


def test_padding_does_not_enter_utilization_maps_of_a_classifier():
    """Classification of padded sequences: the same sequences padded with other junk give the same
    scores (a unit's token map holds its real tokens only; padded positions carry no gradient)."""
    torch.manual_seed(0)
    model = TokenMLP().eval()
    generator = torch.Generator().manual_seed(3)
    batches = []
    for _ in range(3):
        ids = torch.randint(0, VOCAB, (16, 10), generator=generator)
        lengths = torch.randint(4, 11, (16,), generator=generator)
        mask = (torch.arange(10) < lengths[:, None]).long()
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": ids[:, 0] % 3})

    def with_junk(seed):
        junk = torch.Generator().manual_seed(seed)
        out = []
        for b in batches:
            noise = torch.randint(0, VOCAB, b["input_ids"].shape, generator=junk)
            out.append({**b, "input_ids": torch.where(b["attention_mask"] == 1, b["input_ids"], noise)})
        return out

    first, second = (compute_scores(model, with_junk(seed), num_projections=8) for seed in (1, 2))
    for name in first.input_means:  # mean replacement's estimates leave the padding out too
        torch.testing.assert_close(first.input_means[name], second.input_means[name], rtol=1e-5, atol=1e-7)
    # and so does the refit: the same units go and their consumers get the same weights
    pruned = [prune(copy.deepcopy(model), with_junk(seed), target_macs=0.7, num_projections=8).model for seed in (1, 2)]
    for a, b in zip(pruned[0].parameters(), pruned[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert first.utilization  # the hidden layer is scored
    for name in first.utilization:
        torch.testing.assert_close(first.utilization[name], second.utilization[name], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(first.reconstruction[name], second.reconstruction[name], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(first.peaks[name], second.peaks[name], rtol=1e-5, atol=1e-7)
