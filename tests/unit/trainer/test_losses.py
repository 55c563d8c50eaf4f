"""The chunked linear cross-entropy gives the loss and the gradient the plain one gives."""

import pytest
import torch

from trainer import batching, losses
from trainer.batching import padded, token_losses
from trainer.formats import normalize
from trainer.losses import linear_cross_entropy
from trainer.masking import IGNORE_INDEX, tokenize


def reference(hidden, weight, targets):
    logits = (hidden @ weight.T).float()
    return torch.nn.functional.cross_entropy(
        logits, targets, ignore_index=IGNORE_INDEX, reduction="none"
    )


@pytest.mark.parametrize("chunk_rows", [4, 128])  # several chunks (the last one short), or one
def test_loss_and_gradient_match_the_plain_cross_entropy(chunk_rows, monkeypatch):
    monkeypatch.setattr(losses, "CHUNK_ROWS", chunk_rows)
    torch.manual_seed(0)
    weight = torch.randn(50, 16)
    targets = torch.randint(0, 50, (19,))
    targets[[0, 7, 18]] = IGNORE_INDEX
    upstream = torch.rand(19)  # per-token weights, as a step's 1/trained-tokens scaling
    hidden = torch.randn(19, 16, requires_grad=True)
    (reference(hidden, weight, targets) * upstream).sum().backward()
    want_grad, hidden.grad = hidden.grad, None
    got = linear_cross_entropy(hidden, weight, targets)
    (got * upstream).sum().backward()
    torch.testing.assert_close(got, reference(hidden, weight, targets).detach())
    torch.testing.assert_close(hidden.grad, want_grad)
    assert torch.all(got[[0, 7, 18]] == 0) and torch.all(hidden.grad[[0, 7, 18]] == 0)


def test_without_a_gradient_only_the_loss_is_computed():
    hidden, weight = torch.randn(5, 8), torch.randn(11, 8)
    targets = torch.tensor([1, 2, IGNORE_INDEX, 4, 5])
    with torch.no_grad():
        got = linear_cross_entropy(hidden, weight, targets)
    torch.testing.assert_close(got, reference(hidden, weight, targets))


@pytest.fixture(scope="module")
def lora_model(tiny_model_dir):
    from trainer.config import LoraSpec, QuantizationSpec
    from trainer.model import attach_lora, load_base

    torch.manual_seed(0)
    base = load_base(tiny_model_dir, "float32", "none", QuantizationSpec(), checkpointing=False)
    model = attach_lora(base, LoraSpec(rank=8))
    for name, parameter in model.named_parameters():  # B starts at zero: give it a value
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.02)
    return model


def test_token_losses_and_lora_gradients_match_the_models_own_logits(
    lora_model, tokenizer, monkeypatch
):
    rows = [{"prompt": "What is two plus two?", "completion": "Four."},
            {"prompt": "Name a colour.", "completion": "Blue, the colour of the sky."}]  # fmt: skip
    batch = padded([tokenize(tokenizer, normalize(r, "auto", {})[1]) for r in rows], 0)
    trainable = [p for p in lora_model.parameters() if p.requires_grad]

    def losses_and_grads():
        for p in trainable:
            p.grad = None
        values = token_losses(lora_model, batch)
        values.sum().backward()
        return values.detach(), [p.grad.clone() for p in trainable]

    fused, fused_grads = losses_and_grads()
    monkeypatch.setattr(batching, "_plain_head", lambda causal_lm, head: False)
    plain, plain_grads = losses_and_grads()
    assert torch.count_nonzero(fused) == int((batch.labels[:, 1:] != IGNORE_INDEX).sum())
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-5)
    for got, want in zip(fused_grads, plain_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-6)
