"""Loss masks: exactly the assistant contents and their end-of-turn tokens, every turn."""

import pytest

from trainer.formats import normalize
from trainer.masking import IGNORE_INDEX, TemplateError, require_tools, supports_tools, tokenize

ROWS = {
    "messages_multi_turn": {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4, of course."},
    ]},
    "prompt_completion": {"prompt": "Name a colour.", "completion": "Blue."},
    "alpaca": {"instruction": "Translate", "input": "chat", "output": "cat"},
    "sharegpt": {"conversations": [
        {"from": "human", "value": "One?"}, {"from": "gpt", "value": "Two."},
        {"from": "human", "value": "Three?"}, {"from": "gpt", "value": "Four."},
    ]},
}  # fmt: skip


def trained_segments(tokenizer, example):
    """Decoded runs of consecutive trained tokens."""
    segments, current = [], []
    for token, label in zip(example.input_ids, example.labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            segments.append(tokenizer.decode(current))
            current = []
    if current:
        segments.append(tokenizer.decode(current))
    return segments


@pytest.mark.parametrize("name", ROWS)
def test_trained_tokens_are_the_assistant_contents_with_their_end_of_turn(tokenizer, name):
    _, turns, _ = normalize(ROWS[name], "auto", {})
    example = tokenize(tokenizer, turns)
    expected = [f"{t.content}<|im_end|>" for t in turns if t.role == "assistant"]
    assert trained_segments(tokenizer, example) == expected


def test_every_end_of_turn_token_is_trained(tokenizer):
    _, turns, _ = normalize(ROWS["messages_multi_turn"], "auto", {})
    example = tokenize(tokenizer, turns)
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    trained_eot = [i for i, label in enumerate(example.labels) if label == eot]
    all_eot = [i for i, token in enumerate(example.input_ids) if token == eot]
    # system, user, assistant, user, assistant: only the two assistant ones train
    assert len(trained_eot) == 2
    assert len(all_eot) == 5


class TemplateWithoutEndOfTurn:
    """A tokenizer whose template never closes an assistant turn."""

    all_special_tokens = ["<s>"]

    def apply_chat_template(self, messages, tools, tokenize, add_generation_prompt):
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
        return text + ("assistant: " if add_generation_prompt else "")


def test_a_template_without_end_of_turn_token_fails_hard():
    _, turns, _ = normalize({"prompt": "Q", "completion": "A"}, "auto", {})
    with pytest.raises(TemplateError, match="never learn to stop"):
        tokenize(TemplateWithoutEndOfTurn(), turns)


def test_assistant_turns_inside_a_conversational_prompt_are_context_not_targets(tokenizer):
    row = {
        "prompt": [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "3+3?"},
        ],
        "completion": [{"role": "assistant", "content": "6"}],
    }
    _, turns, _ = normalize(row, "auto", {})
    assert trained_segments(tokenizer, tokenize(tokenizer, turns)) == ["6<|im_end|>"]


ADD = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}}  # fmt: skip
TOOL_ROW = {"tools": [ADD], "messages": [
    {"role": "user", "content": "2+3?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}]},
    {"role": "tool", "content": "5"},
    {"role": "assistant", "content": "It is 5."},
]}  # fmt: skip


def test_a_tool_call_trains_with_its_end_of_turn_and_the_tool_answer_does_not(tools_tokenizer):
    _, turns, tools = normalize(TOOL_ROW, "auto", {})
    example = tokenize(tools_tokenizer, turns, tools)
    assert trained_segments(tools_tokenizer, example) == [
        '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call><|im_end|>',
        "It is 5.<|im_end|>",
    ]
    text = tools_tokenizer.decode(example.input_ids)
    assert '"name": "add"' in text.split("\n</tools>")[0]  # the signature is in the prompt
    assert "<tool_response>\n5\n</tool_response>" in text


def test_the_models_own_template_is_refused_for_tools_naming_the_remedy(tokenizer, tools_tokenizer):
    assert not supports_tools(tokenizer)  # SmolLM2's template drops tools and calls silently
    assert supports_tools(tools_tokenizer)
    with pytest.raises(TemplateError, match="--chat-template chatml_tools"):
        require_tools(tokenizer)


def test_an_end_of_turn_token_inside_call_arguments_does_not_end_the_trained_span(
    tools_tokenizer,
):
    echo = {"type": "function", "function": {"name": "echo", "parameters": {
        "type": "object", "properties": {"text": {"type": "string"}}}}}  # fmt: skip
    row = {"tools": [echo], "messages": [
        {"role": "user", "content": "Echo it."},
        {"role": "assistant", "tool_calls": [{"type": "function", "function": {
            "name": "echo", "arguments": {"text": "a<|im_end|>b"}}}]},
    ]}  # fmt: skip
    _, turns, tools = normalize(row, "auto", {})
    [trained] = trained_segments(tools_tokenizer, tokenize(tools_tokenizer, turns, tools))
    assert trained.endswith('"a<|im_end|>b"}}\n</tool_call><|im_end|>')
