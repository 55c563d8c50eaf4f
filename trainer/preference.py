"""The preference-pair row: the one input format of preference training (DPO) and of every
preference set adapterd writes (captured traffic with a correction). TRL's conversational
preference format: `{"prompt": [...], "chosen": [...], "rejected": [...]}`, each a list of
`{"role", "content"}` messages; `chosen` and `rejected` hold the assistant's answer. Pure."""

from dataclasses import dataclass
from typing import Any

Message = dict[str, str]


@dataclass(frozen=True)
class PreferencePair:
    """A prompt (a chat ending before the assistant's turn) and two answers to it."""

    prompt: tuple[Message, ...]
    chosen: str
    rejected: str

    def row(self) -> dict[str, Any]:
        """The JSONL row."""
        return {
            "prompt": [dict(m) for m in self.prompt],
            "chosen": [{"role": "assistant", "content": self.chosen}],
            "rejected": [{"role": "assistant", "content": self.rejected}],
        }
