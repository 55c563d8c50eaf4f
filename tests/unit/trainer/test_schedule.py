"""The order of a run's micro-batches: epochs, curriculum stages, resumes."""

import pytest

from trainer.schedule import Schedule, Stage, epoch_order


@pytest.mark.parametrize("grouped", [False, True])
def test_epoch_order_is_a_function_of_seed_and_epoch(grouped):
    lengths = list(range(10))
    first = epoch_order(lengths, 4, seed=1, epoch=0, group_by_length=grouped)
    assert first == epoch_order(lengths, 4, seed=1, epoch=0, group_by_length=grouped)
    assert first != epoch_order(lengths, 4, seed=1, epoch=1, group_by_length=grouped)
    assert sorted(i for batch in first for i in batch) == list(range(10))
    assert sorted(len(b) for b in first) == [2, 4, 4]


def test_grouping_by_length_puts_similar_lengths_together():
    lengths = [10, 500] * 32
    batches = epoch_order(lengths, 8, seed=0, epoch=0, group_by_length=True)
    assert all(len({lengths[i] for i in batch}) == 1 for batch in batches)


def test_stage_zero_shuffles_as_a_run_without_stages_and_later_stages_differently():
    lengths = list(range(12))
    alone = epoch_order(lengths, 4, seed=3, epoch=0, group_by_length=False)
    assert epoch_order(lengths, 4, seed=3, epoch=0, group_by_length=False, stage=0) == alone
    assert epoch_order(lengths, 4, seed=3, epoch=0, group_by_length=False, stage=1) != alone


def schedule(*stages, batch_size=2):
    lengths = [1] * sum(size for _, size, _ in stages)
    return Schedule([Stage(*s) for s in stages], lengths, batch_size, 0, group_by_length=False)


def test_stages_run_in_order_each_for_its_epochs_over_its_own_items():
    run = schedule(("general", 4, 1.0), ("domain", 6, 2.0), ("format", 2, 0.5))
    assert run.micro_batches == 2 + 6 + 1
    taken = [run.batch(m) for m in range(run.micro_batches)]
    assert [run.stage_at(m) for m in range(9)] == [0, 0, 1, 1, 1, 1, 1, 1, 2]
    assert sorted(i for b in taken[:2] for i in b) == [0, 1, 2, 3]
    for epoch in (taken[2:5], taken[5:8]):  # each epoch of "domain" takes its items once
        assert sorted(i for b in epoch for i in b) == list(range(4, 10))
    assert set(taken[8]) <= {10, 11} and len(taken[8]) == 2
    assert [run.starts_stage(m) for m in (0, 1, 2, 8)] == [True, False, True, True]
    assert run.epochs_done(2) == 1.0 and run.epochs_done(3) == pytest.approx(1 / 3)
    assert run.epochs_done(9) == 1.0


def test_a_resumed_schedule_takes_the_same_batches_and_the_last_stage_goes_on():
    stages = (("a", 3, 1.0), ("b", 5, 1.0))
    first, resumed = schedule(*stages), schedule(*stages)
    assert [first.batch(m) for m in range(5)] == [resumed.batch(m) for m in range(5)]
    beyond = [first.batch(m) for m in range(5, 8)]  # max_steps past the stages: b again
    assert first.stage_at(7) == 1 and sorted(i for b in beyond for i in b) == list(range(3, 8))
