"""Tools and tool calls: read as OpenAI shapes, every problem named by its field path."""

import json

import pytest
from jsonschema import Draft202012Validator

from trainer.tools import (
    ToolCall,
    ToolError,
    call_schema,
    parse_generated,
    read_tool_calls,
    read_tools,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TOOLS = read_tools([WEATHER], "tools")


def problems(call, *args):
    with pytest.raises(ToolError) as caught:
        call(*args)
    return [(field, code) for field, code, _ in caught.value.problems]


def test_a_tool_keeps_its_definition_and_parameters():
    (tool,) = TOOLS
    assert tool.name == "get_weather"
    assert tool.as_dict() == WEATHER
    assert tool.parameters["required"] == ["city"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"type": "function"}, [("tools", "wrong_type")]),
        ([{"type": "retrieval"}], [("tools[0]", "wrong_type")]),
        ([{"type": "function", "function": {"name": "a b"}}],
         [("tools[0].function.name", "invalid_tool_name")]),
        ([{"type": "function", "function": {"name": "x" * 65}}],
         [("tools[0].function.name", "invalid_tool_name")]),
        ([{"type": "function", "function": {"name": "f", "code": "rm -rf"}}],
         [("tools[0].function.code", "unknown_field")]),
        ([{"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}],
         [("tools[0].function.parameters", "invalid_schema")]),
        ([WEATHER, WEATHER], [("tools[1].function.name", "duplicate_tool")]),
        ([WEATHER] * 65, [("tools", "too_many_tools")]),
    ],
)  # fmt: skip
def test_bad_tools_are_named_by_field(value, expected):
    assert problems(read_tools, value, "tools") == expected


def test_a_pattern_outside_re2_is_an_invalid_schema():
    tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"s": {"type": "string", "pattern": "(a+)+\\1"}}}}}  # fmt: skip
    assert problems(read_tools, [tool], "tools") == [
        ("tools[0].function.parameters", "invalid_schema")
    ]


def call(arguments, name="get_weather"):
    return {"id": "c1", "type": "function", "function": {"name": name, "arguments": arguments}}


def test_arguments_come_as_an_object_or_as_a_json_string_and_read_the_same():
    as_object = read_tool_calls([call({"city": "Oslo"})], "tool_calls", TOOLS)
    as_string = read_tool_calls([call('{"city": "Oslo"}')], "tool_calls", TOOLS)
    assert as_object == as_string == (ToolCall("get_weather", '{"city": "Oslo"}', "c1"),)
    (first,) = as_object
    assert first.as_dict()["function"]["arguments"] == {"city": "Oslo"}
    assert json.loads(first.openai()["function"]["arguments"]) == {"city": "Oslo"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ([], [("m.tool_calls", "wrong_type")]),
        ([call({"city": "Oslo"}, name="get_time")],
         [("m.tool_calls[0].function.name", "unknown_tool")]),
        ([call({"days": 2})], [("m.tool_calls[0].function.arguments", "invalid_arguments")]),
        ([call({"city": "Oslo", "units": "C"})],
         [("m.tool_calls[0].function.arguments", "invalid_arguments")]),
        ([call("{not json")], [("m.tool_calls[0].function.arguments", "invalid_arguments")]),
        ([call("[1, 2]")], [("m.tool_calls[0].function.arguments", "invalid_arguments")]),
        ([call("x" * 70000)], [("m.tool_calls[0].function.arguments", "too_long")]),
        ([call({"city": "A"}), call({"days": 1}), call({"city": 3})],
         [("m.tool_calls[1].function.arguments", "invalid_arguments"),
          ("m.tool_calls[2].function.arguments", "invalid_arguments")]),
        ([call({"city": "A"})] * 17, [("m.tool_calls", "too_many_calls")]),
    ],
)  # fmt: skip
def test_bad_calls_are_named_by_field(value, expected):
    assert problems(read_tool_calls, value, "m.tool_calls", TOOLS) == expected


def test_an_unknown_tool_is_told_which_tools_were_offered():
    with pytest.raises(ToolError, match=r"not one of the tools offered \(get_weather\)"):
        read_tool_calls([call({}, name="get_time")], "c", TOOLS)


def test_deeply_nested_arguments_are_refused_not_crashed():
    deep = "[" * 30_000 + "]" * 30_000
    assert problems(read_tool_calls, [call(deep)], "c", TOOLS) == [
        ("c[0].function.arguments", "invalid_arguments")
    ]


def test_generated_calls_are_parsed_and_numbered():
    text = (
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n'
        '</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome", '
        '"days": 2}}\n</tool_call>'
    )
    content, calls = parse_generated(text, TOOLS)
    assert content == "Let me check."
    assert [(c.id, c.name, json.loads(c.arguments)) for c in calls] == [
        ("call_0", "get_weather", {"city": "Oslo"}),
        ("call_1", "get_weather", {"city": "Rome", "days": 2}),
    ]


def test_a_call_cut_off_by_the_token_limit_still_parses_when_its_json_is_whole():
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}'
    assert parse_generated(text, TOOLS)[1][0].name == "get_weather"


@pytest.mark.parametrize(
    "text",
    [
        "No tools needed: it is sunny.",
        '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>',
        '<tool_call>{"name": "get_weather", "arguments": {"days": 1}}</tool_call>',
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Os',
        '<tool_call>["get_weather"]</tool_call>',
    ],
)
def test_text_that_is_not_a_valid_call_stays_content_whole(text):
    assert parse_generated(text, TOOLS) == (text, ())


def test_parameters_given_as_json_text_are_read_as_the_object():
    text = {**WEATHER, "function": {**WEATHER["function"], "parameters": json.dumps(
        WEATHER["function"]["parameters"])}}  # fmt: skip
    assert read_tools([text], "tools") == TOOLS
    broken = {**WEATHER, "function": {**WEATHER["function"], "parameters": "{"}}
    assert problems(read_tools, [broken], "tools") == [
        ("tools[0].function.parameters", "invalid_schema")
    ]


def test_arguments_nested_too_deep_are_refused_without_recursing():
    deep: dict = {}
    for _ in range(10_000):
        deep = {"a": deep}
    call = {"type": "function", "function": {"name": "get_weather", "arguments": deep}}
    assert problems(read_tool_calls, [call], "calls", TOOLS) == [
        ("calls[0].function.arguments", "too_deep")
    ]


def test_the_call_schema_accepts_exactly_the_calls_of_the_tools():
    other = read_tools([{"type": "function", "function": {"name": "now"}}], "tools")
    for tools in (TOOLS, TOOLS + other):
        validator = Draft202012Validator(call_schema(tools))
        assert validator.is_valid({"name": "get_weather", "arguments": {"city": "Oslo"}})
        assert not validator.is_valid({"name": "get_weather", "arguments": {"days": 2}})
        assert not validator.is_valid({"name": "other", "arguments": {}})
        assert validator.is_valid({"name": "now", "arguments": {}}) == (len(tools) == 2)


@pytest.mark.parametrize(
    "parameters",
    [{"$ref": "#"}, {"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}},
                     "$defs": {"x": {"type": "string"}}}],
)  # fmt: skip
def test_parameters_with_references_are_refused_before_anything_validates_under_them(parameters):
    tool = {"type": "function", "function": {"name": "f", "parameters": parameters}}
    with pytest.raises(ToolError, match=r"\$(ref|defs) is not supported") as caught:
        read_tools([tool], "tools")
    assert caught.value.problems[0][:2] == ("tools[0].function.parameters", "invalid_schema")


def test_a_call_split_by_a_long_run_of_whitespace_parses_in_linear_time():
    text = "<tool_call>" + " " * 200_000 + '{"name": "get_weather", "arguments": {"city": "Oslo"}}'
    assert parse_generated(text, TOOLS)[1][0].arguments == '{"city": "Oslo"}'
    assert parse_generated("<tool_call>" + " \n" * 100_000, TOOLS) == (
        "<tool_call>" + " \n" * 100_000,
        (),
    )
