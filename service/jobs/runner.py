"""Runs waiting jobs, one at a time: the trainer as a subprocess, its events into the store;
evaluations in the server process, on its engine (`JobHooks.on_evaluate`).

The runner claims a job under a lease (`Store.claim_job`), renews it while the job runs (every
third of `lease_seconds`) and writes the job only with that lease: when the lease was lost (a
stall past its end let another process's sweep requeue the job) the runner stops the job's work
and writes nothing more. Before each claim it sweeps expired leases, so a dead process's job
waits again once its lease has run out. A client's cancel of a job this runner owns reaches it
at once (`cancel`); one made through another process reaches it through the store (a
notification: `cancel_requested`, else its next renewal). The owner writes the end.

The trainer (`python -m trainer train`) runs in its own process group with a thread budget
(`--trainer-threads`), writes JSON-line events that are stored as the job's feed, and exits with
a code that says how it ended (`trainer.contract`). Cancelling sends SIGTERM to its group,
SIGKILL after the grace. On server shutdown the trainer gets SIGTERM, writes a checkpoint and
exits 75: the job returns to the queue and resumes from that checkpoint on the next claim. A
trainer whose server died notices (parent-death signal, see trainer.__main__) and does the same.
A training job whose spec asks for an evaluation registers its adapter and then evaluates it
(or, in a runner without `Work.EVALUATION`, waits in evaluation_pending for one that has an
engine); an `evaluate` job only evaluates. Cancelling or stopping an evaluation cancels its task.
"""

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import secrets
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psutil

from service.errors import FailedPreconditionError, UnavailableError
from service.jobs.model import (
    CANCELLED_MESSAGE,
    CANCELLED_REASON,
    OWNED,
    RETRYING,
    SERVICE_FEED_KINDS,
    FeedKind,
    Job,
    JobEvent,
    JobFailedError,
    JobResult,
    JobSpec,
    JobState,
    LeaseLostError,
    Work,
    crashed_runs,
    released_state,
)
from service.metrics import Metrics
from service.store.base import WHOLE_FEED, Store
from trainer.contract import (
    DEVICES_VARIABLE,
    FENCE_VARIABLE,
    PARENT_PID_VARIABLE,
    ExitCode,
    FailureReason,
    TrainerEvent,
)

logger = logging.getLogger(__name__)

CONFIG_FILE, LOG_FILE = "config.json", "trainer.log"
LOG_TAIL_LINES = 20
POLL_SECONDS = 0.2
STORE_RETRY_SECONDS = 1.0
"""How soon the queue is read again after the store was unreachable."""
QUEUE_POLL_SECONDS = 2.0
"""How often an idle runner sweeps and looks for work it was not told of (a job submitted
through another process, or released by a sweep)."""


def owner_id() -> str:
    """This process's name as a job owner: host, pid and a random part (a restarted process
    with a reused pid is someone else)."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"


@dataclass(frozen=True)
class Outcome:
    """How a trainer run ended, for the job."""

    state: JobState
    reason: str = ""
    message: str = ""


def outcome(
    exit_code: int, failure: dict[str, Any] | None, log_tail: str, oom_killed: bool | None = None
) -> Outcome:
    """The job's state after its trainer exited with `exit_code`; `failure` is the trainer's
    own `failed` event, if it wrote one; `oom_killed` whether the kernel's OOM killer struck in
    the meantime (None: this machine does not tell). Pure."""
    if exit_code == ExitCode.OK:
        return Outcome(JobState.SUCCEEDED)
    if exit_code in (
        ExitCode.INTERRUPTED,
        -signal.SIGTERM,
    ):  # stopped: from its checkpoint, or before training
        return Outcome(JobState.QUEUED, "interrupted", "stopped by the server; resumes later")
    if failure is not None:
        message = redact_paths(str(failure.get("message")))
        return Outcome(JobState.FAILED, str(failure.get("reason")), message)
    if exit_code == ExitCode.CONFIG:
        return Outcome(JobState.FAILED, FailureReason.INVALID_CONFIG, log_tail)
    if exit_code in (-signal.SIGKILL, 137) and oom_killed is not False:
        certainty = "by" if oom_killed else "most likely by"
        return Outcome(
            JobState.FAILED,
            FailureReason.OUT_OF_MEMORY,
            f"the trainer was killed (SIGKILL) {certainty} the kernel's OOM killer: lower "
            "training.batch_size or data.max_length, or use quantization.mode nf4",
        )
    return Outcome(
        JobState.FAILED, FailureReason.CRASHED, f"trainer exited with {exit_code}:\n{log_tail}"
    )


TRAINER_ENV_NAMES = frozenset(
    {"PATH", "HOME", "USER", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "PYTHONPATH",
     "VIRTUAL_ENV", "XDG_CACHE_HOME", "LD_LIBRARY_PATH"}
)  # fmt: skip
TRAINER_ENV_PREFIXES = (
    "HF_", "TRANSFORMERS_", "TOKENIZERS_", "CUDA_", "NVIDIA_", "OMP_", "MKL_", "KMP_",
    "OPENBLAS_", "PYTORCH_", "TORCH_", "BNB_",
)  # fmt: skip


def trainer_environment(
    environ: Mapping[str, str],
    threads: int,
    parent_pid: int,
    fence: int,
    devices: Sequence[str] | None = None,
) -> dict[str, str]:
    """The trainer's environment: an allowlist of the server's (locale, paths, the libraries'
    own switches), never its settings or secrets (no ADAPTERD_*, no judge API key, no tokens
    file), plus its thread budget, the parent it follows, the claim it runs under and, for a
    worker's slot, its accelerators (CUDA_VISIBLE_DEVICES). Pure."""
    kept = {
        k: v
        for k, v in environ.items()
        if k in TRAINER_ENV_NAMES or k.startswith(TRAINER_ENV_PREFIXES)
    }
    slot = {} if devices is None else {DEVICES_VARIABLE: ",".join(devices)}
    return (
        kept
        | slot
        | {
            "OMP_NUM_THREADS": str(threads),
            PARENT_PID_VARIABLE: str(parent_pid),
            FENCE_VARIABLE: str(fence),
        }
    )


def events_file(job_dir: Path, fence: int) -> Path:
    """The events file of the job's trainer under the claim `fence`: one per attempt, so lines
    a lost owner's trainer still writes never reach the next attempt's feed."""
    return job_dir / f"events-{fence:07d}.jsonl"


def earlier_events_file(job_dir: Path, fence: int) -> tuple[int, Path] | None:
    """The fence and events file of the latest attempt before `fence` that ran a trainer."""
    for earlier in range(fence - 1, 0, -1):  # claims are numbered from 1
        if (path := events_file(job_dir, earlier)).exists():
            return earlier, path
    return None


CGROUP_OOM_FILES = (
    Path("/sys/fs/cgroup/memory.events"),  # cgroup v2
    Path("/sys/fs/cgroup/memory/memory.oom_control"),  # cgroup v1
)


def oom_kills(files: tuple[Path, ...] = CGROUP_OOM_FILES) -> int | None:
    """The `oom_kill` counter of this container's memory cgroup, or None where there is none."""
    for path in files:
        with contextlib.suppress(OSError, ValueError):
            for line in path.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    return None


CANCELLED = Outcome(JobState.CANCELLED, CANCELLED_REASON, CANCELLED_MESSAGE)
"""How every job a client cancelled ends, whatever its trainer or evaluation did."""

RETRYABLE = frozenset({FailureReason.CRASHED})
"""Failures that may be the machine's rather than the job's; data, config, template and memory
failures would only repeat."""


def relative_paths(event: dict[str, Any], job_dir: Path) -> dict[str, Any]:
    """The trainer's event with the paths inside the job's directory made relative to it
    ("loss.png", "attempts/0000001/checkpoints/step-0000010"): clients see no absolute server
    paths. Pure."""
    prefix = f"{job_dir}/"
    return {
        key: value.removeprefix(prefix) if isinstance(value, str) else value
        for key, value in event.items()
    }


def retryable(result: Outcome) -> bool:
    """Whether `result` is a failure that another run might not repeat. Pure."""
    return result.state is JobState.FAILED and result.reason in RETRYABLE


def retry(result: Outcome, failures: int, max_attempts: int) -> Outcome:
    """`result`, or a requeue when it is a retryable failure and the job's runs have failed
    fewer than `max_attempts` times (`failures` counts this one). Pure."""
    if retryable(result) and failures < max_attempts:
        return Outcome(
            JobState.QUEUED, RETRYING, f"run {failures} of {max_attempts} failed: "
            f"{result.message.splitlines()[0] if result.message else result.reason}",
        )  # fmt: skip
    return result


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Sends `sig` to the process group led by `pid`, if it still exists."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    with contextlib.suppress(OSError):
        return redact_paths("\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
    return ""


_ABSOLUTE_PATH = re.compile(r"(?:/[^\s/:'\"]+)+/([^\s/:'\"]+)")


def redact_paths(text: str) -> str:
    """`text` with every absolute path cut to its last component (".../module.py"): a
    trainer's log tail goes to the client, the server's directories do not. Pure."""
    return _ABSOLUTE_PATH.sub(r".../\1", text)


class _EventTail:
    """Reads whole new lines of the trainer's events file."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = 0
        self._partial = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with self._path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]


Emit = Callable[[str, dict[str, Any]], Awaitable[None]]
"""Stores an event (kind, data) in the job's feed and wakes its watchers."""


class JobHooks(Protocol):
    """What a runner asks of the component that answers for its jobs: the job service of a
    serving replica, or a worker. Attached once (`JobRunner.attach`), before the runner starts."""

    async def on_change(self, job: Job) -> None:
        """Hears every state change of a job."""

    def wake(self, job_id: str) -> None:
        """Hears that a job has new events."""

    async def on_success(self, job: Job) -> dict[str, Any]:
        """Runs when a job's trainer succeeded, before the job is final; returns result
        additions (its adapter's registration)."""

    async def on_evaluate(self, job: Job, emit: Emit) -> dict[str, Any]:
        """Evaluates a job's target; returns result additions; raises JobFailedError."""


AcceleratorLease = Callable[[], AbstractAsyncContextManager[None]]
"""Held while a trainer runs: where the engine sleeps during training, it sleeps in it."""


@contextlib.asynccontextmanager
async def shared_accelerator() -> AsyncIterator[None]:
    """The default lease: the engine and the trainer share the device (CPU threads or a GPU
    memory split fixed at start)."""
    yield


class JobRunner:
    """Claims waiting jobs in order and drives each to its end, or back to waiting."""

    def __init__(
        self,
        store: Store,
        jobs_dir: Path,
        metrics: Metrics,
        *,
        owner: str,
        lease_seconds: float,
        work: frozenset[Work] = frozenset(Work),
        trainer_threads: int,
        max_attempts: int,
        cancel_grace: float,
        accelerator: AcceleratorLease = shared_accelerator,
        devices: Sequence[str] | None = None,
    ) -> None:
        self.owner = owner
        """This runner's name on the jobs it claims."""
        self._store = store
        self._jobs_dir = jobs_dir
        self._metrics = metrics
        self._lease_seconds = lease_seconds
        self._work = work
        self._threads = trainer_threads
        self._max_attempts = max_attempts
        self._grace = cancel_grace
        self._hooks: JobHooks | None = None
        self._accelerator = accelerator
        self._devices = devices
        """The accelerators of this runner's trainers (a worker's slot); None: all."""
        self._wake = asyncio.Event()
        self._process: asyncio.subprocess.Process | None = None
        self._evaluation: asyncio.Task[dict[str, Any]] | None = None
        self._current: str | None = None
        self._interrupted = False
        """The current job's work was told to stop (a cancel, shutdown, a lost lease)."""
        self._cancelled: set[str] = set()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._kills: set[asyncio.Task[None]] = set()
        self._renew_now = asyncio.Event()

    def job_dir(self, job_id: str) -> Path:
        """Where a job's config, events, log, checkpoints and adapter live."""
        return self._jobs_dir / job_id

    # ---- lifecycle
    async def recover(self) -> None:
        """At start, on a store no other process writes (`Store.exclusive`): every owned job
        was the dead server's, so it waits again now, its trainer (if it still runs) stopped
        first: no two trainers ever write one job's directory. On a shared store the sweep
        releases a dead process's jobs when their leases have run out."""
        if not self._store.exclusive:
            return
        page = await self._store.list_jobs(None, OWNED, [], 10_000, 0)
        for job in page.jobs:
            _stop_stale_trainer(job)
        await self._announce(await self._store.expire_leases(math.inf, self._max_attempts))

    def attach(self, hooks: JobHooks) -> None:
        """Makes `hooks` the component that answers for this runner's jobs."""
        self._hooks = hooks

    @property
    def hooks(self) -> JobHooks:
        assert self._hooks is not None, "JobRunner.attach comes before start"
        return self._hooks

    def start(self) -> None:
        """Starts taking jobs (after `attach`)."""
        assert self._hooks is not None, "JobRunner.attach comes before start"
        self._task = asyncio.create_task(self._loop(), name="job-runner")

    def notify(self) -> None:
        """A job is waiting."""
        self._wake.set()

    async def stop(self, grace: float) -> None:
        """Stops taking jobs; the running trainer writes a checkpoint and its job waits again.
        After `grace` seconds the trainer is killed (its last checkpoint stays)."""
        self._stopping = True
        self._wake.set()
        process = self._process
        self._interrupt()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace)
        except TimeoutError:
            if process is not None:
                _signal_group(process.pid, signal.SIGKILL)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def cancel(self, job: Job) -> None:
        """Acts at once on a client's cancel request of `job` (`Store.request_cancel`) if this
        runner owns it: its work stops and the run ends it CANCELLED. A job another process
        owns is that owner's to end, when it hears of the request."""
        if job.owner != self.owner or job.id in self._cancelled:
            return
        self._cancelled.add(job.id)
        if self._current == job.id:
            self._interrupt()
        # Otherwise the claim is not running yet: _run ends it before anything starts.

    def _interrupt(self) -> None:
        """Stops the current job's work: its evaluation is cancelled; its trainer gets SIGTERM
        (it writes a checkpoint and exits) and SIGKILL after the cancel grace."""
        self._interrupted = True
        if self._evaluation is not None:
            self._evaluation.cancel()
        process = self._process
        if process is not None and process.returncode is None:
            _signal_group(process.pid, signal.SIGTERM)
            kill = asyncio.create_task(self._kill_after_grace(process))
            self._kills.add(kill)
            kill.add_done_callback(self._kills.discard)

    async def _kill_after_grace(self, process: asyncio.subprocess.Process) -> None:
        try:
            await asyncio.wait_for(process.wait(), self._grace)
        except TimeoutError:
            _signal_group(process.pid, signal.SIGKILL)

    # ---- the loop
    async def _loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                await self._announce(
                    await self._store.expire_leases(time.time(), self._max_attempts)
                )
                job = await self._store.claim_job(self.owner, self._work, self._lease_seconds)
            except UnavailableError as exc:  # a shared database away: look again shortly
                logger.warning("job queue: %s", exc)
                await asyncio.sleep(STORE_RETRY_SECONDS)
                continue
            if job is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), QUEUE_POLL_SECONDS)
                continue
            try:
                await self._run(job)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not stop the queue
                logger.exception("job %s: runner failed", job.id)
                # Unless it ended already, or is not ours, or the store is away (then the job
                # waits again when its lease runs out).
                with contextlib.suppress(FailedPreconditionError, LeaseLostError, UnavailableError):
                    await self._finish(job, Outcome(JobState.FAILED, "internal", "see server log"))

    async def _announce(self, jobs: list[Job]) -> None:
        for job in jobs:
            logger.info("job %s: lease expired; now %s", job.id, job.state.value)
            await self.hooks.on_change(job)

    async def _run(self, job: Job) -> None:
        """Runs a claimed job: validating (train it) or evaluating (evaluate its target)."""
        self._current, self._interrupted = job.id, job.id in self._cancelled
        heartbeat = asyncio.create_task(self._heartbeat(job), name=f"lease-{job.id}")
        try:
            await self.hooks.on_change(job)
            if job.id in self._cancelled:  # cancelled between its claim and now
                result = CANCELLED
            elif job.state is JobState.EVALUATING:
                result = await self._evaluate(job)
            else:
                result = await self._train(job)
            await self._finish(job, CANCELLED if job.id in self._cancelled else result)
        except LeaseLostError as exc:  # someone else's job now: write nothing more
            logger.warning("job %s: %s", job.id, exc)
            self._interrupt()
        finally:
            heartbeat.cancel()
            self._cancelled.discard(job.id)
            self._current = None

    def cancel_requested(self, job_id: str) -> None:
        """A client asked another process to cancel `job_id`: if this runner runs it, it
        renews its lease now (where it reads the request) instead of at the next renewal."""
        if self._current == job_id:
            self._renew_now.set()

    async def _heartbeat(self, job: Job) -> None:
        """Renews the job's lease until cancelled; hears a client's cancel request; stops the
        job's work when the lease was lost."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._renew_now.wait(), self._lease_seconds / 3)
            self._renew_now.clear()
            try:
                renewed = await self._store.renew_lease(job.lease, self._lease_seconds)
            except UnavailableError as exc:  # try again; the lease may still hold
                logger.warning("job %s: lease not renewed: %s", job.id, exc)
                continue
            except LeaseLostError as exc:
                logger.warning("job %s: %s; stopping its work", job.id, exc)
                self._interrupt()
                return
            if renewed.cancel_requested:
                self.cancel(renewed)

    async def _train(self, job: Job) -> Outcome:
        async with self._accelerator():
            result = await self._run_trainer(job)
        if result.state is not JobState.SUCCEEDED or job.id in self._cancelled:
            return result
        job = await self._add_result(job, await self.hooks.on_success(job))
        if JobSpec.of(job).evaluation is not None and JobResult.of(job).adapter_version:
            if Work.EVALUATION not in self._work:  # for a process with an engine
                return Outcome(JobState.EVALUATION_PENDING)
            return await self._evaluate(job)
        return result

    async def _run_trainer(self, job: Job) -> Outcome:
        directory = self.job_dir(job.id)
        events = events_file(directory, job.fence)
        env = trainer_environment(os.environ, self._threads, os.getpid(), job.fence, self._devices)
        with (directory / LOG_FILE).open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "trainer", "train",
                "--config", str(directory / CONFIG_FILE), "--events", str(events),
                stdout=log, stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True,
            )  # fmt: skip
        self._process = process
        kills_before = oom_kills()
        if self._interrupted:  # stopped while the trainer was starting
            self._interrupt()
        try:
            job = await self._store.update_job(
                job.lease,
                worker_pid=process.pid,
                worker_started=psutil.Process(process.pid).create_time(),
            )
            failure = await self._follow_trainer(job, process, _EventTail(events))
        except LeaseLostError:  # not ours any more: the trainer must not outlive the run
            self._interrupt()
            await process.wait()
            raise
        finally:
            self._process = None
        assert process.returncode is not None
        kills_after = oom_kills()
        oom_killed = (
            None if kills_before is None or kills_after is None else (kills_after > kills_before)
        )
        result = outcome(process.returncode, failure, _tail(directory / LOG_FILE), oom_killed)
        if not retryable(result):
            return result
        earlier = crashed_runs(await self._store.events(job.id, 0, limit=WHOLE_FEED))
        return retry(result, earlier + 1, self._max_attempts)

    async def _follow_trainer(
        self, job: Job, process: asyncio.subprocess.Process, tail: _EventTail
    ) -> dict[str, Any] | None:
        """Stores the trainer's events until it exits; returns its `failed` event, if any."""
        failure = None
        # Lines the last attempt's trainer wrote after its owner died (its checkpoint, its
        # `interrupted`) are not in the feed yet; read once, before this attempt's trainer
        # writes anything, and never again.
        if (earlier := earlier_events_file(self.job_dir(job.id), job.fence)) is not None:
            fence, path = earlier
            stored = await self._store.events(job.id, 0, limit=WHOLE_FEED)
            for event in _EventTail(path).read()[trainer_lines_stored(stored, fence) :]:
                await self._record(job, event)
        while True:
            finished = process.returncode is not None
            for event in tail.read():
                if failure is None and event.get("event") == TrainerEvent.FAILED:
                    failure = event  # the first: a rank's own error, before the others' timeouts
                await self._record(job, event)
            if finished:
                return failure
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), POLL_SECONDS)

    async def _evaluate(self, job: Job) -> Outcome:
        if job.state is not JobState.EVALUATING:
            job = await self._store.update_job(job.lease, JobState.EVALUATING)
            await self.hooks.on_change(job)
        if self._interrupted:  # before the evaluation started: nothing to stop
            return CANCELLED if job.id in self._cancelled else _stopped(job)

        async def emit(kind: str, data: dict[str, Any]) -> None:
            await self._store.append_event(job.lease, kind, data)
            self.hooks.wake(job.id)

        self._evaluation = asyncio.create_task(self.hooks.on_evaluate(job, emit))
        try:
            additions = await self._evaluation
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():  # the runner itself is torn down
                raise
            # Stopped by the server (a client's cancel is turned into CANCELLED by _run).
            return _stopped(job)
        except JobFailedError as exc:
            return Outcome(JobState.FAILED, exc.reason, exc.message)
        finally:
            self._evaluation = None
        await self._add_result(job, additions)
        return Outcome(JobState.SUCCEEDED)

    async def _add_result(self, job: Job, additions: dict[str, Any]) -> Job:
        """The job with `additions` merged into its stored result."""
        job = await self._store.get_job(job.id) or job
        return await self._store.update_job(job.lease, result={**job.result, **additions})

    async def _record(self, job: Job, event: dict[str, Any]) -> None:
        kind = str(event.pop("event", FeedKind.LOG))
        event.pop("time", None)
        event = relative_paths(event, self.job_dir(job.id))
        await self._store.append_event(job.lease, kind, event)
        if kind == TrainerEvent.STARTED:
            await self.hooks.on_change(await self._store.update_job(job.lease, JobState.RUNNING))
            return
        if kind == TrainerEvent.PROGRESS:
            self._metrics.training_tokens_per_second.set(event.get("tokens_per_second", 0))
            self._metrics.training_loss.set(event.get("loss", 0))
        elif kind == TrainerEvent.DONE:
            await self._store.update_job(job.lease, result=event)
        self.hooks.wake(job.id)

    async def _finish(self, job: Job, result: Outcome) -> None:
        """Writes how the run ended: a final state, or waiting again (the lease ends)."""
        now = time.time()
        fields: dict[str, Any] = {"worker_pid": None, "worker_started": None}
        if result.state.terminal:
            fields |= {
                "finished": now, "error_reason": result.reason, "error_message": result.message,
            }  # fmt: skip
        event = {"reason": result.reason} if result.reason else None
        if not result.state.terminal and result.message and event is not None:
            event["message"] = result.message
        job = await self._store.update_job(job.lease, result.state, event=event, **fields)
        if job.state is JobState.FAILED:
            self._metrics.trainer_failures.labels(result.reason).inc()
        if job.state.terminal and job.started is not None:
            self._metrics.job_duration.labels(job.kind.value, job.state.value).observe(
                now - job.started
            )
        await self.hooks.on_change(job)


def _stopped(job: Job) -> Outcome:
    """How a job stopped by the server (not by a client) ends its run: waiting again."""
    return Outcome(released_state(job), "interrupted", "stopped by the server; resumes later")


def trainer_lines_stored(stored: list[JobEvent], fence: int) -> int:
    """How many lines of the events file of the attempt under `fence` the feed holds already:
    the events the service did not add, from that attempt's claim (the `state` event carrying
    its fence) to the next claim (its trainer may have written more after its owner died).
    Pure."""
    count, inside = 0, False
    for event in stored:
        if event.kind == FeedKind.STATE and "fence" in event.data:
            inside = event.data["fence"] == fence
        elif inside and event.kind not in SERVICE_FEED_KINDS:
            count += 1
    return count


def _stop_stale_trainer(job: Job) -> None:
    """Kills the process group of a trainer a previous server started, if it still runs."""
    if job.worker_pid is None:
        return
    try:
        process = psutil.Process(job.worker_pid)
        if job.worker_started is not None and abs(process.create_time() - job.worker_started) > 1:
            return  # the pid was reused by another process
        _signal_group(job.worker_pid, signal.SIGKILL)
        process.wait(10)
    except (psutil.NoSuchProcess, psutil.TimeoutExpired):
        pass
