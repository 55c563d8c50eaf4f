"""adapterd's Prometheus metrics, declared once on an injectable registry.

The page that `/metrics` serves holds this registry only: vLLM registers its own `vllm:*`
series on prometheus_client's global registry, and colons are reserved for recording rules.
Labels are bounded: RPC method names come from the protos, never from a request; the adapter
label is one of at most `adapter_labels` registered names or aliases (`AdapterLabels`), "base"
for the base model and "other" for everything else, never a version. The one exception is
`adapterd_lora_requests_info`, vLLM's `vllm:lora_requests_info` under our prefix for the Gateway
API Inference Extension's endpoint picker: its labels list the adapter versions in the engine's
batch, and it holds one series at a time (the last step's).
"""

import time
from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

from service.inference.engine import EngineStats

# Unary RPCs answer in milliseconds, streams and engine work take seconds.
RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Inter-token latency: milliseconds on a GPU, tens of milliseconds on a CPU.
TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5)
BASE_LABEL, OTHER_LABEL = "base", "other"


class Metrics:
    """Every metric adapterd exports; one instance per server."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.build_info = Info(
            "adapterd_build", "adapterd version and base model.", registry=self.registry
        )
        self.engine_ready = Gauge(
            "adapterd_engine_ready",
            "1 when the inference engine is warm and serving, else 0.",
            registry=self.registry,
        )
        self.engine_restarts = Counter(
            "adapterd_engine_restarts_total",
            "Restarts of the inference engine after it crashed.",
            registry=self.registry,
        )
        self.engine_start_seconds = Gauge(
            "adapterd_engine_start_duration_seconds",
            "How long the last engine start took, warm-up included.",
            registry=self.registry,
        )
        self.grpc_requests = Counter(
            "adapterd_grpc_requests",
            "gRPC calls handled, by method and status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.grpc_latency = Histogram(
            "adapterd_grpc_request_duration_seconds",
            "Time from receiving a gRPC call to its status, by method.",
            ["method"],
            buckets=RPC_BUCKETS,
            registry=self.registry,
        )
        # Serving, per adapter (label: see AdapterLabels).
        self.ttft = Histogram(
            "adapterd_time_to_first_token_seconds",
            "From receiving a generation request to its first generated token, by adapter.",
            ["adapter"],
            buckets=RPC_BUCKETS,
            registry=self.registry,
        )
        self.inter_token = Histogram(
            "adapterd_inter_token_latency_seconds",
            "Time between consecutive streamed chunks of one request, by adapter.",
            ["adapter"],
            buckets=TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.generation_latency = Histogram(
            "adapterd_generation_duration_seconds",
            "From receiving a generation request to its last token, by adapter.",
            ["adapter"],
            buckets=RPC_BUCKETS,
            registry=self.registry,
        )
        self.generation_requests = Counter(
            "adapterd_generation_requests",
            "Generation requests by adapter and outcome (ok, or the status code of the error).",
            ["adapter", "outcome"],
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "adapterd_prompt_tokens",
            "Prompt tokens of generation requests, by adapter.",
            ["adapter"],
            registry=self.registry,
        )
        self.generated_tokens = Counter(
            "adapterd_generated_tokens",
            "Tokens generated, by adapter.",
            ["adapter"],
            registry=self.registry,
        )
        # Adapter loading and residency.
        self.adapter_load_seconds = Histogram(
            "adapterd_adapter_load_duration_seconds",
            "Time to load an adapter into the engine (checks included for registrations), by "
            "reason: register (LoadAdapter) or reload (after an eviction).",
            ["reason"],
            buckets=RPC_BUCKETS,
            registry=self.registry,
        )
        self.adapter_loads = Counter(
            "adapterd_adapter_loads",
            "Adapter loads into the engine, by reason: register or reload.",
            ["reason"],
            registry=self.registry,
        )
        self.adapter_evictions = Counter(
            "adapterd_adapter_evictions",
            "Adapters evicted from the engine's cache to make room (they stay registered).",
            registry=self.registry,
        )
        self.adapters_resident = Gauge(
            "adapterd_adapters",
            "Registered adapter versions by tier: engine (in its cache) or disk (evicted).",
            ["tier"],
            registry=self.registry,
        )
        # The engine's scheduler, from vLLM's per-step stats.
        self.engine_waiting = Gauge(
            "adapterd_engine_waiting_requests",
            "Requests queued in the engine for a batch slot.",
            registry=self.registry,
        )
        self.engine_running = Gauge(
            "adapterd_engine_running_requests",
            "Requests in the engine's running batch.",
            registry=self.registry,
        )
        self.engine_kv_cache_usage = Gauge(
            "adapterd_engine_kv_cache_usage_ratio",
            "Fraction of the engine's KV cache in use.",
            registry=self.registry,
        )
        # As vLLM's: the value is the step's wall-clock time (the endpoint picker reads the
        # series with the largest), the labels the versions running and waiting, comma-joined.
        self.lora_requests_info = Gauge(
            "adapterd_lora_requests_info",
            "Adapter versions in the engine's batch: running, waiting, and the max_lora limit.",
            ["max_lora", "waiting_lora_adapters", "running_lora_adapters"],
            registry=self.registry,
        )
        self._lora_labels: tuple[str, str, str] | None = None

        # Jobs.
        self.jobs = Gauge(
            "adapterd_jobs",
            "Jobs in the store by kind and state.",
            ["kind", "state"],
            registry=self.registry,
        )
        self.job_duration = Histogram(
            "adapterd_job_duration_seconds",
            "From a job's first trainer start to its final state, by kind and final state.",
            ["kind", "state"],
            buckets=(10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400),
            registry=self.registry,
        )
        self.training_tokens_per_second = Gauge(
            "adapterd_training_tokens_per_second",
            "Input tokens per second of the running training job.",
            registry=self.registry,
        )
        self.training_loss = Gauge(
            "adapterd_training_loss",
            "Last step loss of the running training job.",
            registry=self.registry,
        )
        self.trainer_failures = Counter(
            "adapterd_trainer_failures",
            "Training jobs that failed, by reason (data_rejected, out_of_memory, ...).",
            ["reason"],
            registry=self.registry,
        )

        # The OpenAI-compatible HTTP API (its generations count in the per-adapter series too).
        self.http_requests = Counter(
            "adapterd_http_requests",
            "HTTP API requests by route (/v1/models, /v1/chat/completions, /v1/completions, "
            "other) and status code.",
            ["path", "code"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "adapterd_http_request_duration_seconds",
            "Time from an HTTP API request to its response headers, by route.",
            ["path"],
            buckets=RPC_BUCKETS,
            registry=self.registry,
        )

        # Quality, per adapter (the adapter label as above; "base" for the base model).
        self.eval_task_score = Gauge(
            "adapterd_eval_task_score",
            "Last benchmark score by adapter, task (bundled tasks by name, else other) and "
            "metric (lm-eval's name, with its filter for bundled tasks; else other).",
            ["adapter", "task", "metric"],
            registry=self.registry,
        )
        self.eval_quality = Gauge(
            "adapterd_eval_quality",
            "Last schema and win-rate scores by adapter: schema_valid_rate, "
            "schema_valid_rate_constrained, schema_parse_rate, win_rate, win_rate_lower, "
            "win_rate_upper, win_rate_length_controlled.",
            ["adapter", "metric"],
            registry=self.registry,
        )
        self.eval_timestamp = Gauge(
            "adapterd_eval_last_timestamp_seconds",
            "When the adapter's last evaluation finished (Unix time).",
            ["adapter"],
            registry=self.registry,
        )
        self.evaluation_duration = Histogram(
            "adapterd_evaluation_duration_seconds",
            "How long evaluations took, baseline included, by outcome (succeeded, failed).",
            ["outcome"],
            buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
            registry=self.registry,
        )

        self.captures = Counter(
            "adapterd_captures",
            "Client requests chosen for capture, by adapter and outcome: stored, or dropped "
            "(queue_full: the writer fell behind; store_error: the store refused the write).",
            ["adapter", "outcome"],
            registry=self.registry,
        )
        self.capture_redactions = Counter(
            "adapterd_capture_redactions",
            "Personal data replaced in captured traffic and feedback before it was stored, by "
            "kind (email, phone, card, iban, ssn, ip).",
            ["kind"],
            registry=self.registry,
        )
        self.captures_expired = Counter(
            "adapterd_captures_expired",
            "Captures this process deleted when their retention ran out.",
            registry=self.registry,
        )
        self.feedback = Counter(
            "adapterd_feedback",
            "Feedback on captured answers, by adapter and kind (rating, flag, correction).",
            ["adapter", "kind"],
            registry=self.registry,
        )
        self.feedback_rating = Histogram(
            "adapterd_feedback_rating",
            "Ratings of captured answers (1-5; a thumbs up is 5, down 1), by adapter.",
            ["adapter"],
            buckets=(1, 2, 3, 4, 5),
            registry=self.registry,
        )

        self.online_schema_checks = Counter(
            "adapterd_online_schema_checks",
            "Captured answers checked against their capture policy's JSON Schema, by adapter and "
            "outcome (valid, invalid, not_json).",
            ["adapter", "outcome"],
            registry=self.registry,
        )
        self.online_quality = Gauge(
            "adapterd_online_quality",
            "Quality of this process's captured traffic by adapter, over its last 200 captures "
            "or ratings: schema_valid_rate, schema_parse_rate (beside adapterd_eval_quality's "
            "offline numbers), mean_rating (1-5), flag_rate.",
            ["adapter", "metric"],
            registry=self.registry,
        )

        self.drift = Gauge(
            "adapterd_drift",
            "Prompt drift of the last hour's captured traffic from the adapter's training "
            "prompts, by adapter and metric: centroid_distance (cosine, MiniLM embeddings), mmd "
            "and mmd_p_value (kernel two-sample test), length_ks (prompt lengths), prompts.",
            ["adapter", "metric"],
            registry=self.registry,
        )

    def record_engine_stats(self, stats: EngineStats) -> None:
        """Takes the engine's scheduler stats after a step (called by the engine)."""
        self.engine_waiting.set(stats.waiting)
        self.engine_running.set(stats.running)
        self.engine_kv_cache_usage.set(stats.kv_cache_usage)
        labels = (
            str(stats.max_loras),
            ",".join(stats.waiting_adapters),
            ",".join(stats.running_adapters),
        )
        # The new series first, then the old one goes: a scrape in between sees both, and the
        # picker takes the newer by its value.
        self.lora_requests_info.labels(*labels).set(time.time())
        if self._lora_labels is not None and self._lora_labels != labels:
            self.lora_requests_info.remove(*self._lora_labels)
        self._lora_labels = labels

    def per_adapter(self) -> Iterable[Counter | Gauge | Histogram]:
        """The metrics with an `adapter` label."""
        return (
            self.ttft,
            self.inter_token,
            self.generation_latency,
            self.generation_requests,
            self.prompt_tokens,
            self.generated_tokens,
            self.eval_task_score,
            self.eval_quality,
            self.eval_timestamp,
            self.captures,
            self.feedback,
            self.feedback_rating,
            self.online_schema_checks,
            self.online_quality,
            self.drift,
        )


class AdapterLabels:
    """Keeps the `adapter` label bounded.

    A registered name or alias gets its own label while fewer than `limit` have one; the rest
    share "other". Releasing a name (its last version unregistered, or its alias removed)
    deletes its series and frees its place.
    """

    def __init__(self, metrics: Metrics, limit: int) -> None:
        self._metrics = metrics
        self._limit = limit
        self._own: set[str] = set()

    def admit(self, name: str) -> None:
        """Gives `name` its own label if there is room."""
        if len(self._own) < self._limit:
            self._own.add(name)

    def release(self, name: str) -> None:
        """Takes `name`'s label away and deletes its series."""
        if name in self._own:
            self._own.discard(name)
            for metric in self._metrics.per_adapter():
                metric.remove_by_labels({"adapter": name})

    def of(self, name: str) -> str:
        """The label for a request that named `name` ("" for the base model)."""
        if not name:
            return BASE_LABEL
        return name if name in self._own else OTHER_LABEL
