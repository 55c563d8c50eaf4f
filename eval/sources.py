"""What an evaluation reads: its tasks, prompt sets and JSON Schemas, bundled or a client's.

A client's files reach an evaluation as uploads named by id (or, for an admin, as paths on the
server). Which file an id or path stands for, and whether the caller may read it, is the
service's business: it hands these loaders a `ClientFiles` of resolved paths. The loaders only
read and check, so the same code runs at submission (to refuse a bad spec at once) and when the
evaluation runs. Each raises an error that names the file, line or task.
"""

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.benchmarks import BUNDLED_TASKS, load_task
from eval.overlap import overlap
from eval.prompts import PromptSetError, bundled_prompts, bundled_schema, read_prompts, read_schema
from eval.rubric import Conversation, read_conversations
from eval.safety import SafetyPrompt, bundled_families, read_families
from eval.spec import (
    EvalSpec,
    EvalSpecError,
    HumanSpec,
    RubricSpec,
    SafetySpec,
    SchemaSpec,
    ToolCallSpec,
    WinRateSpec,
)
from eval.toolcalls import ToolPrompt, read_tool_prompts
from trainer.config import DataSpec


@dataclass(frozen=True)
class ClientFiles:
    """The client files of one evaluation spec, as paths on this server (None: not used)."""

    task_dir: Path | None = None
    """The directory of `benchmarks.task_upload` or `benchmarks.task_dir`."""
    schema_prompts: Path | None = None
    schema: Path | None = None
    tool_prompts: Path | None = None
    win_rate_prompts: Path | None = None
    safety_families: Path | None = None
    rubric_prompts: Path | None = None
    human_prompts: Path | None = None


def task_configs(spec: EvalSpec, files: ClientFiles) -> list[dict[str, Any]]:
    """The lm-eval configs of the spec's tasks: the client's task directory first, then the
    bundled tasks.

    Raises:
        BenchmarkError: naming the task and what is wrong.
    """
    if spec.benchmarks is None:
        return []
    directories = [BUNDLED_TASKS] if files.task_dir is None else [files.task_dir, BUNDLED_TASKS]
    return [load_task(name, directories) for name in spec.benchmarks.tasks]


def schema_set(spec: SchemaSpec, files: ClientFiles) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """The prompts and the JSON Schema of a schema-adherence section.

    Raises:
        PromptSetError: naming the file, line or JSON pointer.
    """
    if files.schema_prompts is not None and files.schema is not None:
        prompts, schema = files.schema_prompts, files.schema
    else:
        prompts, schema = bundled_prompts(spec.set), bundled_schema(spec.set)
    checked = read_schema(schema)
    return read_prompts(prompts, ("prompt",), spec.limit), checked


def tool_set(spec: ToolCallSpec, files: ClientFiles) -> list[ToolPrompt]:
    """The prompts with their tools of a tool-call section.

    Raises:
        PromptSetError: naming the file, line and field.
    """
    return read_tool_prompts(files.tool_prompts or bundled_prompts(spec.set), spec.limit)


def win_rate_set(spec: WinRateSpec, files: ClientFiles) -> list[dict[str, str]]:
    """The prompts with reference answers of a win-rate section.

    Raises:
        PromptSetError: naming the file and line.
    """
    path = files.win_rate_prompts or bundled_prompts(spec.set)
    return read_prompts(path, ("prompt", "reference"), spec.limit)


def safety_set(spec: SafetySpec, files: ClientFiles) -> list[SafetyPrompt]:
    """The prompts of a safety section, in the categories it asks for.

    Raises:
        PromptSetError: naming the file, line and field, or a category the families lack.
    """
    path = files.safety_families or bundled_families()
    prompts = read_families(path)
    if not spec.categories:
        return prompts
    known = {p.category for p in prompts}
    if unknown := [c for c in spec.categories if c not in known]:
        raise PromptSetError(
            f"safety.categories: {unknown} not in {path.name} (it has {sorted(known)})"
        )
    return [p for p in prompts if p.category in spec.categories]


def rubric_set(spec: RubricSpec, files: ClientFiles) -> list[Conversation]:
    """The conversations of a rubric section.

    Raises:
        PromptSetError: naming the file, line and field.
    """
    return read_conversations(files.rubric_prompts or bundled_prompts(spec.set), spec.limit)


def human_set(spec: HumanSpec, files: ClientFiles) -> list[Conversation]:
    """The conversations of a human section; each with a reference for the reference judge.

    Raises:
        PromptSetError: naming the file, line and field.
    """
    path = files.human_prompts or bundled_prompts(spec.set)
    conversations = read_conversations(path, spec.limit)
    if spec.judge == "reference":
        missing = [i for i, c in enumerate(conversations, start=1) if not c.reference]
        if missing:
            raise PromptSetError(
                f"{path.name}: human.judge 'reference' needs a reference on every conversation; "
                f"rows {missing[:10]} have none"
            )
    return conversations


def check_sources(spec: EvalSpec, files: ClientFiles, judge_urls: Iterable[str]) -> None:
    """Loads every task, prompt set and schema the spec names and checks its judges against
    the allowlist, so that a submission with a missing file, a forbidden task or an unknown
    judge is refused at once.

    Raises:
        BenchmarkError, PromptSetError, EvalSpecError: naming what is wrong.
    """
    allowed = sorted(judge_urls)
    for name, section in spec.judged().items():
        if section.judge_url and section.judge_url not in allowed:
            raise EvalSpecError(
                f"{name}.judge_url: {section.judge_url!r} is not in the server's "
                f"--judge-urls allowlist ({', '.join(allowed) or 'empty'})"
            )
    task_configs(spec, files)
    if spec.schema_adherence:
        schema_set(spec.schema_adherence, files)
    if spec.tool_calls:
        tool_set(spec.tool_calls, files)
    if spec.win_rate:
        win_rate_set(spec.win_rate, files)
    if spec.safety:
        safety_set(spec.safety, files)
    if spec.rubric:
        rubric_set(spec.rubric, files)
    if spec.human:
        human_set(spec.human, files)


def contamination(config_file: Path, spec: EvalSpec, files: ClientFiles) -> dict[str, Any]:
    """13-gram overlap of a training job's rows (its trainer config names the files) with
    each evaluation set of the spec: {set: {"rate", "items", "contaminated", "examples"}}."""
    data = DataSpec.model_validate(json.loads(config_file.read_text(encoding="utf-8"))["data"])
    training = [
        line
        for source in data.sources()
        for line in source.spec.path.read_text(encoding="utf-8", errors="replace").splitlines()
    ]
    sets: dict[str, list[str]] = {}
    for task in task_configs(spec, files):
        for split, file in task["dataset_kwargs"]["data_files"].items():
            sets[f"{task['task']}/{split}"] = Path(file).read_text(encoding="utf-8").splitlines()
    if spec.schema_adherence:
        sets["schema_adherence"] = [
            r["prompt"] for r in schema_set(spec.schema_adherence, files)[0]
        ]
    if spec.tool_calls:
        sets["tool_calls"] = [p.conversation.transcript() for p in tool_set(spec.tool_calls, files)]
    if spec.win_rate:
        rows = win_rate_set(spec.win_rate, files)
        sets["win_rate"] = [f"{r['prompt']} {r['reference']}" for r in rows]
    if spec.safety:
        sets["safety"] = [p.prompt for p in safety_set(spec.safety, files)]
    if spec.rubric:
        sets["rubric"] = [c.transcript() for c in rubric_set(spec.rubric, files)]
    if spec.human:
        sets["human"] = [c.transcript() for c in human_set(spec.human, files)]
    reports = {}
    for name, items in sets.items():
        found = overlap(training, items)
        reports[name] = {"rate": found.rate, **vars(found)}
    return reports
