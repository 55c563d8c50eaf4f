"""Padding-free batches: no attention across examples, the same loss as each example alone."""

import pytest
import torch

from trainer.batching import Batch, padded, padding_free, token_losses
from trainer.formats import normalize
from trainer.masking import tokenize

ROWS = [
    {"prompt": "What is two plus two?", "completion": "Four."},
    {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello there!"},
            {"role": "user", "content": "Name a fruit."},
            {"role": "assistant", "content": "An apple."},
        ]
    },
    {"instruction": "Reverse the word", "input": "cat", "output": "tac"},
]


@pytest.fixture(scope="module")
def examples(tokenizer):
    return [tokenize(tokenizer, normalize(row, "auto", {})[1]) for row in ROWS]


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(tiny_model_dir, request):
    """The tiny model with SDPA (what the trainer uses) and eager attention (the fallback)."""
    from transformers import AutoModelForCausalLM

    # fp32 so that the comparison measures masking, not bf16 rounding
    loaded = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, dtype=torch.float32, attn_implementation=request.param
    )
    return loaded.eval()


def per_example_mean(losses, batch_labels, lengths):
    means, start = [], 0
    for n in lengths:
        targets = batch_labels[0, start + 1 : start + n] != -100
        means.append(float(losses[0, start : start + n - 1][targets].mean()))
        start += n
    return means


def test_each_examples_loss_in_a_packed_row_equals_its_loss_alone(model, examples):
    with torch.no_grad():
        packed = padding_free(examples)
        packed_means = per_example_mean(
            token_losses(model, packed), packed.labels, [len(e.input_ids) for e in examples]
        )
        alone = []
        for example in examples:
            batch = padding_free([example])
            losses = token_losses(model, batch)
            alone.append(float(losses[batch.labels[:, 1:] != -100].mean()))
    assert packed_means == pytest.approx(alone, abs=1e-3)
    # and the packed row really differs from attending across examples
    with torch.no_grad():
        leaky = token_losses(
            model, Batch(packed.input_ids, packed.labels, None, packed.input_tokens)
        )
    leaky_means = per_example_mean(leaky, packed.labels, [len(e.input_ids) for e in examples])
    assert abs(leaky_means[2] - alone[2]) > 1e-3


def test_right_padded_batches_need_no_mask_under_a_causal_model(model, examples):
    with torch.no_grad():
        batch = padded(examples, pad_id=2)
        losses = token_losses(model, batch)
        for row, example in enumerate(examples):
            alone = padding_free([example])
            expected = token_losses(model, alone)[alone.labels[:, 1:] != -100].mean()
            got = losses[row][batch.labels[row, 1:] != -100].mean()
            assert float(got) == pytest.approx(float(expected), abs=1e-3)


def test_padded_and_padding_free_batches_give_the_same_total_loss(model, examples):
    with torch.no_grad():
        free = padding_free(examples)
        pad = padded(examples, pad_id=2)
        assert free.trained_tokens == pad.trained_tokens
        total_free = float(token_losses(model, free).sum())
        total_pad = float(token_losses(model, pad).sum())
    assert total_free == pytest.approx(total_pad, rel=1e-4)
    assert pad.input_tokens == free.input_tokens == sum(len(e.input_ids) for e in examples)
