"""Prompt sets and schemas: errors name the file, line and field."""

import pytest

from eval.prompts import PromptSetError, bundled_prompts, bundled_schema, read_prompts, read_schema


def test_the_bundled_sets_load():
    rows = read_prompts(bundled_prompts("gsm8k_heldout"), ("prompt", "reference"), 5)
    assert len(rows) == 5 and all("####" in r["reference"] for r in rows)
    assert read_schema(bundled_schema("contact_card"))["required"] == ["name", "email"]
    assert len(read_prompts(bundled_prompts("contact_card"), ("prompt",), None)) == 20


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"prompt": "a"}\nnot json\n', "p.jsonl:2: invalid JSON"),
        ('{"prompt": "a"}\n\n{"prompt": 3}\n', "p.jsonl:3: prompt: a non-empty string"),
        ('["prompt"]\n', "p.jsonl:1: prompt"),
        ("\n\n", "p.jsonl: the prompt set is empty"),
    ],
)
def test_bad_prompt_files_name_the_line(tmp_path, text, message):
    path = tmp_path / "p.jsonl"
    path.write_text(text)
    with pytest.raises(PromptSetError, match=message):
        read_prompts(path, ("prompt",), None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "s.json: not a readable JSON file"),
        ("[1]", "s.json: a JSON Schema must be a JSON object"),
        ('{"type": "nonsense"}', "s.json: not a valid JSON Schema"),
    ],
)
def test_bad_schemas_are_refused(tmp_path, text, message):
    path = tmp_path / "s.json"
    path.write_text(text)
    with pytest.raises(PromptSetError, match=message):
        read_schema(path)
