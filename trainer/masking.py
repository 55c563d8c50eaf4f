"""Render conversations with the model's own chat template and mark what the loss trains on.

The loss covers every assistant turn, each with its end-of-turn token, and nothing else. This
works for templates without `{% generation %}` markers (SmolLM2's ChatML has none): each
assistant turn's span is found by rendering the conversation up to it, with and without the
turn, and the end-of-turn token is the first special token the template emits after the text.
Padding is masked by the attention mask elsewhere, never here by token id (pad may equal the
end-of-turn token). An assistant turn's tool calls train with it: the span runs from the
turn's start through its end-of-turn token, whatever the template renders the calls as; a
conversation with tools needs a template that renders them (`supports_tools`).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trainer.formats import Turn
from trainer.tools import Tool

IGNORE_INDEX = -100


class TemplateError(Exception):
    """The chat template cannot be trained on as it is; fails the job, not a row."""


@dataclass(frozen=True)
class Example:
    """One tokenized conversation."""

    input_ids: list[int]
    """Token ids of the rendered conversation."""
    labels: list[int]
    """Target ids where the loss trains, IGNORE_INDEX elsewhere."""

    @property
    def trained_tokens(self) -> int:
        """Number of positions that carry loss."""
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def _render(
    tokenizer: Any, messages: list[dict[str, Any]], prompt: bool, tools: Sequence[Tool] = ()
) -> str:
    text = tokenizer.apply_chat_template(
        messages,
        tools=[tool.as_dict() for tool in tools] or None,
        tokenize=False,
        add_generation_prompt=prompt,
    )
    return str(text)


PROBE = "adapterd_probe_tool"


def supports_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders tools, an assistant's call and a tool's
    answer (SmolLM2's silently drops all three)."""
    tool = {"type": "function", "function": {"name": PROBE, "parameters": {}}}
    call = {"type": "function", "function": {"name": f"{PROBE}_call", "arguments": {}}}
    messages = [
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": f"{PROBE}_answer"},
    ]
    text = render_probe(tokenizer, messages, [tool])
    return all(f"{PROBE}{suffix}" in text for suffix in ("", "_call", "_answer"))


def render_probe(tokenizer: Any, messages: Sequence[object], tools: Sequence[object]) -> str:
    """What the template renders of a probe chat offering `tools` ("" when it raises: a
    template may raise anything on roles or fields it does not know)."""
    try:
        return str(tokenizer.apply_chat_template(messages, tools=tools, tokenize=False))
    except Exception:
        return ""


def require_tools(tokenizer: Any) -> None:
    """Raises TemplateError, naming the remedy, unless the template renders tools."""
    if not supports_tools(tokenizer):
        raise TemplateError(
            "the chat template does not render tools, tool calls or tool messages (they would "
            "vanish from the text the model learns); use the chat template 'chatml_tools' "
            "(--chat-template chatml_tools), a Hermes-style ChatML template with <tool_call>"
        )


def _end_of_turn(tokenizer: Any, tail: str) -> str:
    """The first special token in `tail`, the template text after an assistant message."""
    found = [(tail.find(tok), tok) for tok in tokenizer.all_special_tokens if tok and tok in tail]
    if not found:
        raise TemplateError(
            "the chat template emits no special token after an assistant message: without an "
            "end-of-turn token the model would never learn to stop"
        )
    return str(min(found)[1])


def assistant_spans(
    tokenizer: Any, turns: Sequence[Turn], tools: Sequence[Tool] = ()
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans that train: each assistant message
    (its text and its tool calls) through its end-of-turn token.

    Raises:
        TemplateError: when rendering is not prefix-stable or alters assistant text.
    """
    messages = [t.message() for t in turns]
    full = _render(tokenizer, messages, prompt=False, tools=tools)
    spans = []
    for index, turn in enumerate(turns):
        if not turn.learns:
            continue
        before = _render(tokenizer, messages[:index], prompt=True, tools=tools)
        through = _render(tokenizer, messages[: index + 1], prompt=False, tools=tools)
        if not (through.startswith(before) and full.startswith(through)):
            raise TemplateError(
                "the chat template does not render a conversation as a prefix of its "
                "continuation; assistant turns cannot be located"
            )
        segment = through[len(before) :]
        if not segment.startswith(turn.content):
            raise TemplateError(
                f"the chat template changes assistant text (at {turn.origin}); "
                "it cannot be trained exactly"
            )
        tail = segment[len(turn.content) :]
        if any(call.name not in tail for call in turn.tool_calls):
            raise TemplateError(
                f"the chat template does not render the tool calls at {turn.origin}"
            )
        # The end of turn comes after the calls: a special token inside their arguments
        # (client text) must not end the trained span early.
        calls_end = _calls_end(tail, turn)
        eot = _end_of_turn(tokenizer, tail[calls_end:])
        end = len(before) + len(turn.content) + tail.find(eot, calls_end) + len(eot)
        spans.append((len(before), end))
    return full, spans


def _calls_end(tail: str, turn: Turn) -> int:
    """Where the last of `turn`'s calls ends in `tail` as rendered: after its arguments (as
    `tojson` renders them, the calls' canonical JSON) where found, else after its name."""
    if not turn.tool_calls:
        return 0
    last = turn.tool_calls[-1]
    named = tail.rfind(last.name) + len(last.name)
    arguments = tail.find(last.arguments, named)
    return named if arguments < 0 else arguments + len(last.arguments)


def prompt_token_ids(
    tokenizer: Any, messages: list[dict[str, Any]], tools: Sequence[Tool] = (), prefill: str = ""
) -> list[int]:
    """A chat (with the tools it offers) as the model sees it at inference: rendered exactly as
    in training, plus the assistant prefix and the start of its answer, `prefill`, tokenized
    as one text (as the answer was in training)."""
    text = _render(tokenizer, messages, prompt=True, tools=tools) + prefill
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize(tokenizer: Any, turns: Sequence[Turn], tools: Sequence[Tool] = ()) -> Example:
    """Tokenizes a conversation with labels on its assistant spans.

    Raises:
        TemplateError: as `assistant_spans`, or when an assistant turn's end-of-turn token
            does not end up trained (the "model never stops" bug).
    """
    text, spans = assistant_spans(tokenizer, turns, tools)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(encoded["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    for span_start, span_end in spans:
        last = None
        for position, (start, _) in enumerate(encoded["offset_mapping"]):
            if span_start <= start < span_end:
                labels[position] = ids[position]
                last = position
        if last is None or encoded["offset_mapping"][last][1] != span_end:
            raise TemplateError(
                "an assistant turn's end-of-turn token is not a token of its own after "
                "tokenization; the model would not learn to stop"
            )
    return Example(ids, labels)


def render_trained(tokenizer: Any, example: Example) -> str:
    """The example's text with trained stretches in [[...]], for reports."""
    parts: list[str] = []
    current: list[int] = []
    trained = False
    for token, label in zip(example.input_ids, example.labels, strict=True):
        is_trained = label != IGNORE_INDEX
        if is_trained != trained and current:
            text = tokenizer.decode(current)
            parts.append(f"[[{text}]]" if trained else text)
            current = []
        current.append(token)
        trained = is_trained
    if current:
        text = tokenizer.decode(current)
        parts.append(f"[[{text}]]" if trained else text)
    return "".join(parts)
