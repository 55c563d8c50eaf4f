"""trainer/checkpoints.py: one directory per attempt, what a new attempt takes over, and what
retention prunes."""

import json

from trainer.checkpoints import prune, superseded, take_over
from trainer.layout import attempt_dir


def checkpoint(root, step, complete=True):
    path = root / "checkpoints" / f"step-{step:07d}"
    path.mkdir(parents=True)
    if complete:
        (path / "state.json").write_text(f'{{"step": {step}}}')
    return path


def test_a_new_attempt_starts_from_copies_of_the_last_attempts_kept_checkpoints(tmp_path):
    first = attempt_dir(tmp_path, 1)
    checkpoint(first, 3)
    checkpoint(first, 6)
    checkpoint(first, 9, complete=False)  # a write cut short is never resumed
    (first / "best").mkdir()
    (first / "best" / "adapter_model.safetensors").write_text("weights")
    second = take_over(tmp_path, 2)
    assert second == attempt_dir(tmp_path, 2)
    kept = ["step-0000003", "step-0000006"]
    assert sorted(p.name for p in (second / "checkpoints").iterdir()) == kept
    assert (second / "best" / "adapter_model.safetensors").read_text() == "weights"
    # What the first attempt's trainer writes from now on is never read by a later attempt.
    checkpoint(first, 12)
    assert not (second / "checkpoints" / "step-0000012").exists()
    assert sorted(p.name for p in (take_over(tmp_path, 3) / "checkpoints").iterdir()) == kept


def test_a_lost_attempt_knows_it_was_superseded_and_a_rerun_under_its_fence_continues(tmp_path):
    assert not (take_over(tmp_path, 0) / "checkpoints").exists()  # the first attempt: empty
    checkpoint(attempt_dir(tmp_path, 0), 5)
    again = take_over(tmp_path, 0)  # run by hand again: its own checkpoints
    assert [p.name for p in (again / "checkpoints").iterdir()] == ["step-0000005"]
    assert not superseded(tmp_path, 0)
    take_over(tmp_path, 4)
    assert superseded(tmp_path, 0) and superseded(tmp_path, 3) and not superseded(tmp_path, 4)


def summarized(root, step, eval_loss):
    path = checkpoint(root, step)
    summary = {"step": step, "epoch": 0.5, "loss": 1.0, "eval_loss": eval_loss}
    (path / "manifest.json").write_text(json.dumps({"checkpoint": summary}))
    return path


def test_prune_keeps_the_newest_and_the_lowest_eval_loss_and_nothing_else(tmp_path):
    root = tmp_path / "checkpoints"
    for step, loss in [(2, 1.5), (4, 0.9), (6, 1.1), (8, 0.7), (10, 1.3), (12, None)]:
        summarized(tmp_path, step, loss)
    checkpoint(tmp_path, 14)  # written without a summary: newest, never among the best
    prune(root, 2, 2)
    assert sorted(p.name for p in root.iterdir()) == [
        "step-0000004", "step-0000008", "step-0000012", "step-0000014",
    ]  # fmt: skip
    prune(root, 1, 0)
    assert [p.name for p in root.iterdir()] == ["step-0000014"]
