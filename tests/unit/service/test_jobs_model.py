"""The job state machine and how a trainer's exit becomes a job state."""

import signal
from dataclasses import replace

import pytest
from pydantic import ValidationError

from service.errors import FailedPreconditionError
from service.jobs.model import (
    CLAIMS,
    OWNED,
    TRANSITIONS,
    JobEvent,
    JobKind,
    JobResult,
    JobSpec,
    JobState,
    Work,
    check_transition,
    claimable,
    crashed_runs,
    expire,
    released_state,
    spec_digest,
)
from service.jobs.runner import (
    Outcome,
    oom_kills,
    outcome,
    redact_paths,
    relative_paths,
    retry,
    trainer_environment,
)
from tests.unit.service.store.test_contract import job
from trainer.contract import FENCE_VARIABLE, PARENT_PID_VARIABLE, FailureReason


def test_terminal_states_have_no_way_out_and_every_live_state_can_fail_or_be_cancelled():
    for kind, table in TRANSITIONS.items():
        assert not set(table) & {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
        for state, targets in table.items():
            assert {JobState.FAILED, JobState.CANCELLED} <= targets, (kind, state)


def test_claims_take_waiting_jobs_to_owned_states_and_owners_can_always_let_go():
    for (kind, waiting), (_, claimed) in CLAIMS.items():
        assert not waiting.owned and claimed.owned
        assert claimed in TRANSITIONS[kind][waiting]
    for kind, table in TRANSITIONS.items():
        for state in OWNED & set(table):
            let_go = released_state(replace(job(1, kind=kind), state=state))
            assert let_go in table[state] and not let_go.owned, (kind, state)


def test_only_a_process_with_an_engine_claims_evaluations():
    assert claimable(frozenset({Work.TRAINING})) == [(JobKind.TRAIN, JobState.QUEUED)]
    assert set(claimable(frozenset({Work.EVALUATION}))) == {
        (JobKind.EVALUATE, JobState.QUEUED), (JobKind.TRAIN, JobState.EVALUATION_PENDING),
    }  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "current", "target"),
    [
        (JobKind.TRAIN, JobState.QUEUED, JobState.RUNNING),  # must validate first
        (JobKind.TRAIN, JobState.QUEUED, JobState.EVALUATING),  # only from evaluation_pending
        (JobKind.EVALUATE, JobState.EVALUATING, JobState.EVALUATION_PENDING),
        (JobKind.TRAIN, JobState.SUCCEEDED, JobState.QUEUED),
        (JobKind.EVALUATE, JobState.QUEUED, JobState.VALIDATING),
    ],
)
def test_transitions_outside_the_table_are_refused(kind, current, target):
    with pytest.raises(FailedPreconditionError, match=f"from {current.value} to {target.value}"):
        check_transition(kind, current, target)


def test_the_spec_digest_ignores_key_order():
    assert spec_digest({"a": 1, "b": {"c": 2}}) == spec_digest({"b": {"c": 2}, "a": 1})
    assert spec_digest({"a": 1}) != spec_digest({"a": 2})


@pytest.mark.parametrize(
    ("code", "failure", "state", "reason"),
    [
        (0, None, JobState.SUCCEEDED, ""),
        (75, None, JobState.QUEUED, "interrupted"),
        (-signal.SIGTERM, None, JobState.QUEUED, "interrupted"),
        (3, {"reason": "data_rejected", "message": "rows.jsonl:2 ..."}, JobState.FAILED,
         "data_rejected"),
        (5, {"reason": "out_of_memory", "message": "lower batch_size"}, JobState.FAILED,
         "out_of_memory"),
        (-signal.SIGKILL, None, JobState.FAILED, "out_of_memory"),
        (2, None, JobState.FAILED, "invalid_config"),
        (1, None, JobState.FAILED, "trainer_crashed"),
    ],
)  # fmt: skip
def test_a_trainer_exit_becomes_a_job_state_with_a_reason(code, failure, state, reason):
    result = outcome(code, failure, "last log lines")
    assert (result.state, result.reason) == (state, reason)
    if reason == "trainer_crashed":
        assert "last log lines" in result.message


def test_only_a_crash_is_retried_and_only_while_attempts_remain():
    crash = outcome(1, None, "Traceback ...\nRuntimeError: bus error")
    assert retry(crash, failures=1, max_attempts=2).state is JobState.QUEUED
    assert "run 1 of 2 failed" in retry(crash, failures=1, max_attempts=2).message
    assert retry(crash, failures=2, max_attempts=2) is crash
    rejected = Outcome(JobState.FAILED, "data_rejected", "rows.jsonl:2 ...")
    oom = outcome(-signal.SIGKILL, None, "")
    assert retry(rejected, 1, 3) is rejected
    assert retry(oom, 1, 3) is oom


def test_crashed_runs_count_against_the_retries_not_runs_the_server_stopped():
    def state(seq, state, reason=None):
        return JobEvent(
            "job-1", seq, 0.0, "state", {"state": state, **({"reason": reason} if reason else {})}
        )

    feed = [state(1, "queued"), state(2, "running"), state(3, "queued", "interrupted"),
            state(4, "running"), state(5, "queued", "lease_expired"), state(6, "running"),
            state(7, "queued", "retrying"), state(8, "running"),
            JobEvent("job-1", 9, 0.0, "progress", {"reason": "retrying"})]  # fmt: skip
    # Four runs: one drained, one whose owner died, one crashed trainer, one running.
    assert crashed_runs(feed) == 2
    crash = outcome(1, None, "Traceback ...")
    assert retry(crash, crashed_runs(feed) + 1, max_attempts=4).state is JobState.QUEUED
    assert retry(crash, crashed_runs(feed) + 1, max_attempts=3) is crash


def test_the_sweep_fails_a_lost_run_only_at_the_cap_and_a_cancel_wins_over_both():
    def lost(state, crashed_before, max_attempts, cancel=False):
        owned = replace(job(1), state=state, owner="w1", fence=1, cancel_requested=cancel)
        event = expire(owned, 5.0, crashed_before, max_attempts)
        return owned.state, event.get("reason"), owned.error_reason

    assert lost(JobState.RUNNING, 0, 2) == (JobState.QUEUED, "lease_expired", "")
    assert lost(JobState.EVALUATING, 0, 2) == (
        JobState.EVALUATION_PENDING, "lease_expired", "",
    )  # fmt: skip
    assert lost(JobState.RUNNING, 1, 2) == (JobState.FAILED, "worker_lost", "worker_lost")
    assert lost(JobState.RUNNING, 0, 1) == (JobState.FAILED, "worker_lost", "worker_lost")
    assert lost(JobState.RUNNING, 1, 2, cancel=True) == (
        JobState.CANCELLED, "cancelled", "cancelled",
    )  # fmt: skip


def test_a_python_exception_in_the_trainer_is_the_retried_crash():
    # The trainer's own `failed` event for an exception carries the contract's reason, so the
    # runner retries it like any other crash (it once wrote "crashed", which was never retried).
    failure = {"reason": FailureReason.CRASHED.value, "message": "RuntimeError: bus error"}
    crash = outcome(1, failure, "tail")
    assert crash.reason == "trainer_crashed"
    assert retry(crash, failures=1, max_attempts=2).state is JobState.QUEUED


def test_the_trainer_environment_keeps_no_setting_or_secret_of_the_server():
    server = {
        "PATH": "/usr/bin", "HOME": "/home/a", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "0",
        "ADAPTERD_JUDGE_API_KEY": "sk-secret", "ADAPTERD_AUTH_TOKENS_FILE": "/etc/tokens",
        "OPENAI_API_KEY": "sk-other", "AWS_SECRET_ACCESS_KEY": "x", "OMP_NUM_THREADS": "64",
    }  # fmt: skip
    env = trainer_environment(server, threads=3, parent_pid=42, fence=7)
    assert env == {
        "PATH": "/usr/bin", "HOME": "/home/a", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "0",
        "OMP_NUM_THREADS": "3", PARENT_PID_VARIABLE: "42", FENCE_VARIABLE: "7",
    }  # fmt: skip
    # A worker's slot gives its trainer its own accelerators, whatever the worker's are.
    slot = trainer_environment(server, threads=3, parent_pid=42, fence=7, devices=("2", "3"))
    assert slot["CUDA_VISIBLE_DEVICES"] == "2,3"


def test_a_sigkill_is_out_of_memory_only_when_the_oom_killer_struck_or_nobody_can_tell():
    assert outcome(-signal.SIGKILL, None, "", oom_killed=True).message.startswith(
        "the trainer was killed (SIGKILL) by the kernel's OOM killer"
    )
    assert "most likely by" in outcome(-signal.SIGKILL, None, "", oom_killed=None).message
    killed = outcome(-signal.SIGKILL, None, "tail", oom_killed=False)
    assert (killed.reason, killed.state) == ("trainer_crashed", JobState.FAILED)


def test_the_oom_kill_counter_is_read_from_cgroup_v2_or_v1(tmp_path):
    v2, v1 = tmp_path / "memory.events", tmp_path / "memory.oom_control"
    v2.write_text("low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\n")
    v1.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 5\n")
    assert oom_kills((v2, v1)) == 2
    assert oom_kills((tmp_path / "absent", v1)) == 5
    assert oom_kills((tmp_path / "absent",)) is None


def test_what_clients_see_of_a_trainer_holds_no_absolute_server_path(tmp_path):
    failure = {"reason": "trainer_crashed", "message": "OSError: /data/jobs/job-1/c/x.pt: full"}
    assert outcome(1, failure, "").message == "OSError: .../x.pt: full"
    tail = 'File "/srv/venv/lib/torch/nn/module.py", line 12\nOSError: /data/jobs/job-1/x.pt'
    assert redact_paths(tail) == 'File ".../module.py", line 12\nOSError: .../x.pt'
    event = {"path": f"{tmp_path}/checkpoints/step-3", "step": 3, "other": "/elsewhere/x"}
    assert relative_paths(event, tmp_path) == {
        "path": "checkpoints/step-3", "step": 3, "other": "/elsewhere/x"
    }  # fmt: skip


def test_the_spec_and_result_models_read_what_the_service_acts_on_and_keep_the_rest():
    trains = JobSpec.model_validate(
        {"adapter_name": "acme/a", "data": {"datasets": []}, "evaluation": {"gates": []}}
    )
    assert trains.registers and trains.evaluation == {"gates": []}
    assert trains.model_dump()["data"] == {"datasets": []}  # the trainer's, kept as submitted
    assert not JobSpec.model_validate({"adapter_name": "acme/a", "validate_only": True}).registers
    assert not JobSpec.model_validate({}).registers and JobSpec.model_validate({}).adapter == ""
    with pytest.raises(ValidationError):  # a stored spec of another shape is our bug
        JobSpec.model_validate({"validate_only": "sometimes"})
    result = JobResult.model_validate({"metrics": {"steps": 4}, "status": "succeeded"})
    assert (result.adapter_version, result.metrics["steps"]) == ("", 4)
    assert JobResult(adapter_version="acme/a@2").additions() == {"adapter_version": "acme/a@2"}


@pytest.mark.parametrize(
    ("metrics", "step"),
    [
        ({"steps": 8, "best_step": 4, "selected": "last"}, 8),
        ({"steps": 8, "best_step": 4, "selected": "best"}, 4),
        ({}, None),
    ],
)
def test_the_adapters_step_is_the_one_whose_weights_the_trainer_kept(metrics, step):
    assert JobResult(metrics=metrics).adapter_step == step
