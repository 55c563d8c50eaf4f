"""The evaluation's sources: tasks, prompt sets and schemas from resolved client files."""

import json

import pytest

from eval.benchmarks import BenchmarkError
from eval.prompts import PromptSetError, bundled_prompts, read_prompts
from eval.sources import (
    ClientFiles,
    check_sources,
    contamination,
    rubric_set,
    safety_set,
    schema_set,
    task_configs,
)
from eval.spec import EvalSpecError, parse_eval_spec


def test_contamination_finds_evaluation_items_in_the_training_rows(tmp_path):
    prompts = read_prompts(bundled_prompts("gsm8k_heldout"), ("prompt", "reference"), 10)
    train = tmp_path / "train.jsonl"
    rows = [{"prompt": r["prompt"], "completion": "..."} for r in prompts[:3]]
    rows.append({"prompt": "What is the capital of France?", "completion": "Paris"})
    train.write_text("\n".join(json.dumps(r) for r in rows))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"data": {"datasets": [{"path": str(train)}]}}))
    spec = parse_eval_spec(
        {"benchmarks": {"tasks": ["adapterd_arith_mc"]}, "win_rate": {"limit": 10}},
        training=True,
    )
    found = contamination(config, spec, ClientFiles())
    assert found["win_rate"]["rate"] == 0.3 and found["win_rate"]["examples"] == [0, 1, 2]
    assert found["adapterd_arith_mc/test"]["contaminated"] == 0


def test_client_files_come_first_and_bundled_sets_are_the_fallback(tmp_path):
    (tmp_path / "mine.yaml").write_text(
        "task: mine\ndataset_path: json\ndataset_kwargs: {data_files: {test: rows.jsonl}}\n"
    )
    (tmp_path / "rows.jsonl").write_text('{"q": "1"}\n')
    spec = parse_eval_spec({"benchmarks": {"tasks": ["mine", "adapterd_gsm8k"]}}, training=False)
    names = [c["task"] for c in task_configs(spec, ClientFiles(task_dir=tmp_path))]
    assert names == ["mine", "adapterd_gsm8k"]
    with pytest.raises(BenchmarkError, match="'mine' is unknown"):
        task_configs(spec, ClientFiles())
    (tmp_path / "p.jsonl").write_text('{"prompt": "Give JSON"}\n')
    (tmp_path / "s.json").write_text(
        '{"type": "object", "properties": {"a": {"pattern": "(?=x)"}}}'
    )
    schema = parse_eval_spec({"schema_adherence": {}}, training=False).schema_adherence
    files = ClientFiles(schema_prompts=tmp_path / "p.jsonl", schema=tmp_path / "s.json")
    with pytest.raises(PromptSetError, match=r"s\.json: /properties/a/pattern: .*RE2"):
        schema_set(schema, files)
    rows, bundled = schema_set(schema, ClientFiles())
    assert rows and bundled["type"] == "object"


def test_a_url_judge_must_be_on_the_allowlist():
    spec = parse_eval_spec(
        {"win_rate": {"judge": "url", "judge_url": "evil", "judge_model": "m"}}, training=False
    )
    with pytest.raises(EvalSpecError, match="'evil' is not in the server's --judge-urls"):
        check_sources(spec, ClientFiles(), ["gpt"])


def test_a_url_judge_of_any_section_must_be_on_the_allowlist():
    for section in ("safety", "rubric"):
        spec = parse_eval_spec(
            {section: {"judge": "url", "judge_url": "evil", "judge_model": "m"}}, training=False
        )
        with pytest.raises(EvalSpecError, match=f"{section}.judge_url: 'evil' is not in"):
            check_sources(spec, ClientFiles(), ["gpt"])
        check_sources(spec, ClientFiles(), ["evil"])


def test_safety_categories_must_be_in_the_families_and_narrow_them(tmp_path):
    spec = parse_eval_spec({"safety": {"categories": ["fraud", "hate"]}}, training=False)
    prompts = safety_set(spec.safety, ClientFiles())
    assert {p.category for p in prompts} == {"fraud", "hate"} and len(prompts) == 32
    (tmp_path / "mine.jsonl").write_text('{"category": "fraud", "kind": "benign", "prompt": "x"}\n')
    with pytest.raises(PromptSetError, match=r"safety.categories: \['hate'\] not in mine.jsonl"):
        safety_set(spec.safety, ClientFiles(safety_families=tmp_path / "mine.jsonl"))
    rubric = parse_eval_spec({"rubric": {"set": "gsm8k_heldout", "limit": 2}}, training=False)
    assert [bool(c.reference) for c in rubric_set(rubric.rubric, ClientFiles())] == [True, True]
