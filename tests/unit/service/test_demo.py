"""The demo's plan, sized from the speed the server measured, and how it reads a GSM8K answer."""

import pytest

from service.demo import FULL, MIN_TRAIN_ROWS, QUICK, MachineSpeed, final_number, size_plan

PARAMETERS = 134_515_008  # SmolLM2-135M


def test_a_fast_machine_keeps_the_full_plan_and_says_how_long_training_takes():
    plan, said = size_plan(FULL, MachineSpeed("bfloat16", 1000.0, PARAMETERS))
    assert plan == FULL
    assert f"training {FULL.train_rows} rows" in said and "1000 GFLOP/s bfloat16" in said


def test_a_slow_probe_shrinks_the_plan_and_says_so():
    plan, said = size_plan(FULL, MachineSpeed("float32", 60.0, PARAMETERS))
    assert MIN_TRAIN_ROWS <= plan.train_rows < FULL.train_rows
    assert plan.train_rows % 4 == 0  # whole micro-batches
    assert not plan.expect_promotion  # fewer rows may not pass the gates: a block is no error
    assert (plan.questions, plan.schema_questions) == (FULL.questions, FULL.schema_questions)
    assert f"{FULL.train_rows} rows would take" in said
    assert f"trains on {plan.train_rows}" in said and "60 GFLOP/s float32" in said


@pytest.mark.parametrize("gflops", [1.0, 10.0, 40.0])
def test_the_slower_the_machine_the_fewer_rows_down_to_a_floor(gflops):
    slower, _ = size_plan(FULL, MachineSpeed("float32", gflops, PARAMETERS))
    faster, _ = size_plan(FULL, MachineSpeed("float32", gflops * 2, PARAMETERS))
    assert MIN_TRAIN_ROWS <= slower.train_rows <= faster.train_rows


def test_quick_never_grows_and_an_unmeasured_machine_keeps_its_plan():
    plan, _ = size_plan(QUICK, MachineSpeed("float32", 5.0, PARAMETERS))
    assert plan.train_rows <= QUICK.train_rows
    plan, said = size_plan(FULL, MachineSpeed("bfloat16", 0.0, PARAMETERS))
    assert plan == FULL and "no matmul rate" in said


@pytest.mark.parametrize(
    ("text", "number"),
    [("so 3 + 4 = 7.\n#### 7", "7"), ("#### 1,250.", "1250"), ("#### -3\n#### 4", "4"),
     ("The answer is 7.", None)],
)  # fmt: skip
def test_the_final_number_is_read_from_the_last_answer_line(text, number):
    assert final_number(text) == number
