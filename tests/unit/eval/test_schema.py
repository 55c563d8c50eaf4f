import jsonschema
import pytest

from eval.schema import extract_json, score_outputs

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer", "minimum": 0}},
    "required": ["city", "population"],
}


def test_outputs_are_scored_for_parsing_validity_fields_and_error_keywords():
    outputs = [
        '{"city": "Paris", "population": 2100000}',  # valid
        'Here it is:\n```json\n{"city": "Lyon", "population": 500000}\n```',  # valid, fenced
        '{"city": "Nice"}',  # parsed, missing population
        '{"city": "Nantes", "population": -3}',  # parsed, minimum violated
        "Paris, about two million",  # not JSON
    ]
    report = score_outputs(outputs, SCHEMA)
    assert (report.total, report.parsed, report.valid) == (5, 4, 2)
    assert (report.parse_rate, report.valid_rate) == (0.8, 0.4)
    assert report.required_present == {"city": 4, "population": 3}
    assert report.errors_by_keyword == {"required": 1, "minimum": 1}
    assert [f.index for f in report.failures] == [2, 3, 4]
    assert report.failures[-1].reason == "not JSON"
    assert report.to_json()["required_present"] == {"city": 0.8, "population": 0.6}


def test_an_invalid_schema_is_refused_before_any_scoring():
    with pytest.raises(jsonschema.SchemaError):
        score_outputs(["{}"], {"type": "no-such-type"})


def test_extract_json_takes_the_whole_text_or_the_first_fence():
    assert extract_json(" [1, 2] ") == [1, 2]
    assert extract_json('x ```\n{"a": 1}\n``` y ```json\n2\n```') == {"a": 1}
    with pytest.raises(ValueError, match="not JSON"):
        extract_json("{broken")


def test_an_empty_set_scores_zero_without_dividing_by_zero():
    report = score_outputs([], SCHEMA)
    assert (report.parse_rate, report.valid_rate) == (0.0, 0.0)


def test_the_bundled_prompt_set_and_schema_are_usable():
    import json
    from pathlib import Path

    assets = Path(__file__).resolve().parents[3] / "eval/assets"
    schema = json.loads((assets / "contact_card.schema.json").read_text())
    prompts = [
        json.loads(line)["prompt"] for line in (assets / "contact_card.prompts.jsonl").open()
    ]
    assert len(prompts) == 20 and all(p.strip() for p in prompts)
    good = '{"name": "Ana Ruiz", "email": "ana.ruiz@lumenlabs.io", "company": "Lumen Labs"}'
    bad = '{"name": "Ana Ruiz", "email": "not-an-address", "fax": "1"}'
    report = score_outputs([good, bad], schema)
    assert report.valid == 1
    assert report.errors_by_keyword == {"pattern": 1, "additionalProperties": 1}
