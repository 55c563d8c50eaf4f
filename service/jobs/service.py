"""The jobs API as domain operations: datasets, submit, get, list, cancel, watch.

Tenancy: a user sees and touches only its tenant's jobs and datasets (anything else is
NOT_FOUND, so ids of other tenants are not even confirmed); an admin sees all. Rights on what a
job will change are checked at submission, not when it ends: a training job's `adapter_name`
and an evaluation's `promote_alias` must be in the caller's tenant, and the adapters it reads
(candidate, baseline, judge) ones the caller may see; they are stored qualified
(`tenant/name`), so the job runs with exactly what was checked. Raw server paths (`path`
sources, `task_dir`, `prompts`, `schema_file`) are for admins. A job spec is validated
completely at submission, into the trainer's own config (trainer.config), so a job that is
queued has a config the trainer accepts.
"""

import asyncio
import contextlib
import json
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError

from eval.benchmarks import BenchmarkError
from eval.human import HUMAN_DIR, SHEET_HTML, SHEET_JSONL
from eval.prompts import PromptSetError
from eval.report import REPORT_HTML, REPORT_JSON
from eval.sources import ClientFiles, check_sources
from eval.spec import EvalSpec, EvalSpecError, parse_eval_spec
from service.adapters.manager import AdapterManager, AdapterView
from service.adapters.publish import checkpoints_name, register_job_adapter
from service.adapters.registry import check_name, qualify
from service.auth import Principal
from service.authz import is_admin, qualify_read, qualify_write, visible_tenant
from service.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from service.evaluation import Evaluator
from service.jobs.model import Job, JobEvent, JobKind, JobSpec, JobState, spec_digest
from service.jobs.runner import CONFIG_FILE, Emit, JobRunner
from service.metrics import Metrics
from service.quotas import PerTenant
from service.store.base import MAX_ID_CHARS, JobPage, Store, could_be_issued, page_cursor
from service.uploads import UploadKind, UploadService
from trainer.config import (
    DataSpec,
    Method,
    TrainConfigError,
    describe_validation_error,
    load_config,
    warm_lora,
)
from trainer.layout import MANIFEST, PEFT_CONFIG, CheckpointSummary, job_checkpoints
from trainer.templates import MODEL, ChatTemplate

DATASET = UploadKind.DATASET
WATCH_POLL_SECONDS = 5.0
MAX_REQUEST_ID = 128


@dataclass(frozen=True)
class JobLimits:
    """What the server allows and where it keeps things."""

    adapter_root: Path
    """Finished jobs' adapters are installed under `jobs/<id>` here."""
    base_model_path: Path
    base_model_name: str
    max_lora_rank: int
    max_queued: int
    tenant_max_queued: int
    user_max_priority: int
    cancel_wait_seconds: float = 30.0
    """How long a cancel of an owned job waits for its owner to end it."""
    judge_urls: frozenset[str] = frozenset()
    """Names of the allowlisted judge servers."""
    chat_template: ChatTemplate = MODEL
    """The template the server renders chats with; jobs train under it."""


def _check_request(
    principal: Principal, request_id: str, priority: int, user_max_priority: int
) -> None:
    if len(request_id) > MAX_REQUEST_ID:
        raise InvalidArgumentError(f"request_id: longer than {MAX_REQUEST_ID} characters")
    if not -100 <= priority <= 100:
        raise InvalidArgumentError(f"priority: {priority} is outside -100..100")
    if priority > user_max_priority and not is_admin(principal):
        raise InvalidArgumentError(
            f"priority: {priority} is above {user_max_priority}, the highest a user may ask for "
            "(--user-max-priority)"
        )


def _check_checkpoints_name(adapter_name: str) -> None:
    """A job whose evaluation scores its checkpoints registers them as `<adapter_name>-ckpt`:
    that name must be valid too."""
    try:
        check_name(checkpoints_name(adapter_name), "train.adapter_name")
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(
            f"{exc} (train.evaluation.checkpoints registers the job's checkpoints as "
            f"{checkpoints_name('<adapter_name>')})"
        ) from None


def _prefixed(where: str, exc: Exception) -> str:
    return "; ".join(f"{where}: {p}" for p in str(exc).split("; "))


def _check_sources(
    spec: EvalSpec, files: ClientFiles, where: str, judge_urls: frozenset[str]
) -> None:
    """Every task and file of an evaluation loaded and checked. CPU and file work on client
    input: run it off the event loop."""
    try:
        check_sources(spec, files, judge_urls)
    except (EvalSpecError, BenchmarkError, PromptSetError) as exc:
        raise InvalidArgumentError(_prefixed(where, exc)) from None


class JobService:
    """Jobs and datasets over the store and the runner; the `JobHooks` of the serving
    replica's runner (it hears the runner's jobs change, registers their adapters into the
    engine and evaluates them)."""

    def __init__(
        self,
        *,
        store: Store,
        runner: JobRunner,
        adapters: AdapterManager,
        uploads: UploadService,
        evaluator: Evaluator,
        limits: JobLimits,
        metrics: Metrics,
        tokenizer: Any,
        watchers: PerTenant,
    ) -> None:
        self._watchers = watchers
        self._store = store
        self._runner = runner
        self._adapters = adapters
        self._uploads = uploads
        self._evaluator = evaluator
        self._limits = limits
        self._metrics = metrics
        self._tokenizer = tokenizer
        self._changes: dict[str, asyncio.Event] = {}

    # ---- datasets
    async def _files(
        self, principal: Principal, refs: list[dict[str, Any]], where: str
    ) -> list[dict[str, Any]]:
        """The trainer's `datasets` entries for the API's DatasetRefs under `where`."""
        files = []
        for i, ref in enumerate(refs):
            entry = {"path": await self._dataset_path(principal, ref, f"{where}.datasets[{i}]")}
            files.append(entry | {k: ref[k] for k in ("weight", "format", "columns") if k in ref})
        return files

    async def _dataset_path(self, principal: Principal, ref: dict[str, Any], where: str) -> str:
        if "dataset_id" in ref:
            field = f"{where}.dataset_id"
            return str(await self._uploads.path_of(principal, ref["dataset_id"], DATASET, field))
        if "path" in ref:
            return str(self._uploads.raw_path(principal, ref["path"], f"{where}.path"))
        raise InvalidArgumentError(f"{where}: give dataset_id or path")

    async def _evaluation(
        self, principal: Principal, fields: dict[str, Any], where: str, training: bool
    ) -> dict[str, Any]:
        """An evaluation spec checked for `principal` and normalized to its non-default fields,
        with every adapter it reads and the alias it may move qualified (`tenant/name`)."""
        try:
            spec = parse_eval_spec(fields, training=training)
        except EvalSpecError as exc:
            raise InvalidArgumentError(_prefixed(where, exc)) from None
        files = await self._uploads.client_files(principal, spec, where)
        await asyncio.to_thread(_check_sources, spec, files, where, self._limits.judge_urls)
        updates: dict[str, Any] = {}
        if spec.baseline:
            updates["baseline"] = self._adapters.find(principal, spec.baseline, f"{where}.baseline")
        for name, section in spec.judged().items():
            if section.judge == "llm" and section.judge_model:
                field = f"{where}.{name}.judge_model"
                judge = qualify_read(principal, section.judge_model, field)
                self._adapters.resolve(judge, field)  # it must exist and be ready now
                updates[name] = section.model_copy(update={"judge_model": judge})
        if spec.promote_alias:
            if not spec.gates:
                raise InvalidArgumentError(
                    f"{where}.promote_alias: a promotion must be earned; give at least one gate"
                )
            field = f"{where}.promote_alias"
            updates["promote_alias"] = qualify_write(principal, spec.promote_alias, field)
        spec = spec.model_copy(update=updates)
        return dict(spec.model_dump(mode="json", exclude_defaults=True))

    async def _data_section(self, principal: Principal, data: dict[str, Any]) -> dict[str, Any]:
        """The trainer's `data` config from the API's DataSettings (as a dict)."""
        section: dict[str, Any] = {
            k: v for k, v in data.items() if k not in ("datasets", "stages", "eval_dataset")
        }
        section["datasets"] = await self._files(principal, data.get("datasets", []), "data")
        if "stages" in data:
            section["stages"] = []
            for k, stage in enumerate(data["stages"]):
                where = f"data.stages[{k}]"
                files = await self._files(principal, stage.get("datasets", []), where)
                section["stages"].append({**stage, "datasets": files})
        if "eval_dataset" in data:
            section["eval_file"] = await self._dataset_path(
                principal, data["eval_dataset"], "data.eval_dataset"
            )
        return section

    async def validate(
        self, principal: Principal, data: dict[str, Any], method: str
    ) -> dict[str, Any]:
        """The trainer's data report for `data` as training `method` reads it ("" is "sft";
        no model is loaded)."""
        from trainer.data import DataRejectedError, preparer  # torch: load on first use

        methods: tuple[Method, ...] = get_args(Method)
        chosen = next((known for known in methods if known == (method or "sft")), None)
        if chosen is None:
            raise InvalidArgumentError(f"method: {method!r} is not one of {', '.join(methods)}")
        prepare = preparer(chosen)
        try:
            spec = DataSpec.model_validate(await self._data_section(principal, data))
        except ValidationError as exc:
            problems = describe_validation_error(exc)
            raise InvalidArgumentError("data." + "; data.".join(problems)) from None

        def report() -> dict[str, Any]:
            try:
                return dict(prepare(spec, self._tokenizer, 0).report.to_json())
            except DataRejectedError as exc:
                return dict(exc.report.to_json())

        return await asyncio.to_thread(report)

    # ---- jobs
    async def submit(
        self, principal: Principal, spec: dict[str, Any], request_id: str, priority: int
    ) -> Job:
        """Queues a training job (or returns the one this request id already made).

        Raises:
            InvalidArgumentError: naming the spec field; or a request id reused with another spec.
            ResourceExhaustedError: when the queue is full.
        """
        _check_request(principal, request_id, priority, self._limits.user_max_priority)
        if spec.get("adapter_name"):
            name = qualify_write(principal, spec["adapter_name"], "train.adapter_name")
            spec = {**spec, "adapter_name": name}
        if spec.get("from_adapter"):
            parent = self._adapters.find(principal, spec["from_adapter"], "train.from_adapter")
            spec = {**spec, "from_adapter": parent}
        if "evaluation" in spec:
            if not spec.get("adapter_name") or spec.get("validate_only"):
                raise InvalidArgumentError(
                    "train.evaluation: needs train.adapter_name (the adapter it evaluates) and "
                    "no validate_only"
                )
            evaluation = await self._evaluation(
                principal, spec["evaluation"], "train.evaluation", True
            )
            if "checkpoints" in evaluation:
                _check_checkpoints_name(spec["adapter_name"])
            spec = {**spec, "evaluation": evaluation}
        job_id = f"job-{uuid.uuid4().hex[:16]}"
        config = await self._train_config(principal, spec, self._runner.job_dir(job_id))
        return await self._enqueue(
            principal, job_id, JobKind.TRAIN, spec, request_id, priority, {CONFIG_FILE: config}
        )

    async def evaluate(
        self, principal: Principal, spec: dict[str, Any], request_id: str, priority: int
    ) -> Job:
        """Queues an evaluation of `spec["adapter"]` (resolved to its version now; "" is the
        base model), or returns the one this request id already made.

        Raises:
            InvalidArgumentError: naming the spec field; or a request id reused with another spec.
            NotFoundError: the adapter or the baseline is not registered.
            ResourceExhaustedError: when the queue is full.
        """
        _check_request(principal, request_id, priority, self._limits.user_max_priority)
        evaluation = await self._evaluation(
            principal, spec.get("evaluation", {}), "spec.evaluation", False
        )
        adapter = spec.get("adapter", "")
        ref = self._adapters.find(principal, adapter, "spec.adapter") if adapter else ""
        if evaluation.get("promote_alias") and not ref:
            raise InvalidArgumentError(
                "spec.evaluation.promote_alias: the base model cannot be promoted to an alias"
            )
        job_id = f"job-{uuid.uuid4().hex[:16]}"
        return await self._enqueue(
            principal, job_id, JobKind.EVALUATE, {"adapter": ref, "evaluation": evaluation},
            request_id, priority, {},
        )  # fmt: skip

    async def _enqueue(  # noqa: PLR0917 (one call per job kind, each with every argument)
        self,
        principal: Principal,
        job_id: str,
        kind: JobKind,
        spec: dict[str, Any],
        request_id: str,
        priority: int,
        files: dict[str, str],
    ) -> Job:
        """Stores a new queued job with `files` in its directory; with a known request id,
        returns that job instead (the same spec) or refuses (another spec)."""
        now = time.time()
        job = Job(
            id=job_id, tenant=principal.tenant, kind=kind, state=JobState.QUEUED, spec=spec,
            spec_digest=spec_digest(spec), request_id=request_id, priority=priority,
            created=now, updated=now,
        )  # fmt: skip
        counts = await self._store.count_jobs()
        queued = sum(counts.get((k, JobState.QUEUED), 0) for k in JobKind)
        if queued >= self._limits.max_queued:
            raise ResourceExhaustedError(
                f"the queue holds {queued} jobs, its cap (--max-queued-jobs); retry later"
            )
        mine = await self._store.count_queued(principal.tenant)
        if mine >= self._limits.tenant_max_queued:
            raise ResourceExhaustedError(
                f"tenant {principal.tenant!r} has {mine} queued jobs, its limit "
                "(--tenant-max-queued-jobs); retry when one starts"
            )
        directory = self._runner.job_dir(job_id)
        directory.mkdir(parents=True)
        for name, text in files.items():
            (directory / name).write_text(text)
        stored, created = await self._store.create_job(job)
        if not created:
            shutil.rmtree(directory, ignore_errors=True)
            if stored.spec_digest != job.spec_digest:
                raise InvalidArgumentError(
                    f"request_id: {request_id!r} was used for job {stored.id} with another spec"
                )
            return stored
        await self.on_change(stored)
        self._runner.notify()
        return stored

    async def report(self, principal: Principal, job_id: str) -> tuple[dict[str, Any], str]:
        """The evaluation report of a job: (JSON, HTML).

        Raises:
            NotFoundError: as `get`.
            FailedPreconditionError: the job has no report (yet, or it evaluates nothing).
        """
        job = await self.get(principal, job_id)
        directory = self._runner.job_dir(job.id)
        try:
            report = json.loads((directory / REPORT_JSON).read_text())
            html = (directory / REPORT_HTML).read_text()
        except FileNotFoundError:
            raise FailedPreconditionError(
                f"job {job_id} has no evaluation report ({job.state.value}"
                f"{'' if JobSpec.of(job).evaluation else ', and its spec has no evaluation'})"
            ) from None
        return report, html

    async def human_sheet(self, principal: Principal, job_id: str) -> tuple[str, str, int]:
        """The human evaluation sheet of a job: (JSONL, HTML, items).

        Raises:
            NotFoundError: as `get`.
            FailedPreconditionError: the job has no sheet (yet, or its spec has no human section).
        """
        job = await self._finished_evaluation(principal, job_id)
        directory = self._runner.job_dir(job.id) / HUMAN_DIR
        jsonl = await asyncio.to_thread((directory / SHEET_JSONL).read_text, encoding="utf-8")
        html = await asyncio.to_thread((directory / SHEET_HTML).read_text, encoding="utf-8")
        return jsonl, html, jsonl.count("\n")

    async def _finished_evaluation(self, principal: Principal, job_id: str) -> Job:
        """A job whose evaluation has ended with a human sheet and its report.

        Raises:
            NotFoundError: as `get`.
            FailedPreconditionError: the job has not succeeded, or wrote no sheet.
        """
        job = await self.get(principal, job_id)
        directory = self._runner.job_dir(job.id)
        written = job.state is JobState.SUCCEEDED and await asyncio.to_thread(
            lambda: (
                (directory / HUMAN_DIR / SHEET_JSONL).is_file()
                and (directory / REPORT_JSON).is_file()
            )
        )
        if not written:
            raise FailedPreconditionError(
                f"job {job_id} has no human evaluation sheet ({job.state.value}; an evaluation "
                "with a human section and a baseline other than the candidate writes one when "
                "it succeeds)"
            )
        return job

    async def import_ratings(
        self, principal: Principal, job_id: str, upload_id: str
    ) -> dict[str, Any]:
        """Imports the caller's ratings upload into the job's human evaluation; returns the
        evaluation's summary as it now stands (`Evaluator.import_ratings`).

        Raises:
            NotFoundError: as `get`, or an upload the caller may not use.
            FailedPreconditionError: the job has no sheet.
            InvalidArgumentError: a rating that does not fit the sheet, naming its line.
        """
        await self._finished_evaluation(principal, job_id)
        ratings = await self._uploads.path_of(
            principal, upload_id, UploadKind.HUMAN_RATINGS, "upload_id"
        )
        try:
            return await self._evaluator.import_ratings(
                self._runner.job_dir(job_id), upload_id, ratings
            )
        except PromptSetError as exc:
            raise InvalidArgumentError(f"upload_id: {exc}") from None

    async def _train_config(
        self, principal: Principal, spec: dict[str, Any], directory: Path
    ) -> str:
        """The trainer config (JSON) of a spec, validated by the trainer's own model."""
        limits = self._limits
        config = {
            "base_model": str(limits.base_model_path),
            "base_model_name": limits.base_model_name,
            "chat_template": limits.chat_template,
            "output_dir": str(directory),
            "data": await self._data_section(principal, spec.get("data", {})),
            "serving_max_lora_rank": limits.max_lora_rank,
            "validate_only": spec.get("validate_only", False),
        }
        config |= {k: spec[k] for k in ("lora", "quantization", "training") if k in spec}
        if spec.get("from_adapter"):
            config |= await self._warm_start(spec["from_adapter"], spec.get("lora"))
        try:
            return load_config(config).model_dump_json()
        except TrainConfigError as exc:
            raise InvalidArgumentError(f"train: {exc}") from None

    async def _warm_start(self, ref: str, lora: dict[str, Any] | None) -> dict[str, Any]:
        """The trainer config's `init_adapter` and `lora` for a job that goes on training the
        version `ref` (qualified and resolved at submission).

        Raises:
            InvalidArgumentError: a lora setting that differs from the parent's shape, named.
        """
        parent = self._adapters.resolve(ref, "train.from_adapter")
        try:
            saved, recorded = await asyncio.to_thread(_lora_of, parent.path)
        except (OSError, ValueError) as exc:
            raise FailedPreconditionError(
                f"train.from_adapter: {parent.ref}'s adapter_config.json cannot be read ({exc})"
            ) from None
        try:
            shape = warm_lora(lora, saved, parent.ref, recorded)
        except TrainConfigError as exc:
            raise InvalidArgumentError(f"train: {exc}") from None
        init = {"path": str(parent.path), "ref": parent.ref, "sha256": parent.sha256}
        return {"lora": shape, "init_adapter": init}

    async def get(self, principal: Principal, job_id: str) -> Job:
        """The job, if the caller may see it.

        Raises:
            NotFoundError: no such job, or another tenant's.
        """
        job = await self._store.get_job(job_id) if could_be_issued(job_id) else None
        tenant = visible_tenant(principal)
        if job is None or (tenant is not None and job.tenant != tenant):
            raise NotFoundError(f"job_id: no job {job_id[:MAX_ID_CHARS]!r}")
        return job

    async def list(
        self,
        principal: Principal,
        states: Iterable[JobState],
        kinds: Iterable[JobKind],
        page_size: int,
        page_token: str,
    ) -> JobPage:
        """A page of the jobs the caller may see."""
        if not 0 <= page_size <= 500:
            raise InvalidArgumentError(f"page_size: {page_size} is outside 0..500")
        return await self._store.list_jobs(
            visible_tenant(principal), states, kinds, page_size or 50, page_cursor(page_token)
        )

    async def cancel(self, principal: Principal, job_id: str) -> Job:
        """Cancels a job that has not ended: a waiting one at once; an owned one through its
        owner, which stops its work and ends it. Returns the job once it ended, or as it is
        after `JobLimits.cancel_wait_seconds` (still owned, `cancel_requested` set).

        Raises:
            NotFoundError: as `get`.
            FailedPreconditionError: when the job has ended already.
        """
        job = await self.get(principal, job_id)
        job = await self._store.request_cancel(job.id)
        if not job.state.owned:
            await self.on_change(job)
            return job
        self._runner.cancel(job)
        deadline = time.monotonic() + self._limits.cancel_wait_seconds
        while True:
            changed = self._changes.setdefault(job_id, asyncio.Event())
            job = await self.get(principal, job_id)  # after the wake-up it may miss
            left = deadline - time.monotonic()
            if job.state.terminal or left <= 0:
                return job
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(left, WATCH_POLL_SECONDS))

    async def watch(
        self, principal: Principal, job_id: str, after_seq: int
    ) -> AsyncIterator[JobEvent]:
        """The job's events after `after_seq`, then live ones; ends when the job has ended.

        Raises:
            NotFoundError: as `get`.
            ResourceExhaustedError: past the tenant's open streams (--tenant-max-watch-streams).
        """
        await self.get(principal, job_id)
        if after_seq < 0:
            raise InvalidArgumentError(f"after_seq: {after_seq} is negative")
        with self._watchers.hold(principal.tenant):
            async for event in self._follow(job_id, after_seq):
                yield event

    async def _follow(self, job_id: str, after_seq: int) -> AsyncIterator[JobEvent]:
        cursor = after_seq
        while True:
            changed = self._changes.setdefault(job_id, asyncio.Event())
            # The job before its events: a job read as final has every event it will ever
            # have stored already, so the read that follows sees them all.
            job = await self._store.get_job(job_id)
            events = await self._store.events(job_id, cursor)
            for event in events:
                yield event
                cursor = event.seq
            if events:
                continue
            if job is not None and job.state.terminal:
                return
            with contextlib.suppress(TimeoutError):  # a missed wake-up costs one poll
                await asyncio.wait_for(changed.wait(), WATCH_POLL_SECONDS)

    # ---- checkpoints
    async def checkpoints(self, principal: Principal, job_id: str) -> tuple[CheckpointSummary, ...]:
        """The checkpoints the job keeps, oldest first (`trainer.layout.job_checkpoints`).

        Raises:
            NotFoundError: as `get`.
        """
        job = await self.get(principal, job_id)
        found = await asyncio.to_thread(job_checkpoints, self._runner.job_dir(job.id))
        return tuple(summary for _, summary in found)

    async def register_checkpoint(
        self, principal: Principal, job_id: str, step: int, name: str
    ) -> AdapterView:
        """Registers the job's checkpoint after `step` as the next version of `name`
        (`[tenant/]name`, a bare name in the job's tenant; empty: `<adapter_name>-ckpt`),
        installed once under the adapter root and loaded in the engine; a checkpoint
        registered under that name before is that version again.

        Raises:
            InvalidArgumentError: a bad step or name, no name for a job that names none, or a
                checkpoint the adapter checks refuse.
            NotFoundError: as `get`, or a step the job does not keep.
            PermissionDeniedError: a tenant the caller may not change.
            ResourceExhaustedError: the engine's cache is full of held adapters.
        """
        job = await self.get(principal, job_id)
        if step < 1:
            raise InvalidArgumentError(f"step: {step} is no step; steps count from 1")
        if not name:
            if not (adapter_name := JobSpec.of(job).adapter_name):
                raise InvalidArgumentError(f"name: job {job.id} registers no adapter; give a name")
            name = checkpoints_name(adapter_name)
        qualified = qualify_write(principal, qualify(name, job.tenant, "name"), "name")
        directory = self._runner.job_dir(job.id)
        kept = {s.step: p for p, s in await asyncio.to_thread(job_checkpoints, directory)}
        if step not in kept:
            steps = f"it keeps steps {', '.join(map(str, kept))}" if kept else "it has none yet"
            raise NotFoundError(f"step: job {job.id} keeps no checkpoint at step {step}; {steps}")
        try:
            entry = await self._adapters.load_checkpoint(qualified, kept[step], directory, job.id)
        except FileNotFoundError:  # pruned by the running trainer meanwhile
            raise NotFoundError(
                f"step: job {job.id} pruned its checkpoint at step {step} as it was being "
                "registered (its retention: training.keep_checkpoints)"
            ) from None
        return self._adapters.view(entry.ref)

    # ---- hooks of the runner
    def wake(self, job_id: str) -> None:
        """Wakes the job's watchers: it has new events ("": every job's watchers)."""
        for waiting in [self._changes.pop(job_id, None)] if job_id else self._changes.values():
            if waiting is not None:
                waiting.set()
        if not job_id:
            self._changes.clear()

    async def on_change(self, job: Job) -> None:
        """A job changed state: wakes its watchers and refreshes the job gauges."""
        self.wake(job.id)
        counts = await self._store.count_jobs()
        for kind in JobKind:
            for state in JobState:
                self._metrics.jobs.labels(kind.value, state.value).set(counts.get((kind, state), 0))

    async def on_success(self, job: Job) -> dict[str, Any]:
        """Registers the adapter of a finished job, into the engine, when its spec names one."""

        async def load(name: str, path: str) -> str:
            return (await self._adapters.load(name, path, pin=False)).ref

        directory, root = self._runner.job_dir(job.id), self._limits.adapter_root
        return await register_job_adapter(job, directory, root, load)

    async def on_evaluate(self, job: Job, emit: Emit) -> dict[str, Any]:
        """Evaluates a job's target on this replica's engine."""
        await self._adapters.refresh()  # the candidate may be a version a worker published
        return await self._evaluator.evaluate(job, emit, self._runner.job_dir(job.id))


def _lora_of(adapter: Path) -> tuple[dict[str, Any], object]:
    """An adapter version's saved peft config, and the target_modules its own job asked for
    (from its manifest: None when it has none, as an adapter trained elsewhere)."""
    saved = json.loads((adapter / PEFT_CONFIG).read_text(encoding="utf-8"))
    try:
        manifest = json.loads((adapter / MANIFEST).read_text(encoding="utf-8"))
        recorded = manifest["config"]["lora"]["target_modules"]
    except (OSError, ValueError, KeyError, TypeError):
        recorded = None
    return dict(saved), recorded
