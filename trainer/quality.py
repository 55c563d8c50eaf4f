"""An optional quality filter for SFT rows, after the heuristic in the project's SFT guide.

It looks at the last assistant answer and the user message before it. Flagged rows are removed
and counted, not reported as errors: they are valid data the user chose to filter.
"""

from collections.abc import Sequence

from trainer.formats import Turn

SYCOPHANTIC_OPENERS = ("Sure!", "Certainly!", "Of course!", "Great question!", "Absolutely!")
MIN_RESPONSE_WORDS = 5
MAX_WORDS_PER_INSTRUCTION_WORD = 50


def quality_flag(turns: Sequence[Turn]) -> str | None:
    """The reason to filter a conversation ("too_short", "sycophantic", "verbose"), or None
    (always for one that ends in a tool call: its arguments are checked by their schema)."""
    if turns[-1].tool_calls:
        return None
    response = turns[-1].content
    users = [t.content for t in turns if t.role == "user"]
    instruction_words = len(users[-1].split()) if users else 0
    response_words = len(response.split())
    if response_words < MIN_RESPONSE_WORDS:
        return "too_short"
    if response.lstrip().startswith(SYCOPHANTIC_OPENERS):
        return "sycophantic"
    if response_words > max(1, instruction_words) * MAX_WORDS_PER_INSTRUCTION_WORD:
        return "verbose"
    return None
