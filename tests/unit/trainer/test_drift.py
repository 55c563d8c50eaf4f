"""Prompt drift on real all-MiniLM-L6-v2 embeddings: held-out GSM8K questions stay close to a
GSM8K reference, the contact-card extraction prompts drift on every statistic; the reference
survives its file."""

import json
from pathlib import Path

import numpy as np
import pytest

from eval.prompts import bundled_prompts
from trainer.drift import (
    REFERENCE_FILE,
    Reference,
    drift,
    ks_statistic,
    prompt_text,
    read_reference,
    write_reference,
)
from trainer.embeddings import embed

SLICE = Path(__file__).resolve().parents[3] / "data/gsm8k/train_slice.jsonl"


def lines(path: Path) -> list[str]:
    return [json.loads(line)["prompt"] for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Reference:
    directory = tmp_path_factory.mktemp("adapter")
    write_reference(lines(SLICE)[:200], directory)
    found = read_reference(directory)
    assert found is not None
    return found


def window(prompts: list[str]):
    return embed(prompts).numpy(), [len(p) for p in prompts]


def test_held_out_training_prompts_do_not_drift_and_another_task_does(reference):
    held_out = drift(reference, *window(lines(SLICE)[-20:]))
    contact = drift(reference, *window(lines(bundled_prompts("contact_card"))))
    assert held_out.mmd_p_value > 0.05, held_out
    assert contact.mmd_p_value < 0.01, contact
    assert contact.centroid_distance > 3 * held_out.centroid_distance, (held_out, contact)
    assert contact.mmd > held_out.mmd
    assert held_out.prompts == 20 and contact.prompts == 20


def test_a_mix_keeps_part_of_the_centroid_but_fails_the_two_sample_test(reference):
    mixed = lines(SLICE)[-10:] + lines(bundled_prompts("contact_card"))[:10]
    measured = drift(reference, *window(mixed))
    assert measured.mmd_p_value < 0.01, measured


def test_the_reference_holds_its_sample_and_every_prompts_length(reference, tmp_path):
    assert reference.embedding_model == "all-MiniLM-L6-v2"
    assert (reference.prompts, reference.sample.shape, len(reference.lengths)) == (
        200, (128, 384), 200,
    )  # fmt: skip
    assert np.allclose(np.linalg.norm(reference.sample, axis=1), 1.0, atol=1e-3)
    (tmp_path / REFERENCE_FILE).write_text('{"sample": []}')
    with pytest.raises(ValueError, match="not a drift reference"):
        read_reference(tmp_path)
    assert read_reference(tmp_path / "none") is None


def test_ks_is_the_largest_gap_of_the_two_distributions():
    assert ks_statistic(np.array([1.0, 2, 3]), np.array([1.0, 2, 3])) == 0.0
    assert ks_statistic(np.array([1.0, 2]), np.array([10.0, 20])) == 1.0
    assert ks_statistic(np.array([1.0, 2, 3, 4]), np.array([3.0, 4, 5, 6])) == 0.5


def test_the_prompt_of_a_conversation_is_its_user_turns():
    turns = [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"), ("user", "2+2?")]
    assert prompt_text(turns) == "Hi\n2+2?"
