"""The evaluation spec: whole-spec checks that name the field."""

import pytest

from eval.spec import EvalSpecError, parse_eval_spec


def gate(metric, **fields):
    return {"metric": metric, "comparator": ">=", "threshold": 0.5, **fields}


def test_a_complete_spec_parses_with_defaults():
    fields = {
        "benchmarks": {"tasks": ["adapterd_arith_mc"], "limit": 10},
        "schema_adherence": {},
        "win_rate": {"judge": "llm", "judge_model": "judge-bot"},
        "gates": [gate("task", task="adapterd_arith_mc", task_metric="acc"),
                  gate("win_rate_lower"), gate("latency_p95_seconds")],
        "promote_alias": "prod",
    }  # fmt: skip
    spec = parse_eval_spec(fields, training=False)
    assert spec.schema_adherence.set == "contact_card" and spec.win_rate.limit == 20
    assert [g.key for g in spec.gates] == [
        "task:adapterd_arith_mc/acc", "win_rate_lower", "latency_p95_seconds"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "give at least one of benchmarks, schema_adherence, tool_calls, win_rate, safety, "
             "rubric or human"),
        ({"win_rate": {}, "gates": [gate("human_score")]}, "human_score needs a human section"),
        ({"human": {}, "gates": [{"metric": "human_win_rate", "comparator": ">=", "margin": 0}]},
         "human_win_rate is measured against the baseline: give a threshold"),
        ({"human": {"limit": 501}}, "human.limit"),
        ({"human": {"judge": "llm", "judge_prompt": "A or B?"}}, "must contain {first} and"),
        ({"benchmarks": {"tasks": []}}, "benchmarks.tasks"),
        ({"benchmarks": {"tasks": ["a"], "limit": 0}}, "benchmarks.limit = 0"),
        ({"schema_adherence": {"prompts": "p.jsonl"}}, "give prompts and schema_file together"),
        ({"schema_adherence": {"set": "nope"}}, "set 'nope' is not bundled"),
        ({"win_rate": {"judge": "oracle"}}, "win_rate.judge = 'oracle'"),
        ({"win_rate": {"judge_model": "x"}}, 'judge_model and judge_prompt are for judges "llm"'),
        ({"win_rate": {"judge": "url", "judge_model": "m"}}, 'judge_url names the allowlisted'),
        ({"win_rate": {"judge": "url", "judge_url": "gpt"}}, 'judge "url" needs judge_model'),
        ({"win_rate": {"judge_url": "gpt"}}, "judge_url names the allowlisted server"),
        ({"win_rate": {"judge": "llm", "judge_prompt": "A or B?"}}, "must contain {first} and"),
        ({"schema_adherence": {}, "gates": [gate("win_rate")]}, "gates[0]: win_rate needs a"),
        ({"win_rate": {}, "gates": [gate("task", task="t", task_metric="acc")]},
         "task 't' is not in benchmarks.tasks"),
        ({"win_rate": {}, "gates": [{"metric": "win_rate", "comparator": ">=", "margin": 0.1}]},
         "measured against the baseline: give a threshold"),
        ({"win_rate": {}, "gates": [{"metric": "win_rate", "comparator": "~", "threshold": 1}]},
         "gates.0.comparator = '~'"),
        ({"win_rate": {}, "gates": [gate("eval_loss")]}, "exists only for a training job"),
        ({"win_rate": {}, "gates": [{"metric": "win_rate", "comparator": ">=", "margin": 0,
                                     "compare_to": {"metric": "train_loss"}}]},
         "gates[0].compare_to: train_loss exists only for a training job"),
        ({"win_rate": {}, "gates": [{"metric": "win_rate", "comparator": ">=", "factor": 1,
                                     "compare_to": {"metric": "schema_valid_rate"}}]},
         "gates[0].compare_to: schema_valid_rate needs a schema_adherence section"),
        ({"win_rate": {}, "surprise": 1}, "surprise: unknown field"),
        ({"win_rate": {}, "gates": [gate("unsafe_rate")]}, "gates[0]: unsafe_rate needs a safety"),
        ({"safety": {}, "gates": [gate("rubric_score")]}, "rubric_score needs a rubric section"),
        ({"rubric": {"dimensions": ["helpfulness"]}, "gates": [gate("rubric_formatting")]},
         "rubric_formatting: formatting is not in rubric.dimensions"),
        ({"benchmarks": {"tasks": ["a"]}, "gates": [gate("latency_p50_seconds")]},
         "needs a schema_adherence or tool_calls or win_rate or safety or rubric or human section"),
        ({"safety": {"categories": ["Weapons"]}}, "categories[0]: 'Weapons' is not 1-32"),
        ({"safety": {"families": "f.jsonl", "families_upload": "safety-1"}},
         "give families (a server path) or families_upload, not both"),
        ({"safety": {"judge": "llm", "judge_prompt": "Refused? {answer}"}},
         "judge_prompt must contain {request}"),
        ({"safety": {"judge_prompt": "x"}}, 'judge_model and judge_prompt are for judges "llm"'),
        ({"rubric": {"judge": "reference"}}, "rubric.judge = 'reference'"),
        ({"rubric": {"dimensions": ["wit"]}}, "rubric.dimensions.0 = 'wit'"),
        ({"rubric": {"dimensions": ["formatting", "formatting"]}}, "dimensions: each at most once"),
        ({"rubric": {"dimensions": []}}, "rubric.dimensions"),
        ({"rubric": {"set": "mt_bench"}}, "set 'mt_bench' is not bundled"),
        ({"rubric": {"judge_prompt": "Rate it."}}, "must contain {conversation} and {answer}"),
    ],
)  # fmt: skip
def test_invalid_specs_name_the_field(fields, message):
    assert message in refusal(fields, training=False)


def refusal(fields, training):
    with pytest.raises(EvalSpecError) as caught:
        parse_eval_spec(fields, training=training)
    return str(caught.value)


def test_a_training_jobs_evaluation_may_gate_on_its_losses():
    spec = parse_eval_spec(
        {"win_rate": {}, "gates": [gate("eval_loss", comparator="<=", threshold=2.0)]},
        training=True,
    )
    assert spec.gates[0].key == "eval_loss"
    within = {"metric": "eval_loss", "comparator": "<=", "factor": 1.1,
              "compare_to": {"metric": "train_loss"}}  # fmt: skip
    spec = parse_eval_spec({"win_rate": {}, "gates": [within]}, training=True)
    assert spec.gates[0].compare_to.key == "train_loss"


def test_safety_and_rubric_sections_parse_with_defaults_and_gate_on_their_metrics():
    fields = {
        "safety": {"categories": ["weapons", "fraud"]},
        "rubric": {"judge": "url", "judge_url": "gpt", "judge_model": "m",
                   "dimensions": ["helpfulness", "formatting"]},
        "gates": [gate("unsafe_rate_upper", comparator="<=", threshold=0.2),
                  {"metric": "over_refusal_rate", "comparator": "<=", "margin": 0.05},
                  gate("rubric_score_lower", threshold=6), gate("rubric_formatting"),
                  gate("latency_p95_seconds")],
    }  # fmt: skip
    spec = parse_eval_spec(fields, training=False)
    assert (spec.safety.judge, spec.safety.max_tokens) == ("reference", 64)
    assert spec.rubric.set == "assistant_mix"
    assert spec.gates[1].needs_baseline  # relative to the baseline's over-refusal rate
    assert list(spec.judged()) == ["safety", "rubric"]
    assert parse_eval_spec({"rubric": {}}, training=False).rubric.dimensions == (
        "helpfulness", "faithfulness", "formatting", "harmlessness"
    )  # fmt: skip


def test_a_gate_on_a_human_metric_makes_the_promotion_wait_for_ratings():
    waiting = parse_eval_spec(
        {"human": {}, "gates": [gate("human_score", comparator=">", threshold=4.0)]},
        training=False,
    )
    assert waiting.awaits_ratings and waiting.human.set == "gsm8k_heldout"
    relative = {"metric": "human_score", "comparator": ">=", "margin": 0.0}
    assert parse_eval_spec({"human": {}, "gates": [relative]}, training=False).awaits_ratings
    assert not parse_eval_spec({"human": {}, "win_rate": {}}, training=False).awaits_ratings


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"schema_adherence": {}, "checkpoints": {"select_by": {"metric": "win_rate"}}},
         "checkpoints.select_by: win_rate needs a win_rate section"),
        ({"benchmarks": {"tasks": ["a"]},
          "checkpoints": {"select_by": {"metric": "task", "task": "b", "task_metric": "acc"}}},
         "checkpoints.select_by: task 'b' is not in benchmarks.tasks"),
        ({"human": {}, "checkpoints": {"select_by": {"metric": "eval_loss"}}},
         "checkpoints: not with a human section"),
        ({"win_rate": {}, "checkpoints": {"select_by": {"metric": "overlap_rate"}}},
         "overlap_rate is the same for every checkpoint"),
        ({"win_rate": {}, "checkpoints": {"select_by": {"metric": "train_loss"}}},
         "rank by eval_loss"),
        ({"win_rate": {}, "checkpoints": {"select_by": {"metric": "win_rate"}, "goal": "up"}},
         "checkpoints.goal = 'up'"),
    ],
)  # fmt: skip
def test_a_checkpoint_selection_must_rank_by_a_metric_each_checkpoint_has(fields, message):
    assert message in refusal(fields, training=True)


def test_checkpoints_are_scored_only_in_a_training_jobs_evaluation():
    fields = {"win_rate": {}, "checkpoints": {"select_by": {"metric": "win_rate_lower"}}}
    assert parse_eval_spec(fields, training=True).checkpoints.goal == "auto"
    assert "only a training job's evaluation has checkpoints" in refusal(fields, training=False)


def test_a_tool_call_section_defaults_to_the_bundled_set_and_gates_on_its_valid_rate():
    spec = parse_eval_spec(
        {"tool_calls": {"limit": 5}, "gates": [gate("tool_call_valid_rate")]}, training=False
    )
    assert (spec.tool_calls.set, spec.tool_calls.max_tokens) == ("basic_tools", 128)
    with pytest.raises(EvalSpecError, match="tool_call_valid_rate needs a tool_calls section"):
        parse_eval_spec({"win_rate": {}, "gates": [gate("tool_call_valid_rate")]}, training=False)
    with pytest.raises(EvalSpecError, match="'weather' is not bundled"):
        parse_eval_spec({"tool_calls": {"set": "weather"}}, training=False)
