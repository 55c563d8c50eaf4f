"""The HTML report: self-contained, escaped, with gates, win rate and the loss curve."""

from eval.report import loss_svg, render_html


def report(**changes):
    base = {
        "job_id": "job-1", "candidate": "bot@2", "baseline": "base", "duration_seconds": 12.0,
        "passed": False, "promoted": False,
        "scores": {"candidate": {"win_rate": 0.6}, "baseline": {}},
        "stderr": {},
        "gates": [{"metric": "win_rate", "comparator": ">=", "value": 0.6, "bound": 0.7,
                   "passed": False, "reason": "win_rate 0.6 not >= 0.7"}],
        "details": {"candidate": {"win_rate": {
            "rate": 0.6, "ci_low": 0.4, "ci_high": 0.8, "length_controlled": 0.55, "n": 5,
            "wins": 3, "ties": 0, "losses": 2, "invalid": 1, "judge": "reference",
            "samples": [{"prompt": "<script>alert(1)</script>", "candidate": "a",
                         "baseline": "b", "outcome": "win"}]}}},
        "loss_curve": [[1, 2.0], [2, 1.5], [3, 1.2]],
    }  # fmt: skip
    return base | changes


def test_the_page_shows_the_blocked_gate_its_margin_and_escapes_outputs():
    page = render_html(report())
    assert "blocked by a gate" in page and "win_rate 0.6 not &gt;= 0.7" in page
    assert "<td>-0.1</td>" in page  # the margin by which the gate failed
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<svg" in page and "http" not in page  # self-contained


def test_a_promoted_adapter_says_where_it_went():
    page = render_html(report(passed=True, promoted=True, promote_alias="prod", gates=[]))
    assert "all gates passed" in page and "promoted to alias <b>prod</b>" in page


def test_the_loss_curve_needs_two_points():
    assert loss_svg([[1, 2.0]]) == ""
    assert loss_svg([[1, 2.0], [2, 1.0]]).count(",") == 2


def test_scored_checkpoints_are_listed_with_the_metric_that_ranked_them():
    candidates = [
        {"adapter_version": "t/bot-ckpt@1", "step": 2, "scores": {"eval_loss": 1.5},
         "selected": False},
        {"adapter_version": "t/bot@1", "step": 4, "scores": {"eval_loss": 1.25},
         "selected": True},
    ]  # fmt: skip
    spec = {"checkpoints": {"select_by": {"metric": "eval_loss"}, "goal": "auto"}}
    page = render_html(report(checkpoints=candidates, spec=spec))
    assert "<h2>Checkpoints, ranked by eval_loss</h2>" in page
    assert "<td>t/bot-ckpt@1</td><td>2</td><td>1.5</td><td></td>" in page
    assert "<td>t/bot@1</td><td>4</td><td>1.25</td><td><b>selected</b></td>" in page
