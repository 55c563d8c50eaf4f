"""Tool-call validity: the bundled set reads, and answers are scored call by call against the
tools their prompt offered."""

import json

import pytest

from eval.prompts import PromptSetError, bundled_prompts
from eval.toolcalls import read_tool_prompts, score_tool_calls


@pytest.fixture(scope="module")
def prompts():
    return read_tool_prompts(bundled_prompts("basic_tools"), None)


def call(name, **arguments):
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def test_the_bundled_set_offers_its_tools_on_every_prompt(prompts):
    assert len(prompts) == 20
    assert {t.name for p in prompts for t in p.tools} == {
        "calculate", "get_weather", "convert_units"
    }  # fmt: skip
    assert prompts[0].conversation.messages == (
        {"role": "user", "content": "What is 1234 times 56?"},
    )


def test_answers_are_valid_only_when_every_call_is_an_offered_tool_with_valid_arguments(prompts):
    first = prompts[0]  # offers calculate only
    answers = [
        call("calculate", operation="multiply", a=1234, b=56),
        "Sure. " + call("calculate", operation="add", a=1, b=2) + call("calculate", a=1),
        call("get_weather", city="Oslo"),  # not offered here
        "<tool_call>\n{not json}\n</tool_call>",
        "It is 69104.",
    ]
    report = score_tool_calls(answers, [first] * len(answers))
    assert (report.total, report.called, report.parsed, report.valid) == (5, 4, 3, 1)
    assert report.to_json()["valid_rate"] == pytest.approx(0.2)
    assert [f.index for f in report.failures] == [1, 2, 3, 4]
    assert "'operation' is a required property" in report.failures[0].reason
    assert report.failures[-1].reason == "no <tool_call>"
    assert "'calculate' was expected" in report.failures[1].reason  # the name's const
    assert report.errors_by_keyword["const"] == 1


def test_a_prompt_without_tools_or_with_a_bad_tool_is_refused_naming_the_line(tmp_path):
    path = tmp_path / "tools.jsonl"
    path.write_text('{"prompt": "hi", "tools": [{"type": "function", "function": {"name": "f"}}]}\n'
                    '{"prompt": "hi"}\n')  # fmt: skip
    with pytest.raises(PromptSetError, match=r"tools.jsonl:2: 'tools' must be a list"):
        read_tool_prompts(path, None)
    assert len(read_tool_prompts(path, 1)) == 1
    path.write_text(
        '{"prompt": "hi", "tools": [{"type": "function", "function": {"name": "a b"}}]}\n'
    )
    with pytest.raises(PromptSetError, match=r"tools.jsonl:1: 'tools\[0\].function.name'"):
        read_tool_prompts(path, None)


def test_an_answer_is_valid_exactly_when_serving_would_return_its_calls(prompts):
    as_text = json.dumps({"operation": "add", "a": 1, "b": 2})  # OpenAI's string arguments
    answer = f"<tool_call>{json.dumps({'name': 'calculate', 'arguments': as_text})}</tool_call>"
    extra = call("calculate", operation="add", a=1, b=2).replace('"name"', '"id": 1, "name"')
    report = score_tool_calls([answer, extra], [prompts[0]] * 2)
    assert report.valid == 2  # both parse in serving (extra keys are ignored there)
