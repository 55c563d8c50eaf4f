"""Training data in: read files, validate every row, tokenize, mix, and report.

Everything here runs before any model is loaded (only the tokenizer is needed). Each problem
names its file, row (the line, for JSONL), field path and a stable code. Over-length rows are
a problem for the policy to handle, never cut: a cut could drop an end-of-turn token.
"""

import csv
import json
import random
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Generic

from trainer.config import DatasetSpec, DataSpec, Method, Source
from trainer.drift import prompt_text
from trainer.formats import FieldProblem, RowError, Turn, normalize, normalize_preference
from trainer.masking import Example, render_trained, require_tools, tokenize
from trainer.pii import Redacted, redact
from trainer.preference import Item, Pair
from trainer.quality import quality_flag
from trainer.tools import Tool

MAX_PROBLEMS_SHOWN = 50
# Problems with a whole file or stage: fatal whatever the policy (dropping a file would
# silently change the mix, an empty stage the curriculum).
FILE_CODES = frozenset({"unreadable_file", "not_a_list", "empty_stage"})


@dataclass(frozen=True)
class Problem:
    """A problem with one row of one file."""

    source: str
    row: int
    field: str
    code: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.row}" + (f" {self.field}" if self.field else "")
        return f"{where}: {self.message} [{self.code}]"


@dataclass
class Record:
    """A valid row, normalized."""

    source: str
    row: int
    format: str
    turns: list[Turn]
    rejected: list[Turn] | None = None
    """A preference row's rejected conversation (`turns` is the chosen one)."""
    prompt: int = 0
    """A preference row's prompt: the first turns, the same in both conversations."""
    examples: tuple[Example, ...] = ()
    """`turns` tokenized, then `rejected` if there is one."""
    tools: tuple[Tool, ...] = ()
    """The tools a `messages` row offers its assistant."""

    @property
    def uses_tools(self) -> bool:
        """Whether the row offers tools, calls one or answers a call."""
        return bool(self.tools) or any(t.tool_calls or t.role == "tool" for t in self.turns)

    @property
    def conversations(self) -> list[list[Turn]]:
        """The row's conversations: one, or a preference row's chosen and rejected."""
        return [self.turns] if self.rejected is None else [self.turns, self.rejected]


@dataclass
class SourceReport:
    """What became of one file's rows."""

    path: str
    weight: float
    stage: str = ""
    """Its curriculum stage (`data.stages`); "" without stages."""
    rows: int = 0
    valid: int = 0
    formats: dict[str, int] = field(default_factory=dict)
    held_out: int = 0
    used: int = 0


@dataclass
class DataReport:
    """The validation report: what `python -m trainer validate` prints and the API returns."""

    ok: bool
    policy: str
    sources: list[SourceReport]
    eval_source: SourceReport | None
    train_rows: int
    eval_rows: int
    problems: list[Problem]
    problem_counts: dict[str, int]
    quality_filtered: dict[str, int]
    pii_redacted: dict[str, int]
    """Pieces of personal data replaced under `data.pii: redact`, by kind."""
    token_lengths: dict[str, int]
    trained_tokens: int
    total_tokens: int
    sample: str
    stage_rows: dict[str, int] = field(default_factory=dict)
    """Training rows per curriculum stage, in order; empty without stages."""

    @property
    def assistant_token_fraction(self) -> float:
        """Share of all tokens that carry loss."""
        return self.trained_tokens / self.total_tokens if self.total_tokens else 0.0

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (problems as dicts, coverage included)."""
        data = asdict(self)
        data["assistant_token_fraction"] = round(self.assistant_token_fraction, 4)
        return data


@dataclass
class PreparedData(Generic[Item]):
    """Validated, tokenized and mixed data ready for the recipe: conversations (`Example`) for
    supervised fine-tuning, preference pairs (`Pair`) for DPO."""

    train: list[Item]
    """Stage after stage (`stages`), each stage's items shuffled."""
    eval: list[Item]
    report: DataReport
    prompts: list[str]
    """The training rows' prompts (their user turns), for the adapter's drift reference."""
    stages: list[int]
    """How many of `train` each curriculum stage has, in order (one count without stages)."""


class DataRejectedError(Exception):
    """Validation failed under the "reject" policy; carries the report."""

    def __init__(self, report: DataReport) -> None:
        shown = "\n".join(str(p) for p in report.problems[:MAX_PROBLEMS_SHOWN])
        more = len(report.problems) - MAX_PROBLEMS_SHOWN
        tail = f"\n... and {more} more" if more > 0 else ""
        super().__init__(f"{len(report.problems)} problem(s) in the data:\n{shown}{tail}")
        self.report = report


def read_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """Yields (row number, parsed row or FieldProblem) for a JSONL, JSON, CSV or Parquet file.

    Row numbers are file lines for JSONL and CSV (header = line 1), 1-based positions otherwise.
    """
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8") as f:
            for line_number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield line_number, json.loads(line)
                except json.JSONDecodeError as exc:
                    yield line_number, FieldProblem("", "invalid_json", f"invalid JSON: {exc.msg}")
    elif suffix == ".json":
        rows = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rows, list):
            yield 1, FieldProblem("", "not_a_list", "a .json dataset must be a list of rows")
            return
        yield from enumerate(rows, start=1)
    elif suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            for row in reader:
                yield reader.line_num, row
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from enumerate(pq.read_table(path).to_pylist(), start=1)
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r} (jsonl, json, csv, parquet)")


def _normalized_key(record: Record) -> tuple[tuple[str, str], ...]:
    def text(turn: Turn) -> str:
        calls = " ".join(f"{call.name} {call.arguments}" for call in turn.tool_calls)
        return f"{turn.content} {calls}".lower()

    return tuple(
        (t.role, " ".join(re.sub(r"[^\w\s]", "", text(t)).split()))
        for turns in record.conversations
        for t in turns
    )


def _normalized(parsed: Any, spec: DatasetSpec, preference: bool, source: str, row: int) -> Record:
    """The row as a Record: a conversation, or under `preference` a preference pair.

    Raises:
        RowError: with every problem of the row.
    """
    if preference:
        fmt, chosen, rejected, prompt = normalize_preference(parsed, spec.format, spec.columns)
        return Record(source, row, fmt, chosen, rejected, prompt)
    fmt, turns, tools = normalize(parsed, spec.format, spec.columns)
    return Record(source, row, fmt, turns, tools=tools)


def _read_source(
    spec: DatasetSpec, report: SourceReport, preference: bool
) -> tuple[list[Record], list[Problem]]:
    records, problems = [], []
    formats: Counter[str] = Counter()
    source = str(spec.path)
    try:
        rows = list(read_rows(spec.path))
    except (OSError, ValueError, UnicodeDecodeError, csv.Error) as exc:
        return [], [Problem(source, 0, "", "unreadable_file", str(exc))]
    for row_number, parsed in rows:
        report.rows += 1
        if isinstance(parsed, FieldProblem):
            problems.append(Problem(source, row_number, parsed.field, parsed.code, parsed.message))
            continue
        try:
            record = _normalized(parsed, spec, preference, source, row_number)
        except RowError as exc:
            problems += [
                Problem(source, row_number, p.field, p.code, p.message) for p in exc.problems
            ]
            continue
        formats[record.format] += 1
        records.append(record)
    report.formats = dict(formats)
    return records, problems


def _find_duplicates(records: list[Record]) -> list[Problem]:
    exact: dict[Any, Record] = {}
    near: dict[Any, Record] = {}
    problems = []
    for record in records:
        exact_key = (
            record.tools,
            tuple(
                (t.role, t.content, t.tool_calls) for turns in record.conversations for t in turns
            ),
        )
        near_key = _normalized_key(record)
        first = exact.get(exact_key) or near.get(near_key)
        if first is not None:
            code = "duplicate" if exact_key in exact else "near_duplicate"
            problems.append(
                Problem(
                    record.source,
                    record.row,
                    "",
                    code,
                    f"same conversation as {first.source}:{first.row}",
                )
            )
            continue
        exact[exact_key] = record
        near[near_key] = record
    return problems


def _percentiles(values: list[int]) -> dict[str, int]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": ordered[-1]}


def _mix(pools: list[list[Record]], weights: list[float], rng: random.Random) -> list[list[Record]]:
    """Samples each pool to its weight's share of the total row count (with replacement only
    when a small pool must supply more than it has)."""
    total = sum(len(pool) for pool in pools)
    weight_sum = sum(w for pool, w in zip(pools, weights, strict=True) if pool)
    mixed = []
    for pool, weight in zip(pools, weights, strict=True):
        want = round(total * weight / weight_sum) if pool else 0
        copies, remainder = divmod(want, len(pool)) if pool else (0, 0)
        mixed.append(pool * copies + rng.sample(pool, remainder))
    return mixed


def _mix_stages(
    pools: list[list[Record]],
    sources: list[Source],
    reports: list[SourceReport],
    rng: random.Random,
) -> tuple[list[Record], list[int]]:
    """The training records stage after stage, each stage its files mixed by weight
    (`_mix`) and shuffled; and each stage's count. Sets each source's `used`."""
    train: list[Record] = []
    sizes = []
    for stage in range(max(s.stage for s in sources) + 1):
        members = [i for i, s in enumerate(sources) if s.stage == stage]
        mixed = _mix([pools[i] for i in members], [sources[i].spec.weight for i in members], rng)
        for i, used in zip(members, mixed, strict=True):
            reports[i].used = len(used)
        rows = [r for pool in mixed for r in pool]
        rng.shuffle(rows)
        train += rows
        sizes.append(len(rows))
    return train, sizes


def _tokenize_all(records: list[Record], tokenizer: Any, max_length: int) -> list[Problem]:
    if any(record.uses_tools for record in records):
        require_tools(tokenizer)
    problems = []
    for record in records:
        record.examples = tuple(
            tokenize(tokenizer, turns, record.tools) for turns in record.conversations
        )
        length = max(len(example.input_ids) for example in record.examples)
        if length > max_length:
            problems.append(
                Problem(
                    record.source,
                    record.row,
                    "",
                    "too_long",
                    f"{length} tokens, above max_length {max_length}",
                )
            )
    return problems


def _quality_filter(pool: list[Record], filtered: Counter[str]) -> list[Record]:
    kept = []
    for record in pool:
        flag = quality_flag(record.turns)
        if flag is None:
            kept.append(record)
        else:
            filtered[flag] += 1
    return kept


def _personal_data(
    records: list[Record], mode: str, redacted: Counter[str]
) -> tuple[list[Record], list[Problem]]:
    """`data.pii` applied: the records, redacted under "redact" (counted into `redacted`);
    under "reject", a problem for each turn that holds personal data."""
    if mode == "keep":
        return records, []
    kept, problems = [], []
    for record in records:
        # A preference row's prompt is in both conversations: checked (and counted) once.
        prompt = record.prompt
        turns = [*record.turns, *(record.rejected or [])[prompt:]]
        results = [redact(turn.content) for turn in turns]
        if mode == "reject":
            problems += [
                Problem(record.source, record.row, turn.origin, "pii", _pii_message(result))
                for turn, result in zip(turns, results, strict=True)
                if result.counts
            ]
            kept.append(record)
            continue
        for result in results:
            redacted.update({str(kind): n for kind, n in result.counts.items()})
        clean = [replace(t, content=r.text) for t, r in zip(turns, results, strict=True)]
        chosen, rejected = clean[: len(record.turns)], None
        if record.rejected is not None:
            rejected = clean[:prompt] + clean[len(record.turns) :]
        kept.append(replace(record, turns=chosen, rejected=rejected))
    return kept, problems


def _pii_message(result: Redacted) -> str:
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(result.counts.items()))
    return f"personal data ({kinds}); data.pii is reject"


def _hold_out(
    pools: list[list[Record]], reports: list[SourceReport], fraction: float, rng: random.Random
) -> list[Record]:
    """Moves `fraction` of each pool, at random, into the eval set (before any upsampling)."""
    held_out = []
    for pool, report in zip(pools, reports, strict=True):
        rng.shuffle(pool)
        report.held_out = round(len(pool) * fraction)
        held_out += pool[: report.held_out]
        del pool[: report.held_out]
    return held_out


def prepare_data(spec: DataSpec, tokenizer: Any, seed: int) -> PreparedData[Example]:
    """Reads, validates, tokenizes, splits and mixes the conversations of a job.

    Raises:
        DataRejectedError: under the "reject" policy when any row has a problem.
        TemplateError: when the chat template cannot be trained on at all.
    """
    train, held_out, report, stages = _prepare(spec, tokenizer, seed, preference=False)
    return PreparedData(
        train=[r.examples[0] for r in train],
        eval=[r.examples[0] for r in held_out],
        report=report,
        prompts=_prompts(train),
        stages=stages,
    )


def prepare_preferences(spec: DataSpec, tokenizer: Any, seed: int) -> PreparedData[Pair]:
    """Reads, validates, tokenizes, splits and mixes the preference rows of a job, as
    `prepare_data` does conversations (a pair is one row: its problems, duplicates and length
    are the row's; `max_length` bounds the longer of its two conversations).

    Raises:
        DataRejectedError: under the "reject" policy when any row has a problem.
        TemplateError: when the chat template cannot be trained on at all.
    """
    train, held_out, report, stages = _prepare(spec, tokenizer, seed, preference=True)
    return PreparedData(
        train=[Pair(r.examples[0], r.examples[1]) for r in train],
        eval=[Pair(r.examples[0], r.examples[1]) for r in held_out],
        report=report,
        prompts=_prompts(train),
        stages=stages,
    )


def preparer(method: Method) -> Callable[[DataSpec, Any, int], PreparedData[Any]]:
    """How a job trained with `method` reads its data: `prepare_preferences` for "dpo",
    `prepare_data` otherwise."""
    return prepare_preferences if method == "dpo" else prepare_data


def _prompts(records: list[Record]) -> list[str]:
    return [prompt_text((t.role, t.content) for t in r.turns) for r in records]


def _prepare(
    spec: DataSpec, tokenizer: Any, seed: int, preference: bool
) -> tuple[list[Record], list[Record], DataReport, list[int]]:
    """The training records (tokenized, stage after stage), the eval records, the report and
    the training rows of each stage."""
    sources = spec.sources()
    names = [stage.name for stage in spec.stages]
    reports = [
        SourceReport(str(s.spec.path), s.spec.weight, names[s.stage] if names else "")
        for s in sources
    ]
    pools, problems = [], []
    for source, source_report in zip(sources, reports, strict=True):
        records, found = _read_source(source.spec, source_report, preference)
        pools.append(records)
        problems += found
    eval_report: SourceReport | None = None
    eval_records: list[Record] = []
    if spec.eval_file is not None:
        eval_report = SourceReport(str(spec.eval_file), 0.0)
        eval_records, found = _read_source(
            DatasetSpec(path=spec.eval_file), eval_report, preference
        )
        problems += found

    redacted: Counter[str] = Counter()
    for index, pool in enumerate(pools):
        pools[index], found = _personal_data(pool, spec.pii, redacted)
        problems += found
    eval_records, found = _personal_data(eval_records, spec.pii, redacted)
    problems += found

    train_records = [r for pool in pools for r in pool]
    problems += _find_duplicates(train_records)
    eval_keys = {_normalized_key(r): r for r in eval_records}
    for record in train_records:
        shared = eval_keys.get(_normalized_key(record))
        if shared is not None:
            problems.append(
                Problem(
                    record.source,
                    record.row,
                    "",
                    "train_eval_overlap",
                    f"also in the eval data at {shared.source}:{shared.row}",
                )
            )
    problems += _tokenize_all(train_records + eval_records, tokenizer, spec.max_length)

    bad = {(p.source, p.row) for p in problems}
    pools = [[r for r in pool if (r.source, r.row) not in bad] for pool in pools]
    eval_records = [r for r in eval_records if (r.source, r.row) not in bad]
    for pool, source_report in zip(pools, reports, strict=True):
        source_report.valid = len(pool)
    if eval_report is not None:
        eval_report.valid = len(eval_records)

    filtered: Counter[str] = Counter()
    if spec.quality_filter:
        pools = [_quality_filter(pool, filtered) for pool in pools]
    rng = random.Random(seed)
    if spec.eval_fraction > 0:
        eval_records += _hold_out(pools, reports, spec.eval_fraction, rng)
    train, sizes = _mix_stages(pools, sources, reports, rng)
    stage_rows = dict(zip(names, sizes, strict=True)) if names else {}
    problems += [
        Problem("", 0, f"data.stages.{name}", "empty_stage", f"stage {name!r} has no valid rows")
        for name, size in stage_rows.items()
        if not size
    ]

    examples = [e for r in train for e in r.examples]
    lengths = [len(e.input_ids) for e in examples]
    fatal = [p for p in problems if p.code in FILE_CODES]
    report = DataReport(
        ok=not problems or (spec.policy == "drop" and not fatal),
        policy=spec.policy,
        sources=reports,
        eval_source=eval_report,
        train_rows=len(train),
        eval_rows=len(eval_records),
        problems=problems,
        problem_counts=dict(Counter(p.code for p in problems)),
        quality_filtered=dict(filtered),
        pii_redacted=dict(redacted),
        token_lengths=_percentiles(lengths),
        trained_tokens=sum(e.trained_tokens for e in examples),
        total_tokens=sum(lengths),
        sample=render_trained(tokenizer, examples[0]) if examples else "",
        stage_rows=stage_rows,
    )
    if problems and (spec.policy == "reject" or fatal):
        raise DataRejectedError(report)
    if not train:
        report.ok = False
        raise DataRejectedError(report)
    return train, eval_records, report, sizes
