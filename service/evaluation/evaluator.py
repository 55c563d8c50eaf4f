"""The evaluation job: measure a candidate (an adapter version or the base model) and its
baseline, check the gates, promote, report.

The measurements (`measurements.py`) run on the serving engine (`engine.py`); the report (JSON
and HTML) goes into the job's directory, the scores into the quality gauges, and the job's
result gets the summary. Bad specs and data raise JobFailedError with a message that names the
field, file or line.
"""

import asyncio
import json
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.benchmarks import BenchmarkError
from eval.gates import check_gates
from eval.human import HumanReport, score_human
from eval.judges import JudgeUnreachableError
from eval.prompts import PromptSetError
from eval.report import REPORT_JSON
from eval.selection import Candidate, select
from eval.sources import contamination
from eval.spec import EvalSpec, EvalSpecError, parse_eval_spec
from service.adapters.manager import AdapterManager
from service.adapters.publish import checkpoints_name
from service.errors import AdapterdError
from service.evaluation.engine import EvaluationEngine, EvaluationLimits
from service.evaluation.export import export_scores
from service.evaluation.measurements import Measurements
from service.evaluation.report import add_ratings, gate_json, write_report, write_sheet
from service.evaluation.scores import (
    ScoreCache,
    Scores,
    checkpoint_losses,
    percentile,
    trainer_losses,
)
from service.inference.generation import Generator
from service.jobs.model import FeedKind, Job, JobFailedError, JobKind, JobResult, JobSpec
from service.jobs.runner import CONFIG_FILE, Emit
from service.metrics import AdapterLabels, Metrics
from service.store.base import WHOLE_FEED, Store
from service.uploads import UploadService
from trainer.contract import TrainerEvent
from trainer.layout import job_checkpoints


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
        self._adapters = adapters
        self._uploads = uploads
        self._store = store
        self._metrics = metrics
        self._labels = labels
        self._engine = EvaluationEngine(generator, tokenizer, limits)
        self._cache = ScoreCache()
        self._importing: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        """One import at a time per job in this process (a lock lives while it is in use)."""

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
        baseline = self._adapters.resolve(spec.baseline).ref if spec.baseline else ""
        # The uploads of the spec were the submitter's at submission; they never change.
        files = await self._uploads.client_files(None, spec, "evaluation")
        await self._engine.wait_ready()
        targets = await self._targets(job, spec, result, out_dir)
        run = Measurements(self._engine, self._cache, spec, files, emit)
        compared = [t.ref for t in targets] != [baseline]
        base = Scores()
        if compared:
            await self._sections(run, spec, "baseline", baseline, base)
        overlap = (
            await asyncio.to_thread(contamination, out_dir / CONFIG_FILE, spec, files)
            if training else {}
        )  # fmt: skip
        measured: list[tuple[_Target, Scores]] = []
        for target in targets:
            if spec.checkpoints:
                await emit(FeedKind.EVALUATION, {"phase": "candidate", "adapter": target.ref,
                                                 "step": target.step})  # fmt: skip
            own = Scores()
            await self._sections(run, spec, "candidate", target.ref, own)
            pair = {"candidate": own, "baseline": base}
            if spec.win_rate and compared:
                await run.win_rate(target.ref, baseline, spec.win_rate, pair)
            if spec.human and compared:  # one target: the spec refuses human with checkpoints
                items, key = await run.human(target.ref, baseline, spec.human, pair)
                title = f"{job.id}: two answers to each of {len(items)} conversations"
                await asyncio.to_thread(write_sheet, out_dir, items, key, title)
            if own.latencies:
                own.values["latency_p50_seconds"] = percentile(own.latencies, 50)
                own.values["latency_p95_seconds"] = percentile(own.latencies, 95)
            if training:
                own.values |= target.losses
                own.details["overlap"] = overlap
                own.values["overlap_rate"] = max((o["rate"] for o in overlap.values()), default=0.0)
            measured.append((target, own))
        (chosen, own), ranked = measured[0], []
        if spec.checkpoints:
            picked = select(
                [Candidate(t.ref, t.step or 0, s.values) for t, s in measured],
                spec.checkpoints.select_by,
                spec.checkpoints.goal,
            )
            chosen, own = next(m for m in measured if m[0].ref == picked.ref)
            ranked = [{"adapter_version": t.ref, "step": t.step, "scores": s.values,
                       "selected": t is chosen} for t, s in measured]  # fmt: skip
        scores = {"candidate": own, **({"baseline": base} if compared else {})}
        gates = check_gates(list(spec.gates), own.values, base.values if compared else {})
        passed = all(g.passed for g in gates)
        promotion = await self._promote(spec, chosen.ref, passed)
        awaiting = spec.awaits_ratings and compared
        if awaiting and spec.promote_alias:  # an import promotes only if nobody moved it since
            promotion["alias_at_end"] = self._adapters.alias_target(spec.promote_alias)
        report = {
            "job_id": job.id,
            "candidate": chosen.ref or "base",
            "baseline": baseline or "base",
            "finished": time.time(),
            "duration_seconds": time.monotonic() - began,
            "spec": spec.model_dump(mode="json"),
            "scores": {role: s.values for role, s in scores.items()},
            "stderr": {role: s.stderr for role, s in scores.items()},
            "details": {role: s.details for role, s in scores.items()},
            "gates": [gate_json(g) for g in gates],
            "passed": passed,
            "awaiting_ratings": awaiting,
            **promotion,
            **({"checkpoints": ranked} if ranked else {}),
            "loss_curve": await self._loss_curve(job.id) if training else [],
        }
        await asyncio.to_thread(write_report, out_dir, report)
        export_scores(self._metrics, self._labels, chosen.ref, own)
        summary = _summary(report)
        await emit(FeedKind.EVALUATION, {"phase": "done", **summary})
        return {"evaluation": summary}

    async def _sections(
        self, run: Measurements, spec: EvalSpec, role: str, ref: str, scores: Scores
    ) -> None:
        """The sections that measure one target alone (not win rate and human: pairs)."""
        sections = {"benchmarks": spec.benchmarks, "schema": spec.schema_adherence,
                    "tool_calls": spec.tool_calls, "safety": spec.safety,
                    "rubric": spec.rubric}  # fmt: skip
        for name, section in sections.items():
            if section is not None:
                await run.section(name, role, ref, section, scores)

    async def _targets(
        self, job: Job, spec: EvalSpec, result: JobResult, job_dir: Path
    ) -> list["_Target"]:
        """What the evaluation measures besides the baseline: an evaluation job's adapter; a
        training job's adapter with the trainer's losses, and with `checkpoints` every other
        checkpoint it keeps, registered (once) as versions of `<adapter_name>-ckpt`."""
        if job.kind is not JobKind.TRAIN:
            return [_Target(JobSpec.of(job).adapter, None, {})]
        targets = [_Target(result.adapter_version, result.adapter_step,
                           trainer_losses(result.metrics))]  # fmt: skip
        if not spec.checkpoints:
            return targets
        name = checkpoints_name(result.adapter_version.partition("@")[0])
        for path, summary in await asyncio.to_thread(job_checkpoints, job_dir):
            if summary.step == result.adapter_step:
                continue  # the adapter's own weights
            entry = await self._adapters.load_checkpoint(name, path, job_dir, job.id)
            targets.append(_Target(entry.ref, summary.step, checkpoint_losses(summary)))
        return sorted(targets, key=lambda t: t.step or 0)

    async def import_ratings(self, out_dir: Path, upload_id: str, ratings: Path) -> dict[str, Any]:
        """Takes in one upload of human ratings of a finished evaluation's sheet: scores every
        rating kept so far, checks the gates again with them, promotes when they all pass, and
        rewrites the report. Returns the evaluation's summary as it now stands.

        Raises:
            PromptSetError: a rating that does not fit the sheet, naming its line and field.
        """
        lock = self._importing.setdefault(out_dir.name, asyncio.Lock())
        async with lock:
            report = json.loads(await asyncio.to_thread((out_dir / REPORT_JSON).read_text))

            def scored() -> HumanReport:
                key, kept = add_ratings(out_dir, upload_id, ratings)
                return score_human(kept, key)

            human = await asyncio.to_thread(scored)
            own, base = human.values()
            scores = report["scores"]
            scores["candidate"] |= own
            scores["baseline"] |= base
            report["details"]["candidate"]["human"] |= human.to_json()
            spec = EvalSpec.model_validate(report["spec"])
            gates = check_gates(list(spec.gates), scores["candidate"], scores["baseline"])
            passed = all(g.passed for g in gates)
            candidate = "" if report["candidate"] == "base" else report["candidate"]
            report.pop("promotion_skipped", None)  # said of the last import, decided again now
            report |= {
                "gates": [gate_json(g) for g in gates],
                "passed": passed,
                "awaiting_ratings": False,
                **await self._promote_late(spec, candidate, passed, report),
            }
            await asyncio.to_thread(write_report, out_dir, report)
        export_scores(self._metrics, self._labels, candidate, Scores(values=own))
        return _summary(report)

    async def _promote_late(
        self, spec: EvalSpec, candidate: str, passed: bool, report: dict[str, Any]
    ) -> dict[str, Any]:
        """The promotion an import of ratings makes: once, and only while the alias still
        points where it did when the evaluation ended (a later evaluation may have moved it
        since: that one stands). A promotion made is never taken back by later ratings."""
        if report["promoted"] or not spec.promote_alias:
            return {}
        now = self._adapters.alias_target(spec.promote_alias)
        if passed and now != report.get("alias_at_end", ""):
            return {"promotion_skipped": f"{spec.promote_alias} moved to {now or 'nothing'} "
                    "after this evaluation ended"}  # fmt: skip
        return await self._promote(spec, candidate, passed)

    async def _promote(self, spec: EvalSpec, candidate: str, passed: bool) -> dict[str, Any]:
        if not spec.promote_alias:
            return {"promoted": False}
        if not passed:
            return {"promoted": False, "promote_alias": spec.promote_alias}
        await self._adapters.set_alias(spec.promote_alias, candidate)
        return {"promoted": True, "promote_alias": spec.promote_alias}

    async def _loss_curve(self, job_id: str) -> list[list[float]]:
        events = await self._store.events(job_id, 0, limit=WHOLE_FEED)
        return [
            [e.data["step"], e.data["loss"]]
            for e in events
            if e.kind == TrainerEvent.PROGRESS and "step" in e.data and "loss" in e.data
        ]


@dataclass(frozen=True)
class _Target:
    """One adapter version an evaluation measures as its candidate."""

    ref: str
    """"tenant/name@N"; "" for the base model."""
    step: int | None
    """A training job's: the steps its weights had."""
    losses: dict[str, float]
    """A training job's: the trainer's losses of those weights."""


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """A job result's evaluation summary from its report. Pure."""
    return {
        "passed": report["passed"],
        "awaiting_ratings": report["awaiting_ratings"],
        "promoted": report["promoted"],
        **({"promote_alias": report["promote_alias"]} if "promote_alias" in report else {}),
        "scores": report["scores"]["candidate"],
        "baseline_scores": report["scores"].get("baseline", {}),
        "failed_gates": [g["reason"] for g in report["gates"] if not g["passed"]],
        **({"selected": report["candidate"]} if "checkpoints" in report else {}),
    }
