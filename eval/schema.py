"""Schema adherence: how often outputs are JSON that satisfies a JSON Schema. Pure.

For each output: does it parse as JSON (the whole text, or the first fenced ```json block), does
it validate, which required top-level fields are present, and which schema keywords its errors
come from ("required", "type", "enum", ...). The report keeps a few failing samples.

A schema is a client's: its `pattern` and `patternProperties` run in RE2 (linear time; Python's
`re`, which jsonschema uses, backtracks exponentially on `^(?:(x+x+)+y|x+)$` and holds the GIL),
and `check_schema` refuses at submission what RE2 cannot compile, naming the JSON pointer.
"""

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError

from eval.sandbox import compile_re2

MAX_SCHEMA_DEPTH = 64

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
        except (json.JSONDecodeError, RecursionError):  # a model may nest past the stack
            continue
    raise ValueError("not JSON")


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not compile_re2(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: dict[str, Any], instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        compiled = compile_re2(pattern)
        for key, value in instance.items():
            if compiled.search(key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def check_schema(schema: Any) -> None:
    """Refuses a schema that is not a JSON object, breaks its metaschema, nests deeper than
    MAX_SCHEMA_DEPTH, or has a `pattern` or `patternProperties` key that RE2 cannot compile.

    Raises:
        ValueError: naming the JSON pointer and the problem.
    """
    if not isinstance(schema, dict):
        raise ValueError("a JSON Schema must be a JSON object")
    _check_patterns(schema, "", 0)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"not a valid JSON Schema: {exc.message}") from None


def _check_patterns(node: Any, pointer: str, depth: int) -> None:
    if depth > MAX_SCHEMA_DEPTH:
        raise ValueError(f"{pointer}: nested deeper than {MAX_SCHEMA_DEPTH}")
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for key, value in items:
        where = f"{pointer}/{str(key).replace('~', '~0').replace('/', '~1')}"
        try:
            if key == "pattern" and isinstance(value, str):
                compile_re2(value)
            elif key == "patternProperties" and isinstance(value, dict):
                for pattern in value:
                    compile_re2(pattern)
        except ValueError as exc:
            raise ValueError(f"{where or '/'}: {exc}") from None
        _check_patterns(value, where, depth + 1)


def validator_of(schema: dict[str, Any]) -> Any:
    """A validator of `schema` whose regular expressions run in RE2 (checked first: see
    `check_schema`)."""
    check_schema(schema)
    base = jsonschema.validators.validator_for(schema)
    re2_class = jsonschema.validators.extend(
        base, {"pattern": _pattern, "patternProperties": _pattern_properties}
    )
    return re2_class(schema)


def judge_output(validator: Any, output: str) -> tuple[Any, list[ValidationError]] | None:
    """The JSON value in `output` and its errors under `validator` (`validator_of`); None when
    `output` holds no JSON."""
    try:
        value = extract_json(output)
    except ValueError:
        return None
    return value, list(validator.iter_errors(value))


def score_outputs(outputs: list[str], schema: dict[str, Any]) -> SchemaReport:
    """Scores every output against `schema` (checked first: an invalid schema raises
    ValueError naming the problem)."""
    validator = validator_of(schema)
    required = list(schema.get("required", []))
    report = SchemaReport(required_present=dict.fromkeys(required, 0))
    for index, output in enumerate(outputs):
        report.total += 1
        judged = judge_output(validator, output)
        if judged is None:
            add_failure(report.failures, index, output, "not JSON")
            continue
        value, errors = judged
        report.parsed += 1
        if isinstance(value, dict):
            for name in required:
                report.required_present[name] += name in value
        if not errors:
            report.valid += 1
            continue
        report.errors_by_keyword.update(str(e.validator) for e in errors)
        add_failure(report.failures, index, output, "; ".join(e.message for e in errors[:3]))
    return report


def add_failure(failures: list[Failure], index: int, output: str, reason: str) -> None:
    """Keeps a failing output as a sample while there are fewer than MAX_SAMPLES."""
    if len(failures) < MAX_SAMPLES:
        failures.append(Failure(index, output, reason))
