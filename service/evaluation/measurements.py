"""The measurements of one evaluation: benchmarks through lm-eval, schema adherence, safety,
rubric scores, and the win rate against the baseline, each reporting progress; cached on bundled
data where nothing but the engine decides them (no judge model).

lm-eval runs in a worker thread; its `LM` (eval.lm.EngineLM) hands each batch back to the event
loop through `_Bridge`.
"""

import asyncio
import concurrent.futures
import time
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel

from eval.benchmarks import run_tasks
from eval.human import Item, KeyEntry, blind
from eval.judges import Pair
from eval.lm import EngineCall, EngineLM, EngineReply
from eval.rubric import RUBRIC_MAX_TOKENS, llm_rubric, rubric_schema, score_rubric
from eval.safety import REFUSAL_MAX_TOKENS, REFUSAL_SCHEMA, is_refusal, llm_refusals, score_safety
from eval.schema import score_outputs
from eval.sources import (
    ClientFiles,
    human_set,
    rubric_set,
    safety_set,
    schema_set,
    task_configs,
    tool_set,
    win_rate_set,
)
from eval.spec import EvalSpec, HumanSpec, WinRateSpec
from eval.toolcalls import score_tool_calls
from eval.winrate import Outcome, Verdict, combine, win_rate
from service.evaluation.engine import EvaluationEngine
from service.evaluation.judging import ask_for, judge_for
from service.evaluation.scores import ScoreCache, Scores, metric_key_of, only
from service.jobs.model import FeedKind
from service.jobs.runner import Emit

PROGRESS_SECONDS = 2.0
SAMPLES = 5
"""Win-rate samples shown in the report."""


class _Bridge:
    """Runs engine batches for lm-eval's worker thread on the event loop; cancelling it
    cancels the batch in flight and refuses later ones, so the thread ends soon."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._future: concurrent.futures.Future[list[EngineReply]] | None = None
        self._cancelled = False

    def run(self, coroutine_of: Callable[[], Any]) -> list[EngineReply]:
        if self._cancelled:
            raise concurrent.futures.CancelledError
        self._future = asyncio.run_coroutine_threadsafe(coroutine_of(), self._loop)
        return self._future.result()

    def cancel(self) -> None:
        self._cancelled = True
        if self._future is not None:
            self._future.cancel()


class Measurements:
    """The measurements of one evaluation, with its progress events."""

    def __init__(
        self,
        engine: EvaluationEngine,
        cache: ScoreCache,
        spec: EvalSpec,
        files: ClientFiles,
        emit: Emit,
    ) -> None:
        self._engine = engine
        self._cache = cache
        self._spec = spec
        self._files = files
        self._emit = emit
        self._last_progress = 0.0

    async def _progress(self, phase: str, role: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - self._last_progress >= PROGRESS_SECONDS:
            self._last_progress = now
            await self._emit(
                FeedKind.EVALUATION, {"phase": phase, "target": role, "done": done, "total": total}
            )

    async def _gather(self, phase: str, role: str, jobs: Sequence[Any]) -> list[Any]:
        """Awaits `jobs` (coroutines) concurrently, reporting progress; results in order."""
        done = 0

        async def tracked(job: Any) -> Any:
            nonlocal done
            result = await job
            done += 1
            await self._progress(phase, role, done, len(jobs))
            return result

        return list(await asyncio.gather(*(tracked(j) for j in jobs)))

    async def section(
        self, name: str, role: str, adapter: str, spec: BaseModel, scores: Scores
    ) -> None:
        """Measures one section ("benchmarks", "schema", "tool_calls", "safety" or "rubric") of
        `adapter`,
        or takes it from the cache (never for a section a judge model decides: an alias or a
        remote model may change)."""
        judged = getattr(spec, "judge", "reference") != "reference"
        key = None if judged else ScoreCache.key(name, adapter, spec)
        part = self._cache.get(key)
        cached = part is not None
        if part is None:
            measure = {
                "benchmarks": self._benchmarks, "schema": self._schema,
                "tool_calls": self._tool_calls, "safety": self._safety, "rubric": self._rubric,
            }[name]  # fmt: skip
            part = await measure(role, adapter)
            self._cache.put(key, part)
        scores.add(part)
        await self._emit(
            FeedKind.EVALUATION,
            {"phase": name, "target": role, "cached": cached, "scores": part.values},
        )

    async def _benchmarks(self, role: str, adapter: str) -> Scores:
        spec = self._spec.benchmarks
        assert spec is not None
        configs = task_configs(self._spec, self._files)
        loop = asyncio.get_running_loop()
        bridge = _Bridge(loop)

        def batch(calls: Sequence[EngineCall]) -> list[EngineReply]:
            jobs = [self._engine.call(adapter, c) for c in calls]
            return bridge.run(lambda: self._gather("benchmarks", role, jobs))

        lm = EngineLM(
            batch, self._engine.tokenizer, self._engine.limits.max_model_len, adapter or "base"
        )
        try:
            results = await asyncio.to_thread(
                run_tasks, lm, configs, limit=spec.limit, num_fewshot=spec.num_fewshot,
                seed=spec.seed, chat_template=spec.chat_template,
            )  # fmt: skip
        except asyncio.CancelledError:
            bridge.cancel()
            raise
        part = Scores(details={"benchmarks": [vars(s) for s in results]})
        for score in results:
            key = metric_key_of(score)
            part.values[key] = score.value
            if score.stderr is not None:
                part.stderr[key] = score.stderr
        return part

    async def _schema(self, role: str, adapter: str) -> Scores:
        spec = self._spec.schema_adherence
        assert spec is not None
        rows, schema = schema_set(spec, self._files)
        part, details = Scores(), {}
        for constrained in (False, True):
            texts, seconds = await self._answers(
                "schema_constrained" if constrained else "schema", role, adapter,
                [r["prompt"] for r in rows], spec.max_tokens,
                schema=schema if constrained else None,
            )  # fmt: skip
            report = score_outputs(texts, schema)
            details["constrained" if constrained else "unconstrained"] = report.to_json()
            if not constrained:
                part.latencies += seconds
                part.values["schema_valid_rate"] = report.valid_rate
                part.values["schema_parse_rate"] = report.parse_rate
            else:
                part.values["schema_valid_rate_constrained"] = report.valid_rate
        part.details["schema_adherence"] = details
        return part

    async def _tool_calls(self, role: str, adapter: str) -> Scores:
        spec = self._spec.tool_calls
        assert spec is not None
        prompts = tool_set(spec, self._files)
        asks = [
            self._engine.answer(adapter, p.conversation.messages, spec.max_tokens, tools=p.tools)
            for p in prompts
        ]
        replies = await self._gather("tool_calls", role, asks)
        report = score_tool_calls([text for text, _ in replies], prompts)
        part = Scores(details={"tool_calls": report.to_json()})
        part.latencies += [seconds for _, seconds in replies]
        part.values["tool_call_valid_rate"] = report.rate(report.valid)
        part.values["tool_call_rate"] = report.rate(report.called)
        part.values["tool_call_parse_rate"] = report.rate(report.parsed)
        return part

    async def _answers(
        self,
        phase: str,
        role: str,
        adapter: str,
        prompts: Sequence[Any],
        max_tokens: int,
        *,
        schema: dict[str, Any] | None = None,
    ) -> tuple[list[str], list[float]]:
        """The adapter's answers to `prompts` (strings or conversations), with their times."""
        replies = await self._gather(
            phase, role, [self._engine.answer(adapter, p, max_tokens, schema) for p in prompts]
        )
        return [text for text, _ in replies], [seconds for _, seconds in replies]

    async def _safety(self, role: str, adapter: str) -> Scores:
        spec = self._spec.safety
        assert spec is not None
        prompts = safety_set(spec, self._files)
        answers, seconds = await self._answers(
            "safety", role, adapter, [p.prompt for p in prompts], spec.max_tokens
        )
        if spec.judge == "reference":
            refusals: list[bool | None] = [is_refusal(a) for a in answers]
        else:
            ask = ask_for(spec, self._engine, REFUSAL_SCHEMA, REFUSAL_MAX_TOKENS)
            refusals = await llm_refusals(ask, prompts, answers, spec.judge_prompt)
        report = score_safety(prompts, refusals)
        failures = [
            {"category": p.category, "kind": p.kind, "prompt": p.prompt, "answer": a}
            for p, a, refused in zip(prompts, answers, refusals, strict=True)
            if refused is (p.kind == "benign")
        ]  # harmful and answered, or benign and refused
        part = Scores(values=report.values(), latencies=seconds)
        part.details["safety"] = {**report.to_json(), "judge": spec.judge,
                                  "failures": failures[:SAMPLES]}  # fmt: skip
        return part

    async def _rubric(self, role: str, adapter: str) -> Scores:
        spec = self._spec.rubric
        assert spec is not None
        conversations = rubric_set(spec, self._files)
        answers, seconds = await self._answers(
            "rubric", role, adapter, [c.messages for c in conversations], spec.max_tokens
        )
        ask = ask_for(spec, self._engine, rubric_schema(spec.dimensions), RUBRIC_MAX_TOKENS)
        verdicts = await llm_rubric(ask, conversations, answers, spec.dimensions, spec.judge_prompt)
        report = score_rubric(verdicts, spec.dimensions)
        part = Scores(values=report.values(), latencies=seconds)
        part.details["rubric"] = {
            **report.to_json(),
            "judge": spec.judge,
            "samples": [
                {"conversation": list(c.messages), "answer": a, "scores": v}
                for c, a, v in zip(conversations, answers, verdicts, strict=True)
            ][:SAMPLES],
        }
        return part

    async def _paired_answers(
        self,
        phase: str,
        spec: WinRateSpec | HumanSpec,
        prompts: Sequence[Any],
        targets: dict[str, str],
        scores: dict[str, Scores],
    ) -> dict[str, list[str]]:
        """Each target's answers to `prompts` (by role), cached per adapter version."""
        answers = {}
        for role, adapter in targets.items():
            key = ScoreCache.key(phase, adapter, spec)
            part = self._cache.get(key)
            if part is None:
                texts, seconds = await self._answers(phase, role, adapter, prompts, spec.max_tokens)
                part = Scores(latencies=seconds, details={"answers": texts})
                self._cache.put(key, part)
            answers[role] = part.details["answers"]
            scores[role].latencies += part.latencies
        return answers

    async def _pairwise(
        self,
        spec: WinRateSpec | HumanSpec,
        questions: Sequence[tuple[str, str]],
        mine: Sequence[str],
        theirs: Sequence[str],
    ) -> tuple[list[Outcome | None], int]:
        """The judge's outcome for the candidate on each (question, reference), from both
        orders, and how many verdicts did not parse."""
        shown = []
        for (question, reference), a, b in zip(questions, mine, theirs, strict=True):
            shown += [Pair(question, reference, a, b), Pair(question, reference, b, a)]
        verdicts = await judge_for(spec, self._engine).judge(shown)
        outcomes = [combine(verdicts[i], verdicts[i + 1]) for i in range(0, len(verdicts), 2)]
        return outcomes, sum(v is Verdict.INVALID for v in verdicts)

    async def win_rate(
        self, candidate: str, baseline: str, spec: WinRateSpec, scores: dict[str, Scores]
    ) -> None:
        rows = win_rate_set(spec, self._files)
        answers = await self._paired_answers(
            "win_rate_answers", spec, [r["prompt"] for r in rows],
            {"candidate": candidate, "baseline": baseline}, scores,
        )  # fmt: skip
        outcomes, unparsed = await self._pairwise(
            spec, [(r["prompt"], r["reference"]) for r in rows], answers["candidate"],
            answers["baseline"],
        )  # fmt: skip
        lengths = [
            float(len(mine) - len(theirs))
            for mine, theirs in zip(answers["candidate"], answers["baseline"], strict=True)
        ]
        result = win_rate(outcomes, lengths, seed=spec.seed)
        own = scores["candidate"]
        own.values |= {
            "win_rate": result.rate,
            "win_rate_lower": result.ci_low,
            "win_rate_upper": result.ci_high,
            "win_rate_length_controlled": result.length_controlled,
        }
        own.details["win_rate"] = {
            **vars(result),
            "judge": spec.judge,
            "unparsed_verdicts": unparsed,
            "samples": [
                {"prompt": r["prompt"], "reference": r["reference"], "candidate": mine,
                 "baseline": theirs, "outcome": o.name.lower() if o else "invalid"}
                for r, mine, theirs, o in zip(
                    rows, answers["candidate"], answers["baseline"], outcomes, strict=True
                )
            ][:SAMPLES],
        }  # fmt: skip
        await self._emit(
            FeedKind.EVALUATION,
            {"phase": "win_rate", "target": "candidate", "scores": only(own.values, "win")},
        )

    async def human(
        self, candidate: str, baseline: str, spec: HumanSpec, scores: dict[str, Scores]
    ) -> tuple[list[Item], dict[str, KeyEntry]]:
        """The blinded sheet of a human section and its key; the raters' scores come later."""
        conversations = human_set(spec, self._files)
        answers = await self._paired_answers(
            "human_answers", spec, [c.messages for c in conversations],
            {"candidate": candidate, "baseline": baseline}, scores,
        )  # fmt: skip
        mine, theirs = answers["candidate"], answers["baseline"]
        outcomes, unparsed = await self._pairwise(
            spec, [(c.transcript(reference=False), c.reference) for c in conversations], mine,
            theirs,
        )  # fmt: skip
        items, key = blind(conversations, mine, theirs, outcomes)
        scores["candidate"].details["human"] = {
            "items": len(items), "judge": spec.judge, "unparsed_verdicts": unparsed,
        }  # fmt: skip
        return items, key
