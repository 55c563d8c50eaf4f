"""What a training step minimizes: supervised fine-tuning's cross-entropy over conversations,
or a preference loss (DPO, IPO, ORPO) over pairs. `trainer.recipe` runs either with one loop;
an objective says how its items become micro-batches, what the step's loss is averaged over
(trained tokens, or pairs) and what else a step and an evaluation report.

DPO (Rafailov et al., 2023; TRL's `loss_type="sigmoid"`): for each pair, with the log-
probabilities of the chosen and the rejected answer (summed over the answer's trained tokens,
end-of-turn included, exactly SFT's loss mask) under the policy and under the reference,
loss = -log sigmoid(beta * ((policy_chosen - policy_rejected) - (ref_chosen - ref_rejected))).
IPO (Azar et al., 2023; TRL's `loss_type="ipo"`) on the same pairs: with each answer's log-
ratio (policy - reference) divided by its trained tokens, as TRL does,
loss = ((ratio_chosen - ratio_rejected) - 1 / (2 beta))^2, which pulls the margin towards a
fixed target instead of pushing it without bound.
ORPO (Hong et al., 2024; TRL's `ORPOTrainer`) needs no reference: with each answer's mean
token log-probability l (its log-probability divided by its trained tokens), the log odds of
an answer are l - log(1 - e^l), and
loss = nll(chosen) - beta * log sigmoid(log_odds(chosen) - log_odds(rejected)),
nll(chosen) the chosen answer's mean token cross-entropy (TRL averages it over the batch's
chosen tokens; the two agree when the answers are as long), so one pass does SFT on the chosen
answers and pushes the rejected ones down; its implicit rewards are beta * l.
The reference of DPO and IPO is the adapter the job starts from: its parent for a warm start
(so DPO after SFT), the base model for a fresh adapter (peft's B = 0 makes the two equal). It
is frozen, so its log-probabilities are constants: they are measured once, before the first
step, with the model as it starts (`reference_logps`), and kept in the loop state, so a
resumed run never needs the starting weights again. Neither a second copy of the base nor of
the adapter exists while training (TRL's `precompute_ref_log_probs`, without its second
model).
"""

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any, Generic, Protocol

import torch

from trainer.batching import Batch, token_losses
from trainer.config import PreferenceLoss
from trainer.masking import Example
from trainer.preference import Item, Pair


class Batcher(Protocol):
    """Builds micro-batches of conversations on the model's device and computes them in the
    training precision (`trainer.recipe.Batching`)."""

    def make(self, examples: list[Example]) -> Batch: ...

    def autocast(self) -> AbstractContextManager[Any]: ...


@dataclass(frozen=True)
class MicroBatch:
    """A micro-batch of an objective."""

    batch: Batch
    """The model's inputs: the conversations (a DPO micro-batch's chosen ones, then its rejected
    ones)."""
    units: int
    """What its loss sums over: trained tokens (SFT) or pairs (DPO)."""
    reference: torch.Tensor | None = None
    """DPO and IPO: the reference's log-probabilities, [pairs, 2] (chosen, rejected)."""
    answer_tokens: torch.Tensor | None = None
    """DPO: the trained tokens of each answer, [pairs, 2] (chosen, rejected)."""


class Objective(Protocol, Generic[Item]):
    """A training objective over items of one kind."""

    @property
    def metrics(self) -> tuple[str, ...]:
        """What a step reports beside its loss, each a mean over the step's units."""

    def length(self, item: Item) -> int:
        """The item's size in tokens, for grouping micro-batches by length."""

    def make(self, items: list[Item], batcher: Batcher) -> MicroBatch:
        """The micro-batch of `items`."""

    def loss(self, model: Any, micro: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss summed over the micro-batch's units, and each metric summed likewise."""


class Sft:
    """Cross-entropy of the trained tokens (each assistant answer with its end-of-turn token)."""

    metrics: tuple[str, ...] = ()

    def length(self, item: Example) -> int:
        return len(item.input_ids)

    def make(self, items: list[Example], batcher: Batcher) -> MicroBatch:
        batch = batcher.make(items)
        return MicroBatch(batch, batch.trained_tokens)

    def loss(self, model: Any, micro: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return token_losses(model, micro.batch).sum(), {}


DPO_METRICS = ("reward_margin", "reward_accuracy", "chosen_reward", "rejected_reward")
"""Per pair, as TRL names them: the implicit rewards beta * (policy - reference) of the chosen
and the rejected answer (under IPO, of the length-normalized log-ratios), their difference, and
whether it is above 0."""


@dataclass(frozen=True)
class Dpo:
    """DPO's sigmoid or IPO's loss against the reference measured before training, or ORPO's
    without one (module doc)."""

    beta: float
    loss_type: PreferenceLoss = "sigmoid"
    metrics: tuple[str, ...] = DPO_METRICS

    def length(self, item: Pair) -> int:
        return max(len(item.chosen.input_ids), len(item.rejected.input_ids))

    @property
    def needs_reference(self) -> bool:
        """Whether the loss reads the reference's log-probabilities (ORPO's does not)."""
        return self.loss_type != "orpo"

    def make(self, items: list[Pair], batcher: Batcher) -> MicroBatch:
        if self.needs_reference and any(p.reference is None for p in items):
            raise ValueError("a pair without its reference log-probabilities (referenced)")
        batch = pair_batch(items, batcher.make)
        device = batch.input_ids.device
        reference = None
        if self.needs_reference:
            measured = torch.tensor([p.reference for p in items], dtype=torch.float32)
            reference = measured.to(device)
        tokens = [[p.chosen.trained_tokens, p.rejected.trained_tokens] for p in items]
        answer_tokens = torch.tensor(tokens, dtype=torch.float32)
        return MicroBatch(batch, len(items), reference, answer_tokens.to(device))

    def loss(self, model: Any, micro: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert micro.answer_tokens is not None
        chosen, rejected = pair_logps(model, micro.batch, micro.units)
        if self.loss_type == "orpo":
            return orpo_loss(chosen, rejected, micro.answer_tokens, self.beta)
        assert micro.reference is not None
        if self.loss_type == "ipo":
            return ipo_loss(chosen, rejected, micro.reference, micro.answer_tokens, self.beta)
        return dpo_loss(chosen, rejected, micro.reference, self.beta)


def answer_logps(model: Any, batch: Batch) -> torch.Tensor:
    """Each conversation's log-probability of its trained tokens (its answer), [rows]."""
    return -token_losses(model, batch).sum(dim=1)


def pair_batch(pairs: Sequence[Pair], make: Callable[[list[Example]], Batch]) -> Batch:
    """The pairs' conversations as one micro-batch: every chosen one, then every rejected one
    (one row each: DPO never packs)."""
    return make([p.chosen for p in pairs] + [p.rejected for p in pairs])


def pair_logps(model: Any, batch: Batch, pairs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The log-probabilities of the chosen and of the rejected answers in a `pair_batch` of
    `pairs` pairs, [pairs] each."""
    logps = answer_logps(model, batch)
    return logps[:pairs], logps[pairs:]


def dpo_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, reference: torch.Tensor, beta: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO's sigmoid loss summed over pairs, and `DPO_METRICS` summed over pairs, from the
    policy's log-probabilities of the chosen and rejected answers ([pairs] each) and the
    reference's ([pairs, 2]). Pure."""
    chosen_reward = beta * (chosen - reference[:, 0])
    rejected_reward = beta * (rejected - reference[:, 1])
    margin = chosen_reward - rejected_reward
    loss = -torch.nn.functional.logsigmoid(margin).sum()
    return loss, _rewards(chosen_reward, rejected_reward)


def ipo_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    reference: torch.Tensor,
    answer_tokens: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """IPO's loss summed over pairs, and `DPO_METRICS` of the length-normalized log-ratios,
    from the same log-probabilities as `dpo_loss` and each answer's trained tokens ([pairs,
    2]). Pure."""
    chosen_ratio = (chosen - reference[:, 0]) / answer_tokens[:, 0]
    rejected_ratio = (rejected - reference[:, 1]) / answer_tokens[:, 1]
    loss = ((chosen_ratio - rejected_ratio - 1 / (2 * beta)) ** 2).sum()
    return loss, _rewards(beta * chosen_ratio, beta * rejected_ratio)


def orpo_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, answer_tokens: torch.Tensor, beta: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ORPO's loss summed over pairs, and `DPO_METRICS` of beta times each answer's mean token
    log-probability, from the policy's log-probabilities ([pairs] each) and each answer's
    trained tokens ([pairs, 2]). Pure."""
    # A mean log-probability of exactly 0 would make log(1 - e^l) infinite.
    chosen_mean = (chosen / answer_tokens[:, 0]).clamp(max=-1e-6)
    rejected_mean = (rejected / answer_tokens[:, 1]).clamp(max=-1e-6)
    log_odds = (chosen_mean - torch.log(-torch.expm1(chosen_mean))) - (
        rejected_mean - torch.log(-torch.expm1(rejected_mean))
    )
    loss = (-chosen_mean - beta * torch.nn.functional.logsigmoid(log_odds)).sum()
    return loss, _rewards(beta * chosen_mean, beta * rejected_mean)


def _rewards(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, torch.Tensor]:
    """`DPO_METRICS` summed over pairs, from each pair's implicit rewards."""
    chosen, rejected = chosen.detach(), rejected.detach()
    margin = chosen - rejected
    return {
        "reward_margin": margin.sum(),
        "reward_accuracy": (margin > 0).sum().float(),
        "chosen_reward": chosen.sum(),
        "rejected_reward": rejected.sum(),
    }


def measure(
    model: Any,
    objective: Objective[Item],
    items: Sequence[Item],
    batch_size: int,
    batcher: Batcher,
) -> dict[str, float]:
    """The objective's mean loss and metrics over `items`, without gradients, in eval mode."""
    model.eval()
    sums: dict[str, float] = {"loss": 0.0, **dict.fromkeys(objective.metrics, 0.0)}
    units = 0
    with torch.no_grad(), batcher.autocast():
        for start in range(0, len(items), batch_size):
            micro = objective.make(list(items[start : start + batch_size]), batcher)
            loss, metrics = objective.loss(model, micro)
            sums["loss"] += float(loss)
            for name, value in metrics.items():
                sums[name] += float(value)
            units += micro.units
    model.train()
    return {name: total / max(units, 1) for name, total in sums.items()}


def reference_logps(
    model: Any,
    pairs: Sequence[Pair],
    batch_size: int,
    batcher: Batcher,
) -> list[tuple[float, float]]:
    """The log-probabilities of each pair's chosen and rejected answer under `model` as it is
    now (DPO's reference), measured without gradients in eval mode."""
    model.eval()
    measured: list[tuple[float, float]] = []
    with torch.no_grad(), batcher.autocast():
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            chosen, rejected = pair_logps(model, pair_batch(chunk, batcher.make), len(chunk))
            measured += zip(chosen.tolist(), rejected.tolist(), strict=True)
    model.train()
    return measured


def referenced(pairs: Sequence[Pair], logps: Sequence[Sequence[float]]) -> list[Pair]:
    """`pairs` with their reference log-probabilities (`reference_logps`, as the loop state
    keeps them). Pure."""
    return [replace(p, reference=(c, r)) for p, (c, r) in zip(pairs, logps, strict=True)]
