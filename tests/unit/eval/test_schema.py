import json

import pytest

from eval.schema import check_schema, extract_json, score_outputs


def _deep(levels):
    node = {}
    for _ in range(levels):
        node = {"not": node}
    return node


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
    with pytest.raises(ValueError, match="not a valid JSON Schema"):
        score_outputs(["{}"], {"type": "no-such-type"})


REDOS = "^(?:(x+x+)+y|x+)$"


def test_a_redos_pattern_is_scored_in_re2():
    # Python's re (jsonschema's own) takes 3.5 s at 26 characters here, doubling per character;
    # at 60 it would run for years, and pytest-timeout would fail this test.
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string", "pattern": REDOS}},
        "patternProperties": {REDOS: {"type": "integer"}},
    }
    long = "x" * 60
    report = score_outputs([json.dumps({"a": long}), json.dumps({"a": long + "z"})], schema)
    assert (report.valid, report.errors_by_keyword) == (1, {"pattern": 1})
    report = score_outputs([json.dumps({long: "not an integer"})], schema)
    assert report.errors_by_keyword == {"type": 1}


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"properties": {"a": {"pattern": "(a)\\1"}}}, "/properties/a/pattern: .*RE2"),
        ({"patternProperties": {"(?=x)": {}}}, "/patternProperties: .*RE2"),
        ({"items": {"items": {}}} | {"x": _deep(100)}, "nested deeper than 64"),
        ([1], "must be a JSON object"),
    ],
)
def test_check_schema_names_the_json_pointer_of_what_re2_cannot_run(schema, message):
    with pytest.raises(ValueError, match=message):
        check_schema(schema)


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
