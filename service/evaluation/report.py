"""The evaluation report: its gate entries, and the files it and a human sheet are written to."""

import json
from pathlib import Path
from typing import Any

from eval.gates import GateResult
from eval.human import (
    HUMAN_DIR,
    KEY_JSON,
    RATINGS_DIR,
    SHEET_HTML,
    SHEET_JSONL,
    Item,
    KeyEntry,
    Rating,
    key_json,
    read_key,
    read_ratings,
    sheet_html,
    sheet_jsonl,
)
from eval.report import REPORT_HTML, REPORT_JSON, render_html
from trainer.files import write_atomic


def gate_json(result: GateResult) -> dict[str, Any]:
    """A gate's entry in the report. Pure."""
    gate = result.gate
    return {
        "metric": gate.key,
        **({"compare_to": gate.compare_to.key} if gate.compare_to else {}),
        "comparator": gate.comparator.value,
        "value": result.value,
        "bound": result.bound,
        "passed": result.passed,
        "reason": result.reason,
    }


def write_report(out_dir: Path, report: dict[str, Any]) -> None:
    """`report.json` and the self-contained `report.html`, each written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / REPORT_JSON, json.dumps(report, indent=2, default=str))
    write_atomic(out_dir / REPORT_HTML, render_html(report))


def write_sheet(out_dir: Path, items: list[Item], key: dict[str, KeyEntry], title: str) -> None:
    """The human sheet (JSONL and HTML) and its key, which never leaves the server."""
    directory = out_dir / HUMAN_DIR
    (directory / RATINGS_DIR).mkdir(parents=True, exist_ok=True)
    write_atomic(directory / KEY_JSON, key_json(key))
    write_atomic(directory / SHEET_JSONL, sheet_jsonl(items))
    write_atomic(directory / SHEET_HTML, sheet_html(items, title))


def add_ratings(
    out_dir: Path, upload_id: str, ratings: Path
) -> tuple[dict[str, KeyEntry], list[Rating]]:
    """Checks one upload's ratings against the sheet and keeps them; returns the key and every
    rating kept so far, one per rater and item: the latest import's (an upload imported again
    replaces itself; a rater's item rated again in a later upload replaces the earlier rating;
    ratings without a rater's name count per upload).

    Raises:
        PromptSetError: naming the upload's line and field.
    """
    directory = out_dir / HUMAN_DIR
    key = read_key(directory / KEY_JSON)
    read_ratings(ratings, set(key))
    write_atomic(directory / RATINGS_DIR / f"{upload_id}.jsonl", ratings.read_text("utf-8"))
    kept = sorted((directory / RATINGS_DIR).glob("*.jsonl"), key=lambda p: p.stat().st_mtime_ns)
    latest = {
        (rating.rater or path.stem, rating.item): rating
        for path in kept
        for rating in read_ratings(path, set(key))
    }
    return key, list(latest.values())
