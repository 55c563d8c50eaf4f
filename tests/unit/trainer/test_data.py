"""Data validation end to end over files: line numbers, duplicates, overlap, policy, mixing."""

import json
from pathlib import Path

import pytest

from trainer.config import DataSpec
from trainer.data import DataRejectedError, prepare_data, prepare_preferences
from trainer.masking import TemplateError, render_trained

ROOT = Path(__file__).resolve().parents[3]
GSM8K = ROOT / "data/gsm8k/train_slice.jsonl"


def qa(i, answer=None):
    return {
        "prompt": f"Question number {i}?",
        "completion": answer or f"The answer is {i}, clearly.",
    }


def write_jsonl(path, rows):
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def spec(*paths, **kwargs):
    return DataSpec(datasets=[{"path": p} for p in paths], **kwargs)


def test_problems_carry_the_line_field_and_code(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [
        qa(1),
        "{not json",
        {"prompt": "Q", "completion": ""},
        qa(1),                                   # exact duplicate of line 1
        {"prompt": "question NUMBER 1", "completion": "the answer is 1 clearly"},  # near dup
        {"messages": [{"role": "user", "content": "x"}, {"role": "robot", "content": "y"}]},
        qa(7, answer="word " * 400),            # too long for max_length 128
    ])  # fmt: skip
    with pytest.raises(DataRejectedError) as caught:
        prepare_data(spec(path, max_length=128), tokenizer, seed=0)
    found = {(p.row, p.field, p.code) for p in caught.value.report.problems}
    assert found == {
        (2, "", "invalid_json"),
        (3, "completion", "empty_content"),
        (4, "", "duplicate"),
        (5, "", "near_duplicate"),
        (6, "messages[1].role", "unknown_role"),
        (7, "", "too_long"),
    }
    assert "d.jsonl:2: invalid JSON" in str(caught.value)
    assert not caught.value.report.ok


def test_drop_policy_trains_on_the_good_rows_and_reports_the_rest(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [qa(1), qa(2), "{oops", qa(3), qa(1)])
    prepared = prepare_data(spec(path, policy="drop"), tokenizer, seed=0)
    assert len(prepared.train) == 3
    report = prepared.report
    assert report.ok
    assert report.problem_counts == {"invalid_json": 1, "duplicate": 1}
    assert (report.sources[0].rows, report.sources[0].valid) == (5, 3)


def test_rows_shared_with_the_eval_file_are_refused(tmp_path, tokenizer):
    train = write_jsonl(tmp_path / "train.jsonl", [qa(1), qa(2), qa(3)])
    held = write_jsonl(tmp_path / "eval.jsonl", [qa(2), qa(9)])
    with pytest.raises(DataRejectedError) as caught:
        prepare_data(spec(train, eval_file=held), tokenizer, seed=0)
    [problem] = caught.value.report.problems
    assert (problem.row, problem.code) == (2, "train_eval_overlap")
    assert "eval.jsonl:1" in problem.message


def test_mixing_weights_set_each_sources_share_and_are_reported(tmp_path, tokenizer):
    big = write_jsonl(tmp_path / "big.jsonl", [qa(i) for i in range(30)])
    small = write_jsonl(tmp_path / "small.jsonl", [qa(100 + i) for i in range(10)])
    data = DataSpec(datasets=[{"path": big, "weight": 1}, {"path": small, "weight": 1}])
    report = prepare_data(data, tokenizer, seed=0).report
    # 40 rows in all, half each: the small file is upsampled, the big one subsampled
    assert [s.used for s in report.sources] == [20, 20]
    assert report.train_rows == 40


def test_eval_fraction_holds_out_rows_before_mixing(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [qa(i) for i in range(20)])
    prepared = prepare_data(spec(path, eval_fraction=0.25), tokenizer, seed=0)
    assert (len(prepared.train), len(prepared.eval)) == (15, 5)
    train_ids = {tuple(e.input_ids) for e in prepared.train}
    assert not train_ids & {tuple(e.input_ids) for e in prepared.eval}


def test_quality_filter_removes_and_counts(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [
        qa(1),
        {"prompt": "Explain gravity please", "completion": "Sure! Gravity pulls masses together, always."},
        {"prompt": "Why?", "completion": "Because."},
    ])  # fmt: skip
    prepared = prepare_data(spec(path, quality_filter=True), tokenizer, seed=0)
    assert len(prepared.train) == 1
    assert prepared.report.quality_filtered == {"sycophantic": 1, "too_short": 1}


CONTACT_ROWS = [
    qa(1),
    {"prompt": "Who do I ask?", "completion": "Write to jane.doe@example.com or call +1 415-555-2671."},
    {"messages": [
        {"role": "user", "content": "My card is 4111 1111 1111 1111, is it stored?"},
        {"role": "assistant", "content": "No card number is ever stored by this service."},
    ]},
]  # fmt: skip


def test_pii_redact_replaces_personal_data_before_training_and_counts_it(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", CONTACT_ROWS)
    prepared = prepare_data(spec(path, pii="redact"), tokenizer, seed=0)
    assert prepared.report.pii_redacted == {"email": 1, "phone": 1, "card": 1}
    texts = [tokenizer.decode(e.input_ids) for e in prepared.train]
    assert any("Write to [EMAIL] or call [PHONE]." in t for t in texts)
    assert any("My card is [CARD], is it stored?" in t for t in texts)
    assert not any("jane.doe" in t or "4111" in t or "555-2671" in t for t in texts)


def test_pii_reject_names_row_field_and_kinds_but_never_the_value(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", CONTACT_ROWS)
    with pytest.raises(DataRejectedError) as caught:
        prepare_data(spec(path, pii="reject"), tokenizer, seed=0)
    problems = [(p.row, p.field, p.code, p.message) for p in caught.value.report.problems]
    assert problems == [
        (2, "completion", "pii", "personal data (1 email, 1 phone); data.pii is reject"),
        (3, "messages[0].content", "pii", "personal data (1 card); data.pii is reject"),
    ]
    assert caught.value.report.pii_redacted == {}
    # Under the drop policy the rows holding personal data are left out, the rest trains.
    prepared = prepare_data(spec(path, pii="reject", policy="drop"), tokenizer, seed=0)
    assert len(prepared.train) == 1


def test_pii_keep_is_the_default_and_changes_nothing(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", CONTACT_ROWS)
    prepared = prepare_data(spec(path), tokenizer, seed=0)
    assert prepared.report.pii_redacted == {}
    assert any("jane.doe@example.com" in tokenizer.decode(e.input_ids) for e in prepared.train)


def test_report_on_gsm8k_has_percentiles_coverage_and_a_sample(tokenizer):
    data = DataSpec(datasets=[{"path": GSM8K, "columns": {}}], max_length=1024)
    report = prepare_data(data, tokenizer, seed=0).report
    assert report.sources[0].formats == {"prompt_completion": 1000}
    lengths = report.token_lengths
    assert 100 < lengths["p50"] <= lengths["p90"] <= lengths["p99"] <= lengths["max"] < 1024
    assert 0.3 < report.assistant_token_fraction < 0.8
    assert report.sample.count("[[") == 1 and "<|im_end|>]]" in report.sample


def test_csv_and_parquet_rows_are_read_with_their_row_numbers(tmp_path, tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    csv_path = tmp_path / "d.csv"
    csv_path.write_text('question,answer\n"Q one?","A one, fully."\n"Q two?",""\n')
    parquet_path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([qa(1), {"prompt": "Q", "completion": None}]), parquet_path)
    columns = {"prompt": "question", "completion": "answer"}
    data = DataSpec(
        datasets=[{"path": csv_path, "columns": columns}, {"path": parquet_path}], policy="drop"
    )
    report = prepare_data(data, tokenizer, seed=0).report
    found = {(Path(p.source).suffix, p.row, p.field, p.code) for p in report.problems}
    assert found == {
        (".csv", 3, "answer", "empty_content"),
        (".parquet", 2, "completion", "missing_field"),
    }
    assert [s.valid for s in report.sources] == [1, 1]


def test_an_unreadable_file_fails_even_under_drop_and_mix_ignores_empty_sources(
    tmp_path, tokenizer
):
    good = write_jsonl(tmp_path / "good.jsonl", [qa(i) for i in range(10)])
    data = DataSpec(datasets=[{"path": good}, {"path": tmp_path / "typo.jsonl"}], policy="drop")
    with pytest.raises(DataRejectedError) as caught:
        prepare_data(data, tokenizer, seed=0)
    assert [p.code for p in caught.value.report.problems] == ["unreadable_file"]
    only_bad_rows = write_jsonl(tmp_path / "bad.jsonl", ["{", "{"])
    mixed = DataSpec(datasets=[{"path": good}, {"path": only_bad_rows}], policy="drop")
    assert [s.used for s in prepare_data(mixed, tokenizer, seed=0).report.sources] == [10, 0]


def test_a_non_string_role_is_a_row_problem_not_a_crash(tmp_path, tokenizer):
    path = write_jsonl(
        tmp_path / "d.jsonl", [qa(1), {"messages": [{"role": ["user"], "content": "x"}]}]
    )
    report = prepare_data(spec(path, policy="drop"), tokenizer, seed=0).report
    assert report.problem_counts == {"unknown_role": 1}


def pair(i, chosen=None, rejected=None, **extra):
    return {"prompt": f"Question number {i}?", "chosen": chosen or f"It is {i}.",
            "rejected": rejected or f"It is {i + 1}.", **extra}  # fmt: skip


def test_preference_rows_become_pairs_trained_on_their_answers_only(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", [pair(1), pair(2, system="Be brief.")])
    prepared = prepare_preferences(spec(path), tokenizer, seed=0)
    assert prepared.report.train_rows == 2
    assert prepared.report.sources[0].formats == {"preference": 2}
    for item in prepared.train:
        chosen, rejected = (render_trained(tokenizer, e) for e in (item.chosen, item.rejected))
        # One prompt, two answers: each trained with its end-of-turn token, the prompt never.
        assert chosen.split("[[")[0] == rejected.split("[[")[0]
        question = chosen.split("Question number ")[1][0]
        assert f"[[It is {question}.<|im_end|>]]" in chosen
        assert f"[[It is {int(question) + 1}.<|im_end|>]]" in rejected
        assert item.reference is None


def test_preference_problems_carry_the_line_field_and_code(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", [
        pair(1),
        pair(2, chosen="Same.", rejected="Same."),
        qa(3),                                   # a supervised row in a preference file
        pair(1),                                 # duplicate of line 1
        {"prompt": "Q", "chosen": "A", "rejected": 5},
        pair(6, rejected="word " * 400),         # the longer answer is too long
    ])  # fmt: skip
    with pytest.raises(DataRejectedError) as caught:
        prepare_preferences(spec(path, max_length=128), tokenizer, seed=0)
    found = {(p.row, p.field, p.code) for p in caught.value.report.problems}
    assert found == {
        (2, "rejected", "identical_answers"),
        (3, "", "not_a_preference_row"),
        (4, "", "duplicate"),
        (5, "rejected", "wrong_type"),
        (6, "", "too_long"),
    }


def test_a_supervised_job_refuses_preference_rows_by_line(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", [qa(1), pair(2)])
    with pytest.raises(DataRejectedError) as caught:
        prepare_data(spec(path), tokenizer, seed=0)
    [problem] = caught.value.report.problems
    assert (problem.row, problem.code) == (2, "preference_row")
    assert "training.method 'dpo'" in problem.message


def test_pii_in_a_preference_prompt_is_redacted_in_both_answers_and_counted_once(
    tmp_path, tokenizer
):
    row = pair(1) | {"prompt": "Mail jane.doe@example.com the total?"}
    path = write_jsonl(tmp_path / "p.jsonl", [row])
    prepared = prepare_preferences(spec(path, pii="redact"), tokenizer, seed=0)
    assert prepared.report.pii_redacted == {"email": 1}
    [item] = prepared.train
    for example in (item.chosen, item.rejected):
        text = tokenizer.decode(example.input_ids)
        assert "Mail [EMAIL] the total?" in text and "jane.doe" not in text


def test_a_curriculum_keeps_its_stages_in_order_each_mixed_from_its_own_files(tmp_path, tokenizer):
    general = write_jsonl(tmp_path / "general.jsonl", [qa(i) for i in range(6)])
    domain = write_jsonl(tmp_path / "domain.jsonl", [qa(100 + i) for i in range(8)])
    extra = write_jsonl(tmp_path / "extra.jsonl", [qa(200 + i) for i in range(2)])
    data = DataSpec(stages=[
        {"name": "general", "datasets": [{"path": general}]},
        {"name": "domain", "datasets": [{"path": domain, "weight": 3}, {"path": extra}]},
    ])  # fmt: skip
    prepared = prepare_data(data, tokenizer, seed=0)
    assert prepared.stages == [6, 10]
    numbers = [
        int(tokenizer.decode(e.input_ids).split("number ")[1].split("?")[0]) for e in prepared.train
    ]
    assert sorted(numbers[:6]) == list(range(6))  # "general" first, then "domain" alone
    assert all(n >= 100 for n in numbers[6:])
    report = prepared.report
    assert report.stage_rows == {"general": 6, "domain": 10}
    # "domain" mixes its 10 rows 3:1 (7.5 and 2.5, rounded); "general" is not in its mixture.
    assert [(s.stage, s.used) for s in report.sources] == [
        ("general", 6), ("domain", 8), ("domain", 2),
    ]  # fmt: skip


def test_a_stage_left_without_rows_rejects_the_data_whatever_the_policy(tmp_path, tokenizer):
    good = write_jsonl(tmp_path / "good.jsonl", [qa(i) for i in range(4)])
    bad = write_jsonl(tmp_path / "bad.jsonl", ['{"prompt": 1}'])
    data = DataSpec(policy="drop", stages=[
        {"name": "general", "datasets": [{"path": good}]},
        {"name": "format", "datasets": [{"path": bad}]},
    ])  # fmt: skip
    with pytest.raises(DataRejectedError) as caught:
        prepare_data(data, tokenizer, seed=0)
    codes = caught.value.report.problem_counts
    assert codes["empty_stage"] == 1 and "stage 'format' has no valid rows" in str(caught.value)


def add_row(a, b):
    call = {"type": "function", "function": {"name": "add", "arguments": {"a": a, "b": b}}}
    return {
        "tools": [{"type": "function", "function": {"name": "add", "parameters": {
            "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}}],
        "messages": [{"role": "user", "content": "Add the numbers, please."},
                     {"role": "assistant", "content": None, "tool_calls": [call]}],
    }  # fmt: skip


def test_tool_rows_need_a_template_that_renders_tools(tmp_path, tokenizer, tools_tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [add_row(1, 2), add_row(3, 4), add_row(1, 2)])
    with pytest.raises(TemplateError, match="chatml_tools"):
        prepare_data(spec(path, policy="drop"), tokenizer, seed=0)
    prepared = prepare_data(spec(path, policy="drop"), tools_tokenizer, seed=0)
    # the same request with other arguments is another example; the same call is a duplicate
    assert len(prepared.train) == 2
    assert [(p.row, p.code) for p in prepared.report.problems] == [(3, "duplicate")]
    rendered = " ".join(render_trained(tools_tokenizer, e) for e in prepared.train)
    for a, b in [(1, 2), (3, 4)]:
        call = f'{{"name": "add", "arguments": {{"a": {a}, "b": {b}}}}}'
        assert f"[[<tool_call>\n{call}\n</tool_call><|im_end|>" in rendered
