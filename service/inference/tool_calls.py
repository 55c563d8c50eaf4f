"""Tool calls out of a streamed answer: content streams as it comes, calls arrive whole.

With tools offered (`tool_choice` auto), the model answers in text or calls tools in the
Hermes format its template taught it (`<tool_call>{"name", "arguments"}</tool_call>`). Text
streams until something that may open a call appears; from there it is held back, and at the
end parsed: valid calls naming offered tools become the answer's calls, anything else is
released as content, so nothing generated is lost. A forced call (`required` or a named tool)
decodes its JSON after a prefilled `<tool_call>` under `trainer.tools.call_schema`, so all of
its text is held back. Pure: no engine, no I/O.
"""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from trainer.tools import CALL_OPEN, Tool, ToolCall, parse_generated


def _partial_open(text: str) -> int:
    """The length of the longest end of `text` that could begin `CALL_OPEN`."""
    for size in range(min(len(text), len(CALL_OPEN) - 1), 0, -1):
        if CALL_OPEN.startswith(text[-size:]):
            return size
    return 0


@dataclass
class ToolCallStream:
    """Splits one streamed answer into released content and, at the end, tool calls."""

    tools: Sequence[Tool]
    forced: bool = False
    """The answer is a call's JSON after a prefilled `CALL_OPEN`."""
    text: str = ""
    """Everything generated so far."""
    sent: int = 0
    """How much of `text` has been released."""
    calls: tuple[ToolCall, ...] = field(default=())

    def feed(self, piece: str) -> str:
        """Takes the next piece of generated text; returns the content to release now."""
        self.text += piece
        if self.forced:
            return ""
        opened = self.text.find(CALL_OPEN, max(0, self.sent - len(CALL_OPEN)))
        end = opened if opened >= 0 else len(self.text) - _partial_open(self.text)
        end = max(end, self.sent)
        released, self.sent = self.text[self.sent : end], end
        return released

    def finish(self) -> str:
        """Ends the answer: parses what was held back into `calls`; returns the content still
        to release (all of it when it holds no valid call)."""
        generated = f"{CALL_OPEN}\n{self.text}" if self.forced else self.text
        _, calls = parse_generated(generated, self.tools)
        # Ids unique across a conversation's turns, as OpenAI's are.
        self.calls = tuple(replace(call, id=f"call_{uuid.uuid4().hex[:24]}") for call in calls)
        if self.calls:
            return ""
        released, self.sent = self.text[self.sent :], len(self.text)
        return released
