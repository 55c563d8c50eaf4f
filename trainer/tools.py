"""Tool calls: the function definitions a chat offers, the calls an assistant makes, checked.

One shape on every side, OpenAI's: a tool is `{"type": "function", "function": {"name",
"description", "parameters"}}` (parameters a JSON Schema), a call `{"id", "type": "function",
"function": {"name", "arguments"}}` (arguments a JSON object, or OpenAI's JSON string of one).
Training data (`trainer.formats`, the `messages` format with `tools`, assistant `tool_calls` and
`tool` messages) and the serving routes read them here, so a call is valid in a dataset exactly
when it is valid in a request. Parameter schemas are a client's: they are checked by
`eval.schema` (metaschema, depth, patterns in RE2) and arguments validated under RE2.
Pure: no I/O, no tokenizer.
"""

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from eval.schema import validator_of

TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""OpenAI's rule for function names; it also keeps a name from breaking out of a template."""
MAX_TOOLS = 64
MAX_TOOL_CALLS = 16
"""Calls one assistant message may make."""
MAX_DESCRIPTION = 4096
MAX_ARGUMENTS_CHARS = 1 << 16
MAX_DEPTH = 64
"""Nesting an object of arguments or parameters may have."""


@dataclass(frozen=True)
class Tool:
    """One function a chat offers."""

    name: str
    definition: str
    """The tool as canonical JSON (OpenAI's shape), what the chat template renders."""

    def as_dict(self) -> dict[str, Any]:
        """The tool's OpenAI-shaped object."""
        value: dict[str, Any] = json.loads(self.definition)
        return value

    @property
    def parameters(self) -> dict[str, Any]:
        """The JSON Schema of its arguments (an empty one accepts any object)."""
        value: dict[str, Any] = self.as_dict()["function"].get("parameters") or {}
        return value


@dataclass(frozen=True)
class ToolCall:
    """One call an assistant makes."""

    name: str
    arguments: str
    """The arguments as canonical JSON of an object."""
    id: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The call as a chat template renders it: arguments as an object."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": json.loads(self.arguments)},
        }

    def openai(self) -> dict[str, Any]:
        """The call in OpenAI's response shape: arguments as a JSON string."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


def template_message(role: str, content: str, calls: Sequence[ToolCall]) -> dict[str, Any]:
    """A message as a chat template takes it: its calls (if any) with arguments as objects."""
    if not calls:
        return {"role": role, "content": content}
    return {"role": role, "content": content, "tool_calls": [call.as_dict() for call in calls]}


class ToolError(ValueError):
    """Invalid tools or calls; `problems` are (field path, code, message)."""

    def __init__(self, problems: list[tuple[str, str, str]]) -> None:
        super().__init__("; ".join(message for _, _, message in problems))
        self.problems = problems


def _canonical(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def read_tools(value: Any, path: str) -> tuple[Tool, ...]:
    """The tools of `value` (a list of OpenAI tool objects) at field `path`.

    Raises:
        ToolError: every problem, naming `path[i]...`: not a list, too many, a wrong shape, a
            bad or repeated name, a parameters value that is not a valid JSON Schema.
    """
    if not isinstance(value, list):
        raise ToolError([(path, "wrong_type", f"'{path}' must be a list of tools")])
    if len(value) > MAX_TOOLS:
        raise ToolError([(path, "too_many_tools", f"'{path}': more than {MAX_TOOLS} tools")])
    problems: list[tuple[str, str, str]] = []
    tools: dict[str, Tool] = {}
    for index, item in enumerate(value):
        where = f"{path}[{index}]"
        function = item.get("function") if isinstance(item, dict) else None
        if (
            not isinstance(item, dict)
            or item.get("type") != "function"
            or not isinstance(function, dict)
        ):
            problems.append(
                (where, "wrong_type", f"'{where}' must be {{\"type\": \"function\", "
                 "\"function\": {\"name\", \"description\", \"parameters\"}}")
            )  # fmt: skip
            continue
        try:
            function = _function(function, f"{where}.function")
        except ToolError as exc:
            problems += exc.problems
            continue
        name = function["name"]
        if name in tools:
            problems.append(
                (f"{where}.function.name", "duplicate_tool", f"tool {name!r} is defined twice")
            )
            continue
        tools[name] = Tool(name, _canonical({"type": "function", "function": function}))
    if problems:
        raise ToolError(problems)
    return tuple(tools.values())


def _function(function: dict[str, Any], where: str) -> dict[str, Any]:
    """`function` checked, its parameters an object (given as one or as JSON text).

    Raises:
        ToolError: its first problem.
    """
    unknown = set(function) - {"name", "description", "parameters", "strict"}
    if unknown:
        field = f"{where}.{sorted(unknown)[0]}"
        raise ToolError([(field, "unknown_field", f"'{field}': unknown field")])
    name = function.get("name")
    if not isinstance(name, str) or not TOOL_NAME.match(name):
        message = f"'{where}.name' is {str(name)[:80]!r}: 1-64 letters, digits, '_' or '-'"
        raise ToolError([(f"{where}.name", "invalid_tool_name", message)])
    description = function.get("description", "")
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        message = f"'{where}.description' must be a string of at most {MAX_DESCRIPTION} characters"
        raise ToolError([(f"{where}.description", "wrong_type", message)])
    if not isinstance(function.get("strict", False), bool):
        raise ToolError([(f"{where}.strict", "wrong_type", f"'{where}.strict' must be a boolean")])
    parameters = parse_object(
        function.get("parameters", {}), f"{where}.parameters", "invalid_schema"
    )
    try:
        if referenced := _references(parameters):
            raise ValueError(f"{referenced} is not supported: write the schema out")
        _validator(_canonical(parameters))
    except ValueError as exc:
        message = f"'{where}.parameters': {exc}"
        raise ToolError([(f"{where}.parameters", "invalid_schema", message)]) from None
    return {**function, "parameters": parameters}


REFERENCE_KEYWORDS = frozenset(
    {"$ref", "$dynamicRef", "$recursiveRef", "$defs", "definitions", "$id", "$anchor",
     "$dynamicAnchor", "$recursiveAnchor"}
)  # fmt: skip
"""What a tool's parameters may not use: a reference may loop (validation recursing without
end) or fan out exponentially, and it would not resolve once the parameters sit inside
`call_schema`'s object."""


def _references(schema: dict[str, Any]) -> str:
    """The first reference keyword anywhere in `schema` ("" when none), found iteratively."""
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if found := sorted(REFERENCE_KEYWORDS & node.keys()):
                return found[0]
            stack += node.values()
        elif isinstance(node, list):
            stack += node
    return ""


@lru_cache(maxsize=256)
def _validator(schema: str) -> Any:
    """A validator (RE2 patterns) of a canonical JSON Schema; ValueError when it is invalid."""
    return validator_of(json.loads(schema))


def read_tool_calls(value: Any, path: str, tools: Sequence[Tool]) -> tuple[ToolCall, ...]:
    """The calls of an assistant message's `tool_calls` at field `path`, each naming one of
    `tools` with arguments valid under its parameters.

    Raises:
        ToolError: every problem, naming `path[i].function...`.
    """
    if not isinstance(value, list) or not value:
        raise ToolError([(path, "wrong_type", f"'{path}' must be a non-empty list of calls")])
    if len(value) > MAX_TOOL_CALLS:
        raise ToolError([(path, "too_many_calls", f"'{path}': more than {MAX_TOOL_CALLS} calls")])
    by_name = {tool.name: tool for tool in tools}
    problems: list[tuple[str, str, str]] = []
    calls = []
    for index, item in enumerate(value):
        where = f"{path}[{index}]"
        try:
            calls.append(_call(item, where, by_name))
        except ToolError as exc:
            problems += exc.problems
    if problems:
        raise ToolError(problems)
    return tuple(calls)


def _call(item: Any, where: str, tools: Mapping[str, Tool]) -> ToolCall:
    function = item.get("function") if isinstance(item, dict) else None
    if not isinstance(function, dict) or item.get("type", "function") != "function":
        raise ToolError(
            [(where, "wrong_type", f"'{where}' must be {{\"type\": \"function\", "
              "\"function\": {\"name\", \"arguments\"}}")]
        )  # fmt: skip
    call_id = item.get("id", "")
    if not isinstance(call_id, str) or len(call_id) > 64:
        raise ToolError([(f"{where}.id", "wrong_type", f"'{where}.id' must be a short string")])
    name = function.get("name")
    if not isinstance(name, str) or name not in tools:
        offered = ", ".join(sorted(tools)) or "none"
        raise ToolError(
            [
                (
                    f"{where}.function.name",
                    "unknown_tool",
                    f"'{where}.function.name' is {str(name)[:80]!r}, not one of the tools "
                    f"offered ({offered})",
                )
            ]
        )
    arguments = parse_object(function.get("arguments", {}), f"{where}.function.arguments")
    errors = list(_validator(_canonical(tools[name].parameters)).iter_errors(arguments))
    if errors:
        raise ToolError(
            [
                (
                    f"{where}.function.arguments",
                    "invalid_arguments",
                    f"'{where}.function.arguments' do not match {name}'s parameters: "
                    f"{errors[0].message[:200]}",
                )
            ]
        )
    return ToolCall(name, _canonical(arguments), call_id)


def parse_object(value: Any, where: str, code: str = "invalid_arguments") -> dict[str, Any]:
    """A JSON object given as one or as JSON text of one (OpenAI's call arguments; gRPC's
    parameter schemas), at field `where`.

    Raises:
        ToolError: `code` when it is not an object, not JSON or nested too deep; too long.
    """
    if isinstance(value, str):
        if len(value) > MAX_ARGUMENTS_CHARS:
            raise ToolError(
                [(where, "too_long", f"'{where}': longer than {MAX_ARGUMENTS_CHARS} characters")]
            )
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            raise ToolError([(where, code, f"'{where}' is not JSON of an object")]) from None
    if not isinstance(value, dict):
        raise ToolError([(where, code, f"'{where}' must be a JSON object")])
    if _depth(value) > MAX_DEPTH:
        raise ToolError([(where, "too_deep", f"'{where}': nested deeper than {MAX_DEPTH}")])
    return value


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in `value` (iteratively: any depth is safe)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth)
            children = node.values() if isinstance(node, dict) else node
            stack += [(child, depth + 1) for child in children]
    return deepest


CALL_OPEN = "<tool_call>"
"""What opens a Hermes-style call in generated text (`trainer.templates.CHATML_TOOLS` renders
calls as `<tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>`)."""
TOOL_CALL_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)
"""A Hermes-style call in generated text (its group: the JSON, with the whitespace around it);
the last one may be cut off by the end of the generation. Linear: no pattern part that can
backtrack over whitespace."""


def call_schema(tools: Sequence[Tool]) -> dict[str, Any]:
    """The JSON Schema of one call's `{"name": ..., "arguments": ...}` naming one of `tools`
    with arguments valid under its parameters: what a forced call decodes under."""
    options = [
        {
            "type": "object",
            "properties": {
                "name": {"const": tool.name},
                "arguments": tool.parameters or {"type": "object"},
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for tool in tools
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def parse_generated(text: str, tools: Sequence[Tool]) -> tuple[str, tuple[ToolCall, ...]]:
    """The content and the calls of a generated answer: when every `<tool_call>{"name": ...,
    "arguments": ...}</tool_call>` block names an offered tool with valid arguments, the calls
    (numbered `call_<i>`) and the text before the first block; text between or after the
    blocks is dropped, as vLLM's Hermes parser does. When any block is not such a call, the
    whole text is the content and there are no calls, so an answer that fails to call loses
    nothing.
    """
    blocks = list(TOOL_CALL_BLOCK.finditer(text))
    if not blocks:
        return text, ()
    by_name = {tool.name: tool for tool in tools}
    calls = []
    for index, block in enumerate(blocks):
        try:
            value = json.loads(block.group(1).strip())
            if not isinstance(value, dict):
                return text, ()
            item = {"function": {"name": value.get("name"), "arguments": value.get("arguments")}}
            call = _call(item, "call", by_name)
        except (json.JSONDecodeError, RecursionError, ToolError):
            return text, ()
        calls.append(ToolCall(call.name, call.arguments, f"call_{index}"))
    return text[: blocks[0].start()].strip(), tuple(calls)
