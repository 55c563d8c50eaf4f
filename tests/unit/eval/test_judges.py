"""Judges: strict verdict parsing, similarity verdicts, the LLM judge's prompt rendering."""

import asyncio

import pytest

from eval.judges import LlmJudge, Pair, ReferenceJudge, parse_verdict, verdict_from_similarity
from eval.winrate import Verdict


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("A", Verdict.FIRST), (" b.", Verdict.SECOND), ("Tie", Verdict.TIE),
        ("**A** is better", Verdict.FIRST), ("Answer A", Verdict.INVALID),
        ("", Verdict.INVALID), ("Both are fine", Verdict.INVALID), ("AB", Verdict.INVALID),
    ],
)  # fmt: skip
def test_a_reply_must_start_with_a_b_or_tie(reply, verdict):
    assert parse_verdict(reply) is verdict


def test_close_similarities_tie_and_otherwise_the_closer_answer_wins():
    assert verdict_from_similarity(0.9, 0.5) is Verdict.FIRST
    assert verdict_from_similarity(0.2, 0.6) is Verdict.SECOND
    assert verdict_from_similarity(0.7, 0.705) is Verdict.TIE


def test_the_reference_judge_prefers_the_answer_that_means_the_reference():
    pairs = [
        Pair("q", "She sold 72 clips in April and May.", "Natalia sold 72 clips altogether.",
             "The weather in Paris is rainy."),
        Pair("q", "The train arrives at 5 pm.", "Bananas are yellow.",
             "It gets in at five in the afternoon."),
    ]  # fmt: skip
    assert asyncio.run(ReferenceJudge().judge(pairs)) == [Verdict.FIRST, Verdict.SECOND]


def test_the_llm_judge_fills_its_template_as_text_never_as_a_format_string():
    seen = []

    async def ask(message):
        seen.append(message)
        return "B"

    judge = LlmJudge(ask, "Q={question} 1={first} 2={second} {first.__class__}")
    verdicts = asyncio.run(judge.judge([Pair("why?", "ref", "{second}", "two")]))
    assert verdicts == [Verdict.SECOND]
    assert seen == ["Q=why? 1={second} 2=two {first.__class__}"]


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ('{"verdict": "A"}', Verdict.FIRST), ('{"verdict":"tie"}', Verdict.TIE),
        ('{"verdict": "B"}', Verdict.SECOND), ('{"verdict": "C"}', Verdict.INVALID),
        ('{"winner": "A"}', Verdict.INVALID), ('{"verdict": "A"', Verdict.INVALID),
    ],
)  # fmt: skip
def test_a_structured_reply_is_read_by_its_verdict_field(reply, verdict):
    assert parse_verdict(reply) is verdict
