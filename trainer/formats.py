"""Row formats: detect a row's format and normalize it into one conversation form.

Supported: chat `messages` (system/user/assistant, multi-turn; with `tools`, assistant
`tool_calls` and `tool` messages, OpenAI's shape, checked by `trainer.tools`),
`prompt`/`completion`, Alpaca
`instruction`/`input`/`output`, ShareGPT `conversations` with `from`/`value`; a column mapping
renames fields for anything else (GSM8K: {"prompt": "question", "completion": "answer"}).
Preference rows (`prompt`/`chosen`/`rejected`, TRL's preference format, which
`trainer.preference.PreferencePair` writes) normalize into two conversations that share the
prompt, for `training.method: dpo` (`normalize_preference`).
Pure: no I/O, no tokenizer. Problems carry a field path and a stable code.
"""

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from trainer.tools import (
    Tool,
    ToolCall,
    ToolError,
    read_tool_calls,
    read_tools,
    template_message,
)

ROLES = ("system", "user", "assistant")
MESSAGE_ROLES = (*ROLES, "tool")
"""The roles of the `messages` format: with `tools`, a `tool` message answers the assistant's
calls."""
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}
FORMATS = ("messages", "prompt_completion", "alpaca", "sharegpt")
PREFERENCE = "preference"
"""The format of preference rows: what `training.method: dpo` trains on, and nothing else."""
PREFERENCE_FIELDS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class Turn:
    """One message of a normalized conversation."""

    role: str
    """"system", "user", "assistant" or "tool"."""
    content: str
    """The message text."""
    origin: str
    """Field path of the text in the source row, e.g. "messages[3].content" or "output"."""
    trained: bool = True
    """Whether the loss covers it (assistant turns only). False for assistant turns inside a
    conversational prompt: they are few-shot context, as in TRL's prompt/completion."""
    tool_calls: tuple[ToolCall, ...] = ()
    """The calls an assistant turn makes (trained like its text)."""

    def message(self) -> dict[str, Any]:
        """The turn as a chat template takes it."""
        return template_message(self.role, self.content, self.tool_calls)

    @property
    def learns(self) -> bool:
        """An assistant turn the loss trains on."""
        return self.role == "assistant" and self.trained


@dataclass(frozen=True)
class FieldProblem:
    """What is wrong with one field of a row."""

    field: str
    """Field path in the source row ("" for the row as a whole)."""
    code: str
    """Stable error code, e.g. "missing_field"."""
    message: str
    """Human-readable explanation naming the value."""


class RowError(Exception):
    """A row cannot be normalized; carries every problem found in it."""

    def __init__(self, problems: list[FieldProblem]) -> None:
        super().__init__("; ".join(p.message for p in problems))
        self.problems = problems


def detect_format(record: Mapping[str, Any], columns: Mapping[str, str]) -> str | None:
    """The format a row's fields indicate, after the column mapping, or None."""

    def has(name: str) -> bool:
        return columns.get(name, name) in record

    if all(map(has, PREFERENCE_FIELDS)):
        return PREFERENCE
    if has("messages"):
        return "messages"
    if has("conversations"):
        return "sharegpt"
    if has("instruction") and has("output"):
        return "alpaca"
    if has("prompt") and has("completion"):
        return "prompt_completion"
    return None


class _Reader:
    """Reads canonical fields through the column mapping, collecting problems."""

    def __init__(self, record: Mapping[str, Any], columns: Mapping[str, str]) -> None:
        self.record = record
        self.columns = columns
        self.problems: list[FieldProblem] = []
        self.tools: tuple[Tool, ...] | None = None
        """The row's tools once read (`messages` rows only): then assistant messages may
        call them and `tool` messages answer."""

    def tool_problems(self, exc: ToolError) -> None:
        self.problems += [FieldProblem(*problem) for problem in exc.problems]

    def name(self, field: str) -> str:
        return self.columns.get(field, field)

    def problem(self, field: str, code: str, message: str) -> None:
        self.problems.append(FieldProblem(field, code, message))

    def get(self, field: str, kind: type | tuple[type, ...], required: bool = True) -> Any:
        column = self.name(field)
        if column not in self.record or self.record[column] is None:
            if required:
                self.problem(column, "missing_field", f"missing field '{column}'")
            return None
        value = self.record[column]
        if not isinstance(value, kind):
            expected = (
                kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            )
            self.problem(
                column, "wrong_type", f"'{column}' must be {expected}, got {type(value).__name__}"
            )
            return None
        return value

    def message_list(
        self, field: str, role_key: str, text_key: str, roles: Mapping[str, str]
    ) -> list[Turn]:
        items = self.get(field, list)
        if items is None:
            return []
        column = self.name(field)
        turns = []
        for index, item in enumerate(items):
            path = f"{column}[{index}]"
            if not isinstance(item, dict):
                self.problem(path, "wrong_type", f"'{path}' must be an object")
                continue
            role, text = item.get(role_key), item.get(text_key)
            calls: tuple[ToolCall, ...] = ()
            if self.tools is not None and role != "assistant" and item.get("tool_calls"):
                self.problem(
                    f"{path}.tool_calls",
                    "wrong_role",
                    f"'{path}.tool_calls': only an assistant calls",
                )
                continue
            if self.tools is not None and role == "assistant" and item.get("tool_calls"):
                try:
                    calls = read_tool_calls(item["tool_calls"], f"{path}.tool_calls", self.tools)
                except ToolError as exc:
                    self.tool_problems(exc)
                    continue
                text = "" if text is None else text
            if not isinstance(role, str) or role not in roles:
                allowed = ", ".join(sorted(roles))
                self.problem(
                    f"{path}.{role_key}",
                    "unknown_role",
                    f"'{path}.{role_key}' is {role!r}, expected one of {allowed}",
                )
                continue
            if not isinstance(text, str):
                self.problem(
                    f"{path}.{text_key}", "wrong_type", f"'{path}.{text_key}' must be a string"
                )
                continue
            turns.append(Turn(roles[role], text, f"{path}.{text_key}", tool_calls=calls))
        return turns


def _messages(reader: _Reader) -> list[Turn]:
    reader.tools = ()
    tools = reader.get("tools", list, required=False)
    if tools:
        try:
            reader.tools = read_tools(tools, reader.name("tools"))
        except ToolError as exc:
            reader.tool_problems(exc)
    return reader.message_list("messages", "role", "content", {r: r for r in MESSAGE_ROLES})


def _sharegpt(reader: _Reader) -> list[Turn]:
    return reader.message_list("conversations", "from", "value", SHAREGPT_ROLES)


def _text_or_messages(reader: _Reader, field: str, role: str) -> list[Turn]:
    value = reader.get(field, (str, list))
    if isinstance(value, str):
        return [Turn(role, value, reader.name(field))]
    if isinstance(value, list):  # TRL's conversational prompt/completion
        turns = reader.message_list(field, "role", "content", {r: r for r in ROLES})
        # Only the completion trains; assistant turns in the prompt are context.
        return [replace(t, trained=role == "assistant") for t in turns]
    return []


def _prompt_completion(reader: _Reader) -> list[Turn]:
    system = reader.get("system", str, required=False)
    head = [Turn("system", system, reader.name("system"))] if system else []
    return (
        head
        + _text_or_messages(reader, "prompt", "user")
        + _text_or_messages(reader, "completion", "assistant")
    )


def _alpaca(reader: _Reader) -> list[Turn]:
    instruction = reader.get("instruction", str)
    extra = reader.get("input", str, required=False)
    output = reader.get("output", str)
    system = reader.get("system", str, required=False)
    if instruction is None or output is None:
        return []
    prompt = f"{instruction}\n\n{extra}" if extra else instruction
    head = [Turn("system", system, reader.name("system"))] if system else []
    return [
        *head,
        Turn("user", prompt, reader.name("instruction")),
        Turn("assistant", output, reader.name("output")),
    ]


_NORMALIZERS = {
    "messages": _messages,
    "prompt_completion": _prompt_completion,
    "alpaca": _alpaca,
    "sharegpt": _sharegpt,
}


def check_structure(turns: list[Turn]) -> list[FieldProblem]:
    """Problems of a conversation as a training example, whatever its source format."""
    problems = []
    assistants = [t for t in turns if t.learns]
    if not assistants:
        problems.append(FieldProblem("", "no_assistant_turn", "no assistant turn to learn from"))
    elif turns[-1].role != "assistant":
        problems.append(
            FieldProblem(
                turns[-1].origin,
                "last_turn_not_assistant",
                "the conversation must end with an assistant turn",
            )
        )
    for turn in assistants:
        if not turn.content.strip() and not turn.tool_calls:
            problems.append(
                FieldProblem(
                    turn.origin, "empty_content", f"'{turn.origin}' is an empty assistant message"
                )
            )
    dialog = [t for t in turns if t.role != "system"]
    if dialog and dialog[0].role != "user":
        problems.append(
            FieldProblem(
                dialog[0].origin,
                "assistant_first",
                "the first non-system message must be the user's",
            )
        )
    for turn in turns[1:]:
        if turn.role == "system":
            problems.append(
                FieldProblem(
                    turn.origin, "misplaced_system", "a system message may only come first"
                )
            )
    for previous, turn in itertools.pairwise(turns):
        if turn.role == "tool" and previous.role != "tool" and not previous.tool_calls:
            problems.append(
                FieldProblem(
                    turn.origin,
                    "tool_without_call",
                    "a tool message must follow an assistant message with tool_calls",
                )
            )
    return problems


def _format_of(record: Any, fmt: str, columns: Mapping[str, str]) -> str:
    """The row's format: `fmt`, or the one its fields indicate under "auto".

    Raises:
        RowError: the row is not an object, or its format cannot be told.
    """
    if not isinstance(record, dict):
        raise RowError(
            [
                FieldProblem(
                    "", "not_an_object", f"a row must be a JSON object, got {type(record).__name__}"
                )
            ]
        )
    used = detect_format(record, columns) if fmt == "auto" else fmt
    if used is None:
        keys = ", ".join(sorted(map(str, record))) or "none"
        raise RowError(
            [
                FieldProblem(
                    "",
                    "unknown_format",
                    f"cannot tell the format from the fields ({keys}); "
                    "set the dataset's format or columns",
                )
            ]
        )
    return used


def normalize(
    record: Any, fmt: str, columns: Mapping[str, str]
) -> tuple[str, list[Turn], tuple[Tool, ...]]:
    """Normalizes one parsed row of supervised data.

    Args:
        record: the parsed row (must be a JSON object).
        fmt: one of FORMATS, or "auto" to detect it.
        columns: canonical field name -> column name in this file.

    Returns:
        The format used, the conversation's turns and the tools it offers (`messages` only).

    Raises:
        RowError: with every problem of the row.
    """
    used = _format_of(record, fmt, columns)
    if used == PREFERENCE:
        raise RowError(
            [
                FieldProblem(
                    "",
                    "preference_row",
                    "a preference row (prompt, chosen, rejected) trains with "
                    "training.method 'dpo', not supervised fine-tuning",
                )
            ]
        )
    reader = _Reader(record, columns)
    turns = _NORMALIZERS[used](reader)
    problems = reader.problems or check_structure(turns)
    if problems:
        raise RowError(problems)
    return used, turns, reader.tools or ()


def normalize_preference(
    record: Any, fmt: str, columns: Mapping[str, str]
) -> tuple[str, list[Turn], list[Turn], int]:
    """Normalizes one parsed preference row into its two conversations: the prompt (after an
    optional `system`) followed by the chosen answer, and by the rejected one. `prompt` is a
    string or a message list (its assistant turns are context), `chosen` and `rejected` strings
    or message lists of the assistant.

    Returns:
        The format ("preference"), the chosen and rejected conversations' turns, and how many
        of their first turns are the prompt they share.

    Raises:
        RowError: with every problem of the row (not a preference row, a missing or mistyped
            field, a conversation that cannot train, two equal answers).
    """
    used = _format_of(record, fmt, columns)
    if used != PREFERENCE:
        raise RowError(
            [
                FieldProblem(
                    "",
                    "not_a_preference_row",
                    f"a {used} row: training.method 'dpo' trains on preference rows "
                    f"({', '.join(PREFERENCE_FIELDS)})",
                )
            ]
        )
    reader = _Reader(record, columns)
    system = reader.get("system", str, required=False)
    head = [Turn("system", system, reader.name("system"))] if system else []
    prompt = head + _text_or_messages(reader, "prompt", "user")
    chosen = prompt + _text_or_messages(reader, "chosen", "assistant")
    rejected = prompt + _text_or_messages(reader, "rejected", "assistant")
    problems = reader.problems or list(
        dict.fromkeys(check_structure(chosen) + check_structure(rejected))
    )
    answers = [[(t.role, t.content) for t in turns[len(prompt) :]] for turns in (chosen, rejected)]
    if not problems and answers[0] == answers[1]:
        problems = [
            FieldProblem(
                reader.name("rejected"),
                "identical_answers",
                "the chosen and rejected answers are the same: the pair teaches nothing",
            )
        ]
    if problems:
        raise RowError(problems)
    return used, chosen, rejected, len(prompt)
