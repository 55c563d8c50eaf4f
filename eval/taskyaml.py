"""A restricted loader for lm-eval task YAMLs that clients upload.

lm-eval's own loader turns `!function module.name` into an import of client code, and renders
prompts with an unsandboxed Jinja environment. An uploaded task therefore may not:
- use any YAML tag (`!function` above all): plain safe YAML only;
- name custom code anywhere: keys that lm-eval resolves to Python (`class`, `process_docs`,
  `process_results`, `custom_dataset`) are refused;
- reach Python internals from a template: any string containing "__" is refused;
- `include` a file outside its own directory (no absolute path, no '..', no symlink out).
Bundled tasks (shipped with adapterd) are trusted and loaded by lm-eval directly.
"""

from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from trainer.files import OutsideRootError, inside_root


class TaskYamlError(ValueError):
    """An uploaded task is refused; the message names the file and the reason."""


CODE_KEYS = frozenset({"class", "process_docs", "process_results", "custom_dataset"})


class _NoTags(yaml.SafeLoader):
    """SafeLoader that refuses every tag, including the ones SafeLoader would accept."""


def _refuse_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    raise TaskYamlError(
        f"line {node.start_mark.line + 1}: YAML tag {node.tag!r} is not allowed in an uploaded "
        "task (it could run code on the server)"
    )


_NoTags.add_multi_constructor("!", _refuse_tag)
_NoTags.add_multi_constructor("tag:", _refuse_tag)


def _check_values(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if key in CODE_KEYS:
                raise TaskYamlError(f"{where}{key}: custom code is not allowed")
            _check_values(item, f"{where}{key}.")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_values(item, f"{where}[{index}].")
    elif isinstance(value, str) and "__" in value:
        raise TaskYamlError(f"{where.rstrip('.')}: '__' is not allowed in a template")


def load_task_yaml(path: Path, root: Path) -> dict[str, Any]:
    """The task at `path` with its includes merged (the including file wins), checked.

    Raises:
        TaskYamlError: naming the file and what it may not do.
    """
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.load(text, Loader=_NoTags)
    except TaskYamlError as exc:
        raise TaskYamlError(f"{path.name}: {exc}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise TaskYamlError(f"{path.name}: not a readable YAML file ({exc})") from None
    if not isinstance(data, dict):
        raise TaskYamlError(f"{path.name}: a task must be a YAML mapping")
    try:
        _check_values(data, "")
    except TaskYamlError as exc:
        raise TaskYamlError(f"{path.name}: {exc}") from None
    include = data.pop("include", None)
    if include is None:
        return data
    if not isinstance(include, str):
        raise TaskYamlError(f"{path.name}: include must be a file name")
    # Relative to the including file; an absolute include stays absolute and is refused.
    directory = PurePosixPath(path.parent.resolve().relative_to(root.resolve()))
    try:
        target = inside_root(root, str(directory / include))
    except OutsideRootError as exc:
        raise TaskYamlError(f"{path.name}: include: {exc}") from None
    return {**load_task_yaml(target, root), **data}
