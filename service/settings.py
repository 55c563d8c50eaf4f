"""Typed settings: the only module that reads the environment.

Every server setting is a field of `ServerSettings`: a command-line flag (`--max-lora-rank`),
an environment variable (`ADAPTERD_MAX_LORA_RANK`) and a default, with the flag winning over
the variable. Validation reports every problem at once, naming the flag and the variable.
"""

import argparse
import os
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.client.api import LoadBalancing
from service.errors import ConfigError
from trainer.config import describe_validation_error
from trainer.hardware import Precision, available_cpus
from trainer.templates import MODEL, ChatTemplate

SERVER_ENV_PREFIX = "ADAPTERD_"
CLIENT_ENV_PREFIX = "ADAPTERCTL_"

# The LoRA ranks vLLM's engine accepts as max_lora_rank (vllm.config.lora.MaxLoRARanks), minus 1.
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def _user_dir(variable: str, fallback: str) -> Path:
    base = os.environ.get(variable) or str(Path.home() / fallback)
    return Path(base) / "adapterd"


def _lora_rank(value: int) -> int:
    if value not in VLLM_LORA_RANKS:
        allowed = ", ".join(str(r) for r in VLLM_LORA_RANKS)
        raise ValueError(f"must be one of {allowed} (the ranks vLLM accepts)")
    return value


STORE_SCHEMES = ("sqlite", "postgresql", "postgres")
STORE_FILE = "adapterd.db"
"""The SQLite store's file in DATA_DIR, when no --store-url is given."""


def _store_url(value: SecretStr | None) -> SecretStr | None:
    # The message never repeats the URL: it may hold a password.
    if value is None:
        return None
    scheme, separator, rest = value.get_secret_value().partition("://")
    if not separator or scheme not in STORE_SCHEMES:
        raise ValueError(
            "must be sqlite:///FILE or postgresql://[USER[:PASSWORD]@]HOST[:PORT]/DATABASE"
        )
    if scheme == "sqlite" and not (rest.startswith("/") and rest[1:]):
        raise ValueError("must be sqlite:///FILE: sqlite:///relative.db or sqlite:////abs/path.db")
    return value


def _cpu_count(value: int) -> int:
    available = available_cpus()
    if value > available:
        raise ValueError(f"must be at most {available}, the CPUs this process may use")
    return value


S = TypeVar("S", bound=BaseSettings)
Port = Annotated[int, Field(ge=1, le=65535)]


def _name_url_pairs(value: Any) -> Any:
    """ "name=url,name=url" -> {name: url}; a dict passes through."""
    if not isinstance(value, str):
        return value
    pairs = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, equals, url = item.partition("=")
        if not equals or not name.strip() or not url.strip().startswith(("http://", "https://")):
            raise ValueError(f"{item!r} is not name=http(s)://host/path")
        pairs[name.strip()] = url.strip().rstrip("/")
    return pairs


class ServerSettings(BaseSettings):
    """Settings of `adapterd serve` (and of the server that `adapterd demo` starts)."""

    model_config = SettingsConfigDict(
        env_prefix=SERVER_ENV_PREFIX, frozen=True, extra="forbid", validate_default=True
    )

    host: str = Field(
        "127.0.0.1",
        description="Address the gRPC, metrics and HTTP servers bind to (0.0.0.0 in a container).",
    )
    port: Port = Field(50051, description="gRPC port.")
    metrics_port: Port = Field(9400, description="Port of the Prometheus /metrics endpoint.")
    http_port: Port = Field(8000, description="Port of the OpenAI-compatible HTTP API.")
    data_dir: Path = Field(
        default_factory=lambda: _user_dir("XDG_DATA_HOME", ".local/share"),
        description="Directory for the job store, datasets and adapters; created if missing.",
    )
    store_url: Annotated[SecretStr | None, AfterValidator(_store_url)] = Field(
        None,
        description="The job store: sqlite:///FILE (one server) or postgresql://... (replicas "
        "sharing one database); default: SQLite in DATA_DIR.",
    )
    model_cache_dir: Path = Field(
        default_factory=lambda: _user_dir("XDG_CACHE_HOME", ".cache") / "models",
        description="Where prepared base models are cached, shared by every clone and run.",
    )
    base_model: str = Field(
        "smollm2-135m-instruct",
        min_length=1,
        description="A registered model name, a local checkpoint directory, or a hub id "
        "(needs a network).",
    )
    chat_template: ChatTemplate = Field(
        MODEL,
        description="The template chats render with, in training and serving: the base "
        "model's own (model) or chatml_tools (Hermes-style tool calls, for models whose "
        "template has none); part of the base fingerprint adapters are checked against.",
    )
    adapter_root: Path | None = Field(
        None, description="Root that adapter files must lie under (default: DATA_DIR/adapters)."
    )
    max_loras: int = Field(4, ge=1, le=64, description="Adapters active in one engine batch.")
    max_cpu_loras: int = Field(
        8,
        ge=1,
        le=1024,
        description="Adapters the engine keeps loaded (at least --max-loras); beyond it, the "
        "least recently used unpinned adapter is evicted and reloaded on its next request.",
    )
    max_adapter_mib: int = Field(
        1024, ge=1, le=65536, description="Size cap of an adapter's safetensors file in MiB."
    )
    adapter_labels: int = Field(
        32,
        ge=0,
        le=1000,
        description="Adapter names or aliases with their own metric label; the rest share 'other'.",
    )
    max_lora_rank: Annotated[int, AfterValidator(_lora_rank)] = Field(
        16, description="Largest LoRA rank the engine accepts."
    )
    max_model_len: int = Field(
        2048, ge=128, le=131072, description="Longest sequence (prompt plus output) in tokens."
    )
    tls_cert_file: Path | None = Field(
        None, description="PEM certificate chain; with --tls-key-file, gRPC is served over TLS."
    )
    tls_key_file: Path | None = Field(None, description="PEM private key of --tls-cert-file.")
    auth_tokens_file: Path | None = Field(
        None,
        description="YAML/JSON list of {token, tenant, role}; when unset, authentication is off.",
    )
    engine_threads: Annotated[int, AfterValidator(_cpu_count)] = Field(
        default_factory=lambda: max(1, available_cpus() // 2),
        ge=1,
        description="CPU threads of the inference engine (CPU builds); the rest are left to "
        "training. Default: half the CPUs this process may use (its affinity mask, capped by a "
        "cgroup CPU quota such as a pod's CPU limit).",
    )
    engine_kv_cache_gib: int = Field(
        1, ge=1, le=1024, description="KV-cache size of the engine in GiB (CPU builds)."
    )
    trainer_threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="CPU threads of a training job (default: the CPUs the engine does not use, "
        "at least 1; in adapterd worker, the CPUs shared among its slots).",
    )
    train_workers: int = Field(
        1,
        ge=0,
        le=1,
        description="Training jobs this server runs beside its engine: 1 (the embedded worker) "
        "or 0 (it only evaluates and serves; `adapterd worker` processes train). More at once: "
        "run workers.",
    )
    slots: int = Field(
        1,
        ge=1,
        le=64,
        description="adapterd worker: training jobs it runs at once, each on an equal block "
        "of its accelerators.",
    )
    max_job_attempts: int = Field(
        2,
        ge=1,
        le=10,
        description="Crashed runs after which a job fails: trainer crashes and runs whose "
        "owner died (its lease expired). Bad data, bad settings and out of memory are never "
        "retried; runs the server stopped do not count.",
    )
    max_queued_jobs: int = Field(
        100, ge=1, le=100_000, description="Queued jobs at most; past it SubmitJob is refused."
    )
    max_upload_mib: int = Field(
        1024, ge=1, le=1_048_576, description="Size cap of an uploaded dataset in MiB."
    )
    engine_max_restarts: int = Field(
        3,
        ge=0,
        le=100,
        description="Crashes of the engine within 10 minutes that are restarted (with backoff); "
        "past them it stays failed and liveness turns NOT_SERVING.",
    )
    tenant_max_queued_jobs: int = Field(
        50,
        ge=1,
        le=100_000,
        description="Queued jobs one tenant may have (counted in the store); past it SubmitJob "
        "and Evaluate are RESOURCE_EXHAUSTED.",
    )
    tenant_max_watch_streams: int = Field(
        16, ge=1, le=10_000, description="WatchJob streams one tenant may hold open per process."
    )
    tenant_max_generations: int = Field(
        64,
        ge=1,
        le=100_000,
        description="Generation requests (gRPC and HTTP) one tenant may have in flight per "
        "process.",
    )
    user_max_priority: int = Field(
        0,
        ge=-100,
        le=100,
        description="The highest job priority a user token may ask for (admins up to 100), so one "
        "tenant cannot jump every other's queue.",
    )
    tenant_upload_quota_mib: int = Field(
        10_240,
        ge=1,
        le=100_000_000,
        description="Bytes one tenant's uploads may hold on disk, in MiB (counted in the store, "
        "so it holds across replicas); past it an upload is RESOURCE_EXHAUSTED.",
    )
    max_http_body_mib: int = Field(
        4, ge=1, le=1024, description="Size cap of an HTTP request body in MiB (413 beyond)."
    )
    max_concurrent_rpcs: int = Field(
        1024,
        ge=16,
        le=100_000,
        description="gRPC calls the server runs at once; past it a call is RESOURCE_EXHAUSTED.",
    )
    cancel_grace_seconds: float = Field(
        10.0,
        gt=0,
        le=600,
        description="After SIGTERM, how long a cancelled trainer may take before SIGKILL.",
    )
    job_lease_seconds: float = Field(
        30.0,
        ge=3,
        le=3600,
        description="How long a claimed job stays this server's without a renewal (renewed every "
        "third of it): a job whose owner died waits again once its lease ran out, and resumes "
        "from its last checkpoint. Longer than --cancel-grace-seconds, so a trainer stopped on "
        "its parent's death has written its checkpoint before anyone else claims the job.",
    )
    engine_dtype: Precision = Field(
        "auto",
        description="Dtype of the engine's weights and activations: auto (bf16 where the device "
        "computes it natively, else fp32 on the CPU and fp16 on a GPU), bfloat16, float16 or "
        "float32.",
    )
    engine_gpu_memory_fraction: float = Field(
        0.5,
        ge=0.05,
        le=0.95,
        description="Share of the GPU's memory the engine takes (vLLM's gpu_memory_utilization); "
        "a training job on the same GPU has the rest. Ignored on the CPU.",
    )
    engine_sleep_while_training: bool = Field(
        False,
        description="Put the engine to sleep (vLLM sleep mode: weights to host memory, KV cache "
        "freed) while a job trains, so the trainer has the whole GPU; inference is UNAVAILABLE "
        "and readiness NOT_SERVING meanwhile. Needs a CUDA GPU.",
    )
    judge_urls: Annotated[dict[str, str], NoDecode, BeforeValidator(_name_url_pairs)] = Field(
        default_factory=dict,
        description="OpenAI-compatible servers an evaluation's LLM judge may use, as "
        "name=url pairs separated by commas (e.g. 'gpt=https://api.openai.com/v1'); an "
        "evaluation names one of them, never a URL.",
    )
    import_urls: Annotated[dict[str, str], NoDecode, BeforeValidator(_name_url_pairs)] = Field(
        default_factory=dict,
        description="Servers ImportAdapter may download adapter archives from, as name=url "
        "pairs separated by commas (e.g. 'hub=https://huggingface.co'); a client names one of "
        "them and a path under it, never a URL, and redirects are followed only to URLs under "
        "one of them.",
    )
    judge_api_key: SecretStr | None = Field(
        None, description="Bearer token sent to the judge_urls servers (unset: none)."
    )
    drift_interval_seconds: float = Field(
        60.0,
        ge=1,
        le=86400,
        description="How often prompt drift is measured per captured adapter or alias, over the "
        "prompts captured in the last hour, against the adapter's training prompts.",
    )
    eval_concurrency: int = Field(
        256,
        ge=1,
        le=4096,
        description="Engine requests one evaluation keeps in flight (they queue behind client "
        "traffic); as many as the engine batches, so its batches stay as full as a direct run's.",
    )
    drain_grace_seconds: float = Field(
        10.0, gt=0, le=3600, description="On SIGTERM, how long in-flight calls may take to finish."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level."
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> "ServerSettings":
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("--tls-cert-file and --tls-key-file go together: give both or neither")
        return self

    def tls_pair(self) -> tuple[bytes, bytes] | None:
        """(certificate chain, private key) PEM bytes, or None without TLS.

        Raises:
            ConfigError: naming the flag whose file cannot be read.
        """
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        pair = []
        for flag, path in (
            ("--tls-cert-file", self.tls_cert_file),
            ("--tls-key-file", self.tls_key_file),
        ):
            try:
                pair.append(path.read_bytes())
            except OSError as exc:
                raise ConfigError(f"{flag} {path}: cannot read it ({exc.strerror})") from None
        return pair[0], pair[1]

    @model_validator(mode="after")
    def _lease_outlives_the_grace(self) -> "ServerSettings":
        if self.job_lease_seconds <= self.cancel_grace_seconds:
            raise ValueError(
                f"--job-lease-seconds {self.job_lease_seconds:g} must be longer than "
                f"--cancel-grace-seconds {self.cancel_grace_seconds:g} (a stopped trainer "
                "writes its checkpoint within the grace, before its job may be claimed again)"
            )
        return self

    @model_validator(mode="after")
    def _cache_holds_a_batch(self) -> "ServerSettings":
        if self.max_cpu_loras < self.max_loras:
            raise ValueError(
                f"--max-cpu-loras {self.max_cpu_loras} must be at least --max-loras "
                f"{self.max_loras} (the engine keeps every adapter of a batch loaded)"
            )
        return self

    @property
    def resolved_trainer_threads(self) -> int:
        """Training threads: the setting, or the CPUs the engine leaves (at least 1)."""
        return self.trainer_threads or max(1, available_cpus() - self.engine_threads)

    @property
    def resolved_store_url(self) -> str:
        """The store URL, defaulting to SQLite in DATA_DIR."""
        if self.store_url is None:
            return f"sqlite:///{self.data_dir / STORE_FILE}"
        return self.store_url.get_secret_value()

    @property
    def resolved_adapter_root(self) -> Path:
        """The adapter root, defaulting to DATA_DIR/adapters."""
        return self.adapter_root or self.data_dir / "adapters"


class ClientSettings(BaseSettings):
    """Settings of `adapterctl`."""

    model_config = SettingsConfigDict(env_prefix=CLIENT_ENV_PREFIX, frozen=True, extra="forbid")

    target: str = Field("127.0.0.1:50051", min_length=1, description="host:port of the server.")
    token: str | None = Field(None, description="Bearer token, when the server has auth on.")
    tls_ca_file: Path | None = Field(
        None, description="PEM CA certificate to verify the server with; connects over TLS."
    )
    timeout: float = Field(30.0, gt=0, description="Deadline of each call in seconds.")
    load_balancing: LoadBalancing = Field(
        "pick_first",
        description="How calls spread over the addresses the target resolves to: round_robin "
        "over the pods of a headless Service (target dns:///adapterd-grpc-headless:50051), or "
        "pick_first (all to one).",
    )
    output: Literal["text", "json"] = Field("text", description="Output format.")


def flag_name(field: str) -> str:
    """The command-line flag of a settings field: `max_lora_rank` -> `--max-lora-rank`."""
    return "--" + field.replace("_", "-")


def describe_field(model: type[BaseSettings], field: str) -> str:
    """How a user sets a field: `--max-lora-rank (ADAPTERD_MAX_LORA_RANK)`."""
    prefix = model.model_config.get("env_prefix", "")
    return f"{flag_name(field)} ({prefix}{field.upper()})"


def load_settings(model: type[S], overrides: dict[str, Any]) -> S:
    """Builds settings from flags (`overrides`, None meaning "not given") and the environment.

    Raises:
        ConfigError: naming every invalid field with its flag, variable and value, in one line.
    """
    given = {name: value for name, value in overrides.items() if value is not None}
    try:
        return model(**given)
    except ValidationError as exc:
        secret = {n for n, f in model.model_fields.items() if SecretStr in get_args(f.annotation)}
        problems = describe_validation_error(
            exc, lambda loc: describe_field(model, str(loc[0])) if loc else "?", secret
        )
        raise ConfigError("invalid settings: " + "; ".join(problems)) from None


def add_settings_flags(
    parser: argparse.ArgumentParser, model: type[BaseSettings], only: tuple[str, ...] = ()
) -> None:
    """Adds one flag per settings field (or per field in `only`), help text from its docs.

    Flags default to None, meaning "not given": the environment or the field default applies.
    """
    prefix = model.model_config.get("env_prefix", "")
    for name, field in model.model_fields.items():
        if only and name not in only:
            continue
        default = "derived" if field.default_factory is not None else field.default
        parser.add_argument(
            flag_name(name),
            dest=name,
            default=None,
            metavar=name.split("_")[-1].upper(),
            help=f"{field.description} [env {prefix}{name.upper()}; default: {default}]",
        )


def settings_from_args(model: type[S], args: argparse.Namespace, only: tuple[str, ...] = ()) -> S:
    """Settings from parsed flags plus the environment (see `load_settings`)."""
    names = only or tuple(model.model_fields)
    return load_settings(model, {name: getattr(args, name, None) for name in names})
