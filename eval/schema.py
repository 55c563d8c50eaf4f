"""Schema adherence: how often outputs are JSON that satisfies a JSON Schema. Pure.

For each output: does it parse as JSON (the whole text, or the first fenced ```json block), does
it validate, which required top-level fields are present, and which schema keywords its errors
come from ("required", "type", "enum", ...). The report keeps a few failing samples.
"""

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import jsonschema

FENCED = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)
MAX_SAMPLES = 5


@dataclass(frozen=True)
class Failure:
    """One output that did not pass, and why."""

    index: int
    output: str
    reason: str


@dataclass
class SchemaReport:
    """Adherence of a set of outputs to one schema."""

    total: int = 0
    parsed: int = 0
    valid: int = 0
    required_present: dict[str, int] = field(default_factory=dict)
    """Outputs (among the parsed objects) that have each required top-level field."""
    errors_by_keyword: Counter[str] = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)
    """The first MAX_SAMPLES failing outputs."""

    @property
    def parse_rate(self) -> float:
        """Share of outputs that are JSON."""
        return self.parsed / self.total if self.total else 0.0

    @property
    def valid_rate(self) -> float:
        """Share of outputs that satisfy the schema."""
        return self.valid / self.total if self.total else 0.0

    def to_json(self) -> dict[str, Any]:
        """The report as plain data."""
        return {
            "total": self.total,
            "parse_rate": self.parse_rate,
            "valid_rate": self.valid_rate,
            "required_present": {
                k: v / self.total if self.total else 0.0 for k, v in self.required_present.items()
            },
            "errors_by_keyword": dict(self.errors_by_keyword),
            "failures": [vars(f) for f in self.failures],
        }


def extract_json(text: str) -> Any:
    """The JSON value in `text`: the whole text, else its first fenced block.

    Raises:
        ValueError: when neither parses.
    """
    candidates = [text.strip(), *(m.strip() for m in FENCED.findall(text))]
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except json.JSONDecodeError:
            continue
    raise ValueError("not JSON")


def score_outputs(outputs: list[str], schema: dict[str, Any]) -> SchemaReport:
    """Scores every output against `schema` (checked first: an invalid schema raises
    jsonschema.SchemaError)."""
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema)
    required = list(schema.get("required", []))
    report = SchemaReport(required_present=dict.fromkeys(required, 0))
    for index, output in enumerate(outputs):
        report.total += 1
        try:
            value = extract_json(output)
        except ValueError:
            _fail(report, index, output, "not JSON")
            continue
        report.parsed += 1
        if isinstance(value, dict):
            for name in required:
                report.required_present[name] += name in value
        errors = list(validator.iter_errors(value))
        if not errors:
            report.valid += 1
            continue
        report.errors_by_keyword.update(str(e.validator) for e in errors)
        _fail(report, index, output, "; ".join(e.message for e in errors[:3]))
    return report


def _fail(report: SchemaReport, index: int, output: str, reason: str) -> None:
    if len(report.failures) < MAX_SAMPLES:
        report.failures.append(Failure(index, output, reason))
