"""trainer/checkpoints.py: one directory per attempt, and what a new attempt takes over."""

from trainer.checkpoints import attempt_dir, superseded, take_over


def checkpoint(root, step, complete=True):
    path = root / "checkpoints" / f"step-{step:07d}"
    path.mkdir(parents=True)
    if complete:
        (path / "state.json").write_text(f'{{"step": {step}}}')
    return path


def test_a_new_attempt_starts_from_copies_of_the_last_attempts_newest_checkpoint(tmp_path):
    first = attempt_dir(tmp_path, 1)
    checkpoint(first, 3)
    checkpoint(first, 6)
    checkpoint(first, 9, complete=False)  # a write cut short is never resumed
    (first / "best").mkdir()
    (first / "best" / "adapter_model.safetensors").write_text("weights")
    second = take_over(tmp_path, 2)
    assert second == attempt_dir(tmp_path, 2)
    assert [p.name for p in (second / "checkpoints").iterdir()] == ["step-0000006"]
    assert (second / "best" / "adapter_model.safetensors").read_text() == "weights"
    # What the first attempt's trainer writes from now on is never read by a later attempt.
    checkpoint(first, 12)
    assert not (second / "checkpoints" / "step-0000012").exists()
    assert [p.name for p in (take_over(tmp_path, 3) / "checkpoints").iterdir()] == ["step-0000006"]


def test_a_lost_attempt_knows_it_was_superseded_and_a_rerun_under_its_fence_continues(tmp_path):
    assert not (take_over(tmp_path, 0) / "checkpoints").exists()  # the first attempt: empty
    checkpoint(attempt_dir(tmp_path, 0), 5)
    again = take_over(tmp_path, 0)  # run by hand again: its own checkpoints
    assert [p.name for p in (again / "checkpoints").iterdir()] == ["step-0000005"]
    assert not superseded(tmp_path, 0)
    take_over(tmp_path, 4)
    assert superseded(tmp_path, 0) and superseded(tmp_path, 3) and not superseded(tmp_path, 4)
