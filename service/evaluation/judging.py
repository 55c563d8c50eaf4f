"""Which judge a section asks for: an allowlisted remote model or a model served here (an
adapter or the base), answering in the section's verdict schema; for win rate, also the
reference judge."""

import asyncio
from typing import Any

from eval.judges import (
    JUDGE_MAX_TOKENS,
    VERDICT_SCHEMA,
    Ask,
    Judge,
    LlmJudge,
    ReferenceJudge,
    remote_ask,
)
from eval.spec import HumanSpec, RubricSpec, SafetySpec, WinRateSpec
from service.evaluation.engine import EvaluationEngine


def ask_for(
    spec: WinRateSpec | SafetySpec | RubricSpec | HumanSpec,
    engine: EvaluationEngine,
    schema: dict[str, Any],
    max_tokens: int,
) -> Ask:
    """Asks the judge model of `spec` ("llm" or "url"; its judge_url is allowlisted: the spec
    was checked at submission) for `schema` as a structured output."""
    if spec.judge == "url":
        limits = engine.limits
        url = limits.judge_urls[spec.judge_url]
        remote = remote_ask(
            spec.judge_url, url, spec.judge_model, limits.judge_api_key,
            schema=schema, max_tokens=max_tokens,
        )  # fmt: skip
        slots = asyncio.Semaphore(limits.concurrency)  # as many in flight as on the engine

        async def bounded(message: str) -> str:
            async with slots:
                return await remote(message)

        return bounded

    async def served(message: str) -> str:
        text, _ = await engine.answer(spec.judge_model, message, max_tokens, schema=schema)
        return text

    return served


def judge_for(spec: WinRateSpec | HumanSpec, engine: EvaluationEngine) -> Judge:
    """The pairwise judge of a win-rate or human section."""
    if spec.judge == "reference":
        return ReferenceJudge()
    return LlmJudge(ask_for(spec, engine, VERDICT_SCHEMA, JUDGE_MAX_TOKENS), spec.judge_prompt)
