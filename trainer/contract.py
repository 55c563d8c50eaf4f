"""What the trainer and the service tell each other: the events a run writes, how it ends (exit
codes, failure reasons), and the environment it gets. Torch-free.

Defined once here and imported on both sides of the process boundary (`trainer.recipe` and
`trainer.__main__` write them, `service.jobs.runner` reads them), so the two cannot drift.
"""

import enum


class TrainerEvent(enum.StrEnum):
    """The `event` of each JSON line a run writes (`trainer.events.EventWriter`); the service
    stores each line as a job feed event of that kind (`service.jobs.model.FeedKind` names the
    kinds the service adds)."""

    DATA = "data"
    """The data report (rows, tokens, what was dropped and why)."""
    RESUMED = "resumed"
    STARTED = "started"
    """Training begins: total steps, precision, quantization."""
    STAGE = "stage"
    """A curriculum stage begins: its name, index, first step, rows and epochs."""
    PROGRESS = "progress"
    EVAL = "eval"
    """The eval split's loss at a step."""
    CHECKPOINT = "checkpoint"
    INTERRUPTED = "interrupted"
    EARLY_STOPPED = "early_stopped"
    DONE = "done"
    """Success: metrics, the adapter and its manifest."""
    FAILED = "failed"
    """With a `FailureReason` and a message."""


class ExitCode(enum.IntEnum):
    """The trainer's exit status."""

    OK = 0
    CRASHED = 1
    """An unexpected exception (its `failed` event carries the message)."""
    CONFIG = 2
    DATA = 3
    TEMPLATE = 4
    OUT_OF_MEMORY = 5
    INTERRUPTED = 75
    """SIGTERM: a checkpoint was written; running the same config again resumes."""


class FailureReason(enum.StrEnum):
    """The `reason` of a `failed` event, and of the job that failed."""

    CRASHED = "trainer_crashed"
    """The only reason that may be the machine's rather than the job's: retried."""
    INVALID_CONFIG = "invalid_config"
    DATA_REJECTED = "data_rejected"
    CHAT_TEMPLATE = "chat_template"
    OUT_OF_MEMORY = "out_of_memory"


PARENT_PID_VARIABLE = "ADAPTERD_PARENT_PID"
"""The server's pid, in the trainer's environment: the trainer stops when that process dies."""
FENCE_VARIABLE = "ADAPTERD_JOB_FENCE"
"""The fencing number of the claim the trainer runs under (0 when run by hand): its working
directory is named by it (`trainer.layout.attempt_dir`), and a later claim's directory
tells a trainer left running by a lost owner to stop writing."""
DEVICES_VARIABLE = "CUDA_VISIBLE_DEVICES"
"""The accelerators a trainer may use: a worker's slot sets its share of them."""
RANK_VARIABLE = "RANK"
"""Set by torch.distributed.run in each process it starts for `training.devices` > 1: such a
process is a rank, whose parent is the launching trainer (the agent), not the server."""
