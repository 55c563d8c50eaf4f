"""Prompt sets for schema adherence and win rate: JSONL rows, bundled or a client's file."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from eval.schema import check_schema

ASSETS = Path(__file__).parent / "assets"


class PromptSetError(ValueError):
    """A prompt set cannot be used; the message names the file, line and field."""


def bundled_prompts(name: str) -> Path:
    """The bundled prompt file of set `name`."""
    return ASSETS / f"{name}.prompts.jsonl"


def bundled_schema(name: str) -> Path:
    """The JSON Schema of bundled set `name`."""
    return ASSETS / f"{name}.schema.json"


def jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """Each non-blank line of a JSONL file parsed, with where it is ("file.jsonl:3").

    Raises:
        PromptSetError: the file cannot be read, or a line is not JSON (or nested too deep).
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptSetError(f"{path.name}: cannot be read ({exc})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path.name}:{number}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptSetError(f"{where}: invalid JSON ({exc.msg})") from None
        except RecursionError:
            raise PromptSetError(f"{where}: nested too deep") from None


def read_prompts(path: Path, fields: tuple[str, ...], limit: int | None) -> list[dict[str, str]]:
    """The first `limit` rows of a JSONL prompt file, each with the string `fields`.

    Raises:
        PromptSetError: unreadable file, invalid JSON, a missing or non-string field, no rows.
    """
    rows: list[dict[str, str]] = []
    for where, row in jsonl_rows(path):
        if limit is not None and len(rows) >= limit:
            break
        for field in fields:
            value = row.get(field) if isinstance(row, dict) else None
            if not isinstance(value, str) or not value.strip():
                raise PromptSetError(f"{where}: {field}: a non-empty string is required")
        rows.append({field: row[field] for field in fields})
    if not rows:
        raise PromptSetError(f"{path.name}: the prompt set is empty")
    return rows


def read_schema(path: Path) -> dict[str, Any]:
    """A JSON Schema file, checked against its metaschema.

    Raises:
        PromptSetError: unreadable, not JSON, not an object, or not a valid schema.
    """
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise PromptSetError(f"{path.name}: nested too deep") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PromptSetError(f"{path.name}: not a readable JSON file ({exc})") from None
    try:
        check_schema(schema)
    except ValueError as exc:
        raise PromptSetError(f"{path.name}: {exc}") from None
    return dict(schema)
