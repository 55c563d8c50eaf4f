"""Batches and the loss, without attention across examples either way.

- Padding-free: a micro-batch's conversations are concatenated into one row whose position ids
  restart at 0 for each; given no attention mask, transformers builds a block-diagonal causal
  mask from those position ids. No padding at all; attention over the whole row.
- Right-padded: one row per conversation, padding after the text. A causal model never looks
  ahead, so real tokens never see the padding and no attention mask is needed; padded positions
  carry no label. Micro-batches are grouped by length, so little padding is left.
Logits are computed only where a label trains (most of a chat is prompt), a chunk at a time
(`trainer.losses`), and the loss is a sum over trained tokens, divided by the trained tokens of
the whole optimizer step (SFT's; DPO's is averaged over the step's pairs, `trainer.objectives`).
"""

from dataclasses import dataclass
from typing import Any

import torch

from trainer.losses import linear_cross_entropy
from trainer.masking import IGNORE_INDEX, Example


@dataclass(frozen=True)
class Batch:
    """Model inputs plus what the loss needs."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor | None
    input_tokens: int
    """Non-padding input tokens."""

    def to(self, device: torch.device) -> "Batch":
        """The same batch with its tensors on `device`."""
        positions = None if self.position_ids is None else self.position_ids.to(device)
        return Batch(
            self.input_ids.to(device), self.labels.to(device), positions, self.input_tokens
        )

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
        input_tokens=len(ids),
    )


def padded(examples: list[Example], pad_id: int) -> Batch:
    """A rectangular batch, right-padded; padded positions carry no label (see module doc)."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id)
    labels = torch.full((len(examples), width), IGNORE_INDEX)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
    return Batch(ids, labels, None, sum(len(e.input_ids) for e in examples))


def token_losses(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Cross-entropy of every next-token prediction, 0 where there is no target; [B, T-1].

    Only positions with a target in some row go through the output head: over the full
    vocabulary it is a fifth of the model's compute, and most positions of a chat are prompt.
    A plain linear head takes `trainer.losses.linear_cross_entropy` (no full-vocabulary logits
    in memory); a head with a bias, a logit scale or soft-capping takes the model's own logits.
    """
    targets = batch.labels[:, 1:]
    keep = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)
    kept_targets = targets[:, keep]
    causal_lm = _causal_lm(model)
    head = causal_lm.get_output_embeddings()
    if _plain_head(causal_lm, head):
        hidden = causal_lm.get_decoder()(
            input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False
        ).last_hidden_state[:, keep]
        losses = linear_cross_entropy(
            hidden.reshape(-1, hidden.shape[-1]), head.weight, kept_targets.reshape(-1)
        )
    else:
        output = model(
            input_ids=batch.input_ids,
            position_ids=batch.position_ids,
            use_cache=False,
            logits_to_keep=keep,
        )
        losses = torch.nn.functional.cross_entropy(
            output.logits.float().reshape(-1, output.logits.shape[-1]),
            kept_targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="none",
        )
    full = torch.zeros(targets.shape, dtype=losses.dtype, device=losses.device)
    full[:, keep] = losses.view(kept_targets.shape)
    return full


_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def _causal_lm(model: Any) -> Any:
    """The transformers model inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _plain_head(causal_lm: Any, head: Any) -> bool:
    """Whether the logits are exactly `hidden @ head.weight.T` (a bias-free linear head, no
    scaling or soft-capping in the config, weights in a float dtype, not 4-bit)."""
    config = causal_lm.config
    return (
        type(head) is torch.nn.Linear
        and head.bias is None
        and head.weight.is_floating_point()
        and not any(getattr(config, name, None) not in (None, 1, 1.0) for name in _LOGIT_TRANSFORMS)
    )
