"""The runner's pure parts: reading a trainer's events file back after a restart."""

from service.jobs.model import SERVICE_FEED_KINDS, FeedKind, JobEvent
from service.jobs.runner import trainer_lines_stored
from trainer.contract import TrainerEvent


def test_the_trainers_lines_in_a_feed_are_all_but_the_services_own_events():
    # The trainer's "eval" (eval-split loss) is its own line; the service's evaluation
    # progress has a kind of its own, so a resumed run re-reads neither twice.
    kinds = ["state", "data", "started", "progress", "eval", "log", "state", "evaluation"]
    stored = [JobEvent("job", n, 0.0, kind, {}) for n, kind in enumerate(kinds, start=1)]
    assert trainer_lines_stored(stored) == 5


def test_the_service_and_the_trainer_never_name_an_event_alike():
    assert not {str(k) for k in SERVICE_FEED_KINDS} & {str(e) for e in TrainerEvent}
    assert FeedKind.LOG not in SERVICE_FEED_KINDS  # a trainer line without an event
