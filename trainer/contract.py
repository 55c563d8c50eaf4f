"""How a trainer run ends, as the service reads it: exit codes and failure reasons. Torch-free.

Defined once here and imported on both sides of the process boundary (`trainer.sft` and
`trainer.__main__` write them, `service.jobs.runner` reads them), so the two cannot drift.
"""

import enum


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
