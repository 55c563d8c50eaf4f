"""Which judge a win-rate spec asks for: the reference judge, an allowlisted remote one, or a
model served here (an adapter or the base) answering in the verdict schema."""

from eval.judges import (
    JUDGE_MAX_TOKENS,
    VERDICT_SCHEMA,
    Judge,
    LlmJudge,
    ReferenceJudge,
    remote_ask,
)
from eval.spec import WinRateSpec
from service.evaluation.engine import EvaluationEngine


def judge_for(spec: WinRateSpec, engine: EvaluationEngine) -> Judge:
    """The judge of `spec` (its judge_url is allowlisted: the spec was checked at submission)."""
    if spec.judge == "reference":
        return ReferenceJudge()
    if spec.judge == "url":
        limits = engine.limits
        url = limits.judge_urls[spec.judge_url]
        remote = remote_ask(spec.judge_url, url, spec.judge_model, limits.judge_api_key)
        return LlmJudge(remote, spec.judge_prompt)

    async def served(message: str) -> str:
        text, _ = await engine.answer(
            spec.judge_model, message, JUDGE_MAX_TOKENS, schema=VERDICT_SCHEMA
        )
        return text

    return LlmJudge(served, spec.judge_prompt)
