"""Benchmarks through lm-eval: resolve tasks to configs, run them on an `LM`, read the scores.

Tasks come from YAML files in a task directory: the bundled `eval/tasks/` (written for adapterd)
or a client's uploaded one. Either way each YAML goes through the allowlisting loader
(`eval.taskyaml`) and its data files are resolved inside its own directory and checked to exist,
so a missing file is an error that names it, before any scoring. Tasks are then handed to lm-eval
as config dicts, which keeps its registry (and its `!function` loader) out, and lm-eval renders
their templates in the sandbox and runs their regular expressions in RE2 (`eval.sandbox`).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.sandbox import harden_lm_eval
from eval.taskyaml import TaskYamlError, load_task_yaml
from trainer.files import OutsideRootError, inside_root

BUNDLED_TASKS = Path(__file__).parent / "tasks"


class BenchmarkError(ValueError):
    """A task cannot be run; the message names the task and what is wrong."""


@dataclass(frozen=True)
class TaskScore:
    """One metric of one task (per lm-eval filter: "exact_match,strict-match")."""

    task: str
    metric: str
    value: float
    stderr: float | None


def find_tasks(directory: Path) -> dict[str, Path]:
    """Task name -> YAML file, for every task YAML in `directory`; a YAML that may not load
    is listed under its file name, so that asking for it reports why."""
    tasks = {}
    for path in sorted(directory.glob("*.yaml")):
        try:
            name = load_task_yaml(path, directory).get("task")
        except TaskYamlError:
            name = path.stem
        if isinstance(name, str):
            tasks[name] = path
    return tasks


def load_task(name: str, directories: list[Path]) -> dict[str, Any]:
    """The config of task `name` from the first directory that has it, data paths resolved.

    Raises:
        BenchmarkError: unknown task, a YAML that may not load, or a missing data file.
    """
    for directory in directories:
        path = find_tasks(directory).get(name)
        if path is not None:
            break
    else:
        known = sorted({t for d in directories for t in find_tasks(d)})
        raise BenchmarkError(f"task {name!r} is unknown; known tasks: {', '.join(known)}")
    try:
        config = load_task_yaml(path, directory)
    except TaskYamlError as exc:
        raise BenchmarkError(f"task {name!r}: {exc}") from None
    if config.get("dataset_path") not in ("json", "csv", "parquet"):
        raise BenchmarkError(
            f"task {name!r}: dataset_path must be json, csv or parquet with local data_files "
            "(the server is offline)"
        )
    files = config.get("dataset_kwargs", {}).get("data_files")
    if not isinstance(files, dict) or not files:
        raise BenchmarkError(f"task {name!r}: dataset_kwargs.data_files must map splits to files")
    resolved = {}
    for split, file in files.items():
        try:
            target = inside_root(path.parent, str(file))
        except OutsideRootError as exc:
            raise BenchmarkError(f"task {name!r}: data_files.{split}: {exc}") from None
        if not target.is_file():
            raise BenchmarkError(f"task {name!r}: data_files.{split}: {file} does not exist")
        resolved[split] = str(target)
    config["dataset_kwargs"] = {**config["dataset_kwargs"], "data_files": resolved}
    return config


def run_tasks(
    lm: Any,
    configs: list[dict[str, Any]],
    *,
    limit: int | None,
    num_fewshot: int | None,
    seed: int,
    chat_template: bool,
) -> list[TaskScore]:
    """Scores `lm` on the tasks; every metric with its stderr (None where lm-eval has none).

    Raises:
        BenchmarkError: when lm-eval refuses a task.
    """
    from lm_eval import simple_evaluate  # heavy: loads on first use
    from lm_eval.tasks import TaskManager

    harden_lm_eval()
    _skip_environment_report()
    try:
        output = simple_evaluate(
            model=lm,
            tasks=configs,
            # Configs come resolved: indexing lm-eval's thousands of built-in tasks (about 9 s
            # here, on every run) is not needed.
            task_manager=TaskManager(include_defaults=False),
            limit=limit,
            num_fewshot=num_fewshot,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
            apply_chat_template=chat_template,
            bootstrap_iters=1000,
            log_samples=False,
        )
    except (ValueError, KeyError, FileNotFoundError, TypeError) as exc:
        names = ", ".join(str(c.get("task")) for c in configs)
        raise BenchmarkError(f"lm-eval could not run {names}: {exc}") from exc
    assert output is not None  # None only on non-zero ranks of a distributed run
    return parse_results(output["results"])


def _skip_environment_report() -> None:
    """lm-eval ends every run by describing its environment: torch's `collect_env` (which runs
    `pip list` and other programs: about a second of a core, beside the engine, per run) and
    `git describe`. adapterd's reports record their own versions, so both become no-ops.
    Idempotent."""
    import lm_eval.evaluator

    lm_eval.evaluator.add_env_info = lambda results: None
    lm_eval.evaluator.get_git_commit_hash = lambda: None


def parse_results(results: dict[str, dict[str, Any]]) -> list[TaskScore]:
    """lm-eval's `results` section as scores: keys "metric,filter" and "metric_stderr,filter";
    the filter is dropped when it is lm-eval's "none". Pure."""
    scores = []
    for task, values in sorted(results.items()):
        for key, value in sorted(values.items()):
            metric, _, filter_name = key.partition(",")
            if metric.endswith("_stderr") or not isinstance(value, int | float) or not filter_name:
                continue
            stderr = values.get(f"{metric}_stderr,{filter_name}")
            stderr = float(stderr) if isinstance(stderr, int | float) else None
            name = metric if filter_name == "none" else f"{metric},{filter_name}"
            scores.append(TaskScore(task, name, float(value), stderr))
    return scores
