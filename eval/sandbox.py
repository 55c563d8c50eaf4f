"""Client templates and regular expressions, made safe to run on the server.

Templates: lm-eval renders a task's `doc_to_text`, `doc_to_target`, `doc_to_choice`,
`description` and `gen_prefix` with a plain Jinja environment, in which an uploaded template can
walk from any object to Python's internals and run a command. adapterd renders every task it
runs in Jinja's `ImmutableSandboxedEnvironment` instead (no `_` attributes, no mutation of
containers), and on top of the sandbox:
- `*`, `**`, `+` and `%` are intercepted and refused when their result would exceed a size cap
  (the sandbox alone lets `{{ 'x' * 10**10 }}` exhaust memory), and so is any call with an
  integer argument past the cap (`'x'.ljust(10**9)`, `range(10**9)`);
- only an allowlist of filters and no globals but a capped `range` and `dict` (no `cycler`,
  `joiner`, `namespace` or `lipsum` to start an attribute chain from);
- the output is produced as a stream and stopped at `MAX_RENDERED_CHARS`;
- loops nest at most `MAX_LOOP_DEPTH` deep (checked when the template is loaded).

Regular expressions: a client's patterns run in RE2 (linear time; Python's `re` backtracks
exponentially and holds the GIL, so no thread or timeout is an escape). `compile_re2` checks a
pattern at submission; `harden_lm_eval` makes lm-eval's filters and metrics (regex filters,
`regexes_to_ignore`) and the `regex_replace` template filter use RE2.
"""

from collections.abc import Iterator
from functools import cache, lru_cache
from typing import Any

import re2  # type: ignore[import-untyped]
from jinja2 import BaseLoader, StrictUndefined, Template, nodes
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_RENDERED_CHARS = 200_000
"""The longest text one template may render."""
MAX_RESULT_CHARS = 100_000
"""The longest string or list one operation in a template may build."""
MAX_INTEGER = 100_000
"""The largest integer argument a template may pass to a call (widths, counts, ranges)."""
MAX_POWER_BITS = 4096
MAX_LOOP_DEPTH = 2

SAFE_FILTERS = frozenset(
    {
        "abs", "capitalize", "default", "d", "dictsort", "escape", "e", "first", "float",
        "int", "items", "join", "last", "length", "count", "list", "lower", "max", "min",
        "replace", "reverse", "round", "safe", "select", "reject", "selectattr", "rejectattr",
        "map", "sort", "string", "sum", "title", "trim", "truncate", "unique", "upper",
        "wordcount", "tojson", "batch", "slice", "groupby", "striptags",
    }
)  # fmt: skip
"""Jinja's built-in filters a template may use; beside them only `regex_replace` (RE2).
Left out: `attr` (the start of most attribute chains), `format`, `center`, `indent`, `wordwrap`
(widths inside strings), `random`, `pprint`, `urlize`, `xmlattr`, `filesizeformat`."""


class UnsafeTemplateError(ValueError):
    """A template may not load or render; the message says why."""


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str | bytes | list | tuple) else 0


def _check_integer(value: Any) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INTEGER:
        raise SecurityError(f"the integer {value} is above the template limit {MAX_INTEGER}")


def _check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "**":
        if isinstance(left, int) and isinstance(right, int):
            bits = max(abs(left), 2).bit_length() * max(right, 0)
            if bits > MAX_POWER_BITS:
                raise SecurityError(f"{left} ** {right} is too large for a template")
        return
    if operator == "*":
        count = right if isinstance(right, int) else left if isinstance(left, int) else 1
        sequence = left if _size(left) else right
        if isinstance(count, int) and _size(sequence) * max(count, 0) > MAX_RESULT_CHARS:
            raise SecurityError(f"a repetition longer than {MAX_RESULT_CHARS} in a template")
        _check_integer(count if _size(sequence) else 0)
    elif operator == "+":
        if _size(left) + _size(right) > MAX_RESULT_CHARS:
            raise SecurityError(f"a concatenation longer than {MAX_RESULT_CHARS} in a template")
    # printf widths and precisions ('%999999999s') would build the string first
    elif (
        operator == "%"
        and isinstance(left, str)
        and re2.search(r"%[-+ #0]*(?:[0-9]{6,}|[0-9]*\.[0-9]{6,})", left)
    ):
        raise SecurityError("a format width above the template limit")


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> Any:
        # str.format's widths ('{:>999999999}') would build the string first
        owner = getattr(value, "__self__", None)
        is_format = getattr(value, "__name__", "") in ("format", "format_map")
        if is_format and isinstance(owner, str) and re2.search(r"\{[^{}]*[0-9]{6,}[^{}]*\}", owner):
            raise SecurityError("a format width above the template limit")
        return super().wrap_str_format(value)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        for value in (*args, *kwargs.values()):
            _check_integer(value)
            if _size(value) > MAX_RESULT_CHARS:
                raise SecurityError(f"an argument longer than {MAX_RESULT_CHARS} in a template")
        result = super().call(__context, __obj, *args, **kwargs)
        if _size(result) > MAX_RESULT_CHARS:
            raise SecurityError(f"a call built more than {MAX_RESULT_CHARS} items in a template")
        return result


def _capped_range(*args: int) -> range:
    for value in args:
        _check_integer(value)
    return range(*args)


def regex_replace(string: str, pattern: str, repl: str, count: int = 0) -> str:
    """lm-eval's `regex_replace` template filter, in RE2."""
    return str(re2.sub(pattern, repl, string, count=count))


def _environment() -> _Sandbox:
    env = _Sandbox(loader=BaseLoader(), undefined=StrictUndefined, keep_trailing_newline=True)
    env.filters = {k: v for k, v in env.filters.items() if k in SAFE_FILTERS}
    env.filters["regex_replace"] = regex_replace
    env.globals = {"range": _capped_range, "dict": dict}
    return env


SANDBOX = _environment()


def check_template(source: str) -> None:
    """Parses a template and refuses what it may never do, before anything renders it: a
    syntax error, loops nested too deep, a filter outside the allowlist, an attribute or item
    whose name starts with '_', template inheritance or includes.

    Raises:
        UnsafeTemplateError: saying what.
    """
    try:
        tree = SANDBOX.parse(source)
    except TemplateError as exc:
        raise UnsafeTemplateError(f"not a valid template ({exc})") from None
    for node in tree.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
        raise UnsafeTemplateError(f"{type(node).__name__.lower()} is not allowed in a template")
    for used in tree.find_all(nodes.Filter):
        if used.name not in SANDBOX.filters:
            raise UnsafeTemplateError(f"the filter {used.name!r} is not allowed in a template")
    for access in tree.find_all((nodes.Getattr, nodes.Getitem)):
        name = getattr(access, "attr", None) or getattr(getattr(access, "arg", None), "value", "")
        if isinstance(name, str) and name.startswith("_"):
            raise UnsafeTemplateError(f"the attribute {name!r} is not allowed in a template")
    if _loop_depth(tree) > MAX_LOOP_DEPTH:
        raise UnsafeTemplateError(f"loops nest more than {MAX_LOOP_DEPTH} deep in a template")


def _loop_depth(node: nodes.Node) -> int:
    inner = max((_loop_depth(child) for child in node.iter_child_nodes()), default=0)
    return inner + isinstance(node, nodes.For)


@lru_cache(maxsize=256)
def _compiled(source: str) -> Template:
    check_template(source)
    return SANDBOX.from_string(source)


def render(source: str, doc: dict[str, Any]) -> str:
    """Renders a template in the sandbox (checked by `check_template` first, and compiled once
    per process), streaming, stopped at MAX_RENDERED_CHARS.

    Raises:
        UnsafeTemplateError: the template breaks a rule, did what the sandbox refuses, or rendered
            too much.
        jinja2.TemplateError: the template failed on this document (an undefined field).
    """
    template = _compiled(source)
    try:
        chunks: Iterator[str] = template.generate(**doc)
        parts, total = [], 0
        for chunk in chunks:
            total += len(chunk)
            if total > MAX_RENDERED_CHARS:
                raise UnsafeTemplateError(f"rendered more than {MAX_RENDERED_CHARS} characters")
            parts.append(chunk)
    except SecurityError as exc:
        raise UnsafeTemplateError(str(exc)) from None
    return "".join(parts)


def compile_re2(pattern: str) -> Any:
    """The pattern compiled by RE2.

    Raises:
        ValueError: RE2 cannot compile it (backreferences, lookaround, ...), saying why.
    """
    options = re2.Options()
    options.log_errors = False
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        raise ValueError(f"{pattern!r} is not a linear-time (RE2) pattern: {detail}") from None


@cache
def harden_lm_eval() -> None:
    """Makes lm-eval render templates in the sandbox and run its filters' and metrics'
    regular expressions in RE2, for every task this process runs (bundled tasks pass both as
    they are). Idempotent. lm-eval reads these as module globals at call time, so rebinding
    them is the one hook it offers."""
    import lm_eval.api.metrics
    import lm_eval.filters.extraction
    import lm_eval.filters.transformation
    import lm_eval.utils

    lm_eval.utils.env = SANDBOX
    lm_eval.utils.apply_template = render
    for module in (lm_eval.api.metrics, lm_eval.filters.extraction, lm_eval.filters.transformation):
        module.re = re2
