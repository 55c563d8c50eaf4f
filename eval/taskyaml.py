"""The loader for lm-eval task YAMLs: an allowlist of what a local task may say.

lm-eval's own loader turns `!function module.name` into an import of client code, renders
prompts with an unsandboxed Jinja environment, loads a `metric` it does not know with
`evaluate.load` (a file path included) and hands `dataset_kwargs` to `datasets.load_dataset`. So a
task YAML, bundled or uploaded, is read here instead:
- plain safe YAML, no tags at all (no `!function`), at most `MAX_YAML_BYTES`;
- only the keys of `TaskFile` below, each typed and bounded (pydantic, `extra="forbid"`): no
  `class`, `process_docs`, `process_results`, `custom_dataset`, `unsafe_code`, `use_prompt`,
  `fewshot_config` or `should_decontaminate`; `dataset_kwargs` holds `data_files` and nothing
  else; `repeats`, `num_fewshot` and generation lengths are capped;
- metrics and aggregations only by a name in lm-eval's own registry (never `hf_evaluate`, never a
  path), filters only from `FILTERS` (no `custom`, no `decontaminate`);
- every template parses in the sandbox of `eval.sandbox` and stays within its rules; every
  regular expression compiles in RE2;
- `include` only a file inside the task's own directory (no absolute path, no '..', no symlink
  out).
Errors name the file and the key. Rendering itself happens in the sandbox too
(`eval.sandbox.harden_lm_eval`).
"""

from functools import cache
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from eval.sandbox import UnsafeTemplateError, check_template, compile_re2
from trainer.config import describe_validation_error
from trainer.files import OutsideRootError, inside_root

MAX_YAML_BYTES = 256 * 1024
MAX_GEN_TOKENS = 4096
FILTERS = (
    "regex", "regex_pos", "take_first", "take_first_k", "majority_vote", "remove_whitespace",
    "lowercase", "uppercase", "map", "multi_choice_regex", "format_span",
)  # fmt: skip
"""lm-eval's filters an uploaded task may use: none runs code of the task's."""


class TaskYamlError(ValueError):
    """A task is refused; the message names the file and the reason."""


@cache
def _registry() -> tuple[frozenset[str], frozenset[str]]:
    """lm-eval's registered metric and aggregation names."""
    import lm_eval.api.metrics  # noqa: F401  (registers them)
    from lm_eval.api.registry import aggregation_registry, metric_registry

    return frozenset(metric_registry), frozenset(aggregation_registry)


def _re2(pattern: str) -> str:
    compile_re2(pattern)
    return pattern


def _template(source: str) -> str:
    try:
        check_template(source)
    except UnsafeTemplateError as exc:
        raise ValueError(str(exc)) from None
    return source


Text = Annotated[str, Field(max_length=20_000)]
Name = Annotated[str, Field(min_length=1, max_length=128)]
Template = Annotated[Text, Field()]
Patterns = Annotated[list[Annotated[str, Field(max_length=1000)]], Field(max_length=32)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricEntry(_Strict):
    """One `metric_list` entry: a registered metric, its aggregation and exact-match options."""

    metric: Name
    aggregation: Name | None = None
    higher_is_better: bool | None = None
    ignore_case: bool | None = None
    ignore_punctuation: bool | None = None
    ignore_numbers: bool | None = None
    regexes_to_ignore: Patterns | None = None
    """Run in RE2."""

    @field_validator("metric")
    @classmethod
    def _registered_metric(cls, value: str) -> str:
        metrics, _ = _registry()
        if value not in metrics:
            raise ValueError(f"{value!r} is not a metric of lm-eval's registry: {sorted(metrics)}")
        return value

    @field_validator("aggregation")
    @classmethod
    def _registered_aggregation(cls, value: str | None) -> str | None:
        _, aggregations = _registry()
        if value is not None and value not in aggregations:
            raise ValueError(f"{value!r} is not an aggregation of lm-eval: {sorted(aggregations)}")
        return value

    @field_validator("regexes_to_ignore")
    @classmethod
    def _linear(cls, value: list[str] | None) -> list[str] | None:
        return [_re2(p) for p in value] if value else value


class FilterStep(_Strict):
    """One step of a filter pipeline, with the options lm-eval's built-in filters take."""

    function: Literal[FILTERS]  # type: ignore[valid-type]
    regex_pattern: Annotated[str, Field(max_length=1000)] | None = None
    """Run in RE2."""
    group_select: int | None = Field(None, ge=-16, le=16)
    fallback: Annotated[str, Field(max_length=1000)] | None = None
    ignore_case: bool | None = None
    ignore_punctuation: bool | None = None
    regexes_to_ignore: Patterns | None = None
    k: int | None = Field(None, ge=1, le=64)
    mapping_dict: dict[Annotated[str, Field(max_length=1000)], str | int | float] | None = Field(
        None, max_length=1000
    )
    default_value: str | int | float | None = None

    @field_validator("regex_pattern")
    @classmethod
    def _linear(cls, value: str | None) -> str | None:
        return _re2(value) if value is not None else value

    @field_validator("regexes_to_ignore")
    @classmethod
    def _linear_all(cls, value: list[str] | None) -> list[str] | None:
        return [_re2(p) for p in value] if value else value


class FilterPipeline(_Strict):
    """A named filter pipeline ("strict-match")."""

    name: Name
    filter: list[FilterStep] = Field(min_length=1, max_length=8)


class GenerationKwargs(_Strict):
    """Generation settings of a `generate_until` task (greedy on the engine)."""

    until: str | list[Annotated[str, Field(max_length=200)]] | None = None
    max_gen_toks: int | None = Field(None, ge=1, le=MAX_GEN_TOKENS)
    do_sample: bool | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)


class DatasetKwargs(_Strict):
    """Only local data files, relative to the task's directory."""

    data_files: str | list[str] | dict[Name, str | list[str]]


class TaskFile(_Strict):
    """The keys a local lm-eval task may have; all optional, since a file may be included."""

    task: Name | None = None
    task_alias: Name | None = None
    tag: Name | list[Name] | None = None
    include: Name | None = None
    dataset_path: Literal["json", "csv", "parquet"] | None = None
    dataset_name: Name | None = None
    dataset_kwargs: DatasetKwargs | None = None
    training_split: Name | None = None
    validation_split: Name | None = None
    test_split: Name | None = None
    fewshot_split: Name | None = None
    output_type: (
        Literal["loglikelihood", "loglikelihood_rolling", "multiple_choice", "generate_until"]
        | None
    ) = None
    doc_to_text: Template | int | None = None
    doc_to_target: Template | int | None = None
    doc_to_choice: Template | list[Text] | None = None
    gen_prefix: Template | None = None
    description: Template | None = None
    target_delimiter: Annotated[str, Field(max_length=100)] | None = None
    fewshot_delimiter: Annotated[str, Field(max_length=100)] | None = None
    num_fewshot: int | None = Field(None, ge=0, le=32)
    repeats: int | None = Field(None, ge=1, le=8)
    metric_list: list[MetricEntry] | None = Field(None, max_length=16)
    filter_list: list[FilterPipeline] | None = Field(None, max_length=8)
    generation_kwargs: GenerationKwargs | None = None
    metadata: dict[Name, str | int | float | bool | None] | None = Field(None, max_length=32)

    @field_validator("doc_to_text", "doc_to_target", "gen_prefix", "description")
    @classmethod
    def _sandboxed(cls, value: str | int | None) -> str | int | None:
        return _template(value) if isinstance(value, str) else value

    @field_validator("doc_to_choice")
    @classmethod
    def _sandboxed_choice(cls, value: str | list[str] | None) -> str | list[str] | None:
        return _template(value) if isinstance(value, str) else value


class _NoTags(yaml.SafeLoader):
    """SafeLoader that refuses every tag, including the ones SafeLoader would accept."""


def _refuse_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    raise TaskYamlError(
        f"line {node.start_mark.line + 1}: YAML tag {node.tag!r} is not allowed in a task (it "
        "could run code on the server)"
    )


_NoTags.add_multi_constructor("!", _refuse_tag)
_NoTags.add_multi_constructor("tag:", _refuse_tag)


def _read(path: Path) -> dict[str, Any]:
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            raise TaskYamlError(f"larger than {MAX_YAML_BYTES} bytes")
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_NoTags)
    except RecursionError:
        raise TaskYamlError("nested too deep") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise TaskYamlError(f"not a readable YAML file ({exc})") from None
    if not isinstance(data, dict):
        raise TaskYamlError("a task must be a YAML mapping")
    try:
        checked = TaskFile.model_validate(data)
    except ValidationError as exc:
        raise TaskYamlError("; ".join(describe_validation_error(exc))) from None
    return checked.model_dump(exclude_unset=True, mode="json")


def load_task_yaml(path: Path, root: Path) -> dict[str, Any]:
    """The task at `path` with its includes merged (the including file wins), checked.

    Raises:
        TaskYamlError: naming the file and the key, or what the file may not do.
    """
    try:
        data = _read(path)
    except TaskYamlError as exc:
        raise TaskYamlError(f"{path.name}: {exc}") from None
    include = data.pop("include", None)
    if include is None:
        return data
    # Relative to the including file; an absolute include stays absolute and is refused.
    directory = PurePosixPath(path.parent.resolve().relative_to(root.resolve()))
    try:
        target = inside_root(root, str(directory / include))
    except OutsideRootError as exc:
        raise TaskYamlError(f"{path.name}: include: {exc}") from None
    return {**load_task_yaml(target, root), **data}
