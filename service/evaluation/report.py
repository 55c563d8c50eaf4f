"""The evaluation report: its gate entries, and the files it is written to."""

import json
from pathlib import Path
from typing import Any

from eval.gates import GateResult
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
