"""Preference pairs: the one input format of preference training (DPO) and of every
preference set adapterd writes (captured traffic with a correction). TRL's conversational
preference format: `{"prompt": [...], "chosen": [...], "rejected": [...]}`, each a list of
`{"role", "content"}` messages; `chosen` and `rejected` hold the assistant's answer (strings are
accepted too). `trainer.formats.normalize_preference` reads such a row, `PreferencePair.row`
writes one, and `Pair` is one tokenized. Pure."""

from dataclasses import dataclass
from typing import Any, TypeVar

from trainer.formats import PREFERENCE_FIELDS
from trainer.masking import Example

Message = dict[str, str]


@dataclass(frozen=True)
class PreferencePair:
    """A prompt (a chat ending before the assistant's turn) and two answers to it."""

    prompt: tuple[Message, ...]
    chosen: str
    rejected: str

    def row(self) -> dict[str, Any]:
        """The JSONL row."""
        prompt, chosen, rejected = PREFERENCE_FIELDS
        return {
            prompt: [dict(m) for m in self.prompt],
            chosen: [{"role": "assistant", "content": self.chosen}],
            rejected: [{"role": "assistant", "content": self.rejected}],
        }


@dataclass(frozen=True)
class Pair:
    """A preference row tokenized: the prompt with the chosen answer and with the rejected one,
    each trained on its answer only (with its end-of-turn token), as SFT trains an answer."""

    chosen: Example
    rejected: Example
    reference: tuple[float, float] | None = None
    """The reference policy's log-probabilities of the chosen and the rejected answer, once
    measured (`trainer.objectives.reference_logps`)."""


Item = TypeVar("Item", Example, Pair)
"""What a job trains on, item by item: conversations (SFT) or preference pairs (DPO)."""
