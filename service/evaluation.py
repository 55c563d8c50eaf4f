"""Evaluations on the serving engine: benchmarks, schema adherence and win rate of a candidate
(an adapter version or the base model) against a baseline, then the gates and the promotion.

Everything goes through `Generator.complete`: the warm engine, the adapter hot-loaded by a lease,
after client traffic in the engine's queue, at most `concurrency` requests at a time. lm-eval runs
in a worker thread; its `LM` (eval.lm.EngineLM) hands each batch back to the event loop. The
report (JSON and HTML) goes into the job's directory, the scores into the quality gauges, and the
job's result gets the summary. Bad specs and data raise JobFailedError with a message that names the
field, file or line.
"""

import asyncio
import concurrent.futures
import json
import math
import statistics
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from eval.benchmarks import BUNDLED_TASKS, BenchmarkError, TaskScore, run_tasks
from eval.gates import GateResult, Metric, check_gates, metric_key
from eval.judges import (
    JUDGE_MAX_TOKENS,
    VERDICT_SCHEMA,
    Judge,
    JudgeUnreachableError,
    LlmJudge,
    Pair,
    ReferenceJudge,
    remote_ask,
)
from eval.lm import EngineCall, EngineLM, EngineReply
from eval.prompts import PromptSetError
from eval.report import REPORT_HTML, REPORT_JSON, render_html
from eval.schema import score_outputs
from eval.sources import ClientFiles, contamination, schema_set, task_configs, win_rate_set
from eval.spec import EvalSpec, EvalSpecError, WinRateSpec, parse_eval_spec
from eval.winrate import combine, win_rate
from service.adapters.manager import AdapterManager
from service.errors import AdapterdError, InvalidArgumentError
from service.inference.engine import EngineState, Sampling
from service.inference.generation import Generator
from service.jobs.model import FeedKind, Job, JobFailedError, JobKind, JobResult, JobSpec
from service.jobs.runner import CONFIG_FILE, Emit
from service.metrics import AdapterLabels, Metrics
from service.store.base import Store
from service.uploads import UploadService
from trainer.contract import TrainerEvent
from trainer.files import write_atomic

PROGRESS_SECONDS = 2.0
READY_WAIT_SECONDS = 600.0
SAMPLES = 5
CACHE_ENTRIES = 64
BUNDLED_TASK_NAMES = frozenset(p.stem for p in BUNDLED_TASKS.glob("*.yaml"))
COMMON_TASK_METRICS = frozenset(
    {"acc", "acc_norm", "exact_match", "f1", "mcc", "bleu", "perplexity", "word_perplexity"}
)


@dataclass(frozen=True)
class EvaluationLimits:
    """How much of the engine evaluations may use, and the judges they may call."""

    concurrency: int
    """Engine requests in flight per evaluation."""
    max_model_len: int
    judge_urls: dict[str, str] = field(default_factory=dict)
    """The allowlist of OpenAI-compatible judges: name -> base URL."""
    judge_api_key: str | None = None


def task_labels(task: str, metric: str) -> tuple[str, str]:
    """The bounded (task, metric) labels of a benchmark score. Pure."""
    if task in BUNDLED_TASK_NAMES:
        return task, metric
    metric = metric.partition(",")[0]
    return "other", metric if metric in COMMON_TASK_METRICS else "other"


@dataclass
class _Scores:
    """What one target measured: gate-readable values and the report's details."""

    values: dict[str, float] = field(default_factory=dict)
    stderr: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)

    def add(self, part: "_Scores") -> None:
        """Takes in one section's measurements."""
        self.values |= part.values
        self.stderr |= part.stderr
        self.details |= part.details
        self.latencies += part.latencies


class _Cache:
    """Measurements of one section of one adapter version on bundled data, kept for later
    evaluations: versions never change and decoding is greedy, so the same section measures
    the same again (the baseline, above all, is measured once, not once per candidate)."""

    def __init__(self, size: int = CACHE_ENTRIES) -> None:
        self._size = size
        self._entries: OrderedDict[tuple[str, str, str], _Scores] = OrderedDict()

    @staticmethod
    def key(section: str, ref: str, spec: BaseModel) -> tuple[str, str, str] | None:
        """None when the section reads files by a server path (which may change); uploads
        never change, so their ids are part of the key."""
        if getattr(spec, "task_dir", "") or getattr(spec, "prompts", ""):
            return None
        return section, ref, spec.model_dump_json()

    def get(self, key: tuple[str, str, str] | None) -> _Scores | None:
        if key is None or key not in self._entries:
            return None
        self._entries.move_to_end(key)
        return self._entries[key]

    def put(self, key: tuple[str, str, str] | None, part: _Scores) -> None:
        if key is None:
            return
        self._entries[key] = part
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)


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


class Evaluator:
    """Runs an evaluation job's measurements and decides its gates."""

    def __init__(
        self,
        *,
        generator: Generator,
        adapters: AdapterManager,
        uploads: UploadService,
        store: Store,
        tokenizer: Any,
        metrics: Metrics,
        labels: AdapterLabels,
        limits: EvaluationLimits,
    ) -> None:
        self._generator = generator
        self._adapters = adapters
        self._uploads = uploads
        self._store = store
        self._tokenizer = tokenizer
        self._metrics = metrics
        self._labels = labels
        self._limits = limits
        self._slots = asyncio.Semaphore(limits.concurrency)
        self.cache = _Cache()

    async def evaluate(self, job: Job, emit: Emit, out_dir: Path) -> dict[str, Any]:
        """Measures the job's candidate and baseline, checks the gates, promotes, reports.

        Returns the job's result additions ("evaluation": the summary).

        Raises:
            JobFailedError: a spec, task, prompt set or adapter that cannot be evaluated.
        """
        began = time.monotonic()
        try:
            result = await self._evaluate(job, emit, out_dir, began)
        except (
            EvalSpecError, BenchmarkError, PromptSetError, AdapterdError, ValueError,
            JudgeUnreachableError,
        ) as exc:  # fmt: skip
            self._metrics.evaluation_duration.labels("failed").observe(time.monotonic() - began)
            raise JobFailedError("evaluation_failed", str(exc)) from exc
        self._metrics.evaluation_duration.labels("succeeded").observe(time.monotonic() - began)
        return result

    async def _evaluate(self, job: Job, emit: Emit, out_dir: Path, began: float) -> dict[str, Any]:
        training = job.kind is JobKind.TRAIN
        asked, result = JobSpec.of(job), JobResult.of(job)
        spec = parse_eval_spec(asked.evaluation or {}, training=training)
        candidate = result.adapter_version if training else asked.adapter
        baseline = self._adapters.resolve(spec.baseline).ref if spec.baseline else ""
        # The uploads of the spec were the submitter's at submission; they never change.
        files = await self._uploads.client_files(None, spec, "evaluation")
        await self._wait_ready()
        run = _Run(self, spec, files, emit)
        targets = {"candidate": candidate, "baseline": baseline}
        if candidate == baseline:
            del targets["baseline"]
        scores = {role: _Scores() for role in targets}
        for role, ref in targets.items():
            if spec.benchmarks:
                await run.section("benchmarks", role, ref, spec.benchmarks, scores[role])
            if spec.schema_adherence:
                await run.section("schema", role, ref, spec.schema_adherence, scores[role])
        if spec.win_rate and "baseline" in targets:
            await run.win_rate(candidate, baseline, spec.win_rate, scores)
        own = scores["candidate"]
        if own.latencies:
            own.values["latency_p50_seconds"] = _percentile(own.latencies, 50)
            own.values["latency_p95_seconds"] = _percentile(own.latencies, 95)
        if training:
            own.values |= trainer_losses(result.metrics)
            own.details["overlap"] = await asyncio.to_thread(
                contamination, out_dir / CONFIG_FILE, spec, files
            )
            own.values["overlap_rate"] = max(
                (o["rate"] for o in own.details["overlap"].values()), default=0.0
            )
        base_values = scores["baseline"].values if "baseline" in scores else {}
        gates = check_gates(list(spec.gates), own.values, base_values)
        passed = all(g.passed for g in gates)
        promotion = await self._promote(spec, candidate, passed)
        report = {
            "job_id": job.id,
            "candidate": candidate or "base",
            "baseline": baseline or "base",
            "finished": time.time(),
            "duration_seconds": time.monotonic() - began,
            "spec": spec.model_dump(mode="json"),
            "scores": {role: s.values for role, s in scores.items()},
            "stderr": {role: s.stderr for role, s in scores.items()},
            "details": {role: s.details for role, s in scores.items()},
            "gates": [_gate_json(g) for g in gates],
            "passed": passed,
            **promotion,
            "loss_curve": await self._loss_curve(job.id) if training else [],
        }
        await asyncio.to_thread(_write_report, out_dir, report)
        self._export(candidate, own)
        summary = {
            "passed": passed,
            **promotion,
            "scores": own.values,
            "baseline_scores": base_values,
            "failed_gates": [g["reason"] for g in report["gates"] if not g["passed"]],
        }
        await emit(FeedKind.EVALUATION, {"phase": "done", **summary})
        return {"evaluation": summary}

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_WAIT_SECONDS
        while not self._generator.ready():
            if self._generator.engine_state() is EngineState.FAILED:
                raise JobFailedError("engine_unavailable", "the inference engine has failed")
            if time.monotonic() > deadline:
                raise JobFailedError("engine_unavailable", "the inference engine did not get ready")
            await asyncio.sleep(1.0)

    async def _promote(self, spec: EvalSpec, candidate: str, passed: bool) -> dict[str, Any]:
        if not spec.promote_alias:
            return {"promoted": False}
        if not passed:
            return {"promoted": False, "promote_alias": spec.promote_alias}
        await self._adapters.set_alias(spec.promote_alias, candidate)
        return {"promoted": True, "promote_alias": spec.promote_alias}

    async def _loss_curve(self, job_id: str) -> list[list[float]]:
        events = await self._store.events(job_id, 0, limit=1_000_000)
        return [
            [e.data["step"], e.data["loss"]]
            for e in events
            if e.kind == TrainerEvent.PROGRESS and "step" in e.data and "loss" in e.data
        ]

    def _export(self, candidate: str, scores: _Scores) -> None:
        label = self._labels.of(candidate.partition("@")[0])
        for key, value in scores.values.items():
            if key.startswith("task:"):
                task, _, metric = key.removeprefix("task:").partition("/")
                self._metrics.eval_task_score.labels(label, *task_labels(task, metric)).set(value)
            elif key.startswith(("schema_", "win_rate")):
                self._metrics.eval_quality.labels(label, key).set(value)
        self._metrics.eval_timestamp.labels(label).set(time.time())

    # ---- the engine, for the measurements
    async def call(self, adapter: str, call: EngineCall) -> EngineReply:
        """One engine request within the evaluation's concurrency."""
        async with self._slots:
            done = await self._generator.complete(
                adapter,
                call.prompt_ids,
                Sampling(max_tokens=call.max_tokens, stop=call.stop),
                prompt_logprobs=call.prompt_logprobs,
            )
        return EngineReply(done.text, tuple((p.logprob, p.is_top) for p in done.prompt_logprobs))

    async def answer(
        self, adapter: str, prompt: str, max_tokens: int, schema: dict[str, Any] | None = None
    ) -> tuple[str, float]:
        """The adapter's answer to a one-turn chat, and how long it took."""
        try:
            ids = self._generator.chat_prompt_ids([{"role": "user", "content": prompt}], max_tokens)
        except InvalidArgumentError as exc:
            raise JobFailedError("evaluation_failed", f"{exc}: {prompt[:80]!r}") from None
        began = time.monotonic()
        async with self._slots:
            done = await self._generator.complete(
                adapter, ids, Sampling(max_tokens=max_tokens), json_schema=schema
            )
        return done.text, time.monotonic() - began

    @property
    def limits(self) -> EvaluationLimits:
        return self._limits

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def max_model_len(self) -> int:
        return self._limits.max_model_len


class _Run:
    """The measurements of one evaluation, with its progress events."""

    def __init__(
        self, evaluator: Evaluator, spec: EvalSpec, files: ClientFiles, emit: Emit
    ) -> None:
        self._evaluator = evaluator
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
        self, name: str, role: str, adapter: str, spec: BaseModel, scores: _Scores
    ) -> None:
        """Measures one section ("benchmarks" or "schema") of `adapter`, or takes it from the
        cache."""
        key = _Cache.key(name, adapter, spec)
        part = self._evaluator.cache.get(key)
        cached = part is not None
        if part is None:
            measure = self._benchmarks if name == "benchmarks" else self._schema
            part = await measure(role, adapter)
            self._evaluator.cache.put(key, part)
        scores.add(part)
        prefix = "task:" if name == "benchmarks" else "schema_"
        await self._emit(
            FeedKind.EVALUATION,
            {"phase": name, "target": role, "cached": cached, "scores": _only(part.values, prefix)},
        )

    async def _benchmarks(self, role: str, adapter: str) -> _Scores:
        spec = self._spec.benchmarks
        assert spec is not None
        configs = task_configs(self._spec, self._files)
        loop = asyncio.get_running_loop()
        bridge = _Bridge(loop)

        def batch(calls: Sequence[EngineCall]) -> list[EngineReply]:
            jobs = [self._evaluator.call(adapter, c) for c in calls]
            return bridge.run(lambda: self._gather("benchmarks", role, jobs))

        lm = EngineLM(
            batch, self._evaluator.tokenizer, self._evaluator.max_model_len, adapter or "base"
        )
        try:
            results = await asyncio.to_thread(
                run_tasks, lm, configs, limit=spec.limit, num_fewshot=spec.num_fewshot,
                seed=spec.seed, chat_template=spec.chat_template,
            )  # fmt: skip
        except asyncio.CancelledError:
            bridge.cancel()
            raise
        part = _Scores(details={"benchmarks": [vars(s) for s in results]})
        for score in results:
            key = metric_key_of(score)
            part.values[key] = score.value
            if score.stderr is not None:
                part.stderr[key] = score.stderr
        return part

    async def _schema(self, role: str, adapter: str) -> _Scores:
        spec = self._spec.schema_adherence
        assert spec is not None
        rows, schema = schema_set(spec, self._files)
        part, details = _Scores(), {}
        for constrained in (False, True):
            phase = "schema_constrained" if constrained else "schema"
            answers = await self._gather(
                phase,
                role,
                [
                    self._evaluator.answer(
                        adapter, r["prompt"], spec.max_tokens, schema if constrained else None
                    )
                    for r in rows
                ],
            )
            report = score_outputs([text for text, _ in answers], schema)
            details["constrained" if constrained else "unconstrained"] = report.to_json()
            if not constrained:
                part.latencies += [seconds for _, seconds in answers]
                part.values["schema_valid_rate"] = report.valid_rate
                part.values["schema_parse_rate"] = report.parse_rate
            else:
                part.values["schema_valid_rate_constrained"] = report.valid_rate
        part.details["schema_adherence"] = details
        return part

    async def win_rate(
        self, candidate: str, baseline: str, spec: WinRateSpec, scores: dict[str, _Scores]
    ) -> None:
        rows = win_rate_set(spec, self._files)
        answers = {}
        for role, adapter in (("candidate", candidate), ("baseline", baseline)):
            key = _Cache.key("answers", adapter, spec)
            part = self._evaluator.cache.get(key)
            if part is None:
                replies = await self._gather(
                    "win_rate_answers",
                    role,
                    [self._evaluator.answer(adapter, r["prompt"], spec.max_tokens) for r in rows],
                )
                part = _Scores(latencies=[seconds for _, seconds in replies])
                part.details["answers"] = [text for text, _ in replies]
                self._evaluator.cache.put(key, part)
            answers[role] = part.details["answers"]
            scores[role].latencies += part.latencies
        judge = self._judge(spec)
        shown = []
        for row, mine, theirs in zip(rows, answers["candidate"], answers["baseline"], strict=True):
            shown.append(Pair(row["prompt"], row["reference"], mine, theirs))
            shown.append(Pair(row["prompt"], row["reference"], theirs, mine))
        verdicts = await judge.judge(shown)
        outcomes = [combine(verdicts[i], verdicts[i + 1]) for i in range(0, len(verdicts), 2)]
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
            "unparsed_verdicts": sum(v.value == "invalid" for v in verdicts),
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
            {"phase": "win_rate", "target": "candidate", "scores": _only(own.values, "win")},
        )

    def _judge(self, spec: WinRateSpec) -> Judge:
        if spec.judge == "reference":
            return ReferenceJudge()
        if spec.judge == "url":
            limits = self._evaluator.limits
            url = limits.judge_urls[spec.judge_url]
            remote = remote_ask(spec.judge_url, url, spec.judge_model, limits.judge_api_key)
            return LlmJudge(remote, spec.judge_prompt)

        async def served(message: str) -> str:
            text, _ = await self._evaluator.answer(
                spec.judge_model, message, JUDGE_MAX_TOKENS, schema=VERDICT_SCHEMA
            )
            return text

        return LlmJudge(served, spec.judge_prompt)


def metric_key_of(score: TaskScore) -> str:
    """The gate key of a benchmark score: "task:<task>/<metric>"."""
    return metric_key(Metric.TASK, score.task, score.metric)


def _gate_json(result: GateResult) -> dict[str, Any]:
    gate = result.gate
    return {
        "metric": gate.key,
        **({"compare_to": gate.compare_to.key} if gate.compare_to else {}),
        "comparator": gate.comparator.value,
        "value": result.value,
        "bound": result.bound,
        "passed": result.passed,
        "reason": result.reason,
    }


def _only(values: dict[str, float], prefix: str) -> dict[str, float]:
    return {k: v for k, v in values.items() if k.startswith(prefix)}


def _percentile(values: list[float], percent: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]


def trainer_losses(metrics: dict[str, Any]) -> dict[str, float]:
    """train_loss (mean over the last epoch), the eval loss of the adapter that was kept and
    its perplexity, from the trainer's final metrics."""
    kept = "best_eval_loss" if metrics.get("selected") == "best" else "final_eval_loss"
    losses = {
        key: float(metrics[source])
        for key, source in (("train_loss", "train_loss"), ("eval_loss", kept))
        if isinstance(metrics.get(source), int | float)
    }
    if "eval_loss" in losses:
        losses["eval_perplexity"] = math.exp(losses["eval_loss"])
    return losses


def _write_report(out_dir: Path, report: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / REPORT_JSON, json.dumps(report, indent=2, default=str))
    write_atomic(out_dir / REPORT_HTML, render_html(report))
