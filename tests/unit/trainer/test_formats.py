import pytest

from trainer.formats import RowError, normalize


def roles_and_texts(turns):
    return [(t.role, t.content) for t in turns]


@pytest.mark.parametrize(
    ("row", "columns", "fmt", "expected"),
    [
        (
            {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                          {"role": "assistant", "content": "A"}]},
            {}, "messages", [("system", "S"), ("user", "Q"), ("assistant", "A")],
        ),
        ({"prompt": "Q", "completion": "A"}, {}, "prompt_completion",
         [("user", "Q"), ("assistant", "A")]),
        ({"instruction": "Do", "input": "this", "output": "Done"}, {}, "alpaca",
         [("user", "Do\n\nthis"), ("assistant", "Done")]),
        ({"instruction": "Do", "input": "", "output": "Done"}, {}, "alpaca",
         [("user", "Do"), ("assistant", "Done")]),
        ({"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
         {}, "sharegpt", [("user", "Q"), ("assistant", "A")]),
        ({"question": "Q", "answer": "A"}, {"prompt": "question", "completion": "answer"},
         "prompt_completion", [("user", "Q"), ("assistant", "A")]),
        ({"prompt": [{"role": "user", "content": "Q"}],
          "completion": [{"role": "assistant", "content": "A"}]}, {}, "prompt_completion",
         [("user", "Q"), ("assistant", "A")]),
    ],
)  # fmt: skip
def test_every_format_normalizes_to_the_same_conversation_form(row, columns, fmt, expected):
    used, turns, _ = normalize(row, "auto", columns)
    assert used == fmt
    assert roles_and_texts(turns) == expected


def problems_of(row, fmt="auto", columns=None):
    with pytest.raises(RowError) as caught:
        normalize(row, fmt, columns or {})
    return [(p.field, p.code) for p in caught.value.problems]


def test_problems_name_the_field_path_and_a_stable_code():
    row = {"messages": [{"role": "user", "content": "Q"}, {"role": "bot", "content": "A"},
                        {"role": "assistant", "content": 3}]}  # fmt: skip
    assert problems_of(row) == [
        ("messages[1].role", "unknown_role"),
        ("messages[2].content", "wrong_type"),
    ]


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ([1, 2], [("", "not_an_object")]),
        ({"text": "x"}, [("", "unknown_format")]),
        ({"prompt": "Q", "completion": ""}, [("completion", "empty_content")]),
        ({"prompt": "Q", "completion": 5}, [("completion", "wrong_type")]),
        ({"messages": [{"role": "user", "content": "Q"}]}, [("", "no_assistant_turn")]),
        ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"},
                       {"role": "user", "content": "more?"}]},
         [("messages[2].content", "last_turn_not_assistant")]),
        ({"messages": [{"role": "assistant", "content": "A"}]},
         [("messages[0].content", "assistant_first")]),
        ({"messages": "hello"}, [("messages", "wrong_type")]),
    ],
)  # fmt: skip
def test_structural_problems(row, expected):
    assert problems_of(row) == expected


def test_forced_format_reports_missing_fields_by_their_column_names():
    assert problems_of({"q": "x"}, "prompt_completion", {"prompt": "q", "completion": "a"}) == [
        ("a", "missing_field")
    ]


ADD = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"]}}}  # fmt: skip


def tool_row(*messages, tools=(ADD,)):
    return {"tools": list(tools), "messages": [{"role": "user", "content": "2+3?"}, *messages]}


CALL = {"role": "assistant", "content": None,
        "tool_calls": [{"id": "c0", "type": "function",
                        "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]}  # fmt: skip


def test_a_tool_conversation_normalizes_with_its_calls_and_tools():
    row = tool_row(CALL, {"role": "tool", "content": "5"}, {"role": "assistant", "content": "5."})
    used, turns, tools = normalize(row, "auto", {})
    assert used == "messages"
    assert [tool.name for tool in tools] == ["add"]
    assert [(t.role, t.content) for t in turns] == [
        ("user", "2+3?"), ("assistant", ""), ("tool", "5"), ("assistant", "5."),
    ]  # fmt: skip
    assert turns[1].message()["tool_calls"][0]["function"] == {
        "name": "add",
        "arguments": {"a": 2, "b": 3},
    }
    assert "tool_calls" not in turns[3].message()


def test_a_conversation_may_end_in_a_tool_call():
    _, turns, _ = normalize(tool_row(CALL), "auto", {})
    assert turns[-1].tool_calls[0].name == "add"


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (tool_row({"role": "tool", "content": "5"}, {"role": "assistant", "content": "5"}),
         [("messages[1].content", "tool_without_call")]),
        (tool_row({**CALL, "tool_calls": [{"function": {"name": "mul", "arguments": {}}}]}),
         [("messages[1].tool_calls[0].function.name", "unknown_tool")]),
        (tool_row({**CALL, "tool_calls": [{"function": {"name": "add", "arguments": {"a": 1}}}]}),
         [("messages[1].tool_calls[0].function.arguments", "invalid_arguments")]),
        (tool_row(CALL, tools=[{"type": "function", "function": {"name": "a/b"}}]),
         [("tools[0].function.name", "invalid_tool_name"),
          ("messages[1].tool_calls[0].function.name", "unknown_tool")]),
        (tool_row({"role": "assistant", "content": ""}), [("messages[1].content", "empty_content")]),
        (tool_row({**CALL, "role": "user"}, {"role": "assistant", "content": "5"}),
         [("messages[1].tool_calls", "wrong_role")]),
    ],
)  # fmt: skip
def test_tool_problems_name_their_field(row, expected):
    assert problems_of(row) == expected


def test_a_row_without_tools_may_not_call_one():
    row = {"messages": [{"role": "user", "content": "2+3?"}, CALL]}
    assert problems_of(row) == [("messages[1].tool_calls[0].function.name", "unknown_tool")]
