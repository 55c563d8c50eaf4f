"""The trainer's entry point: what a failing rank writes for the service."""

import json

from trainer.__main__ import failed
from trainer.contract import FailureReason, TrainerEvent
from trainer.events import EventWriter


def test_a_failed_event_reaches_the_events_file_from_any_rank(tmp_path):
    path = tmp_path / "events.jsonl"
    with EventWriter(path) as main, EventWriter(None) as silent:
        main.emit(TrainerEvent.PROGRESS, step=1)
        failed(silent, path, 1, FailureReason.CRASHED, "RuntimeError: rank 1's own error")
        failed(main, path, 0, FailureReason.CRASHED, "DistBackendError: peer went away")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(e["event"], e.get("rank")) for e in lines] == [
        ("progress", None), ("failed", 1), ("failed", None)
    ]  # fmt: skip
    assert lines[1]["message"] == "RuntimeError: rank 1's own error"
    assert lines[1]["reason"] == FailureReason.CRASHED.value
    with EventWriter(None) as silent:  # no events file: nothing to write, no error
        failed(silent, None, 1, FailureReason.CRASHED, "x")
