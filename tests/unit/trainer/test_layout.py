"""trainer/layout.py: which checkpoints a retention policy keeps, and a job's checkpoints as
the server lists them."""

import json
import math

from trainer.layout import (
    CheckpointSummary,
    attempt_dir,
    checkpoint_dir,
    job_checkpoints,
    retained,
)


def summary(step, eval_loss=None):
    return CheckpointSummary(step=step, epoch=step / 10, loss=2.0 - step / 10, eval_loss=eval_loss)


def test_retained_unites_the_newest_with_the_lowest_eval_losses():
    found = [summary(1, 1.2), summary(2, 0.8), summary(3, 0.8), summary(4, math.nan), summary(5)]
    assert retained(found, newest=1, best=0) == {5}
    assert retained(found, newest=1, best=1) == {2, 5}  # a tie goes to the earlier step
    assert retained(found, newest=2, best=2) == {2, 3, 4, 5}
    assert retained(found, newest=1, best=10) == {1, 2, 3, 5}  # NaN and unmeasured never rank
    assert retained([], newest=2, best=2) == set()


def test_a_checkpoint_that_ends_a_curriculum_stage_is_always_kept():
    stage_end = CheckpointSummary(2, 1.0, 1.5, None, "general", stage_end=True)
    found = [summary(1), stage_end, summary(3), summary(4)]
    assert retained(found, newest=1, best=0) == {2, 4}
    record = {"step": 2, "epoch": 1.0, "loss": 1.5, "stage": "general", "stage_end": True}
    assert CheckpointSummary.of_record(record) == stage_end
    assert CheckpointSummary.of_record({"step": 3, "epoch": 0.5, "loss": 1.0}).stage == ""


def write(root, step, eval_loss, *, complete=True, manifest=True):
    path = checkpoint_dir(root / "checkpoints", step)
    path.mkdir(parents=True)
    if manifest:
        entry = {"checkpoint": summary(step, eval_loss).to_json()}
        (path / "manifest.json").write_text(json.dumps(entry))
    if complete:
        (path / "state.json").write_text("{}")


def test_job_checkpoints_are_the_newest_attempts_complete_ones_with_summaries(tmp_path):
    assert job_checkpoints(tmp_path) == []
    first, second = attempt_dir(tmp_path, 1), attempt_dir(tmp_path, 2)
    write(first, 2, 1.0)
    write(second, 2, 1.0)
    write(second, 4, None)
    write(second, 6, 0.5, complete=False)  # cut short
    write(second, 8, 0.4, manifest=False)  # by a trainer before checkpoint manifests
    listed = job_checkpoints(tmp_path)
    assert [(p.parent.parent, s) for p, s in listed] == [
        (second, summary(2, 1.0)),
        (second, summary(4)),
    ]
