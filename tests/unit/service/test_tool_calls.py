"""Tool calls out of a streamed answer: content streams, a call's text never does, and an
answer whose calls do not parse loses nothing."""

import re

import pytest

from service.inference.tool_calls import ToolCallStream
from trainer.tools import read_tools

TOOLS = read_tools(
    [{"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}],
    "tools",
)  # fmt: skip
CALL = '<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>'


def run(stream, pieces):
    released = [stream.feed(piece) for piece in pieces]
    return released, stream.finish()


@pytest.mark.parametrize("size", [1, 2, 5, 64])
def test_text_before_a_call_streams_and_the_call_arrives_whole(size):
    answer = "Let me add. " + CALL
    pieces = [answer[i : i + size] for i in range(0, len(answer), size)]
    stream = ToolCallStream(TOOLS)
    released, rest = run(stream, pieces)
    assert "".join(released) + rest == "Let me add. "
    assert not any("<" in piece for piece in released)  # not even a partial '<tool_call>'
    [call] = stream.calls
    assert (call.name, call.arguments) == ("add", '{"a": 1}')
    assert re.fullmatch("call_[0-9a-f]{24}", call.id)  # unique across a conversation's turns


def test_a_plain_answer_streams_all_of_its_text_including_a_lone_angle_bracket():
    stream = ToolCallStream(TOOLS)
    released, rest = run(stream, ["1 <", " 2 and <tool", "s> fine"])
    assert "".join(released) + rest == "1 < 2 and <tools> fine"
    assert released[0] == "1 " and stream.calls == ()


@pytest.mark.parametrize(
    "bad",
    [
        '<tool_call>\n{"name": "sub", "arguments": {"a": 1}}\n</tool_call>',  # not offered
        '<tool_call>\n{"name": "add", "arguments": {"a": "one"}}\n</tool_call>',  # invalid
        '<tool_call>\n{"name": "add", "argu',  # cut off
    ],
)
def test_an_answer_whose_calls_do_not_parse_is_released_as_content(bad):
    stream = ToolCallStream(TOOLS)
    released, rest = run(stream, ["Sure: ", bad])
    assert "".join(released) + rest == "Sure: " + bad
    assert stream.calls == ()


def test_a_forced_call_holds_back_its_json_and_parses_it_after_the_prefilled_tag():
    stream = ToolCallStream(TOOLS, forced=True)
    released, rest = run(stream, ['{"name": "add", ', '"arguments": {"a": 7}}'])
    assert released == ["", ""] and rest == ""
    assert [call.arguments for call in stream.calls] == ['{"a": 7}']
    cut = ToolCallStream(TOOLS, forced=True)
    assert run(cut, ['{"name": "ad'])[1] == '{"name": "ad'  # max_tokens cut it: text, kept
