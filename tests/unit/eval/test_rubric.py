"""Rubric judging: the conversation files and their errors, the verdict schema and its strict
parse, the judge's prompt, and the means with their intervals (verdicts made up here: the
scorer's unit test; the real engine's verdicts are in the integration tests)."""

import json

import jsonschema
import pytest

from eval.prompts import PromptSetError, bundled_prompts
from eval.rubric import (
    DIMENSIONS,
    Conversation,
    judge_prompt,
    llm_rubric,
    parse_rubric,
    read_conversations,
    rubric_schema,
    score_rubric,
)


def write(tmp_path, *rows):
    path = tmp_path / "conversations.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_the_bundled_set_has_one_and_multi_turn_conversations_ending_with_the_user():
    conversations = read_conversations(bundled_prompts("assistant_mix"), None)
    turns = sorted({len(c.messages) for c in conversations})
    assert len(conversations) == 12 and turns == [1, 3]
    assert all(c.messages[-1]["role"] == "user" for c in conversations)
    assert sum(bool(c.reference) for c in conversations) == 5
    assert len(read_conversations(bundled_prompts("gsm8k_heldout"), 3)) == 3


def test_a_conversation_reads_as_a_transcript_with_its_reference(tmp_path):
    path = write(
        tmp_path,
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                      {"role": "user", "content": "Sum 2+2"}], "reference": "4"},
        {"prompt": "One turn"},
    )  # fmt: skip
    first, second = read_conversations(path, None)
    assert first.transcript() == "User: Hi\n\nAssistant: Hello\n\nUser: Sum 2+2\n\n(Reference: 4)"
    assert second.messages == ({"role": "user", "content": "One turn"},)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{", "invalid JSON"),
        ("[1]", "not a JSON object"),
        ({"prompt": "a", "messages": []}, "give prompt or messages, not both"),
        ({"prompt": " "}, "prompt: 1 to 32000 characters"),
        ({"messages": []}, "messages: a list of 1 to 16 turns"),
        ({"messages": [{"role": "assistant", "content": "x"}]},
         "messages[0].role: 'assistant', expected user"),
        ({"messages": [{"role": "user", "content": "x", "name": "n"}]},
         "messages[0]: an object with exactly role and content"),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
         "the last turn must be the user's"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content: 1 to"),
        ({"prompt": "a", "reference": 4}, "reference: a string"),
        ({"other": 1}, "messages: a list of 1 to 16 turns is required"),
    ],
)  # fmt: skip
def test_bad_conversations_name_the_line_and_field(tmp_path, line, message):
    path = write(tmp_path, {"prompt": "fine"}, line)
    with pytest.raises(PromptSetError) as caught:
        read_conversations(path, None)
    assert message in str(caught.value)
    assert str(caught.value).startswith("conversations.jsonl:2")


def test_an_empty_set_is_refused(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n\n")
    with pytest.raises(PromptSetError, match="the prompt set is empty"):
        read_conversations(tmp_path / "e.jsonl", None)


@pytest.mark.parametrize(
    ("reply", "scores"),
    [
        ('{"helpfulness": 7, "formatting": 10}', {"helpfulness": 7, "formatting": 10}),
        ('{"formatting":1,"helpfulness":2}', {"helpfulness": 2, "formatting": 1}),
        ('{"helpfulness": 11, "formatting": 5}', None),
        ('{"helpfulness": 0, "formatting": 5}', None),
        ('{"helpfulness": 7.0, "formatting": 5}', {"helpfulness": 7, "formatting": 5}),
        ('{"helpfulness": 7.5, "formatting": 5}', None),
        ('{"helpfulness": true, "formatting": 5}', None),
        ('{"helpfulness": "7", "formatting": 5}', None),
        ('{"helpfulness": 7}', None),
        ('{"helpfulness": 7, "formatting": 5, "wit": 3}', None),
        ("Helpfulness: 7", None),
        ("[" * 100_000, None),
    ],
)  # fmt: skip
def test_a_verdict_parses_only_as_the_schemas_object(reply, scores):
    dimensions = ("helpfulness", "formatting")
    assert parse_rubric(reply, dimensions) == scores
    try:
        jsonschema.validate(json.loads(reply), rubric_schema(dimensions))
        valid = True
    except (ValueError, jsonschema.ValidationError, RecursionError):
        valid = False
    assert valid == (scores is not None)  # the parse and the decoding constraint agree


def test_the_judges_prompt_lists_the_dimensions_and_keeps_answers_as_text():
    conversation = Conversation(({"role": "user", "content": "Say {answer}"},))
    prompt = judge_prompt("", ("helpfulness",), conversation, "I said {conversation}")
    assert "- helpfulness: does it do what the user asked" in prompt
    assert "formatting" not in prompt.split("Conversation:")[0]
    assert "User: Say {answer}" in prompt and prompt.count("I said {conversation}") == 1
    custom = judge_prompt("C={conversation} A={answer} {x}", DIMENSIONS, conversation, "ok")
    assert custom == "C=User: Say {answer} A=ok {x}"


async def test_the_llm_judge_gives_none_for_a_reply_that_does_not_parse():
    replies = iter(['{"helpfulness": 9}', "nine"])

    async def ask(message):
        return next(replies)

    conversations = [Conversation(({"role": "user", "content": q},)) for q in ("a", "b")]
    verdicts = await llm_rubric(ask, conversations, ["x", "y"], ("helpfulness",))
    assert verdicts == [{"helpfulness": 9}, None]


def test_means_have_student_t_intervals_and_unparsed_verdicts_are_counted():
    verdicts = [{"helpfulness": 8, "formatting": 6}, {"helpfulness": 6, "formatting": 4}, None,
                {"helpfulness": 10, "formatting": 8}]  # fmt: skip
    report = score_rubric(verdicts, ("helpfulness", "formatting"))
    assert report.unjudged == 1 and report.overall.count == 3
    assert report.overall.value == pytest.approx(7.0)  # per conversation 7, 5, 9
    # t(0.975, 2) = 4.3027, sd 2, n 3: half-width 4.968
    assert report.overall.lower == pytest.approx(7.0 - 4.3027 * 2 / 3**0.5, abs=1e-3)
    assert report.values() == {
        "rubric_score": pytest.approx(7.0), "rubric_score_lower": report.overall.lower,
        "rubric_helpfulness": pytest.approx(8.0), "rubric_formatting": pytest.approx(6.0),
    }  # fmt: skip
    with pytest.raises(ValueError, match="did not parse"):
        score_rubric([None, None], ("helpfulness",))
