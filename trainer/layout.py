"""Where a job's trainer writes, shared by the trainer (which writes) and the server (which lists
checkpoints and registers them as adapter versions). Standard library only.

    OUTPUT/attempts/<fence:07d>/                   one attempt, under its claim's fencing number
        checkpoints/step-<step:07d>/               one checkpoint, complete once state.json is in
            adapter/                               the peft adapter as of that step
            manifest.json                          its manifest, with its `CheckpointSummary`
            training_state.pt, state.json          what a resumed run restores
        best/                                      the lowest-eval-loss adapter so far
    OUTPUT/adapter/, OUTPUT/manifest.json          the run's adapter, when it succeeded
"""

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ATTEMPTS, CHECKPOINTS, BEST = "attempts", "checkpoints", "best"
PREFIX = "step-"
ADAPTER, MANIFEST, STATE = "adapter", "manifest.json", "state.json"
PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
"""The two files of a saved peft adapter (`save_pretrained`), in every adapter directory."""


@dataclass(frozen=True)
class CheckpointSummary:
    """What a checkpoint says of itself (the `checkpoint` entry of its manifest)."""

    step: int
    """Optimizer steps completed."""
    epoch: float
    """Epochs completed, fractional."""
    loss: float
    """The training loss of its step."""
    eval_loss: float | None = None
    """The eval loss measured at its step; None where none was."""
    stage: str = ""
    """Its curriculum stage (`data.stages`); "" without stages."""
    stage_end: bool = False
    """Its step ends its stage: kept whatever the retention (`retained`)."""

    @classmethod
    def of_record(cls, record: dict[str, Any]) -> "CheckpointSummary":
        """From a step's history record (`trainer.checkpoints.LoopState.history`)."""
        return cls(
            record["step"], record["epoch"], record["loss"], record.get("eval_loss"),
            record.get("stage", ""), record.get("stage_end", False),
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def attempt_dir(output_dir: Path, fence: int) -> Path:
    """The working directory of the attempt under `fence`."""
    return output_dir / ATTEMPTS / f"{fence:07d}"


def attempts(output_dir: Path) -> list[tuple[int, Path]]:
    """The attempts' directories by fence, oldest first (staging directories are hidden)."""
    found = [(int(p.name), p) for p in (output_dir / ATTEMPTS).glob("*") if p.name.isdigit()]
    return sorted(found)


def checkpoint_dir(root: Path, step: int) -> Path:
    """The directory of the checkpoint after `step`."""
    return root / f"{PREFIX}{step:07d}"


def step_of(checkpoint: Path) -> int:
    """The step a checkpoint directory is named after (`checkpoint_dir`'s inverse)."""
    return int(checkpoint.name.removeprefix(PREFIX))


def complete_checkpoints(root: Path) -> list[Path]:
    """The complete checkpoints under `root`, oldest first (temporary directories are hidden,
    and one without state.json was cut short)."""
    return [p for p in sorted(root.glob(f"{PREFIX}*")) if (p / STATE).is_file()]


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint, if any."""
    complete = complete_checkpoints(root)
    return complete[-1] if complete else None


def summary_of(checkpoint: Path) -> CheckpointSummary | None:
    """A checkpoint's summary from its manifest; None for one written without (by a trainer
    before checkpoints had manifests) or unreadable."""
    try:
        entry = json.loads((checkpoint / MANIFEST).read_text(encoding="utf-8"))["checkpoint"]
        return CheckpointSummary(**entry)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def job_checkpoints(output_dir: Path) -> list[tuple[Path, CheckpointSummary]]:
    """The checkpoints of a job's newest attempt (each attempt starts with copies of the kept
    checkpoints of the one before), oldest first, with their summaries."""
    found = attempts(output_dir)
    if not found:
        return []
    summaries = [(p, summary_of(p)) for p in complete_checkpoints(found[-1][1] / CHECKPOINTS)]
    return [(p, s) for p, s in summaries if s is not None]


def retained(summaries: list[CheckpointSummary], newest: int, best: int) -> set[int]:
    """The steps a retention policy keeps: the `newest` latest checkpoints, the `best` with the
    lowest eval loss among those where one was measured (ties: the earlier), and every one that
    ends a curriculum stage. Pure."""
    steps = sorted(s.step for s in summaries)
    measured = [s for s in summaries if s.eval_loss is not None and math.isfinite(s.eval_loss)]
    lowest = sorted(measured, key=lambda s: (s.eval_loss, s.step))[:best]
    stage_ends = {s.step for s in summaries if s.stage_end}
    return set(steps[-newest:] if newest else []) | {s.step for s in lowest} | stage_ends
