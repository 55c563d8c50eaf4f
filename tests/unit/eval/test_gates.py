import pytest
from pydantic import ValidationError

from eval.gates import Comparator, Gate, Metric, check_gates


def gate(**fields):
    return Gate.model_validate({"comparator": ">=", **fields})


def test_absolute_and_relative_thresholds():
    results = {"win_rate": 0.62, "eval_loss": 1.1, "task:arith/acc": 0.5}
    baseline = {"eval_loss": 1.5, "task:arith/acc": 0.4}
    gates = [
        gate(metric="win_rate", threshold=0.55),
        gate(metric="eval_loss", comparator="<=", factor=0.9),  # 10% below the baseline
        gate(metric="task", task="arith", task_metric="acc", margin=0.05),
        gate(metric="task", task="arith", task_metric="acc", margin=0.2),
    ]
    checked = check_gates(gates, results, baseline)
    assert [c.passed for c in checked] == [True, True, True, False]
    assert checked[1].bound == pytest.approx(1.35)
    assert checked[3].reason == "task:arith/acc 0.5 not >= 0.6 (baseline 0.4 + 0.2)"
    assert [g.needs_baseline for g in gates] == [False, True, True, True]


def test_a_gate_compares_two_metrics_of_the_candidate():
    # The SFT guide's checklist: "eval loss within 10% of training loss".
    within = gate(
        metric="eval_loss", comparator="<=", factor=1.1, compare_to={"metric": "train_loss"}
    )
    above = gate(metric="task", task="arith", task_metric="acc", margin=0.1,
                 compare_to={"metric": "task", "task": "arith", "task_metric": "acc_norm"})  # fmt: skip
    results = {
        "eval_loss": 1.2,
        "train_loss": 1.0,
        "task:arith/acc": 0.5,
        "task:arith/acc_norm": 0.3,
    }
    checked = check_gates([within, above], results, baseline={"eval_loss": 9.0})
    assert [c.passed for c in checked] == [False, True]
    assert checked[0].bound == pytest.approx(1.1)
    assert checked[0].reason == "eval_loss 1.2 not <= 1.1 (1.1 x train_loss 1)"
    assert checked[1].reason == "task:arith/acc 0.5 >= 0.4 (task:arith/acc_norm 0.3 + 0.1)"
    assert not within.needs_baseline and not above.needs_baseline
    results["eval_loss"] = 1.05
    assert check_gates([within], results, {})[0].passed
    del results["train_loss"]
    assert check_gates([within], results, {})[0].reason == "train_loss was not measured"


def test_a_missing_measurement_fails_the_gate_and_says_which():
    checked = check_gates(
        [gate(metric="schema_valid_rate", threshold=0.9), gate(metric="win_rate", margin=0.0)],
        {"win_rate": 0.7},
        {},
    )
    assert [c.passed for c in checked] == [False, False]
    assert checked[0].reason == "schema_valid_rate was not measured"
    assert checked[1].reason == "win_rate of the baseline was not measured"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"metric": "win_rate"}, "exactly one of threshold, margin or factor"),
        ({"metric": "win_rate", "threshold": 0.5, "margin": 0.1}, "exactly one"),
        ({"metric": "task", "threshold": 0.5}, "task and task_metric are required"),
        ({"metric": "perplexity", "threshold": 3}, "metric"),
        ({"metric": "win_rate", "threshold": 0.5, "comparator": "=="}, "comparator"),
        ({"metric": "win_rate", "threshold": 0.5, "expression": "1"}, "expression"),
        ({"metric": "eval_loss", "factor": -1}, "factor"),
        (
            {"metric": "eval_loss", "threshold": 1, "compare_to": {"metric": "train_loss"}},
            "compare_to needs margin or factor, not threshold",
        ),
        ({"metric": "eval_loss", "factor": 1, "compare_to": {"metric": "eval_loss"}}, "itself"),
        ({"metric": "eval_loss", "factor": 1, "compare_to": {"metric": "task"}}, "task_metric"),
    ],
)
def test_malformed_gates_are_refused_naming_the_problem(fields, message):
    with pytest.raises(ValidationError, match=message):
        gate(**fields)


def test_comparators_are_the_closed_list():
    assert {c.value for c in Comparator} == {">=", ">", "<=", "<"}
    assert Metric("win_rate_lower") is Metric.WIN_RATE_LOWER
