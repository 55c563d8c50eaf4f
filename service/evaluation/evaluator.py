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
from pathlib import Path
from typing import Any

from eval.benchmarks import BenchmarkError
from eval.gates import check_gates
from eval.human import HumanReport, score_human
from eval.judges import JudgeUnreachableError
from eval.prompts import PromptSetError
from eval.report import REPORT_JSON
from eval.sources import contamination
from eval.spec import EvalSpec, EvalSpecError, parse_eval_spec
from service.adapters.manager import AdapterManager
from service.errors import AdapterdError
from service.evaluation.engine import EvaluationEngine, EvaluationLimits
from service.evaluation.export import export_scores
from service.evaluation.measurements import Measurements
from service.evaluation.report import add_ratings, gate_json, write_report, write_sheet
from service.evaluation.scores import ScoreCache, Scores, percentile, trainer_losses
from service.inference.generation import Generator
from service.jobs.model import FeedKind, Job, JobFailedError, JobKind, JobResult, JobSpec
from service.jobs.runner import CONFIG_FILE, Emit
from service.metrics import AdapterLabels, Metrics
from service.store.base import WHOLE_FEED, Store
from service.uploads import UploadService
from trainer.contract import TrainerEvent


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
        candidate = result.adapter_version if training else asked.adapter
        baseline = self._adapters.resolve(spec.baseline).ref if spec.baseline else ""
        # The uploads of the spec were the submitter's at submission; they never change.
        files = await self._uploads.client_files(None, spec, "evaluation")
        await self._engine.wait_ready()
        run = Measurements(self._engine, self._cache, spec, files, emit)
        targets = {"candidate": candidate, "baseline": baseline}
        if candidate == baseline:
            del targets["baseline"]
        scores = {role: Scores() for role in targets}
        sections = {"benchmarks": spec.benchmarks, "schema": spec.schema_adherence,
                    "safety": spec.safety, "rubric": spec.rubric}  # fmt: skip
        for role, ref in targets.items():
            for name, section in sections.items():
                if section is not None:
                    await run.section(name, role, ref, section, scores[role])
        if spec.win_rate and "baseline" in targets:
            await run.win_rate(candidate, baseline, spec.win_rate, scores)
        if spec.human and "baseline" in targets:
            items, key = await run.human(candidate, baseline, spec.human, scores)
            title = f"{job.id}: two answers to each of {len(items)} conversations"
            await asyncio.to_thread(write_sheet, out_dir, items, key, title)
        own = scores["candidate"]
        if own.latencies:
            own.values["latency_p50_seconds"] = percentile(own.latencies, 50)
            own.values["latency_p95_seconds"] = percentile(own.latencies, 95)
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
        awaiting = spec.awaits_ratings and "baseline" in targets
        if awaiting and spec.promote_alias:  # an import promotes only if nobody moved it since
            promotion["alias_at_end"] = self._adapters.alias_target(spec.promote_alias)
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
            "gates": [gate_json(g) for g in gates],
            "passed": passed,
            "awaiting_ratings": awaiting,
            **promotion,
            "loss_curve": await self._loss_curve(job.id) if training else [],
        }
        await asyncio.to_thread(write_report, out_dir, report)
        export_scores(self._metrics, self._labels, candidate, own)
        summary = _summary(report)
        await emit(FeedKind.EVALUATION, {"phase": "done", **summary})
        return {"evaluation": summary}

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
    }
