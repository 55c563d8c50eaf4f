"""An evaluation report as one self-contained HTML page (no scripts, no external files). Pure.

The input is the report's JSON (service.evaluation writes both): scores side by side with the
baseline and their standard errors, the gates and by how much each passed or failed, the win rate
with its interval, schema errors, the training loss curve as inline SVG, and sample outputs.
"""

from html import escape
from typing import Any

from eval.gates import MetricRef

REPORT_JSON, REPORT_HTML = "report.json", "report.html"
"""File names of a report in its job's directory."""

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:960px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px}
th{background:#f4f4f4;text-align:left}.pass{color:#176f2c}.fail{color:#b00020}
pre{white-space:pre-wrap;background:#f8f8f8;padding:6px;margin:0}
"""


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else "-"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _failure_row(failure: dict[str, Any]) -> list[str]:
    output = f"<pre>{escape(failure['output'])}</pre>"
    return [str(failure["index"]), output, escape(failure["reason"])]


def loss_svg(points: list[list[float]], width: int = 640, height: int = 200) -> str:
    """A polyline of (step, loss) points; empty when there are fewer than two."""
    if len(points) < 2:
        return ""
    steps, losses = [p[0] for p in points], [p[1] for p in points]
    low, high = min(losses), max(losses)
    span_x, span_y = (max(steps) - min(steps)) or 1, (high - low) or 1
    coords = " ".join(
        f"{(s - min(steps)) / span_x * (width - 20) + 10:.1f},"
        f"{height - 10 - (v - low) / span_y * (height - 20):.1f}"
        for s, v in zip(steps, losses, strict=True)
    )
    return (
        f'<svg width="{width}" height="{height}" role="img" aria-label="training loss">'
        f'<polyline fill="none" stroke="#3367d6" stroke-width="1.5" points="{coords}"/>'
        f'<text x="12" y="14" font-size="11">loss {high:.3g}</text>'
        f'<text x="12" y="{height - 2}" font-size="11">{low:.3g}</text></svg>'
    )


def render_html(report: dict[str, Any]) -> str:
    """The page for `report` (the JSON that service.evaluation writes)."""
    scores, stderr = report["scores"], report.get("stderr", {})
    own, base = scores.get("candidate", {}), scores.get("baseline", {})
    own_err = stderr.get("candidate", {})
    verdict = (
        '<b class="pass">all gates passed</b>'
        if report["passed"]
        else '<b class="fail">blocked by a gate</b>'
    )
    if report.get("promoted"):
        verdict += f", promoted to alias <b>{escape(str(report.get('promote_alias')))}</b>"
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>adapterd evaluation "
        f"{escape(report['job_id'])}</title><style>{STYLE}</style></head><body>",
        f"<h1>Evaluation {escape(report['job_id'])}</h1>",
        f"<p>Candidate <b>{escape(report['candidate'])}</b> against baseline "
        f"<b>{escape(report['baseline'])}</b>: {verdict}. "
        f"Took {report['duration_seconds']:.0f} s.</p>",
        "<h2>Scores</h2>",
        _table(
            ["metric", "candidate", "± stderr", "baseline"],
            [
                [escape(k), _number(v), _number(own_err.get(k)), _number(base.get(k))]
                for k, v in sorted(own.items())
            ],
        ),
    ]
    if candidates := report.get("checkpoints"):
        key = MetricRef.model_validate(report["spec"]["checkpoints"]["select_by"]).key
        parts += [
            f"<h2>Checkpoints, ranked by {escape(key)}</h2>",
            _table(
                ["version", "step", escape(key), ""],
                [
                    [
                        escape(c["adapter_version"]),
                        str(c["step"]),
                        _number(c["scores"].get(key)),
                        "<b>selected</b>" if c["selected"] else "",
                    ]
                    for c in candidates
                ],
            ),
        ]
    if report["gates"]:
        parts += [
            "<h2>Gates</h2>",
            _table(
                ["gate", "value", "bound", "margin", "result"],
                [
                    [
                        escape(f"{g['metric']} {g['comparator']}"),
                        _number(g["value"]),
                        _number(g["bound"]),
                        _number(g["value"] - g["bound"])
                        if g["value"] is not None and g["bound"] is not None
                        else "-",
                        f'<span class="{"pass" if g["passed"] else "fail"}">'
                        f"{escape(g['reason'])}</span>",
                    ]
                    for g in report["gates"]
                ],
            ),
        ]
    details = report.get("details", {}).get("candidate", {})
    if "win_rate" in details:
        w = details["win_rate"]
        parts += [
            "<h2>Win rate</h2>",
            f"<p>{_number(w['rate'])} (95% CI {_number(w['ci_low'])} to {_number(w['ci_high'])}; "
            f"length-controlled {_number(w['length_controlled'])}) over {w['n']} prompts: "
            f"{w['wins']} wins, {w['ties']} ties, {w['losses']} losses; judge "
            f"{escape(w['judge'])}, {w['invalid']} prompts with unparsed verdicts.</p>",
            _table(
                ["prompt", "candidate", "baseline", "outcome"],
                [
                    [f"<pre>{escape(s[k])}</pre>" for k in ("prompt", "candidate", "baseline")]
                    + [escape(s["outcome"])]
                    for s in w["samples"]
                ],
            ),
        ]
    if "schema_adherence" in details:
        parts.append("<h2>Schema adherence</h2>")
        for mode, s in details["schema_adherence"].items():
            errors = ", ".join(f"{k}: {v}" for k, v in s["errors_by_keyword"].items()) or "none"
            parts.append(
                f"<p>{escape(mode)}: valid {_number(s['valid_rate'])}, parsed "
                f"{_number(s['parse_rate'])}; errors by keyword: {escape(errors)}</p>"
            )
            if s["failures"]:
                parts.append(
                    _table(
                        ["#", "output", "why"],
                        [_failure_row(f) for f in s["failures"]],
                    )
                )
    if "tool_calls" in details:
        t = details["tool_calls"]
        errors = ", ".join(f"{k}: {v}" for k, v in t["errors_by_keyword"].items()) or "none"
        parts.append(
            f"<h2>Tool calls</h2><p>{t['total']} prompts: valid {_number(t['valid_rate'])}, "
            f"called {_number(t['call_rate'])}, parsed {_number(t['parse_rate'])}; errors by "
            f"keyword: {escape(errors)}</p>"
        )
        if t["failures"]:
            parts.append(_table(["#", "answer", "why"], [_failure_row(f) for f in t["failures"]]))
    if "overlap" in details:
        parts += [
            "<h2>Overlap with the training rows (13-grams)</h2>",
            _table(
                ["evaluation set", "items", "sharing a 13-gram", "share"],
                [
                    [escape(name), str(o["items"]), str(o["contaminated"]), _number(o["rate"])]
                    for name, o in details["overlap"].items()
                ],
            ),
        ]
    if curve := loss_svg(report.get("loss_curve", [])):
        parts += ["<h2>Training loss</h2>", curve]
    parts.append("</body></html>")
    return "\n".join(parts)
