"""Tool-call validity: prompts that offer tools, and answers scored as calls. Pure.

A prompt set's rows are a one-turn `prompt` or `messages` (read as the rubric's
conversations) with `tools` (OpenAI's shape, read by `trainer.tools` as in training data and
requests). An answer is valid when it makes at least one Hermes `<tool_call>` and serving
would return its calls (`trainer.tools.parse_generated`: each an offered tool's name with
arguments valid under its parameters). Why the others fail is the schema scorer's
(`eval.schema.judge_output`, with `trainer.tools.call_schema` as the schema).
"""

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from eval.prompts import PromptSetError, jsonl_rows
from eval.rubric import Conversation, read_conversations
from eval.schema import Failure, add_failure, judge_output, validator_of
from trainer.tools import (
    TOOL_CALL_BLOCK,
    Tool,
    ToolError,
    call_schema,
    parse_generated,
    read_tools,
)


@dataclass(frozen=True)
class ToolPrompt:
    """A conversation and the tools it offers."""

    conversation: Conversation
    tools: tuple[Tool, ...]


def read_tool_prompts(path: Path, limit: int | None) -> list[ToolPrompt]:
    """The first `limit` rows of a tool-call prompt file.

    Raises:
        PromptSetError: naming the file, line and field of the first problem.
    """
    conversations = read_conversations(path, limit)
    prompts = []
    for (where, row), conversation in zip(jsonl_rows(path), conversations, strict=False):
        try:
            tools = read_tools(row.get("tools"), "tools")
        except ToolError as exc:
            raise PromptSetError(f"{where}: {exc}") from None
        if not tools:
            raise PromptSetError(f"{where}: tools: at least one tool is required")
        prompts.append(ToolPrompt(conversation, tools))
    return prompts


@dataclass
class ToolCallReport:
    """How well a set of answers called the tools their prompts offered."""

    total: int = 0
    called: int = 0
    """Answers with at least one `<tool_call>`."""
    parsed: int = 0
    """Answers whose every call is JSON."""
    valid: int = 0
    """Answers whose every call names an offered tool with valid arguments."""
    errors_by_keyword: Counter[str] = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)
    """The first `eval.schema.MAX_SAMPLES` failing answers."""

    def rate(self, count: int) -> float:
        """`count` as a share of the answers."""
        return count / self.total if self.total else 0.0

    def to_json(self) -> dict[str, Any]:
        """The report as plain data."""
        return {
            "total": self.total,
            "call_rate": self.rate(self.called),
            "parse_rate": self.rate(self.parsed),
            "valid_rate": self.rate(self.valid),
            "errors_by_keyword": dict(self.errors_by_keyword),
            "failures": [vars(f) for f in self.failures],
        }


def score_tool_calls(answers: Sequence[str], prompts: Sequence[ToolPrompt]) -> ToolCallReport:
    """Scores each answer's calls against the tools its prompt offered: valid exactly when
    serving would return them as calls (`trainer.tools.parse_generated`); the schema scorer
    says why the others are not."""
    report = ToolCallReport()
    for index, (answer, prompt) in enumerate(zip(answers, prompts, strict=True)):
        report.total += 1
        blocks = [match.group(1) for match in TOOL_CALL_BLOCK.finditer(answer)]
        if not blocks:
            add_failure(report.failures, index, answer, "no <tool_call>")
            continue
        report.called += 1
        validator = _call_validator(prompt.tools)
        judged = [judge_output(validator, block) for block in blocks]
        if any(result is None for result in judged):
            add_failure(report.failures, index, answer, "a call is not JSON")
            continue
        report.parsed += 1
        if parse_generated(answer, prompt.tools)[1]:
            report.valid += 1
            continue
        errors = [error for result in judged if result is not None for error in result[1]]
        report.errors_by_keyword.update(str(e.validator) for e in errors)
        reason = "; ".join(e.message[:200] for e in errors[:3]) or "not a call of an offered tool"
        add_failure(report.failures, index, answer, reason)
    return report


@lru_cache(maxsize=64)
def _call_validator(tools: tuple[Tool, ...]) -> Any:
    return validator_of(call_schema(tools))
