"""`adapterd worker`: training slots on the shared store, without an engine or an API.

A worker claims training jobs (`Work.TRAINING`) from the PostgreSQL store its serving replicas
share, runs the trainer with the same `python -m trainer train` contract and the same runner
as a replica's embedded worker (leases, heartbeats, fenced writes, the sweep), streams its
events into the store and publishes the adapter on success. A job whose spec asks for an
evaluation then waits in evaluation_pending for a serving replica, which has an engine.

Files live under the shared root: `--data-dir` (and the base model's cache) mounted at the
same path on every replica and worker, since a job's config names its datasets, base model and
output directory there.
"""

import asyncio
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from service.adapters.checks import AdapterLimits
from service.adapters.publish import publish, register_job_adapter
from service.basemodel import BaseModel, resolve_base_model
from service.errors import ConfigError
from service.jobs.model import Job, Work
from service.jobs.runner import Emit, JobRunner, owner_id
from service.metrics import Metrics
from service.process import MetricsEndpoint
from service.settings import ServerSettings
from service.store import describe_store, store_for
from service.store.base import Change
from trainer.contract import DEVICES_VARIABLE
from trainer.hardware import available_cpus

logger = logging.getLogger(__name__)

TRAINING = frozenset({Work.TRAINING})


def visible_accelerators(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The accelerators this worker may use, as CUDA names them: the ids of
    CUDA_VISIBLE_DEVICES where it is set (as Kubernetes' device plugin may), otherwise every
    device torch finds (none on a CPU build)."""
    if DEVICES_VARIABLE in environ:
        ids = tuple(i.strip() for i in environ[DEVICES_VARIABLE].split(",") if i.strip())
        return () if ids[:1] == ("-1",) else ids
    import torch

    return tuple(str(i) for i in range(torch.cuda.device_count()))


def slot_devices(slots: int, accelerators: Sequence[str]) -> list[tuple[str, ...] | None]:
    """Each slot's accelerators: an equal block of them (a job of `training.devices` N needs
    a block of at least N), or None for every slot where there are none (the slots share the
    CPUs). Pure.

    Raises:
        ConfigError: fewer accelerators than slots.
    """
    if not accelerators:
        return [None] * slots
    if len(accelerators) < slots:
        raise ConfigError(
            f"--slots {slots}: this worker sees {len(accelerators)} accelerator(s) "
            f"({DEVICES_VARIABLE}={','.join(accelerators)}); run one slot per accelerator"
        )
    size = len(accelerators) // slots
    return [tuple(accelerators[n * size : (n + 1) * size]) for n in range(slots)]


class Worker:
    """Training slots (`--slots`) on the shared store, stopped as one; the `JobHooks` of its
    runners."""

    def __init__(self, settings: ServerSettings, base_model: BaseModel) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.store = store_for(settings.resolved_store_url)
        self.limits = AdapterLimits.for_server(settings, base_model)
        threads = settings.trainer_threads or max(1, available_cpus() // settings.slots)
        devices = slot_devices(settings.slots, visible_accelerators(os.environ))
        self.runners = [
            JobRunner(
                self.store,
                settings.data_dir / "jobs",
                self.metrics,
                owner=owner_id(),
                lease_seconds=settings.job_lease_seconds,
                work=TRAINING,
                trainer_threads=threads,
                max_attempts=settings.max_job_attempts,
                cancel_grace=settings.cancel_grace_seconds,
                devices=slot,
            )
            for slot in devices
        ]
        for runner in self.runners:
            runner.attach(self)
        self._metrics_http = MetricsEndpoint(
            self.metrics.registry, settings.host, settings.metrics_port
        )
        self._follow: asyncio.Task[None] | None = None

    def _heard(self, change: Change, payload: str) -> None:
        for runner in self.runners:
            if change is Change.QUEUE:  # a job to claim, perhaps
                runner.notify()
            elif change is Change.CANCEL:
                runner.cancel_requested(payload)

    async def on_change(self, job: Job) -> None:
        logger.info("job %s: %s", job.id, job.state.value)

    def wake(self, job_id: str) -> None:
        """Nobody watches a job here: the serving replicas hear of its events from the store."""

    async def on_evaluate(self, job: Job, emit: Emit) -> NoReturn:
        raise AssertionError(f"job {job.id}: a worker claims no evaluation (it has no engine)")

    async def on_success(self, job: Job) -> dict[str, Any]:
        """Publishes a finished job's adapter when its spec names one; the serving replicas
        load it from the store on its first request."""

        async def publish_only(name: str, path: str) -> str:
            _, record = await publish(
                self.store, self.limits, name, path, pin=False, created=time.time()
            )
            return f"{record.name}@{record.version}"

        directory, root = self.runners[0].job_dir(job.id), self.settings.resolved_adapter_root
        return await register_job_adapter(job, directory, root, publish_only)

    async def start(self) -> None:
        """Opens the store, serves /metrics and starts every slot.

        Raises:
            ConfigError: the store cannot be reached, or the metrics port bound.
        """
        settings = self.settings
        await self.store.open()
        logger.info("store: %s", describe_store(settings.resolved_store_url))
        try:
            self._metrics_http.start()
        except ConfigError:
            await self.store.close()
            raise
        for runner in self.runners:
            runner.start()
        self._follow = asyncio.create_task(self.store.follow(self._heard), name="store-follow")
        logger.info(
            "worker: %d training slot(s) on %s, metrics on :%d",
            len(self.runners),
            Path(settings.data_dir),
            settings.metrics_port,
        )

    async def stop(self) -> None:
        """Stops every slot: their trainers checkpoint and their jobs wait again."""
        grace = self.settings.drain_grace_seconds
        logger.info("shutting down (grace %.0f s)", grace)
        await asyncio.gather(*(runner.stop(grace) for runner in self.runners))
        if self._follow is not None:
            self._follow.cancel()
        await self.store.close()
        await self._metrics_http.stop()
        logger.info("stopped")


def build_worker(settings: ServerSettings) -> Worker:
    """A worker from settings: the base model it trains (resolved as a server does).

    Raises:
        ConfigError: naming the setting that is wrong.
    """
    if not settings.resolved_store_url.startswith(("postgresql:", "postgres:")):
        raise ConfigError(
            "--store-url: a worker takes its jobs from the store its serving replicas share; "
            "give postgresql://... (the SQLite store belongs to one server)"
        )
    return Worker(
        settings,
        resolve_base_model(settings.base_model, settings.model_cache_dir, settings.chat_template),
    )
