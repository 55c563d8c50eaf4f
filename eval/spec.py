"""What an evaluation measures, and the gates that decide promotion: a validated spec. Pure.

Field names follow adapterd.v1.EvaluationSpec. A spec is checked whole at submission: every gate
must read a metric that the spec measures (a gate on `win_rate` needs a `win_rate` section, a task
gate a benchmark of that task), so a job never runs for an hour to fail on a typo.
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from eval.gates import Gate, Metric, MetricRef
from trainer.config import describe_validation_error

BUNDLED_SCHEMA_SETS = ("contact_card",)
BUNDLED_PROMPT_SETS = ("gsm8k_heldout",)
TRAIN_ONLY_METRICS = frozenset({Metric.EVAL_LOSS, Metric.TRAIN_LOSS, Metric.OVERLAP_RATE})
"""Metrics that only a training job's evaluation has (from its trainer)."""


class EvalSpecError(ValueError):
    """The spec is invalid; one `field: problem` per line, joined by "; "."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _one_of(path: str, upload: str, field: str) -> None:
    if path and upload:
        raise ValueError(
            f"give {field} (a server path) or {field.split('_', maxsplit=1)[0]}_upload, not both"
        )


class BenchmarkSpec(_Strict):
    """lm-eval tasks: bundled ones by name, or from a task directory under the data root."""

    tasks: tuple[str, ...] = Field(min_length=1, max_length=8)
    task_dir: str = ""
    """A directory of task YAMLs under the server's data root (besides the bundled tasks)."""
    task_upload: str = Field("", max_length=64)
    """Instead of task_dir: the id of an uploaded task archive."""
    limit: int | None = Field(None, ge=1, le=100_000)
    """Documents per task (all when unset)."""
    num_fewshot: int | None = Field(None, ge=0, le=25)
    seed: int = Field(0, ge=0)
    chat_template: bool = True
    """Render prompts with the model's chat template, as served."""

    @model_validator(mode="after")
    def _source(self) -> "BenchmarkSpec":
        if self.task_dir and self.task_upload:
            raise ValueError("give task_dir (a server path) or task_upload, not both")
        return self


class SchemaSpec(_Strict):
    """Prompts that ask for JSON, and the JSON Schema the answers must satisfy."""

    set: str = "contact_card"
    """A bundled prompt set with its schema (eval/assets); ignored when `prompts` is given."""
    prompts: str = ""
    """A JSONL file of {"prompt": ...} rows under the data root."""
    schema_file: str = ""
    """Its JSON Schema under the data root (with `prompts`)."""
    prompts_upload: str = Field("", max_length=64)
    """Instead of prompts: the id of an uploaded prompt set."""
    schema_upload: str = Field("", max_length=64)
    """Instead of schema_file: the id of an uploaded JSON Schema."""
    limit: int | None = Field(None, ge=1, le=10_000)
    max_tokens: int = Field(256, ge=1, le=4096)

    @model_validator(mode="after")
    def _source(self) -> "SchemaSpec":
        _one_of(self.prompts, self.prompts_upload, "prompts")
        _one_of(self.schema_file, self.schema_upload, "schema_file")
        has_prompts = bool(self.prompts or self.prompts_upload)
        if has_prompts != bool(self.schema_file or self.schema_upload):
            raise ValueError("give prompts and schema_file together, or neither (a bundled set)")
        if not has_prompts and self.set not in BUNDLED_SCHEMA_SETS:
            raise ValueError(f"set {self.set!r} is not bundled; bundled: {BUNDLED_SCHEMA_SETS}")
        return self


class WinRateSpec(_Strict):
    """Pairwise comparison of the candidate's answers with the baseline's."""

    set: str = "gsm8k_heldout"
    """A bundled prompt set with reference answers; ignored when `prompts` is given."""
    prompts: str = ""
    """A JSONL file of {"prompt": ..., "reference": ...} rows under the data root."""
    prompts_upload: str = Field("", max_length=64)
    """Instead of prompts: the id of an uploaded prompt set."""
    judge: Literal["reference", "llm", "url"] = "reference"
    """reference: the answer closer to the reference (sentence embeddings) wins; llm: a model
    served by this engine judges; url: a model at an allowlisted OpenAI-compatible server."""
    judge_model: str = ""
    """For "llm": an adapter name or alias, empty for the base model; for "url": the model
    name that server knows."""
    judge_url: str = ""
    """For "url": the name of a server in the server's --judge-urls allowlist (never a URL)."""
    judge_prompt: str = ""
    """For "llm" and "url": a template with {question}, {reference}, {first} and {second}."""
    limit: int | None = Field(20, ge=1, le=10_000)
    max_tokens: int = Field(256, ge=1, le=4096)
    seed: int = Field(0, ge=0)
    """Bootstrap seed."""

    @model_validator(mode="after")
    def _source(self) -> "WinRateSpec":
        _one_of(self.prompts, self.prompts_upload, "prompts")
        if not (self.prompts or self.prompts_upload) and self.set not in BUNDLED_PROMPT_SETS:
            raise ValueError(f"set {self.set!r} is not bundled; bundled: {BUNDLED_PROMPT_SETS}")
        if self.judge == "reference" and (self.judge_model or self.judge_prompt):
            raise ValueError('judge_model and judge_prompt are for judges "llm" and "url"')
        if (self.judge == "url") != bool(self.judge_url):
            raise ValueError('judge_url names the allowlisted server of judge "url", and only it')
        if self.judge == "url" and not self.judge_model:
            raise ValueError('judge "url" needs judge_model, the model name at that server')
        if self.judge_prompt:
            missing = [k for k in ("{first}", "{second}") if k not in self.judge_prompt]
            if missing:
                raise ValueError(f"judge_prompt must contain {' and '.join(missing)}")
        return self


class EvalSpec(_Strict):
    """One evaluation: what to measure, against which baseline, and the gates."""

    benchmarks: BenchmarkSpec | None = None
    schema_adherence: SchemaSpec | None = None
    win_rate: WinRateSpec | None = None
    baseline: str = ""
    """The adapter (name, alias or name@N) to compare with; empty for the base model."""
    gates: tuple[Gate, ...] = Field((), max_length=32)
    promote_alias: str = ""
    """Point this alias at the candidate when every gate passes."""

    @model_validator(mode="after")
    def _consistent(self) -> "EvalSpec":
        if not (self.benchmarks or self.schema_adherence or self.win_rate):
            raise ValueError("give at least one of benchmarks, schema_adherence or win_rate")
        for index, gate in enumerate(self.gates):
            for where, measured in zip(("", ".compare_to"), gate.metrics, strict=False):
                if problem := self._unmeasured(gate, measured):
                    raise ValueError(f"gates[{index}]{where}: {problem}")
        return self

    def _unmeasured(self, gate: Gate, measured: MetricRef) -> str:
        """Why the evaluation would not measure `measured`, a metric `gate` reads ("": it
        would)."""
        metric = measured.metric
        if metric is Metric.TASK:
            tasks = self.benchmarks.tasks if self.benchmarks else ()
            task = measured.task
            return "" if task in tasks else f"task {task!r} is not in benchmarks.tasks"
        if metric is Metric.SCHEMA_VALID_RATE and not self.schema_adherence:
            return "schema_valid_rate needs a schema_adherence section"
        if metric in (Metric.WIN_RATE, Metric.WIN_RATE_LOWER):
            if not self.win_rate:
                return f"{metric.value} needs a win_rate section"
            if gate.needs_baseline:
                return f"{metric.value} is measured against the baseline: give a threshold"
        if metric in (Metric.LATENCY_P50, Metric.LATENCY_P95) and not (
            self.schema_adherence or self.win_rate
        ):
            return f"{metric.value} is measured on generations: add schema_adherence or win_rate"
        return ""


def parse_eval_spec(fields: dict[str, object], *, training: bool) -> EvalSpec:
    """Validates an evaluation spec; `training` allows gates on the trainer's losses.

    Raises:
        EvalSpecError: naming each field and its problem.
    """
    try:
        spec = EvalSpec.model_validate(fields)
    except ValidationError as exc:
        raise EvalSpecError("; ".join(describe_validation_error(exc))) from None
    if not training:
        for index, gate in enumerate(spec.gates):
            for where, measured in zip(("", ".compare_to"), gate.metrics, strict=False):
                if measured.metric in TRAIN_ONLY_METRICS:
                    raise EvalSpecError(
                        f"gates[{index}]{where}: {measured.metric.value} exists only for a "
                        "training job's evaluation"
                    )
    return spec
