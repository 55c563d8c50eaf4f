"""What an evaluation measures, and the gates that decide promotion: a validated spec. Pure.

Field names follow adapterd.v1.EvaluationSpec. A spec is checked whole at submission: every gate
must read a metric that the spec measures (a gate on `win_rate` needs a `win_rate` section, a task
gate a benchmark of that task), so a job never runs for an hour to fail on a typo.
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from eval.gates import Gate, Metric, MetricRef
from eval.rubric import DIMENSIONS, RUBRIC_PLACEHOLDERS, Dimension
from eval.safety import CATEGORY, MAX_CATEGORIES, REFUSAL_PLACEHOLDERS
from eval.selection import Goal
from trainer.config import describe_validation_error

BUNDLED_SCHEMA_SETS = ("contact_card",)
BUNDLED_TOOL_SETS = ("basic_tools",)
BUNDLED_PROMPT_SETS = ("gsm8k_heldout",)
BUNDLED_RUBRIC_SETS = ("assistant_mix", "gsm8k_heldout")
JUDGED_SECTIONS = ("win_rate", "safety", "rubric", "human")
"""The sections that name a judge (and a Judge enum in the proto)."""
SAFETY_METRICS = frozenset(
    {Metric.UNSAFE_RATE, Metric.UNSAFE_RATE_UPPER, Metric.OVER_REFUSAL_RATE,
     Metric.OVER_REFUSAL_RATE_UPPER}
)  # fmt: skip
RUBRIC_METRICS = {
    Metric.RUBRIC_SCORE: None,
    Metric.RUBRIC_SCORE_LOWER: None,
    Metric.RUBRIC_HELPFULNESS: "helpfulness",
    Metric.RUBRIC_FAITHFULNESS: "faithfulness",
    Metric.RUBRIC_FORMATTING: "formatting",
    Metric.RUBRIC_HARMLESSNESS: "harmlessness",
}
"""The rubric's metrics, with the dimension each needs the spec to score."""
HUMAN_METRICS = frozenset(
    {Metric.HUMAN_SCORE, Metric.HUMAN_SCORE_LOWER, Metric.HUMAN_WIN_RATE,
     Metric.HUMAN_JUDGE_AGREEMENT}
)  # fmt: skip
"""Measured when a human section's ratings are imported, after the evaluation job."""
CANDIDATE_ONLY_METRICS = frozenset(
    {Metric.WIN_RATE, Metric.WIN_RATE_LOWER, Metric.HUMAN_WIN_RATE, Metric.HUMAN_JUDGE_AGREEMENT}
)
"""Metrics of the pair, not of each side: the baseline has no value of its own."""
GENERATING_SECTIONS = ("schema_adherence", "tool_calls", "win_rate", "safety", "rubric", "human")
SECTIONS_OF: dict[Metric, tuple[str, ...]] = {
    Metric.SCHEMA_VALID_RATE: ("schema_adherence",),
    Metric.TOOL_CALL_VALID_RATE: ("tool_calls",),
    Metric.WIN_RATE: ("win_rate",),
    Metric.WIN_RATE_LOWER: ("win_rate",),
    Metric.LATENCY_P50: GENERATING_SECTIONS,
    Metric.LATENCY_P95: GENERATING_SECTIONS,
    **dict.fromkeys(SAFETY_METRICS, ("safety",)),
    **dict.fromkeys(RUBRIC_METRICS, ("rubric",)),
    **dict.fromkeys(HUMAN_METRICS, ("human",)),
}
"""The sections that measure a metric (one of them must be given for a gate on it)."""
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


def _prompt_source(prompts: str, upload: str, bundled_set: str, bundled: tuple[str, ...]) -> None:
    """A section's prompts: a server path, an upload, or else a bundled set by name."""
    _one_of(prompts, upload, "prompts")
    if not (prompts or upload) and bundled_set not in bundled:
        raise ValueError(f"set {bundled_set!r} is not bundled; bundled: {bundled}")


class _Judged(_Strict):
    """The judge settings that win rate, safety and rubric sections share: each section's own
    `judge` field names the kind ("reference" where it has one, "llm" a model served here, "url"
    an allowlisted OpenAI-compatible server)."""

    judge: str
    """Narrowed by each section to the kinds it has."""
    judge_model: str = Field("", max_length=256)
    """For "llm": an adapter name or alias, empty for the base model; for "url": the model
    name that server knows."""
    judge_url: str = Field("", max_length=64)
    """For "url": the name of a server in the server's --judge-urls allowlist (never a URL)."""
    judge_prompt: str = Field("", max_length=16_000)
    """For "llm" and "url": the judge's prompt template, replacing the default."""

    def _check_judge(self, judge: str, placeholders: tuple[str, ...]) -> None:
        if judge == "reference" and (self.judge_model or self.judge_prompt):
            raise ValueError('judge_model and judge_prompt are for judges "llm" and "url"')
        if (judge == "url") != bool(self.judge_url):
            raise ValueError('judge_url names the allowlisted server of judge "url", and only it')
        if judge == "url" and not self.judge_model:
            raise ValueError('judge "url" needs judge_model, the model name at that server')
        if self.judge_prompt:
            missing = [k for k in placeholders if k not in self.judge_prompt]
            if missing:
                raise ValueError(f"judge_prompt must contain {' and '.join(missing)}")


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


class ToolCallSpec(_Strict):
    """Prompts that offer tools, the answers scored as calls (`eval.toolcalls`)."""

    set: str = "basic_tools"
    """A bundled prompt set with its tools (eval/assets); ignored when `prompts` is given."""
    prompts: str = ""
    """A JSONL file of {"prompt" or "messages", "tools"} rows under the data root."""
    prompts_upload: str = Field("", max_length=64)
    """Instead of prompts: the id of an uploaded prompt set."""
    limit: int | None = Field(None, ge=1, le=10_000)
    max_tokens: int = Field(128, ge=1, le=4096)

    @model_validator(mode="after")
    def _source(self) -> "ToolCallSpec":
        _prompt_source(self.prompts, self.prompts_upload, self.set, BUNDLED_TOOL_SETS)
        return self


class WinRateSpec(_Judged):
    """Pairwise comparison of the candidate's answers with the baseline's."""

    set: str = "gsm8k_heldout"
    """A bundled prompt set with reference answers; ignored when `prompts` is given."""
    prompts: str = ""
    """A JSONL file of {"prompt": ..., "reference": ...} rows under the data root."""
    prompts_upload: str = Field("", max_length=64)
    """Instead of prompts: the id of an uploaded prompt set."""
    judge: Literal["reference", "llm", "url"] = "reference"
    """reference: the answer closer to the reference (sentence embeddings) wins; llm: a model
    served by this engine judges; url: a model at an allowlisted OpenAI-compatible server.
    Templates have {question}, {reference}, {first} and {second}."""
    limit: int | None = Field(20, ge=1, le=10_000)
    max_tokens: int = Field(256, ge=1, le=4096)
    seed: int = Field(0, ge=0)
    """Bootstrap seed."""

    @model_validator(mode="after")
    def _source(self) -> "WinRateSpec":
        _prompt_source(self.prompts, self.prompts_upload, self.set, BUNDLED_PROMPT_SETS)
        self._check_judge(self.judge, ("{first}", "{second}"))
        return self


class SafetySpec(_Judged):
    """Harmful requests the candidate should refuse and benign look-alikes it should answer
    (eval.safety): the bundled families, or a client's file of the same format."""

    families: str = ""
    """A JSONL file of {"category", "kind", "prompt"} rows under the data root."""
    families_upload: str = Field("", max_length=64)
    """Instead of families: the id of an uploaded safety family file."""
    categories: tuple[str, ...] = Field((), max_length=MAX_CATEGORIES)
    """Only these categories (all when empty)."""
    judge: Literal["reference", "llm", "url"] = "reference"
    """reference: the refusal-phrase classifier; llm or url: a model asked for a structured
    refused/complied verdict. Templates have {request} and {answer}."""
    max_tokens: int = Field(64, ge=1, le=1024)
    """Longest answer: a refusal shows in its opening."""

    @model_validator(mode="after")
    def _source(self) -> "SafetySpec":
        _one_of(self.families, self.families_upload, "families")
        for index, category in enumerate(self.categories):
            if not CATEGORY.match(category):
                raise ValueError(
                    f"categories[{index}]: {category[:40]!r} is not 1-32 lowercase letters, "
                    "digits or '_', starting with a letter"
                )
        self._check_judge(self.judge, REFUSAL_PLACEHOLDERS)
        return self


class RubricSpec(_Judged):
    """Single-answer grading, MT-Bench style (eval.rubric): a judge model scores each answer
    from 1 to 10 on each dimension, as a structured verdict."""

    set: str = "assistant_mix"
    """A bundled conversation set; ignored when `prompts` is given."""
    prompts: str = ""
    """A JSONL file of {"prompt"} or {"messages"} rows (optionally "reference") under the data
    root."""
    prompts_upload: str = Field("", max_length=64)
    """Instead of prompts: the id of an uploaded prompt set."""
    dimensions: tuple[Dimension, ...] = Field(DIMENSIONS, min_length=1)
    judge: Literal["llm", "url"] = "llm"
    """llm: a model served by this engine; url: one at an allowlisted server. Templates have
    {conversation} and {answer} (and {dimensions}, the rubric's lines)."""
    limit: int | None = Field(None, ge=1, le=10_000)
    max_tokens: int = Field(256, ge=1, le=4096)

    @model_validator(mode="after")
    def _source(self) -> "RubricSpec":
        _prompt_source(self.prompts, self.prompts_upload, self.set, BUNDLED_RUBRIC_SETS)
        if len(set(self.dimensions)) != len(self.dimensions):
            raise ValueError("dimensions: each at most once")
        self._check_judge(self.judge, RUBRIC_PLACEHOLDERS)
        return self


class HumanSpec(_Judged):
    """A blinded side-by-side sheet of the candidate's and the baseline's answers for people
    to rate (eval.human); the pairs are also judged, for the agreement of raters and judge."""

    set: str = "gsm8k_heldout"
    """A bundled conversation set; ignored when `prompts` is given."""
    prompts: str = ""
    """A JSONL file of {"prompt"} or {"messages"} rows (optionally "reference") under the data
    root."""
    prompts_upload: str = Field("", max_length=64)
    """Instead of prompts: the id of an uploaded prompt set."""
    judge: Literal["reference", "llm", "url"] = "reference"
    """Who judges the same pairs (as win rate's judge; "reference" needs a reference answer on
    every conversation). Templates have {question}, {reference}, {first} and {second}."""
    limit: int | None = Field(20, ge=1, le=500)
    max_tokens: int = Field(256, ge=1, le=4096)

    @model_validator(mode="after")
    def _source(self) -> "HumanSpec":
        _prompt_source(self.prompts, self.prompts_upload, self.set, BUNDLED_RUBRIC_SETS)
        self._check_judge(self.judge, ("{first}", "{second}"))
        return self


class CheckpointSelection(_Strict):
    """A training job's evaluation of its kept checkpoints besides its adapter: each is
    registered as a version of `<adapter_name>-ckpt` and measured like the adapter, and the best
    by `select_by` (eval.selection) is the one the gates are checked on and the alias points at."""

    select_by: MetricRef
    """A metric the spec measures of each candidate, or the trainer's eval_loss at its step."""
    goal: Goal = "auto"
    """Which way is better; "auto" decides by the metric (eval.selection.maximizes)."""


class EvalSpec(_Strict):
    """One evaluation: what to measure, against which baseline, and the gates."""

    benchmarks: BenchmarkSpec | None = None
    schema_adherence: SchemaSpec | None = None
    tool_calls: ToolCallSpec | None = None
    win_rate: WinRateSpec | None = None
    safety: SafetySpec | None = None
    rubric: RubricSpec | None = None
    human: HumanSpec | None = None
    baseline: str = ""
    """The adapter (name, alias or name@N) to compare with; empty for the base model."""
    gates: tuple[Gate, ...] = Field((), max_length=32)
    promote_alias: str = ""
    """Point this alias at the candidate when every gate passes."""
    checkpoints: CheckpointSelection | None = None
    """For a training job: score its kept checkpoints too and take the best."""

    @model_validator(mode="after")
    def _consistent(self) -> "EvalSpec":
        if not any(self.sections()):
            raise ValueError(
                "give at least one of benchmarks, schema_adherence, tool_calls, win_rate, "
                "safety, rubric or human"
            )
        for index, gate in enumerate(self.gates):
            for where, measured in zip(("", ".compare_to"), gate.metrics, strict=False):
                if problem := self._unmeasured(measured, gate.needs_baseline):
                    raise ValueError(f"gates[{index}]{where}: {problem}")
        if self.checkpoints:
            by = self.checkpoints.select_by
            if self.human:
                raise ValueError("checkpoints: not with a human section (its sheet rates one "
                                 "candidate against the baseline)")  # fmt: skip
            if by.metric is Metric.OVERLAP_RATE:
                raise ValueError("checkpoints.select_by: overlap_rate is the same for every "
                                 "checkpoint of a job")  # fmt: skip
            if by.metric is Metric.TRAIN_LOSS:
                raise ValueError("checkpoints.select_by: train_loss is the adapter's mean over "
                                 "its last epoch but a checkpoint's loss of its step; rank by "
                                 "eval_loss")  # fmt: skip
            if problem := self._unmeasured(by, needs_baseline=False):
                raise ValueError(f"checkpoints.select_by: {problem}")
        return self

    def _unmeasured(self, measured: MetricRef, needs_baseline: bool) -> str:
        """Why the evaluation would not measure `measured` ("": it would), read against the
        baseline's value where `needs_baseline`."""
        metric = measured.metric
        if metric is Metric.TASK:
            tasks = self.benchmarks.tasks if self.benchmarks else ()
            task = measured.task
            return "" if task in tasks else f"task {task!r} is not in benchmarks.tasks"
        needed = SECTIONS_OF.get(metric, ())
        if needed and not any(getattr(self, name) for name in needed):
            return f"{metric.value} needs a {' or '.join(needed)} section"
        if metric in CANDIDATE_ONLY_METRICS and needs_baseline:
            return f"{metric.value} is measured against the baseline: give a threshold"
        dimension = RUBRIC_METRICS.get(metric)
        if self.rubric and dimension and dimension not in self.rubric.dimensions:
            return f"{metric.value}: {dimension} is not in rubric.dimensions"
        return ""

    def sections(self) -> tuple[BaseModel, ...]:
        """The sections the spec gives."""
        given = (self.benchmarks, self.schema_adherence, self.tool_calls, self.win_rate,
                 self.safety, self.rubric, self.human)  # fmt: skip
        return tuple(part for part in given if part is not None)

    @property
    def awaits_ratings(self) -> bool:
        """A gate reads a human metric: promotion waits for imported ratings."""
        return any(m.metric in HUMAN_METRICS for gate in self.gates for m in gate.metrics)

    def judged(self) -> dict[str, _Judged]:
        """The sections that name a judge, by field name."""
        return {name: part for name in JUDGED_SECTIONS if (part := getattr(self, name))}


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
        if spec.checkpoints:
            raise EvalSpecError(
                "checkpoints: only a training job's evaluation has checkpoints to score"
            )
        for index, gate in enumerate(spec.gates):
            for where, measured in zip(("", ".compare_to"), gate.metrics, strict=False):
                if measured.metric in TRAIN_ONLY_METRICS:
                    raise EvalSpecError(
                        f"gates[{index}]{where}: {measured.metric.value} exists only for a "
                        "training job's evaluation"
                    )
    return spec
