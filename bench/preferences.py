"""The synthetic preference set of the DPO benchmark and tests: a GSM8K answer chosen over the
same answer with its final `#### n` changed."""

import json
from pathlib import Path

GSM8K = Path(__file__).resolve().parents[1] / "data/gsm8k/train_slice.jsonl"


def gsm8k_preferences(start: int, count: int) -> list[dict[str, str]]:
    """Preference rows from GSM8K rows `start` .. `start + count - 1` (`prompt`, `completion`):
    `chosen` is the completion, `rejected` the same with its final number plus 7."""
    with GSM8K.open() as f:
        rows = [json.loads(line) for line in f.readlines()[start : start + count]]
    pairs = []
    for row in rows:
        body, _, answer = row["completion"].rpartition("#### ")
        wrong = int(answer.replace(",", "")) + 7
        pairs.append(
            {
                "prompt": row["prompt"],
                "chosen": row["completion"],
                "rejected": f"{body}#### {wrong}",
            }
        )
    return pairs
