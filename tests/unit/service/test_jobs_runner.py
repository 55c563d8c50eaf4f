"""The runner's pure parts: reading a trainer's events file back after its owner died."""

from service.jobs.model import SERVICE_FEED_KINDS, FeedKind, JobEvent
from service.jobs.runner import earlier_events_file, events_file, trainer_lines_stored
from trainer.contract import TrainerEvent


def feed(*events: tuple[str, dict]) -> list[JobEvent]:
    return [JobEvent("job", n, 0.0, kind, data) for n, (kind, data) in enumerate(events, start=1)]


def test_an_attempts_lines_in_the_feed_are_the_trainers_between_its_claim_and_the_next():
    # The trainer's "eval" (eval-split loss) is its own line; the service's evaluation
    # progress has a kind of its own, so a resumed run re-reads neither twice.
    stored = feed(
        ("state", {"state": "queued"}),
        ("state", {"state": "validating", "fence": 1, "owner": "a"}),
        ("data", {}), ("started", {}), ("progress", {}), ("eval", {}), ("log", {}),
        ("state", {"state": "running"}),  # not a claim: the attempt goes on
        ("progress", {}),
        ("state", {"state": "validating", "fence": 2, "owner": "b"}),
        ("data", {}), ("evaluation", {}),
    )  # fmt: skip
    assert trainer_lines_stored(stored, 1) == 6
    assert trainer_lines_stored(stored, 2) == 1
    assert trainer_lines_stored(stored, 3) == 0  # not claimed yet


def test_the_earlier_events_file_is_the_latest_attempt_before_this_one_that_ran(tmp_path):
    for fence in (1, 2, 4):
        events_file(tmp_path, fence).write_text("")
    (tmp_path / "events-notes.jsonl").write_text("")  # not an attempt's
    assert earlier_events_file(tmp_path, 4) == (2, events_file(tmp_path, 2))
    assert earlier_events_file(tmp_path, 5) == (4, events_file(tmp_path, 4))
    assert earlier_events_file(tmp_path, 1) is None


def test_the_service_and_the_trainer_never_name_an_event_alike():
    assert not {str(k) for k in SERVICE_FEED_KINDS} & {str(e) for e in TrainerEvent}
    assert FeedKind.LOG not in SERVICE_FEED_KINDS  # a trainer line without an event
