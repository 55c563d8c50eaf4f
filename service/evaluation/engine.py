"""The serving engine as evaluations use it: whole completions through `Generator.complete`
(the warm engine, the adapter hot-loaded by a lease, after client traffic in the engine's
queue), at most `concurrency` requests in flight per evaluation."""

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from eval.lm import EngineCall, EngineReply
from service.errors import InvalidArgumentError
from service.inference.engine import EngineState, Sampling
from service.inference.generation import Generator
from service.jobs.model import JobFailedError
from trainer.tools import Tool

READY_WAIT_SECONDS = 600.0


@dataclass(frozen=True)
class EvaluationLimits:
    """How much of the engine evaluations may use, and the judges they may call."""

    concurrency: int
    """Engine requests in flight per evaluation."""
    max_model_len: int
    judge_urls: dict[str, str] = field(default_factory=dict)
    """The allowlist of OpenAI-compatible judges: name -> base URL."""
    judge_api_key: str | None = None


class EvaluationEngine:
    """Engine requests for the measurements, within the evaluation's concurrency."""

    def __init__(self, generator: Generator, tokenizer: Any, limits: EvaluationLimits) -> None:
        self._generator = generator
        self.tokenizer = tokenizer
        self.limits = limits
        self._slots = asyncio.Semaphore(limits.concurrency)

    async def wait_ready(self) -> None:
        """Returns once the engine is warm.

        Raises:
            JobFailedError: the engine failed, or was not ready within READY_WAIT_SECONDS.
        """
        deadline = time.monotonic() + READY_WAIT_SECONDS
        while not self._generator.ready():
            if self._generator.engine_state() is EngineState.FAILED:
                raise JobFailedError("engine_unavailable", "the inference engine has failed")
            if time.monotonic() > deadline:
                raise JobFailedError("engine_unavailable", "the inference engine did not get ready")
            await asyncio.sleep(1.0)

    async def call(self, adapter: str, call: EngineCall) -> EngineReply:
        """One request of lm-eval's (token ids in)."""
        async with self._slots:
            done = await self._generator.complete(
                adapter,
                call.prompt_ids,
                Sampling(max_tokens=call.max_tokens, stop=call.stop),
                prompt_logprobs=call.prompt_logprobs,
            )
        return EngineReply(done.text, tuple((p.logprob, p.is_top) for p in done.prompt_logprobs))

    async def answer(
        self,
        adapter: str,
        prompt: str | Sequence[dict[str, str]],
        max_tokens: int,
        schema: dict[str, Any] | None = None,
        tools: Sequence[Tool] = (),
    ) -> tuple[str, float]:
        """The adapter's answer to a one-turn chat (`prompt` a string) or to the last user turn
        of a conversation, offering `tools`, and how long it took.

        Raises:
            JobFailedError: the prompt does not fit the engine with `max_tokens`; tools on a
                server whose chat template does not render them.
        """
        if tools and not self._generator.renders_tools:
            raise JobFailedError(
                "evaluation_failed",
                "tool_calls: the server's chat template does not render tools and calls as "
                "Hermes <tool_call> blocks; its operator can serve with --chat-template "
                "chatml_tools",
            )
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        try:
            ids = self._generator.chat_prompt_ids(list(messages), max_tokens, tools)
        except InvalidArgumentError as exc:
            shown = messages[-1]["content"][:80]
            raise JobFailedError("evaluation_failed", f"{exc}: {shown!r}") from None
        began = time.monotonic()
        async with self._slots:
            done = await self._generator.complete(
                adapter, ids, Sampling(max_tokens=max_tokens), json_schema=schema
            )
        return done.text, time.monotonic() - began
