"""Batches and the loss: padding-free rows without attention across examples.

A padding-free micro-batch concatenates its conversations into one row whose position ids
restart at 0 for each; with no attention mask, transformers builds a block-diagonal causal mask
from those position ids, so no example attends to another. The loss is a sum over trained
tokens, divided by the trained tokens of the whole optimizer step.
"""

import random
from dataclasses import dataclass

import torch

from trainer.masking import IGNORE_INDEX, Example


@dataclass(frozen=True)
class Batch:
    """Model inputs plus what the loss needs."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor | None
    attention_mask: torch.Tensor | None

    @property
    def input_tokens(self) -> int:
        """Non-padding input tokens."""
        if self.attention_mask is not None:
            return int(self.attention_mask.sum())
        return int(self.input_ids.numel())

    @property
    def trained_tokens(self) -> int:
        """Positions that carry loss (after the shift)."""
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())


def padding_free(examples: list[Example]) -> Batch:
    """One row of all examples, position ids restarting per example."""
    ids = [t for e in examples for t in e.input_ids]
    labels = []
    for example in examples:
        # The first token of an example is never a target of the previous one's last.
        labels += [IGNORE_INDEX, *example.labels[1:]]
    positions = [p for e in examples for p in range(len(e.input_ids))]
    return Batch(
        input_ids=torch.tensor([ids]),
        labels=torch.tensor([labels]),
        position_ids=torch.tensor([positions]),
        attention_mask=None,
    )


def padded(examples: list[Example], pad_id: int) -> Batch:
    """A rectangular batch, right-padded; padding is masked by the attention mask and labels."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id)
    labels = torch.full((len(examples), width), IGNORE_INDEX)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    return Batch(ids, labels, None, mask)


def token_losses(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Cross-entropy of every next-token prediction, 0 where there is no target; [B, T-1]."""
    output = model(
        input_ids=batch.input_ids,
        position_ids=batch.position_ids,
        attention_mask=batch.attention_mask,
        use_cache=False,
    )
    logits = output.logits[:, :-1, :].float()
    targets = batch.labels[:, 1:]
    losses = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )
    return losses.view(targets.shape)


def epoch_order(n_examples: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The micro-batches of one epoch as example indices: a seeded shuffle, a function of
    (seed, epoch) alone, so a resumed run sees exactly the same order."""
    order = list(range(n_examples))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n_examples, batch_size)]
