"""The composition root: builds every part of the server from settings, runs and stops it."""

import asyncio
import logging
import os
from pathlib import Path

from grpc import aio

from service import __version__
from service.adapters.checks import AdapterLimits
from service.adapters.imports import AdapterImports
from service.adapters.manager import AdapterManager
from service.auth import TokenTable
from service.basemodel import BaseModel, lora_target_modules, resolve_base_model
from service.capture.drift import DriftMonitor
from service.capture.online import OnlineQuality
from service.capture.recorder import CaptureRecorder
from service.capture.service import CaptureService
from service.errors import ConfigError
from service.evaluation import EvaluationLimits, Evaluator
from service.grpc.health import HealthPublisher
from service.grpc.server import ENGINE_BACKED_SERVICES, LIVE_SERVICES, bind, build_grpc_server
from service.http.openai_api import build_openai_app
from service.http.server import HttpServer
from service.inference.engine import InferenceEngine
from service.inference.generation import Generator
from service.inference.lifecycle import EngineLifecycle
from service.inference.restarts import RestartPolicy
from service.inference.vllm_engine import VllmEngine, VllmEngineConfig, pick_engine_cpus
from service.jobs.model import Work
from service.jobs.runner import JobRunner, owner_id, shared_accelerator
from service.jobs.service import JobLimits, JobService
from service.metrics import AdapterLabels, Metrics
from service.process import MetricsEndpoint
from service.quotas import PerTenant
from service.serverinfo import ServerInfo, reported_libraries
from service.settings import ServerSettings
from service.store import describe_store, store_for
from service.store.base import Change, keep_in_step
from service.uploads import UploadLimits, UploadService, staging_name
from trainer.hardware import Machine, PrecisionChoice, describe_machine, resolve_precision
from trainer.templates import load_tokenizer

logger = logging.getLogger(__name__)

SERVING_WORK = frozenset({Work.TRAINING, Work.EVALUATION})
"""What a serving replica's runner does with the embedded worker on (--train-workers 1)."""
ADAPTER_SYNC_SECONDS = 5.0
"""On a shared store, how often a serving replica reads the adapters again without having
heard of a change (a lost notification)."""


class App:
    """A running adapterd server: gRPC, metrics endpoint and engine, started and stopped as one."""

    def __init__(
        self,
        settings: ServerSettings,
        base_model: BaseModel,
        engine: InferenceEngine,
        tokens: TokenTable | None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.base_model = base_model
        self.machine = server_machine(settings)
        self.metrics = metrics or Metrics()
        self.health = HealthPublisher(LIVE_SERVICES, ENGINE_BACKED_SERVICES)
        tokenizer = load_tokenizer(base_model.path, base_model.chat_template)
        self.store = store_for(settings.resolved_store_url)
        labels = AdapterLabels(self.metrics, settings.adapter_labels)
        limits = AdapterLimits.for_server(settings, base_model)
        self.adapters = AdapterManager(
            engine=engine,
            store=self.store,
            limits=limits,
            capacity=settings.max_cpu_loras,
            metrics=self.metrics,
            labels=labels,
        )
        self.lifecycle = EngineLifecycle(
            engine,
            self.metrics,
            self.health.on_engine_state,
            warmup_prompt=tuple(tokenizer("Hello", add_special_tokens=False)["input_ids"]),
            policy=RestartPolicy(max_restarts=settings.engine_max_restarts),
            on_restarted=self.adapters.engine_restarted,
            on_give_up=self.health.not_alive,
        )
        online = OnlineQuality(self.metrics)
        self.capture = CaptureRecorder(self.store, self.metrics, online)
        self.generator = Generator(
            engine=engine,
            adapters=self.adapters,
            tokenizer=tokenizer,
            metrics=self.metrics,
            max_model_len=settings.max_model_len,
            engine_state=lambda: self.lifecycle.state,
            in_flight=PerTenant(
                settings.tenant_max_generations, "generation requests", "--tenant-max-generations"
            ),
            capture=self.capture,
        )
        self.runner = JobRunner(
            self.store,
            settings.data_dir / "jobs",
            self.metrics,
            owner=owner_id(),
            lease_seconds=settings.job_lease_seconds,
            work=SERVING_WORK if settings.train_workers else frozenset({Work.EVALUATION}),
            trainer_threads=settings.resolved_trainer_threads,
            max_attempts=settings.max_job_attempts,
            cancel_grace=settings.cancel_grace_seconds,
            accelerator=(
                self.lifecycle.lent if settings.engine_sleep_while_training else shared_accelerator
            ),
        )
        self.uploads = UploadService(
            store=self.store,
            limits=UploadLimits(
                root=settings.data_dir / "datasets" / "uploads",
                data_root=settings.data_dir / "datasets",
                max_file_bytes=settings.max_upload_mib * 2**20,
                tenant_quota_bytes=settings.tenant_upload_quota_mib * 2**20,
            ),
            staging=staging_name(),
        )
        self.imports = AdapterImports(
            adapters=self.adapters,
            uploads=self.uploads,
            limits=limits,
            sources=settings.import_urls,
        )
        self.evaluator = Evaluator(
            generator=self.generator,
            adapters=self.adapters,
            uploads=self.uploads,
            store=self.store,
            tokenizer=tokenizer,
            metrics=self.metrics,
            labels=labels,
            limits=EvaluationLimits(
                concurrency=settings.eval_concurrency,
                max_model_len=settings.max_model_len,
                judge_urls=settings.judge_urls,
                judge_api_key=(
                    settings.judge_api_key.get_secret_value() if settings.judge_api_key else None
                ),
            ),
        )
        self.jobs = JobService(
            store=self.store,
            runner=self.runner,
            adapters=self.adapters,
            uploads=self.uploads,
            evaluator=self.evaluator,
            limits=JobLimits(
                adapter_root=settings.resolved_adapter_root,
                base_model_path=base_model.path,
                base_model_name=base_model.name,
                chat_template=base_model.chat_template,
                max_lora_rank=settings.max_lora_rank,
                max_queued=settings.max_queued_jobs,
                tenant_max_queued=settings.tenant_max_queued_jobs,
                user_max_priority=settings.user_max_priority,
                # The owner hears the request within a third of its lease, then has the grace.
                cancel_wait_seconds=settings.job_lease_seconds / 3 + settings.cancel_grace_seconds,
                judge_urls=frozenset(settings.judge_urls),
            ),
            metrics=self.metrics,
            tokenizer=tokenizer,
            watchers=PerTenant(
                settings.tenant_max_watch_streams, "WatchJob streams", "--tenant-max-watch-streams"
            ),
        )
        self.runner.attach(self.jobs)
        self.drift = DriftMonitor(
            store=self.store,
            adapters=self.adapters,
            metrics=self.metrics,
            targets=self.capture.targets,
            interval=settings.drift_interval_seconds,
        )
        self.captures = CaptureService(
            store=self.store,
            recorder=self.capture,
            online=online,
            uploads=self.uploads,
            metrics=self.metrics,
            label=self.adapters.label,
        )
        self.http = HttpServer(
            build_openai_app(
                generator=self.generator,
                adapters=self.adapters,
                captures=self.captures,
                tokens=tokens,
                base_model=base_model.name,
                metrics=self.metrics,
                max_body_bytes=settings.max_http_body_mib * 2**20,
            ),
            settings.host,
            settings.http_port,
        )
        self._auth_enabled = tokens is not None
        self._libraries = reported_libraries()
        self.grpc: aio.Server = build_grpc_server(
            self.metrics,
            tokens,
            self.health,
            self.describe,
            self.generator,
            self.adapters,
            self.imports,
            self.jobs,
            self.uploads,
            self.captures,
            settings.max_concurrent_rpcs,
        )
        self._metrics_http = MetricsEndpoint(
            self.metrics.registry, settings.host, settings.metrics_port
        )
        self._engine_task: asyncio.Task[None] | None = None
        self._store_tasks: list[asyncio.Task[None]] = []
        self._capture_tasks: list[asyncio.Task[None]] = []
        self._adapters_changed = asyncio.Event()
        self.metrics.build_info.info({"version": __version__, "base_model": base_model.name})

    def _heard(self, change: Change, payload: str) -> None:
        """A change in the shared store, possibly by another process."""
        if change is Change.JOB:
            self.jobs.wake(payload)
        elif change is Change.QUEUE:
            self.runner.notify()
        elif change is Change.CANCEL:
            self.runner.cancel_requested(payload)
        elif change is Change.CAPTURE:
            self.capture.changed()
        else:
            self._adapters_changed.set()

    def describe(self) -> ServerInfo:
        """A snapshot of this server for GetServerInfo."""
        return ServerInfo(
            version=__version__,
            base_model=self.base_model,
            engine_state=self.lifecycle.state,
            max_loras=self.settings.max_loras,
            max_lora_rank=self.settings.max_lora_rank,
            libraries=self._libraries,
            auth_enabled=self._auth_enabled,
            machine=self.machine,
        )

    async def start(self) -> None:
        """Binds the ports, starts serving, and starts the engine in the background.

        Health reports NOT_SERVING for engine-backed services until the engine is warm.

        Raises:
            ConfigError: when a port cannot be bound, or another server holds the store.
        """
        settings = self.settings
        bind(self.grpc, settings.host, settings.port, settings.tls_pair())
        await self.store.open()
        logger.info("store: %s", describe_store(settings.resolved_store_url))
        await asyncio.to_thread(self.uploads.clean_staging)
        await self.adapters.restore()
        await self.capture.refresh()
        await self.runner.recover()
        self._metrics_http.start()
        await self.health.start()
        self.http.start()
        await self.grpc.start()
        logger.info(
            "serving gRPC on %s:%d, HTTP on :%d, metrics on :%d, base model %s",
            settings.host,
            settings.port,
            settings.http_port,
            settings.metrics_port,
            self.base_model.name,
        )
        for role, choice in (
            ("engine", self.machine.engine),
            ("auto training", self.machine.trainer),
        ):
            if choice is not None:
                logger.info("%s precision: %s (%s)", role, choice.dtype, choice.reason)
        self._engine_task = asyncio.create_task(self.lifecycle.start(), name="engine-start")
        self._capture_tasks = [
            asyncio.create_task(self.capture.run(), name="capture-writer"),
            asyncio.create_task(self.capture.sweep(), name="capture-sweep"),
            asyncio.create_task(self.drift.run(), name="drift"),
        ]
        if not self.store.exclusive:  # other processes write it too
            self._store_tasks = [
                asyncio.create_task(self.store.follow(self._heard), name="store-follow"),
                asyncio.create_task(
                    keep_in_step(
                        self._adapters_changed,
                        self.adapters.refresh,
                        ADAPTER_SYNC_SECONDS,
                        "adapter refresh",
                    ),
                    name="adapter-sync",
                ),
                asyncio.create_task(self.capture.sync(), name="capture-policy-sync"),
            ]
        self.runner.start()

    async def stop(self) -> None:
        """Stops taking work, lets in-flight calls finish within the grace, stops the engine."""
        logger.info("shutting down (grace %.0f s)", self.settings.drain_grace_seconds)
        await self.health.shutdown()
        await self.runner.stop(self.settings.drain_grace_seconds)
        for task in self._store_tasks:
            task.cancel()
        await asyncio.gather(
            self.grpc.stop(self.settings.drain_grace_seconds),
            self.http.stop(self.settings.drain_grace_seconds),
        )
        await self.capture.drain(self.settings.drain_grace_seconds)
        for task in self._capture_tasks:
            task.cancel()
        if self._engine_task is not None and not self._engine_task.done():
            self._engine_task.cancel()
        await self.lifecycle.stop()
        await self.store.close()
        await self._metrics_http.stop()
        logger.info("stopped")


def _ensure_dir(path: Path, flag: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot create it ({exc.strerror})") from None
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: not readable and writable by this user")


def build_app(settings: ServerSettings) -> App:
    """Builds the production server from settings: checks directories, tokens, base model.

    Raises:
        ConfigError: naming the setting that is wrong.
    """
    _ensure_dir(settings.data_dir, "--data-dir")
    _ensure_dir(settings.resolved_adapter_root, "--adapter-root")
    tokens = TokenTable.load(settings.auth_tokens_file) if settings.auth_tokens_file else None
    if settings.engine_sleep_while_training:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                "--engine-sleep-while-training: vLLM's sleep mode needs a CUDA GPU and this "
                "machine has none; on the CPU the engine and a trainer share the cores "
                "(--engine-threads, --trainer-threads)"
            )
    base_model = resolve_base_model(
        settings.base_model, settings.model_cache_dir, settings.chat_template
    )
    metrics = Metrics()
    engine = VllmEngine(engine_config(settings, base_model.path), stats=metrics.record_engine_stats)
    return App(settings, base_model, engine, tokens, metrics)


def engine_precision(settings: ServerSettings) -> PrecisionChoice:
    """The engine's dtype on this machine (--engine-dtype; "auto" probes once per process)."""
    return resolve_precision(settings.engine_dtype, "serve", settings.engine_threads)


def server_machine(settings: ServerSettings) -> Machine:
    """This server's machine: the engine's dtype and what a job's precision "auto" picks."""
    trainer_threads = settings.resolved_trainer_threads
    return describe_machine(
        engine=engine_precision(settings),
        trainer=resolve_precision("auto", "train", trainer_threads),
        engine_threads=settings.engine_threads,
        trainer_threads=trainer_threads,
    )


def engine_config(settings: ServerSettings, model_path: Path) -> VllmEngineConfig:
    """The vLLM engine the settings describe, for the base model at `model_path`."""
    return VllmEngineConfig(
        model_path=model_path,
        max_loras=settings.max_loras,
        max_cpu_loras=settings.max_cpu_loras,
        max_lora_rank=settings.max_lora_rank,
        max_model_len=settings.max_model_len,
        cpu_ids=pick_engine_cpus(sorted(os.sched_getaffinity(0)), settings.engine_threads),
        kv_cache_gib=settings.engine_kv_cache_gib,
        lora_target_modules=tuple(sorted(lora_target_modules(model_path))),
        gpu_memory_fraction=settings.engine_gpu_memory_fraction,
        sleep_mode=settings.engine_sleep_while_training,
        dtype=engine_precision(settings).dtype,
    )
